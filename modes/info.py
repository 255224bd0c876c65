"""--list and --print-config: look at the experiments, datasets and configs without touching the run table."""
from data.registry import DATASETS, find_dataset
from utils.config import apply_overrides, dump_config, load_config


def list_experiments(launch):
    """Print the registered experiments (name and the first line of the lab book) and the registered datasets."""
    print("experiments:")
    for name in launch.project.experiments:
        lab_book = launch.project.code_dir / "experiments" / f"{name}.md"
        first = (lab_book.read_text(encoding="utf-8").splitlines()[0].lstrip("# ") if lab_book.exists()
                 else "(no lab book)")
        print(f"  {name:20s} {first}")
    print("datasets (--config.data.name=NAME):")
    for name in DATASETS:
        print(f"  {name:20s} {find_dataset(name).summary}")
    return 0


def print_config(launch):
    """Print the merged config (the file and its overrides)."""
    print(dump_config(apply_overrides(load_config(launch.args.config), launch.overrides)), end="")
    return 0
