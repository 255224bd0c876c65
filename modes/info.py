"""--list and --print-config: look at the experiments and configs without touching the run table."""
from utils.config import apply_overrides, dump_config, load_config


def list_experiments(launch):
    """Print one line per registered experiment: its name and the first line of its lab book."""
    for name in launch.experiments:
        lab_book = launch.code_dir / "experiments" / f"{name}.md"
        first = lab_book.read_text().splitlines()[0].lstrip("# ") if lab_book.exists() else "(no lab book)"
        print(f"{name:20s} {first}")
    return 0


def print_config(launch):
    """Print the merged config (the file and its overrides), as a launch would record it."""
    print(dump_config(apply_overrides(load_config(launch.args.config), launch.overrides)), end="")
    return 0
