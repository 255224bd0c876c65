"""--new-experiment=NAME [--from=EXPERIMENT]: start an experiment the way the README teaches: its code, its own
config, its lab book, its test, and a line in the registry."""
import ast
import keyword
import os
import re

from utils.config import load_config
from utils.errors import UserError

BASE_EXPERIMENT = "experiment1"  # what --new-experiment copies unless --from names another
LAB_BOOK_TEMPLATE = "TEMPLATE.md"
REGISTRY = re.compile(r"^experiments = \{(?P<body>.*?)\}", re.MULTILINE | re.DOTALL)
IMPORT = re.compile(r"^from experiments\.\w+ import \w+\n", re.MULTILINE)
DOCSTRING = re.compile(r'\A"""(?P<text>.*?)"""', re.DOTALL)


def scaffold(launch):
    """Write the new experiment's files and say what to do next."""
    name, base = launch.args.new_experiment, launch.args.base or BASE_EXPERIMENT
    code_dir = launch.project.code_dir
    launch.project.find_experiment(base)  # a UserError naming the registered ones
    for path in new_experiment(code_dir, name, launch.project.experiments, base):
        print(f"wrote {path.relative_to(code_dir)}")
    print(f"edit experiments/{name}.py and configs/{name}.yml, then: python main.py --experiment={name} "
          f"--config=configs/{name}.yml; test it with: python -m pytest tests/test_{name}.py")
    return 0


def new_experiment(code_dir, name, registered, base=BASE_EXPERIMENT):
    """Write experiments/NAME.py (a copy of experiment `base`, declaring configs/NAME.yml as its config), that config
    (a copy of the base's: the keys it reads), experiments/NAME.md (a lab book whose results table has the base's
    metrics) and tests/test_NAME.py (its promises on tiny data the test writes), and register NAME in main.py.

    Refuses an invalid or taken name before writing anything; returns the paths it wrote.
    """
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise UserError(f"{name!r} cannot name an experiment: use letters, digits and underscores, "
                        f"starting with a letter (it becomes a Python function and module)")
    folder = code_dir / "experiments"
    code, lab_book, config = folder / f"{name}.py", folder / f"{name}.md", code_dir / "configs" / f"{name}.yml"
    test, main = code_dir / "tests" / f"test_{name}.py", code_dir / "main.py"
    taken = [str(path.relative_to(code_dir)) for path in (code, lab_book, config, test) if path.exists()]
    if name in registered or taken or name == "TEMPLATE":
        raise UserError(f"experiment {name!r} exists already ({', '.join(taken) or 'registered in main.py'}); "
                        f"pick another name")
    main_text = main.read_text(encoding="utf-8")
    if name in names_bound_in(main_text):  # `from experiments.os import os` would replace main.py's own os
        raise UserError(f"{name!r} is a name main.py already uses (an import or a definition of its own); registering "
                        f"an experiment under it would replace it: pick another name")
    main_text = register(main_text, name)
    source = registered[base]
    new_config = f"configs/{name}.yml"
    code_text = copied_code((folder / f"{base}.py").read_text(encoding="utf-8"), name, base, source.config, new_config)
    measures = source.measures
    columns = [measures.selected_result, *(f"test_{metric}" for metric in measures.better)]
    lab_text = (folder / LAB_BOOK_TEMPLATE).read_text(encoding="utf-8").replace("NAME", name).replace(
        "CONFIG", new_config).replace("| METRICS |", "| " + " | ".join(columns) + " |").replace(
        "|---METRICS|", "|---" * len(columns) + "|")
    base_lines = (code_dir / source.config).read_text(encoding="utf-8").splitlines(keepends=True)
    while base_lines and base_lines[0].startswith("#"):  # the base's own heading
        base_lines.pop(0)
    config_text = (f"# The baseline of {name}, started from {base}'s {source.config}: the keys it reads.\n"
                   f"# Override any key for one run with --config.SECTION.KEY=VALUE; edit this file to move the "
                   f"baseline.\n" + "".join(base_lines))

    tests_text = tests_file_text(name, new_config, data_kind(code_dir / source.config))
    written = []
    try:
        for path, text in ((code, code_text), (config, config_text), (lab_book, lab_text), (test, tests_text)):
            path.write_text(text, encoding="utf-8")
            written.append(path)
        # main.py whole or as it was: written beside itself, then renamed over it
        edited = main.with_name(f".{main.name}.{os.getpid()}.tmp")
        written.append(edited)
        edited.write_text(main_text, encoding="utf-8")
        edited.chmod(main.stat().st_mode)
        edited.replace(main)
    except OSError as e:  # a read-only checkout, a full disk: what was written goes, main.py stays as it was
        for path in written:
            path.unlink(missing_ok=True)
        raise UserError(f"cannot write the new experiment into {code_dir} ({e.strerror or e}); make the checkout "
                        f"writable, nothing was changed") from None
    return [code, config, lab_book, test, main]


