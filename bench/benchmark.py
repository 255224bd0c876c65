"""Performance benchmark of the template on real MNIST; prints a Markdown table for the README.

    python bench/benchmark.py --data=../shared/data --seeds=3

Measures, in one run:
  (a) wall time from process start to the printed test accuracy, and that accuracy, for configs/config.yml and
      configs/fast.yml over several seeds (each launch a fresh process in a fresh folder: imports, data loading and
      creating the run table included);
  (b) one training epoch through the template's data path against torchvision.datasets.MNIST + DataLoader +
      per-sample ToTensor feeding the same model, as a ratio;
  (c) the run table's logging cost per training step, in ms and as a share of the step;
  (d) the time a refused duplicate launch takes;
  (e) the peak resident memory of the default run.
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

from utils.config import load_config  # noqa: E402  (the repository root must be on the path first)


def launch(args, cwd):
    """(wall seconds, exit code, stdout, peak RSS in MiB) of one `main.py` process."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: its peak resident memory
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return wall, process.returncode, out.read(), usage.ru_maxrss / 1024


def end_to_end(config_path, data, seeds, device_flags):
    """Per seed: (wall s, test accuracy, peak RSS MiB, folder of the run) for one config."""
    rows = []
    for seed in seeds:
        folder = Path(tempfile.mkdtemp(prefix="bench-"))
        wall, code, out, rss = launch(["--experiment=experiment1", f"--config={config_path}", f"--config.seed={seed}",
                                       f"--config.data.path={data}", "--verbose=0", *device_flags], folder)
        if code != 0:
            raise SystemExit(f"{config_path} seed {seed} failed:\n{out}")
        accuracy = float(re.search(r"test_accuracy ([0-9.]+)", out).group(1))
        print(f"  {Path(config_path).name} seed {seed}: {wall:.1f} s, test accuracy {accuracy:.4f}, "
              f"peak RSS {rss:.0f} MiB", file=sys.stderr, flush=True)
        rows.append((wall, accuracy, rss, folder))
    return rows


def refused_duplicate(folder, config_path, data, seed, device_flags, repeats=5):
    """Median wall time of a launch refused as a duplicate of the run already in `folder`."""
    times = []
    for _ in range(repeats):
        wall, code, out, _ = launch(["--experiment=experiment1", f"--config={config_path}", f"--config.seed={seed}",
                                     f"--config.data.path={data}", "--verbose=0", *device_flags], folder)
        if code != 2 or "already has this config" not in out:
            raise SystemExit(f"expected a refusal, got exit code {code}:\n{out}")
        times.append(wall)
    return statistics.median(times)


def epoch_times(config, data, device):
    """(template epoch s, torchvision pipeline epoch s, steps per epoch) training the same model for one epoch."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from data.mnist import MEAN, STD, make_loaders, split_train_val
    from models.cnn import make_model
    from training.loop import train_epoch
    from training.optim import make_optimizer, make_scheduler

    def fresh(steps_per_epoch):
        torch.manual_seed(0)
        model = make_model(config, device)
        optimizer = make_optimizer(model, config)
        return model, optimizer, make_scheduler(optimizer, config, steps_per_epoch)

    train, _, _ = make_loaders(config, device, seed=0)
    model, optimizer, scheduler = fresh(len(train))
    started = time.perf_counter()
    train_epoch(model, train, optimizer, scheduler, label_smoothing=config["training"]["label_smoothing"],
                log_every=config["logging"]["log_every"])
    template = time.perf_counter() - started

    # The usual pipeline reads decompressed files, which torchvision expects; the shared folder stays untouched.
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (Path(data) / "MNIST" / "raw").glob("*.gz"):
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.Compose([
            transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]))
        train_index, _ = split_train_val(len(dataset), config["data"]["val_size"], config["data"]["split_seed"])
        loader = DataLoader(Subset(dataset, train_index.tolist()), batch_size=config["data"]["batch_size"],
                            shuffle=True)
        model, optimizer, scheduler = fresh(len(loader))
        memory_format = torch.channels_last if config["model"]["channels_last"] else torch.contiguous_format
        batches = ((images.to(device).contiguous(memory_format=memory_format), labels.to(device))
                   for images, labels in loader)
        started = time.perf_counter()
        train_epoch(model, batches, optimizer, scheduler, label_smoothing=config["training"]["label_smoothing"],
                    log_every=config["logging"]["log_every"])
        usual = time.perf_counter() - started
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding MNIST/raw")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per config for the end-to-end runs")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even where a GPU is available")
    args = parser.parse_args()
    device_flags = ["--cpu"] if args.cpu else []
    seeds = list(range(args.seeds))

    from utils.device import keep_freed_memory, pick_device, set_threads
    from utils.provenance import environment

    device = pick_device(force_cpu=args.cpu)
    keep_freed_memory()
    config = load_config(REPO / "configs" / "config.yml")
    config["data"]["path"] = args.data
    threads = set_threads(config["training"]["threads"])
    where = environment(device, threads)["device_name"]
    print(f"benchmarking on {device.type} ({where}), {threads} threads, {args.seeds} seeds", file=sys.stderr)

    default = end_to_end(REPO / "configs" / "config.yml", args.data, seeds, device_flags)
    fast = end_to_end(REPO / "configs" / "fast.yml", args.data, seeds, device_flags)
    refusal = refused_duplicate(default[0][3], REPO / "configs" / "config.yml", args.data, seeds[0], device_flags)
    template_epoch, usual_epoch, steps = epoch_times(config, args.data, device)
    log_ms = logging_cost()
    for *_, folder in default + fast:
        shutil.rmtree(folder, ignore_errors=True)

    step_ms = 1000 * template_epoch / steps
    log_every = config["logging"]["log_every"]
    per_step_ms = log_ms / log_every

    def summary(rows):
        walls, accuracies = [r[0] for r in rows], [r[1] for r in rows]
        return (f"{100 * statistics.median(accuracies):.2f}% ({100 * min(accuracies):.2f}-{100 * max(accuracies):.2f})",
                f"{statistics.median(walls):.1f} s ({min(walls):.1f}-{max(walls):.1f})")

    print(f"| measure ({where}, {threads} threads; median of {args.seeds} seeds, min-max) | value |")
    print("|---|---|")
    accuracy, wall = summary(default)
    print(f"| default config: test accuracy | {accuracy} |")
    print(f"| default config: wall time, process start to test accuracy | {wall} |")
    accuracy, wall = summary(fast)
    print(f"| fast config: test accuracy | {accuracy} |")
    print(f"| fast config: wall time | {wall} |")
    print(f"| one epoch, template data path (in-memory tensors, on-device augmentation) | {template_epoch:.1f} s |")
    print(f"| one epoch, torchvision MNIST + DataLoader + ToTensor, same model | {usual_epoch:.1f} s "
          f"({usual_epoch / template_epoch:.2f}x the template's) |")
    print(f"| training step (default config) | {step_ms:.1f} ms |")
    print(f"| run-table logging per step (one point every {log_every} steps; {log_ms:.3f} ms a point) | "
          f"{per_step_ms:.4f} ms, {100 * per_step_ms / step_ms:.3f}% of the step |")
    print(f"| refused duplicate launch | {refusal:.2f} s |")
    print(f"| peak resident memory, default config | {max(r[2] for r in default):.0f} MiB |")


if __name__ == "__main__":
    main()
