"""Where the time of one run goes: one real launch of main.py, timed by phase from the start of its process.

    python bench/breakdown.py [main.py arguments ...]

Imports the way a launch does, then runs main.py's own entry point with timers around the pieces (reading the data,
training epochs, validation, checkpoints, writes to the run table, the test set). Prints a Markdown table.
"""
import time
from pathlib import Path

STARTED = time.perf_counter()

import os  # noqa: E402
import sys  # noqa: E402


def process_age():
    """Seconds since this process started (Linux: its start tick against the uptime), before Python ran a line."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text(encoding="utf-8").split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


PROCESS_AGE = process_age()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

spent = {}


def timing(phase, function):
    """`function` wrapped to add its duration to `spent[phase]`."""
    def timed(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - begun
    return timed


def main(argv):
    begun = time.perf_counter()
    import importlib
    for module in ("torch", "torch._dynamo"):  # every run imports torch, and its first optimizer step the compiler
        importlib.import_module(module)
    spent["imports (torch, and its compiler stack that the optimizer's first step loads)"] = time.perf_counter() - begun

    import data.loaders
    import main as front_door
    import training.loop
    import utils.epochs
    import utils.runtable.registry
    import utils.runtable.run

    data.loaders.make_loaders = timing("data: read the IDX files, split, move to the device",
                                       data.loaders.make_loaders)
    training.loop.train_epoch = timing("training epochs", training.loop.train_epoch)
    evaluations = []

    def evaluate(*args, **kwargs):
        begun = time.perf_counter()
        result = original_evaluate(*args, **kwargs)
        evaluations.append(time.perf_counter() - begun)
        return result
    original_evaluate, training.loop.evaluate = training.loop.evaluate, evaluate
    for name in ("save_checkpoint", "save_training_state", "load_checkpoint"):
        setattr(utils.epochs, name, timing("checkpoints", getattr(utils.epochs, name)))
    for name in ("log_hparams", "log_text", "flush", "finish"):
        setattr(utils.runtable.run.Run, name, timing("run table: points, hparams, results",
                                                     getattr(utils.runtable.run.Run, name)))
    for name in ("refuse_duplicate", "start_run"):
        setattr(utils.runtable.registry.RunTable, name, timing("run table: duplicate check, registration",
                                                               getattr(utils.runtable.registry.RunTable, name)))
    code = front_door.cli(argv)
    total = time.perf_counter() - STARTED + PROCESS_AGE
    spent["validation (every epoch)"] = sum(evaluations[:-1])
    spent["test set"] = evaluations[-1] if evaluations else 0.0
    spent["interpreter start"] = PROCESS_AGE + begun - STARTED
    spent["everything else (provenance, seeding, the model, fingerprint, ...)"] = total - sum(spent.values())
    print(f"\n| phase of one run (exit code {code}) | seconds | share |\n|---|---|---|")
    for phase, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"| {phase} | {seconds:.2f} | {100 * seconds / total:.1f}% |")
    print(f"| total, process start to the printed accuracy | {total:.2f} | 100% |")


if __name__ == "__main__":
    main(sys.argv[1:])