def copied_code(text, name, base, base_config, new_config):
    """The code of experiment `base` as experiment `name`: renamed, declaring `new_config` as its config, with a
    docstring of its own."""
    text = re.sub(rf"\b{re.escape(base)}\b", name, text)
    declared = f'config="{base_config}"'
    if declared in text:
        text = text.replace(declared, f'config="{new_config}"', 1)
    elif f'config="{new_config}"' not in text:
        text = text.replace("@declare(", f'@declare(config="{new_config}",\n         ', 1)
    docstring = (f'"""{name}: one line that says what this experiment tries (started from {base});\n'
                 f'the lab book is experiments/{name}.md."""')
    return DOCSTRING.sub(lambda match: docstring, text, count=1)


def data_kind(config_path):
    """"text", "table" or "images": the kind of data the config at `config_path` names, what the new experiment's
    test writes a tiny example of."""
    from data.registry import find_dataset
    from data.table import CsvTable
    from data.text import TextCorpus

    dataset = find_dataset((load_config(config_path).get("data") or {}).get("name") or "mnist")
    return "text" if isinstance(dataset, TextCorpus) else "table" if isinstance(dataset, CsvTable) else "images"


def tests_file_text(name, config, kind):
    """tests/test_NAME.py: the template's promises for experiment `name`, on tiny data of `kind` the test writes."""
    return f'''"""{name}'s promises, kept as the template keeps them for every experiment: a tiny run on data the test
writes, its duplicate refused, --reproduce matching, and a kill then --resume ending exactly as the uninterrupted run.
Run it with: python -m pytest tests/test_{name}.py (docs/tests.md)."""
import subprocess
import sys

import pytest
import yaml

from helpers import (REPO, assert_refused, env_recording_in, recorded_numbers, run_in_process, run_main, tiny_data,
                     tiny_version)

ARGS = ("--experiment={name}", "--config=configs/tiny.yml", "--verbose=0")


def tiny_folder(folder):
    """`folder` with tiny {kind} data and configs/tiny.yml: {config} scaled down to seconds on it."""
    data = tiny_data("{kind}", folder / "data")
    config = tiny_version(yaml.safe_load((REPO / "{config}").read_text(encoding="utf-8")), "{kind}", data)
    (folder / "configs").mkdir()
    (folder / "configs" / "tiny.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def test_a_tiny_run_is_recorded_refused_as_a_duplicate_and_reproduced(tmp_path):
    folder = tiny_folder(tmp_path)
    done = run_in_process(folder, *ARGS)
    assert done.returncode == 0, done.stderr
    assert_refused(run_in_process(folder, *ARGS), "run 1")
    reproduced = run_in_process(folder, "--reproduce=1")
    assert reproduced.returncode == 0 and "run 1 reproduced" in reproduced.stdout, reproduced.stdout


@pytest.mark.slow
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_run(tmp_path):
    folder = tiny_folder(tmp_path)
    assert run_in_process(folder, *ARGS).returncode == 0
    killed_table = folder / "killed" / "resultTable.db"
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "epoch-closed", *ARGS], cwd=folder,
                            capture_output=True, text=True, timeout=600, env=env_recording_in(folder, killed_table))
    assert killed.returncode == -9, killed.stderr  # SIGKILL right after its first epoch was written
    resumed = run_main(folder, "--resume=1", table=killed_table)
    assert resumed.returncode == 0, resumed.stderr
    assert recorded_numbers(killed_table, 1) == recorded_numbers(folder / "results" / "resultTable.db", 1)
'''


def names_bound_in(text):
    """The names the top level of a module's `text` binds: its imports, definitions and assignments."""
    names = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


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
