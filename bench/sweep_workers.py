"""Wall time of one sweep run by one worker against the same sweep run by --workers=N; prints a Markdown table.

    python bench/sweep_workers.py --data=/path/to/folder/holding/MNIST [--workers=2] [--combinations=4]

The sweep is configs/fast.yml over `--combinations` seeds, on real MNIST, each way in a fresh folder (so nothing is
skipped): one process with every core, then `--workers=N` processes, each pinned to its share of the cores (one
thread each on a 2-core machine). The runs of both ways are checked to reach the same accuracies.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchmark import recording_in  # noqa: E402  (the repository root must be on the path first)


def sweep(data, combinations, workers=None):
    """(wall seconds, {seed: test accuracy}) of the sweep, from a fresh folder."""
    seeds = ",".join(str(seed) for seed in range(combinations))
    command = [sys.executable, str(REPO / "main.py"), "--experiment=experiment1",
               f"--config={REPO / 'configs' / 'fast.yml'}", f"--config.data.path={data}",
               "--config.data.download=false",
               "--verbose=0", "--sweep", f"--config.seed={seeds}"] + ([f"--workers={workers}"] if workers else [])
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=recording_in(folder))
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{done.stdout}\n{done.stderr}")
    accuracies = {int(seed): float(accuracy) for seed, accuracy in
                  re.findall(r"seed=(\d+)\s+\d+\s+finished\s+\S+\s+\S+\s+([0-9.]+)", done.stdout)}
    return wall, accuracies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding MNIST/raw",
                        type=lambda path: str(Path(path).resolve()))  # the runs start in folders of their own
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--combinations", type=int, default=4)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    one, one_accuracy = sweep(args.data, args.combinations)
    many, many_accuracy = sweep(args.data, args.combinations, args.workers)
    print(f"| sweep of {args.combinations} fast-config runs, {cores} cores | wall time |")
    print("|---|---|")
    print(f"| 1 worker ({cores} threads) | {one:.1f} s |")
    print(f"| --workers={args.workers} ({max(1, cores // args.workers)} thread(s) each) | {many:.1f} s "
          f"({one / many:.2f}x) |")
    same = "the same" if one_accuracy == many_accuracy else "DIFFERENT"
    print(f"\ntest accuracies: 1 worker {one_accuracy}, {args.workers} workers {many_accuracy} ({same})")


if __name__ == "__main__":
    main()
