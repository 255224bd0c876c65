"""Performance benchmark of the template on real MNIST; prints Markdown tables for bench/README.md.

    python bench/benchmark.py --data=../shared/data --seeds=5

Measures, in one run:
  (a) wall time from process start to the printed test accuracy, that accuracy, and the peak resident memory, for
      configs/config.yml and configs/fast.yml over several seeds; each launch a fresh process, all of one config
      recorded in one results folder (the first creates the run table, as a project's first run does);
  (b) the same default config and seeds trained by bench/bare_loop.py (no run table, no checkpoints, no per-epoch
      validation), and the template's wall time over the bare loop's;
  (c) where the time of one default run goes (bench/breakdown.py);
  (d) one training epoch through the template's data path against torchvision's MNIST + DataLoader + ToTensor
      feeding the same model through the same train_epoch;
  (e) the run table's logging cost per training step, and the time a refused duplicate launch takes.
The numbers depend on the machine: say which one ran them when you quote them.
"""
import argparse
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.config import load_config, without_keys  # noqa: E402  (the repository root must be on the path first)


def launch(command, cwd):
    """(wall seconds, exit code, output, peak RSS in MiB) of one process, recording in `cwd`'s results/."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   env=recording_in(cwd))
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: its peak resident memory
        wall = time.perf_counter() - started
        out.seek(0)
        return wall, os.waitstatus_to_exitcode(status), out.read(), usage.ru_maxrss / 1024


def recording_in(folder):
    """The environment of a main.py that records in `folder`'s results/ (RESULT_TABLE), not the checkout's."""
    return {**os.environ, "RESULT_TABLE": str(Path(folder) / "results" / "resultTable.db")}


def accuracy_of(output, what):
    found = re.search(r"test_accuracy ([0-9.]+)", output)
    if found is None:
        raise SystemExit(f"{what} printed no test accuracy:\n{output}")
    return float(found.group(1))


def end_to_end(config_path, data, seeds, device_flags, folder):
    """Per seed: (wall s, test accuracy, peak RSS MiB) of main.py on one config, recorded in `folder`."""
    rows = []
    for seed in seeds:
        wall, code, out, rss = launch([sys.executable, str(REPO / "main.py"), "--experiment=experiment1",
                                       f"--config={config_path}", f"--config.seed={seed}",
                                       f"--config.data.path={data}", "--verbose=0", *device_flags], folder)
        if code != 0:
            raise SystemExit(f"{config_path} seed {seed} failed:\n{out}")
        rows.append((wall, accuracy_of(out, config_path), rss))
        print(f"  {Path(config_path).name} seed {seed}: {wall:.1f} s, test accuracy {rows[-1][1]:.4f}, "
              f"peak RSS {rss:.0f} MiB", file=sys.stderr, flush=True)
    return rows


def bare(config_path, data, seeds, device_flags):
    """Per seed: (wall s, test accuracy) of bench/bare_loop.py on one config."""
    rows = []
    for seed in seeds:
        wall, code, out, _ = launch([sys.executable, str(REPO / "bench" / "bare_loop.py"), str(config_path), data,
                                     str(seed), *device_flags], REPO)
        if code != 0:
            raise SystemExit(f"the bare loop failed:\n{out}")
        rows.append((wall, accuracy_of(out, "the bare loop")))
        print(f"  bare loop seed {seed}: {wall:.1f} s, test accuracy {rows[-1][1]:.4f}", file=sys.stderr, flush=True)
    return rows


def breakdown(config_path, data, device_flags):
    """The Markdown table bench/breakdown.py prints for one default run."""
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as folder:
        _, code, out, _ = launch([sys.executable, str(REPO / "bench" / "breakdown.py"), "--experiment=experiment1",
                                  f"--config={config_path}", f"--config.data.path={data}", "--verbose=0",
                                  *device_flags], folder)
    if code != 0:
        raise SystemExit(f"the breakdown run failed:\n{out}")
    return out[out.index("| phase"):].strip()


def refused_duplicate(folder, config_path, data, seed, device_flags, repeats=5):
    """Median wall time of a launch refused as a duplicate of a run already in `folder`."""
    times = []
    for _ in range(repeats):
        wall, code, out, _ = launch([sys.executable, str(REPO / "main.py"), "--experiment=experiment1",
                                     f"--config={config_path}", f"--config.seed={seed}", f"--config.data.path={data}",
                                     "--verbose=0", *device_flags], folder)
        if code != 2 or "already has this config" not in out:
            raise SystemExit(f"expected a refusal, got exit code {code}:\n{out}")
        times.append(wall)
    return statistics.median(times)


def epoch_times(config, data, device):
    """(template epoch s, torchvision pipeline epoch s, steps per epoch) training the same model for one epoch."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from data.idx import MNIST
    from data.loaders import make_loaders, split_train_val
    from models.cnn import make_model
    from training.loop import train_epoch
    from training.tasks import Classification
    from training.optim import make_optimizer, make_scheduler

    def one_epoch(batches):
        torch.manual_seed(0)
        model = make_model(config, info, device)
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(batches))
        task = Classification(label_smoothing=config["training"]["label_smoothing"])
        return train_epoch(model, batches, optimizer, scheduler, task)["epoch_time"]

    train, _, _, info = make_loaders(config, device, seed=0)
    template = one_epoch(train)
    # The usual pipeline reads decompressed files, which torchvision expects; the shared folder stays untouched.
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (Path(data) / "MNIST" / "raw").glob("*.gz"):
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.Compose([
            transforms.ToTensor(), transforms.Normalize(MNIST.mean, MNIST.std)]))
        train_index, _ = split_train_val(len(dataset), config["data"]["val_size"], config["data"]["split_seed"])
        loader = DataLoader(Subset(dataset, train_index.tolist()), batch_size=config["data"]["batch_size"],
                            shuffle=True)
        usual = one_epoch(loader)
    return template, usual, len(train)


