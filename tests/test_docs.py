"""The README and docs/ stay true: their commands parse, their refusals and listings are what main.py prints, every
Python block runs or matches the code it quotes, every link leads somewhere, and their numbers follow from the code
and the tests."""
import importlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import types

import pytest
import yaml

import data.registry
import main
from helpers import REPO, query, run_in_process, tiny_config, tiny_in_process, write_table
from modes.launch import choose_mode, read_command_line
from utils.config import flatten_values, load_config

PAGES = {path.relative_to(REPO).as_posix(): path.read_text()
         for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
README = PAGES["README.md"]
EVERYTHING = "\n".join(PAGES.values())
PLACEHOLDERS = ("RUNID", "NAME", "FILE", "DIR", "URL", "KEY", "VALUE", "SECTION", "...", "$", "A,B")
SHIPPED = ("experiment1", "charlm", "tabular")  # the experiments the template ships, as the pages list them
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
CHEAP = ("--list", "--print-config")  # commands whose whole output a page shows and a test can print


def code_blocks(text, language="[a-z]*"):
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", text, re.M | re.S)


def shown_commands():
    """(page, `python main.py ...` command, the lines shown after it up to the next command) of every code block."""
    found = []
    for page, text in PAGES.items():
        for block in code_blocks(text):
            lines = block.replace("\\\n", " ").splitlines()
            for number, line in enumerate(lines):
                # python main.py ..., RESULT_TABLE=... python main.py ..., srun python main.py, torchrun ... main.py
                launched = re.match(r"^(?:[A-Z_]+=\S+ )*(?:srun )?(?:python|torchrun .*?) main\.py (.*)$",
                                    line.strip().removeprefix("$ "))
                if launched:
                    command = "python main.py " + launched.group(1)
                    shown = []
                    for after in lines[number + 1:]:
                        if after.startswith("$ ") or " main.py " in after:
                            break
                        shown.append(after)
                    found.append((page, command.split(" #")[0].split(" | ")[0].split(" 2>&1")[0].strip(), shown))
    return found


def test_every_command_the_pages_show_is_one_main_py_accepts():
    checked = 0
    for _, command, shown in shown_commands():
        if shown[:1] and shown[0].startswith("error: ") or any(mark in command for mark in PLACEHOLDERS):
            continue
        parser = main.make_parser()
        args, overrides = read_command_line(parser, shlex.split(command)[2:])
        choose_mode(args, parser.flags)
        checked += 1
    assert checked >= 20


def test_every_refusal_the_pages_show_is_the_line_main_py_prints(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shown = [(page, command, lines[0]) for page, command, lines in shown_commands()
             if lines and lines[0].startswith("error: ")]
    assert len(shown) >= 6
    for page, command, error in shown:
        if "data.val_size" in command or error.startswith("error: run "):
            continue  # judged from the data's header or a recorded run: tests/data/test_idx.py and test_runs.py
        result = run_in_process(tmp_path, *shlex.split(command)[2:])
        # The experiments a user registers beside the shipped ones are listed too: the pages show the shipped ones.
        error = error.replace(f"registered: {', '.join(SHIPPED)}", f"registered: {', '.join(main.experiments)}")
        assert result.returncode == 2 and result.stderr.strip() == error, (page, command, result.stderr)
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_the_listings_the_pages_show_are_what_main_py_prints(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    checked = 0
    for page, command, shown in shown_commands():
        if not any(flag in command.split() for flag in CHEAP):
            continue
        result = run_in_process(tmp_path, *shlex.split(command)[2:])
        printed, position = result.stdout.splitlines(), 0
        for line in shown:
            if line.strip() == "...":
                continue
            assert line in printed[position:], (page, command, line)
            position = printed.index(line, position) + 1
        checked += 1
    assert checked >= 2


def shape(line):
    """A pattern of `line` with its numbers free and its improvement mark optional: what any run prints."""
    pattern = re.escape(re.sub(r"\d+(?:\.\d+)?", "NUMBER", line)).replace("NUMBER", r"[\d.]+")
    return pattern.removesuffix(r"\ \*") + r"(\ \*)?" if line.endswith(" *") else pattern


def test_a_runs_printed_lines_have_the_shape_the_pages_show(workdir):
    [shown] = [lines for page, command, lines in shown_commands() if page == "docs/commands.md"
               and command == "python main.py --experiment=experiment1 --config=configs/config.yml"
               and lines and lines[0].startswith("run 1:")]
    printed = tiny_in_process(workdir, "--verbose=1").stdout.splitlines()
    epochs = [line for line in printed if line.startswith("epoch ")]
    assert re.fullmatch(shape(shown[0]), printed[0].replace(str(workdir / "results"), "results")), printed[0]
    assert epochs and all(re.fullmatch(shape(shown[1]), line) for line in epochs), (shown[1], epochs)
    assert re.fullmatch(shape(shown[-1]), printed[-1]), (shown[-1], printed[-1])


def test_the_numbers_the_pages_state_follow_from_the_code():
    fast = load_config(REPO / "configs" / "fast.yml")
    own = flatten_values({k: v for k, v in yaml.safe_load((REPO / "configs" / "fast.yml").read_text()).items()
                          if k != "extends"})
    stated = re.search(r"`configs/fast.yml` starts with `extends: config.yml` .*? and sets (\w+) keys", EVERYTHING,
                       re.S)
    assert WORDS[stated.group(1)] == len(own)

    limit = int(re.search(r"`experiments/experiment1.py` \(under (\d+) lines\)", README).group(1))
    assert len((REPO / "experiments" / "experiment1.py").read_text().splitlines()) < limit

    # --verify's example: run 1 is configs/fast.yml, run 2 the default config, one epoch of real MNIST replayed.
    for run_id, config in ((1, fast), (2, load_config(REPO / "configs" / "config.yml"))):
        steps = math.ceil((60000 - config["data"]["val_size"]) / config["data"]["batch_size"])
        values = steps // config["logging"]["log_every"] + 4  # the step losses, then the epoch's 4 metrics
        assert f"run {run_id} (experiment1): matches ({values} values of steps 1-{steps})" in \
            PAGES["docs/reproducibility.md"]


def test_the_flags_table_lists_every_declared_flag_with_its_role():
    from modes.flags import Role

    table = PAGES["docs/commands.md"].replace("\\|", "/")  # an escaped | inside a cell
    rows = re.findall(r"^\| `(--[\w-]+)[^|]*\|[^|]*\|[^|]*\|\s*([^|]*?)\s*\|$", table, re.M)
    shown = {name: identity for name, identity in rows if name != "--config.A.B"}
    flags = main.make_parser().flags
    assert set(shown) == {flag.name for flag in flags}
    for flag in flags:
        if flag.role == Role.OUTPUT:
            assert shown[flag.name] == "no", flag.name
        elif flag.role == Role.IDENTITY:
            assert shown[flag.name].startswith(("yes", "its merged content")), flag.name


def test_the_constants_the_pages_state_are_the_codes():
    import data.files
    import data.folder
    import modes.search
    from utils.runtable import liveness

    where = ", ".join(f"`{key}`" for key in main.IDENTITY.where_keys[:-1]) + f" and `{main.IDENTITY.where_keys[-1]}`"
    assert f"template's where-keys are {where}" in " ".join(PAGES["docs/configuration.md"].split())
    faults = " ".join(PAGES["docs/faults.md"].split())
    assert f"given up after {data.files.DOWNLOAD_TIMEOUT_S} s of silence" in faults
    share = {16: "sixteenth"}[data.folder.IMAGE_SHARE]
    assert f"one image may take a {share} of `data.memory_limit_mb` (at least {data.folder.MIN_IMAGE_BUDGET_MB} MiB)" \
        in faults
    assert f"`RUNTABLE_HEARTBEAT_S` seconds (default {liveness.DEFAULT_HEARTBEAT_S:g}," in faults
    assert f"`RUNTABLE_LEASE_S` seconds (default {liveness.DEFAULT_LEASE_S:g})" in faults
    assert f"the lease ({liveness.DEFAULT_LEASE_S / 60:g} minutes by default)" in faults
    sweeps = " ".join(PAGES["docs/sweeps.md"].split())
    assert f"{[None, 'one', 'two', 'three'][modes.search.CRASHES_IN_A_ROW]} such trials one after another stop the " \
           f"study" in sweeps


def test_the_defaults_the_pages_state_are_the_shipped_configs():
    shipped = flatten_values(load_config(REPO / "configs" / "config.yml"))
    stated = re.findall(r"`((?:data|model|training|logging)\.\w+)`(?:, `[\w.]+`)? \(`?(true|false|[\w.]+)`?[:)]",
                        EVERYTHING)
    assert len(stated) >= 5
    for key, value in stated:  # a key the config leaves null has the value IDENTITY implies for it, or none
        default = shipped[key] if shipped[key] is not None else main.IDENTITY.implied.get(key)
        assert yaml.safe_load(value) == default, (key, value, shipped[key])


def slug(heading):
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_leads_to_a_file_and_a_heading_that_exist():
    checked = 0
    for page, text in PAGES.items():
        here = (REPO / page).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (here / path).resolve() if path else REPO / page
            assert file.exists(), (page, target)
            if anchor:
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                assert anchor in {slug(heading) for heading in headings}, (page, target)
            checked += 1
    assert checked >= 30


def test_the_readme_is_a_front_page_and_links_every_reference_page():
    lines = README.splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:20])
    assert "pip install -r requirements.txt" in first_screen and "python -m pytest tests" in first_screen
    for path in (REPO / "docs").glob("*.md"):
        assert f"(docs/{path.name})" in README, f"the README does not link docs/{path.name}"


# Python blocks: a block headed `# PATH` of a file the template has quotes it; one headed by a file that does not
# exist is a file the user writes; any other is code a user runs. Each kind is checked as it is used.

def python_blocks():
    return [(page, block) for page, text in PAGES.items() for block in code_blocks(text, "python")]


def test_every_python_block_that_quotes_the_code_matches_it():
    """Its lines appear in the quoted file in that order (a line with `...` stands for what is left out)."""
    quoted = 0
    for page, block in python_blocks():
        first, *rest = block.splitlines()
        path = REPO / first.removeprefix("# ").strip()
        if not first.startswith("# ") or not path.is_file():
            continue
        code = [line.rstrip() for line in path.read_text().splitlines()]
        position = 0
        for line in rest:
            if not line.strip() or "..." in line:
                continue
            assert line.rstrip() in code[position:], f"{page}: {path.name} no longer has, in this order: {line!r}"
            position = code.index(line.rstrip(), position) + 1
        quoted += 1
    assert quoted >= 2


def own_blocks():
    """{first line: block} of the Python blocks that do not quote a file of the template."""
    blocks = {}
    for _, block in python_blocks():
        first = block.splitlines()[0]
        if not (first.startswith("# ") and (REPO / first.removeprefix("# ").strip()).is_file()):
            blocks[first] = block
    return blocks


RUN_FROM_PYTHON = "from main import make_project"
DATASET_IN_CODE = "# data/noise.py"
LOAD_RUN = "from main import load_run"


def test_every_other_python_block_is_one_these_tests_run():
    assert set(own_blocks()) == {RUN_FROM_PYTHON, DATASET_IN_CODE, LOAD_RUN}


def test_the_block_that_loads_a_run_gives_its_model_back(workdir, monkeypatch, capsys):
    assert tiny_in_process(workdir).returncode == 0
    monkeypatch.setenv("RESULT_TABLE", str(workdir / "results" / "resultTable.db"))
    names = {}
    exec(compile(own_blocks()[LOAD_RUN], "docs/results.md", "exec"), names)
    run = names["run"]
    assert run.run_id == 1 and run.epoch == 2 and not run.model.training
    printed = capsys.readouterr().out
    assert printed.startswith("experiment1 {'channels': [4, 8]") and "'test_accuracy': " in printed


def test_the_block_that_starts_a_run_from_python_records_it(tmp_path, mnist_root, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yml").write_text(yaml.safe_dump(tiny_config(mnist_root)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESULT_TABLE", str(tmp_path / "results" / "resultTable.db"))
    exec(compile(own_blocks()[RUN_FROM_PYTHON], "docs/commands.md", "exec"), {})
    run_id, accuracy = capsys.readouterr().out.split()[-2:]
    db = tmp_path / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status FROM Experiments") == [(int(run_id), "finished")]
    assert query(db, "SELECT value FROM Results WHERE metric='best_val_accuracy'") == [(float(accuracy),)]
    assert query(db, "SELECT value FROM Results WHERE metric='training.learning_rate' AND is_hparam=1") == [(0.003,)]


def test_the_dataset_written_in_code_registers_and_trains(workdir, monkeypatch):
    module = types.ModuleType("data.noise")
    exec(compile(own_blocks()[DATASET_IN_CODE], "docs/data.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "data.noise", module)
    registered = re.search(r'DATASETS = \{\.\.\., ("noise": "[\w.:]+")\}', PAGES["docs/data.md"]).group(1)
    name, target = (part.strip().strip('"') for part in registered.split(":", 1))
    monkeypatch.setitem(data.registry.DATASETS, name, target)
    shown = re.search(r"`(python main.py [^`]*--config.data.name=noise)`", PAGES["docs/data.md"]).group(1)
    assert shown == "python main.py --experiment=experiment1 --config=configs/config.yml --config.data.name=noise"
    done = tiny_in_process(workdir, "--config.data.name=noise", "--config.training.num_epochs=1", "--verbose=2")
    assert done.returncode == 0, done.stderr
    assert "2000 train" not in done.stdout and "images of 1x16x16, 2 classes" in done.stdout
    assert importlib.import_module("data.noise") is module


def test_the_worked_regression_runs_and_compares_each_metric_in_its_own_direction(tmp_path):
    commands = [command for page, command, _ in shown_commands() if page == "docs/data.md" and "houses.csv" in command]
    assert len(commands) == 2
    write_table(tmp_path / "houses.csv", rows=600)  # its target column is y
    for command in commands:
        args = shlex.split(command.replace("--config.data.target=price", "--config.data.target=y"))[2:]
        done = run_in_process(tmp_path, *args, "--verbose=0", "--config=configs/tabular.yml".replace(
            "configs", str(REPO / "configs")))
        assert done.returncode == 0, done.stderr
    compared = run_in_process(tmp_path, "--compare")
    assert compared.returncode == 0, compared.stderr
    sentences = {line.split(":")[0].strip(): line for line in compared.stdout.splitlines() if ": " in line and (
        "better by" in line or "worse by" in line or "no detectable" in line)}
    assert {"test_mse", "test_mae", "test_r2", "best_val_mse"} <= set(sentences), compared.stdout
    mse, r2 = (json_group(tmp_path)["vs_reference"][name]["diff"] for name in ("test_mse", "test_r2"))
    for name, diff, better_when in (("test_mse", mse, "lower"), ("test_r2", r2, "higher")):
        if "no detectable" not in sentences[name]:
            better = (diff < 0) == (better_when == "lower")
            assert f"{name}: {'better' if better else 'worse'} by" in sentences[name], sentences[name]


def json_group(folder):
    """The one group --compare holds besides the reference, as --format=json gives it."""
    compared = run_in_process(folder, "--compare", "--format=json")
    return next(group for group in json.loads(compared.stdout) if not group["reference"])


# The reliability table of docs/faults.md: its counts are pytest's and the tests' own.

def reliability_rows():
    table = PAGES["docs/faults.md"].split("## What the tests tried", 1)[1]
    rows = re.findall(r"^\| ([a-z][^|]*?) \| ([^|]*) \| (\d+) \| [^|]* \| [^|]* \|$", table, re.M)
    return {name: (tried, int(cases)) for name, tried, cases in rows}


def test_the_generated_inputs_the_reliability_table_states_are_what_the_tests_generate():
    import test_inputs
    import test_valid_configs

    rows = reliability_rows()
    generated = rows["generated inputs"][0]
    assert (f"{test_inputs.FAST} and {test_inputs.FAST // 2} generated in the fast tier, {test_inputs.FULL:,} and "
            f"{test_inputs.FULL // 2:,} in the full suite") in generated
    assert f"{test_valid_configs.EXAMPLES} for each experiment" in rows["valid configs"][0]


@pytest.mark.slow  # collects the whole suite in a process of its own
def test_the_reliability_table_counts_the_test_cases_of_each_fault_class(tmp_path):
    census = tmp_path / "census.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FAULT_CENSUS": str(census)})
    assert done.returncode == 0, done.stdout[-2000:]
    counted = json.loads(census.read_text())
    assert {name: cases for name, (_, cases) in reliability_rows().items()} == counted
