"""charlm's default config against nanoGPT's own CPU recipe, on the same machine and the same Tiny Shakespeare file.

    python bench/charlm_vs_nanogpt.py --nanogpt=../shared/anchors/nanoGPT --data=../shared/data --seeds=3

nanoGPT runs from a copy (it writes beside itself): its prepare.py on the same input.txt, then its train.py with the
recipe of its README, timed from process start to exit. Its final checkpoint is then scored over the whole last 10%
of the text (the characters it validates on) with the covering windows charlm's test split uses, so that both losses
are over the same characters and neither is the estimate of 20 random batches. charlm runs as a user runs it
(`main.py`, its own config, one fresh process and run table per seed). Prints a Markdown table.
"""
import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.windows import covering_windows  # noqa: E402

TEXT = Path("tinyshakespeare") / "input.txt"
NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                  "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]


def timed(command, cwd, env=None):
    """(seconds from start to exit, stdout) of a command that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def last_tenth(text: str) -> str:
    return text[int(len(text) * 0.9):]


@torch.no_grad()
def nanogpt_test_loss(checkout: Path, text: str) -> float:
    """Mean nats per character of nanoGPT's checkpoint over every character of the last 10% but the first."""
    sys.path.insert(0, str(checkout))
    from model import GPT, GPTConfig  # nanoGPT's own model.py, from the copy

    checkpoint = torch.load(checkout / "out-shakespeare-char" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    state = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()}
    model.load_state_dict(state)
    model.eval()
    vocab = sorted(set(text))  # prepare.py's encoding: the sorted distinct characters of the whole file
    tokens = torch.tensor([vocab.index(c) for c in last_tenth(text)])
    block = checkpoint["model_args"]["block_size"]
    starts, first_scored = covering_windows(len(tokens), block)
    total, count = 0.0, 0
    for begin in range(0, len(starts), 256):
        rows = range(begin, min(begin + 256, len(starts)))
        chunk = torch.stack([tokens[starts[i]:starts[i] + block + 1] for i in rows])
        targets = chunk[:, 1:].clone()
        for row, i in enumerate(rows):
            targets[row, :first_scored[i]] = -1  # nanoGPT's ignore_index
        logits, _ = model(chunk[:, :-1], targets)
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                                   reduction="sum")
        total, count = total + losses.item(), count + int((targets >= 0).sum())
    assert count == len(tokens) - 1
    return total / count


def run_nanogpt(source: Path, data: Path, work: Path):
    """(wall seconds, nanoGPT's own last printed val loss, the loss over the whole split)."""
    checkout = work / "nanoGPT"
    shutil.copytree(source, checkout)
    prepared = checkout / "data" / "shakespeare_char"
    shutil.copy(data / TEXT, prepared / "input.txt")
    timed([sys.executable, "prepare.py"], cwd=prepared)
    seconds, out = timed([sys.executable, "train.py", *NANOGPT_RECIPE], cwd=checkout)
    own = [line for line in out.splitlines() if "val loss" in line][-1]
    own_val = float(own.split("val loss")[1].split(",")[0].strip())
    return seconds, own_val, nanogpt_test_loss(checkout, (data / TEXT).read_text())


def run_charlm(data: Path, work: Path, seed: int, overrides):
    """(wall seconds, test_loss, best_val_loss) of one run of charlm's config, a fresh process and run table."""
    table = work / f"charlm-{seed}" / "resultTable.db"
    command = [sys.executable, "main.py", "--experiment=charlm", "--config=configs/charlm.yml", "--verbose=0",
               f"--config.data.path={data}", "--config.data.download=false", f"--config.seed={seed}", *overrides]
    seconds, _ = timed(command, cwd=ROOT, env={**os.environ, "RESULT_TABLE": str(table)})
    results = dict(sqlite3.connect(table).execute("SELECT metric, value FROM Results"))
    return seconds, results["test_loss"], results["best_val_loss"]


def summary(values, digits):
    return (f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
            if len(values) > 1 else f"{values[0]:.{digits}f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (train.py, model.py, config/, data/)")
    parser.add_argument("--data", type=Path, required=True, help="the folder holding tinyshakespeare/input.txt")
    parser.add_argument("--seeds", type=int, default=3, help="charlm runs, seeds 0..N-1")
    args, overrides = parser.parse_known_args()  # the rest: --config.KEY=VALUE for charlm, to try a config
    if any(not item.startswith("--config.") for item in overrides):
        parser.error(f"unrecognized arguments: {' '.join(overrides)} (only --config.KEY=VALUE passes to charlm)")
    data = args.data.resolve()
    if not (data / TEXT).is_file():
        sys.exit(f"{data / TEXT} is missing; give --data the folder holding {TEXT}")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        rows = []
        if args.nanogpt:
            seconds, own_val, loss = run_nanogpt(args.nanogpt.resolve(), data, work)
            rows += [("nanoGPT recipe: wall time", f"{seconds:.1f} s"),
                     ("nanoGPT recipe: its own val loss (20 random batches)", f"{own_val:.4f}"),
                     ("nanoGPT recipe: loss over the whole last 10%", f"{loss:.4f}")]
        runs = [run_charlm(data, work, seed, overrides) for seed in range(args.seeds)]
        for seed, (seconds, test, val) in enumerate(runs):
            print(f"charlm seed {seed}: {seconds:.1f} s, test_loss {test:.4f}, best_val_loss {val:.4f}", flush=True)
        walls, tests = [r[0] for r in runs], [r[1] for r in runs]
        rows += [(f"charlm default config: wall time, {len(runs)} seeds", f"{summary(walls, 1)} s"),
                 (f"charlm default config: test_loss (the whole last 10%), {len(runs)} seeds", summary(tests, 4)),
                 ("charlm: spread of test_loss over the seeds", f"{max(tests) - min(tests):.4f}")]
    print("| measure | value |\n|---|---|")
    for measure, value in rows:
        print(f"| {measure} | {value} |")


if __name__ == "__main__":
    main()