def logging_cost(calls=5000):
    """Milliseconds one Run.log_scalar costs, writes to the table included (amortised over its batched flushes)."""
    from utils.runtable.identity import RunIdentity
    from utils.runtable.registry import RunTable

    folder = Path(tempfile.mkdtemp(prefix="bench-log-"))
    table = RunTable(folder / "results" / "resultTable.db")
    run = table.start_run(RunIdentity("bench", "seed: 0\n", {}), config_path="-", command="bench", commit=None,
                          diff=None, debug=True)
    started = time.perf_counter()
    for step in range(calls):
        run.log_scalar("train/step_loss", 1.0 / (step + 1), step=step, epoch=0)
    run.flush()
    elapsed = time.perf_counter() - started
    run.finish({})
    shutil.rmtree(folder)
    return 1000 * elapsed / calls


def spread(values, unit="", scale=1.0, digits=1):
    """'median (min-max)' of `values`."""
    show = [value * scale for value in values]
    return (f"{statistics.median(show):.{digits}f}{unit} ({min(show):.{digits}f}-{max(show):.{digits}f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding MNIST/raw",
                        type=lambda path: str(Path(path).resolve()))  # the runs start in folders of their own
    parser.add_argument("--seeds", type=int, default=5, help="seeds per config for the end-to-end runs")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even where a GPU is available")
    args = parser.parse_args()
    device_flags = ["--cpu"] if args.cpu else []
    seeds = list(range(args.seeds))

    from utils.device import keep_freed_memory, pick_device, set_threads
    from utils.provenance import environment

    device = pick_device(force_cpu=args.cpu)
    keep_freed_memory()
    default_path, fast_path = REPO / "configs" / "config.yml", REPO / "configs" / "fast.yml"
    config = without_keys(load_config(default_path), set())
    config["data"]["path"] = args.data
    threads = set_threads(config["training"]["threads"])
    where = environment(device, threads)["device_name"]
    print(f"benchmarking on {device.type} ({where}), {threads} threads, {args.seeds} seeds", file=sys.stderr)

    folders = {name: Path(tempfile.mkdtemp(prefix=f"bench-{name}-")) for name in ("default", "fast")}
    default = end_to_end(default_path, args.data, seeds, device_flags, folders["default"])
    fast = end_to_end(fast_path, args.data, seeds, device_flags, folders["fast"])
    bare_default = bare(default_path, args.data, seeds, device_flags)
    refusal = refused_duplicate(folders["default"], default_path, args.data, seeds[0], device_flags)
    phases = breakdown(default_path, args.data, device_flags)
    template_epoch, usual_epoch, steps = epoch_times(config, args.data, device)
    log_ms = logging_cost()
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)

    step_ms = 1000 * template_epoch / steps
    per_step_ms = log_ms / config["logging"]["log_every"]
    ratios = [template[0] / loop[0] for template, loop in zip(default, bare_default)]
    print(f"\n| measure ({where}, {threads} threads; median of {args.seeds} seeds, min-max) | value |")
    print("|---|---|")
    print(f"| default config: test accuracy | {spread([r[1] for r in default], '%', 100, 2)} |")
    print(f"| default config: wall time, process start to test accuracy | {spread([r[0] for r in default], ' s')} |")
    print(f"| default config: peak resident memory | {spread([r[2] for r in default], ' MiB', digits=0)} |")
    print(f"| fast config: test accuracy | {spread([r[1] for r in fast], '%', 100, 2)} |")
    print(f"| fast config: wall time | {spread([r[0] for r in fast], ' s')} |")
    print(f"| fast config: peak resident memory | {spread([r[2] for r in fast], ' MiB', digits=0)} |")
    print(f"| default config, bare loop: wall time | {spread([r[0] for r in bare_default], ' s')} |")
    print(f"| default config, bare loop: test accuracy (last epoch) | "
          f"{spread([r[1] for r in bare_default], '%', 100, 2)} |")
    print(f"| template wall time / bare loop wall time, same seed | {spread(ratios, digits=3)} |")
    print(f"| one epoch, template data path (in-memory tensors, on-device augmentation) | {template_epoch:.1f} s |")
    print(f"| one epoch, torchvision MNIST + DataLoader + ToTensor, same model | {usual_epoch:.1f} s "
          f"({usual_epoch / template_epoch:.2f}x the template's) |")
    print(f"| training step (default config) | {step_ms:.1f} ms |")
    print(f"| run-table logging per step (one point every {config['logging']['log_every']} steps; {log_ms:.3f} ms a "
          f"point) | {per_step_ms:.4f} ms, {100 * per_step_ms / step_ms:.3f}% of the step |")
    print(f"| refused duplicate launch | {refusal:.2f} s |")
    print(f"\nOne default run, phase by phase:\n\n{phases}")


if __name__ == "__main__":
    main()
