"""The image-folder path on real data: MNIST written out as PNG files, trained in memory and streamed, against the
IDX path and against a plain torchvision ImageFolder + DataLoader loop; prints Markdown tables for bench/README.md.

    python bench/mnist_to_folder.py --data=../shared/data --out=/tmp/mnist-png
    python bench/folder_benchmark.py --data=../shared/data --folder=/tmp/mnist-png --seeds=3

Measures:
  (a) test accuracy and wall time of configs/config.yml over several seeds through the IDX files, the folder held in
      memory and the folder streamed by 2 worker processes (each path recorded in a results folder of its own);
  (b) one training epoch of the same model through each path and through torchvision's ImageFolder + DataLoader
      (2 workers, ToTensor + Normalize), with the same CPU threads, fed through the same train_epoch;
  (c) how long a refused duplicate launch takes on the folder once it is scanned.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchmark import accuracy_of, launch  # noqa: E402  (the repository root must be on the path first)
from utils.config import load_config, without_keys  # noqa: E402

PATHS = {  # name: the overrides that choose the path
    "IDX files (data.name=mnist)": lambda args: [f"--config.data.path={args.data}"],
    "folder, in memory": lambda args: ["--config.data.name=folder", f"--config.data.path={args.folder}"],
    "folder, streamed (2 workers)": lambda args: ["--config.data.name=folder", f"--config.data.path={args.folder}",
                                                  "--config.data.memory_limit_mb=0", "--config.data.workers=2"],
}


def accuracies(args):
    """{path: [(wall s, test accuracy)] per seed} of the default config."""
    rows = {}
    for name, overrides in PATHS.items():
        folder = Path(tempfile.mkdtemp(prefix="bench-folder-"))
        rows[name] = []
        for seed in range(args.seeds):
            wall, code, out, _ = launch([sys.executable, str(REPO / "main.py"), "--experiment=experiment1",
                                         f"--config={REPO / 'configs' / 'config.yml'}", f"--config.seed={seed}",
                                         "--verbose=0", *overrides(args)], folder)
            if code != 0:
                raise SystemExit(f"{name}, seed {seed} failed:\n{out}")
            rows[name].append((wall, accuracy_of(out, name)))
            print(f"  {name}, seed {seed}: {rows[name][-1][1]:.4f} in {wall:.1f} s", file=sys.stderr, flush=True)
        if name.startswith("folder, in memory"):
            refused = [launch([sys.executable, str(REPO / "main.py"), "--experiment=experiment1",
                               f"--config={REPO / 'configs' / 'config.yml'}", *overrides(args)], folder)[0]
                       for _ in range(5)]
            rows["refused duplicate"] = statistics.median(refused)
    return rows


def epoch_times(args):
    """{pipeline: seconds of one training epoch} of the default model, and the threads it trained with."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from data.loaders import make_loaders
    from models.cnn import make_model
    from training.loop import train_epoch
    from training.tasks import Classification
    from training.optim import make_optimizer, make_scheduler
    from utils.device import set_threads

    threads = set_threads(0, loader_workers=2)  # what a streamed run gets: the cores left by its 2 workers
    base = without_keys(load_config(REPO / "configs" / "config.yml"), set())

    def one_epoch(batches, info, config):
        torch.manual_seed(0)
        model = make_model(config, info, torch.device("cpu"))
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(batches))
        task = Classification(label_smoothing=config["training"]["label_smoothing"])
        return train_epoch(model, batches, optimizer, scheduler, task)["epoch_time"]

    times = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, overrides in PATHS.items():
            config = without_keys(load_config(REPO / "configs" / "config.yml"), set())
            for override in overrides(args):
                key, value = override[len("--config."):].split("=", 1)
                section, leaf = key.split(".")
                config[section][leaf] = int(value) if value.isdigit() else value
            train, _, _, info = make_loaders(config, torch.device("cpu"), seed=0, cache_dir=Path(cache))
            times[name] = one_epoch(train, info, config)
            print(f"  epoch, {name}: {times[name]:.1f} s", file=sys.stderr, flush=True)
        plain = datasets.ImageFolder(str(Path(args.folder) / "train"), transform=transforms.Compose([
            transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]))
        loader = DataLoader(plain, batch_size=base["data"]["batch_size"], shuffle=True, num_workers=2,
                            persistent_workers=True)
        times["torchvision ImageFolder + DataLoader (2 workers)"] = one_epoch(loader, info, base)
    return times, threads


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder holding MNIST/raw")
    parser.add_argument("--folder", required=True, help="MNIST as an image folder (bench/mnist_to_folder.py)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    args.data, args.folder = str(Path(args.data).resolve()), str(Path(args.folder).resolve())

    times, threads = epoch_times(args)
    print(f"\n| pipeline (one training epoch, default model, {threads} torch thread(s)) | seconds |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} |")

    rows = accuracies(args)
    refused = rows.pop("refused duplicate")
    print(f"\n| path (default config, seeds 0-{args.seeds - 1}) | test accuracy, median (min-max) | wall time, median |"
          f"\n|---|---|---|")
    for name, runs in rows.items():
        accs = [accuracy for _, accuracy in runs]
        print(f"| {name} | {100 * statistics.median(accs):.2f}% ({100 * min(accs):.2f}-{100 * max(accs):.2f}) | "
              f"{statistics.median(wall for wall, _ in runs):.1f} s |")
    print(f"\nrefused duplicate on the scanned folder: {refused:.2f} s (median of 5)")


if __name__ == "__main__":
    main(sys.argv[1:])
