"""What the knobs of long runs cost and buy, through main.py on real data; prints Markdown tables for bench/README.md.

    python bench/long_runs.py --data=../shared/data [--repeats=3] [--only=cost|lost|compile]

Measures:
  (a) the cost of resume points every N steps (training.checkpoint_every): the time each write takes (timed in the
      process), and the training epochs' time of the default MNIST config without them and at two intervals, each a
      fresh process, repeated;
  (b) the work a stop loses: SIGTERM, and SIGKILL with checkpoint_every, sent to a running default-config run at
      random moments; the steps it had trained (its own log prints every step) against the step --resume continues
      after;
  (c) torch.compile on and off for both shipped experiments, default configs: the first step (compiling), the
      epochs' time, the whole run and its result; the compiler's cache starts empty.
Each launch is a debug run in a results folder of its own. The numbers depend on the machine: say which one ran them.
"""
import argparse
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = {"experiment1": "configs/config.yml", "charlm": "configs/charlm.yml"}


def command(experiment, data, *overrides, verbose=0):
    return [sys.executable, str(REPO / "main.py"), f"--experiment={experiment}",
            f"--config={EXPERIMENTS[experiment]}", f"--config.data.path={data}", "--debug", f"--verbose={verbose}",
            *overrides]


def environment(folder, **more):
    return {**os.environ, "RESULT_TABLE": str(Path(folder) / "results" / "resultTable.db"), **more}


def debug_run(folder):
    """(the epochs' times, the results) of debug run -1 in `folder`'s table."""
    with sqlite3.connect(Path(folder) / "results" / "resultTable.db") as db:
        times = [value for (value,) in db.execute(
            "SELECT value FROM Logs WHERE run_id=-1 AND label='epoch_time' ORDER BY epoch")]
        results = dict(db.execute("SELECT metric, value FROM Results WHERE run_id=-1 AND is_hparam=0"))
    return times, results


def run(cmd, folder, **env):
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=environment(folder, **env))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started, done.stdout


def checkpoint_cost(data, repeats, root):
    print("\n| resume points (default config, 2 epochs of 215 steps) | epoch time, median (min-max) "
          "| writes an epoch | "
          "one write, median | share of the epoch's time |\n|---|---|---|---|---|")
    for every in (None, 100, 10):
        times, writes = [], []
        for repeat in range(repeats):
            folder = root / f"every-{every}-{repeat}"
            overrides = ["--config.training.num_epochs=2"] + (
                [f"--config.training.checkpoint_every={every}"] if every else [])
            _, out = run([sys.executable, __file__, "--timed-run", *command("experiment1", data, *overrides)[2:]],
                         folder)
            times += debug_run(folder)[0]
            writes += [float(seconds) for seconds in re.findall(r"^resume point written in ([\d.]+) s$", out, re.M)]
        median = statistics.median(times)
        spread = f"{median:.2f} s ({min(times):.2f}-{max(times):.2f})"
        if every is None:
            print(f"| none (epoch ends only) | {spread} | 0 | | |", flush=True)
            continue
        write, count = statistics.median(writes), 215 // every
        print(f"| every {every} steps | {spread} | {count} | {write * 1000:.1f} ms | "
              f"{100 * count * write / median:.1f}% |", flush=True)


def timed_run(argv):
    """main.py's command line, printing how long each resume point inside an epoch took to write."""
    sys.path.insert(0, str(REPO))
    import main as front_door
    import utils.epochs

    write = utils.epochs.Epochs._write

    def timed(self, position):
        started = time.perf_counter()
        write(self, position)
        print(f"resume point written in {time.perf_counter() - started:.6f} s", flush=True)

    utils.epochs.Epochs._write = timed
    return front_door.cli(argv)


def work_lost(data, trials, root):
    print("\n| stop (default config for 4 epochs, at a random moment 8-25 s after its start) | steps trained | "
          "resumed after step | lost |\n|---|---|---|---|")
    for stop, every in ((signal.SIGTERM, None), (signal.SIGKILL, 50)):
        for trial in range(trials):
            folder = root / f"{stop.name}-{trial}"
            overrides = ["--config.logging.log_every=1", "--config.training.num_epochs=4"] + (
                [f"--config.training.checkpoint_every={every}"] if every else [])
            process = subprocess.Popen(command("experiment1", data, *overrides, verbose=3), cwd=REPO,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env=environment(folder))
            time.sleep(random.uniform(8, 25))  # after the imports and the data, before the end
            process.send_signal(stop)
            process.wait()  # after a SIGKILL, the resume sees the process gone and marks the run failed first
            log = (folder / "results" / "debug" / "output.log").read_text()
            trained = max(int(step) for step in re.findall(r"^  step (\d+): loss", log, re.M))
            resumed = subprocess.run([sys.executable, str(REPO / "main.py"), "--resume=-1", "--verbose=1"],
                                     cwd=REPO, capture_output=True, text=True, env=environment(folder))
            after = re.search(r"resuming (?:in epoch \d+ after step|in epoch \d+ at its validation \(after step|"
                              r"after epoch \d+ \(step) (\d+)", resumed.stdout)
            if resumed.returncode != 0 or after is None:
                raise SystemExit(f"the resume failed:\n{resumed.stdout}{resumed.stderr}")
            what = stop.name + (f", checkpoint_every={every}" if every else "")
            print(f"| {what} | {trained} | {after.group(1)} | {trained - int(after.group(1))} |", flush=True)


def compile_gain(data, root):
    print("\n| default config | compile | first step | epoch time, median | whole run | result |\n"
          "|---|---|---|---|---|---|")
    for experiment in EXPERIMENTS:
        for compiled in (False, True):
            folder = root / f"{experiment}-{compiled}"
            cache = tempfile.mkdtemp(prefix="inductor-", dir=root)  # the compiler's cache starts empty
            overrides = ["--config.training.compile=true"] if compiled else []
            wall, out = run(command(experiment, data, *overrides, verbose=2), folder, TORCHINDUCTOR_CACHE_DIR=cache)
            first = re.search(r"the first step took ([\d.]+) s", out)
            times, results = debug_run(folder)
            result = ", ".join(f"{name} {value:.4f}" for name, value in sorted(results.items())
                               if name.startswith("test_"))
            print(f"| {experiment} | {'on' if compiled else 'off'} | {first.group(1) + ' s' if first else ''} | "
                  f"{statistics.median(times):.2f} s | {wall:.1f} s | {result} |", flush=True)


def main():
    if sys.argv[1:2] == ["--timed-run"]:
        sys.exit(timed_run(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the folder holding MNIST/raw and tinyshakespeare/input.txt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("cost", "lost", "compile"))
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    with tempfile.TemporaryDirectory(prefix="long-runs-") as root:
        root = Path(root)
        if args.only in (None, "cost"):
            checkpoint_cost(data, args.repeats, root)
        if args.only in (None, "lost"):
            work_lost(data, args.repeats, root)
        if args.only in (None, "compile"):
            compile_gain(data, root)


if __name__ == "__main__":
    main()
