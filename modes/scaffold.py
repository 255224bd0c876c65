"""--new-experiment=NAME: start an experiment the way the README teaches: code, lab book, a line in the registry."""
import keyword
import re

from utils.errors import UserError

BASE_EXPERIMENT = "experiment1"  # what --new-experiment copies unless --from names another
LAB_BOOK_TEMPLATE = "TEMPLATE.md"
REGISTRY = re.compile(r"^experiments = \{(?P<body>.*?)\}", re.MULTILINE | re.DOTALL)
IMPORT = re.compile(r"^from experiments\.\w+ import \w+\n", re.MULTILINE)


def scaffold(launch):
    """Write the new experiment's files and say what to do next."""
    name, base = launch.args.new_experiment, launch.args.base or BASE_EXPERIMENT
    code_dir = launch.project.code_dir
    source = launch.project.find_experiment(base)  # a UserError naming the registered ones
    for path in new_experiment(code_dir, name, launch.project.experiments, base):
        print(f"wrote {path.relative_to(code_dir)}")
    print(f"edit experiments/{name}.py, then: python main.py --experiment={name} --config={source.config}")
    return 0


def new_experiment(code_dir, name, registered, base=BASE_EXPERIMENT):
    """Write experiments/NAME.py (a copy of experiment `base`) and NAME.md (a lab book whose results table has the
    base's metrics), and register NAME in main.py.

    Refuses an invalid or taken name before writing anything; returns the paths it wrote.
    """
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise UserError(f"{name!r} cannot name an experiment: use letters, digits and underscores, "
                        f"starting with a letter (it becomes a Python function and module)")
    folder = code_dir / "experiments"
    code, lab_book, main = folder / f"{name}.py", folder / f"{name}.md", code_dir / "main.py"
    taken = [str(path.relative_to(code_dir)) for path in (code, lab_book) if path.exists()]
    if name in registered or taken or name == "TEMPLATE":
        raise UserError(f"experiment {name!r} exists already ({', '.join(taken) or 'registered in main.py'}); "
                        f"pick another name")
    main_text = register(main.read_text(), name)
    source = registered[base]
    code_text = (folder / f"{base}.py").read_text().replace(base, name)
    code_text = code_text.replace(f'"""{name}: ', f'"""{name}: copied from {base}; edit it to try one idea. ', 1)
    measures = source.measures
    columns = [measures.selected_result, *(f"test_{metric}" for metric in measures.better)]
    lab_text = (folder / LAB_BOOK_TEMPLATE).read_text().replace("NAME", name).replace(
        "CONFIG", source.config).replace("| METRICS |", "| " + " | ".join(columns) + " |").replace(
        "|---METRICS|", "|---" * len(columns) + "|")

    code.write_text(code_text)
    lab_book.write_text(lab_text)
    main.write_text(main_text)
    return [code, lab_book, main]


def register(main_text, name):
    """`main_text` with `from experiments.NAME import NAME` and `"NAME": NAME` added to the registry dict."""
    imports = list(IMPORT.finditer(main_text))
    registry = REGISTRY.search(main_text)
    if not imports or registry is None:
        raise UserError("main.py no longer has the `from experiments.X import X` lines and the "
                        "`experiments = {...}` registry this command edits; add the experiment by hand")
    body = registry.group("body")
    if "\n" in body:  # a registry spread over several lines: one entry per line
        entry = body.rstrip()
        new_body = f"{entry}{'' if entry.endswith(',') else ','}\n    \"{name}\": {name},\n"
    else:
        new_body = f"{body}, \"{name}\": {name}" if body.strip() else f"\"{name}\": {name}"
    text = main_text[:registry.start("body")] + new_body + main_text[registry.end("body"):]
    end = imports[-1].end()
    return text[:end] + f"from experiments.{name} import {name}\n" + text[end:]
