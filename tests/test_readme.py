"""The README stays true: its commands parse, its refusals print what it shows, its numbers follow from the code."""
import math
import re
import shlex
import shutil

import yaml

import main
from helpers import REPO, run_in_process
from modes.launch import choose_mode, read_command_line
from utils.config import flatten_values, load_config

README = (REPO / "README.md").read_text()
PLACEHOLDERS = ("RUNID", "NAME", "FILE", "DIR", "URL", "KEY", "VALUE", "SECTION", "...", "$", "A,B")
SHIPPED = ("experiment1", "charlm")  # the experiments the template ships, as the README lists them
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def readme_commands():
    """Every `python main.py ...` command of the README's code blocks (continued lines joined), with the line that
    follows it."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found = []
    for number, line in enumerate(lines):
        text = re.sub(r"^([A-Z_]+=\S+ )+", "", line.strip().removeprefix("$ "))  # RESULT_TABLE=... python main.py
        if text.startswith("python main.py "):
            command = text.split("#")[0].split(" | ")[0]
            found.append((command, lines[number + 1] if number + 1 < len(lines) else ""))
    return found


def test_every_command_the_readme_shows_is_one_main_py_accepts():
    checked = 0
    for command, after in readme_commands():
        if after.startswith("error: ") or any(mark in command for mark in PLACEHOLDERS):
            continue
        parser = main.make_parser()
        args, overrides = read_command_line(parser, shlex.split(command)[2:])
        choose_mode(args, overrides, parser, main.IDENTITY.output_only)
        checked += 1
    assert checked >= 12


def test_every_refusal_the_readme_shows_is_the_line_main_py_prints(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shown = [(command, after) for command, after in readme_commands() if after.startswith("error: ")]
    assert len(shown) >= 5
    for command, error in shown:
        if "data.val_size" in command or error.startswith("error: run "):
            continue  # judged from the data's header or a recorded run: tests/data/test_idx.py and test_runs.py
        result = run_in_process(tmp_path, *shlex.split(command)[2:])
        # The experiments a user registers beside the shipped ones are listed too: the README shows the shipped ones.
        error = error.replace(f"registered: {', '.join(SHIPPED)}", f"registered: {', '.join(main.experiments)}")
        assert result.returncode == 2 and result.stderr.strip() == error, (command, result.stderr)
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_the_numbers_the_readme_states_follow_from_the_code():
    fast = load_config(REPO / "configs" / "fast.yml")
    own = flatten_values({k: v for k, v in yaml.safe_load((REPO / "configs" / "fast.yml").read_text()).items()
                          if k != "extends"})
    stated = re.search(r"`configs/fast.yml` starts with `extends: config.yml` .*? and sets (\w+) keys", README, re.S)
    assert WORDS[stated.group(1)] == len(own)

    limit = int(re.search(r"`experiments/experiment1.py` \(under (\d+) lines\)", README).group(1))
    assert len((REPO / "experiments" / "experiment1.py").read_text().splitlines()) < limit

    # --verify's example: run 1 is configs/fast.yml, run 2 the default config, one epoch of real MNIST replayed.
    for run_id, config in ((1, fast), (2, load_config(REPO / "configs" / "config.yml"))):
        steps = math.ceil((60000 - config["data"]["val_size"]) / config["data"]["batch_size"])
        values = steps // config["logging"]["log_every"] + 4  # the step losses, then the epoch's 4 metrics
        assert f"run {run_id} (experiment1): matches ({values} values of steps 1-{steps})" in README


def python_blocks():
    return re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)


def test_every_python_block_the_readme_shows_matches_the_code_it_describes():
    """A block headed `# PATH` of a file the template has quotes it: its lines appear there in that order (a line
    with `...` stands for what is left out). Any other block is code a user runs or writes: it compiles, and what it
    imports exists."""
    quoted = 0
    for block in python_blocks():
        first, *rest = block.splitlines()
        path = REPO / first.removeprefix("# ").strip() if first.startswith("# ") else None
        if path is None or not path.is_file():
            compile(block, "<README>", "exec")
        else:
            code = [line.rstrip() for line in path.read_text().splitlines()]
            position = 0
            for line in rest:
                if not line.strip() or "..." in line:
                    continue
                assert line.rstrip() in code[position:], f"{path.name} no longer has, in this order: {line!r}"
                position = code.index(line.rstrip(), position) + 1
            quoted += 1
        for module, names in re.findall(r"^from ([\w.]+) import ([\w, ]+)$", block, re.M):
            imported = __import__(module, fromlist=["_"])
            for name in names.split(","):
                assert hasattr(imported, name.strip()) or (REPO / module.replace(".", "/") / f"{name.strip()}.py"
                                                           ).exists(), f"{module} has no {name.strip()}"
    assert quoted >= 1
