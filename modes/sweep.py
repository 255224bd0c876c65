"""--sweep and --seeds: run every combination of comma-separated override values, and every configuration with
several seeds, each a run of its own.

Finished combinations are skipped, so the same command resumes a sweep that crashed or was stopped; failed ones run
again. It ends with a table of every combination, its run ID, status and results.
"""
import itertools
import sys
import traceback

from modes.launch import command_of, torchrun_world_size
from modes.run import execute, format_value
from utils.config import OVERRIDE_PREFIX, sweep_values
from utils.errors import UserError
from utils.provenance import git_commit, git_diff
from utils.runtable.identity import SEED_KEY
from utils.runtable.readers import read_run


def sweep(launch):
    """Exit code of the sweep: 0 when every combination finished, 1 when one crashed, 130/143 when stopped."""
    if torchrun_world_size() > 1:
        raise UserError("--sweep runs its combinations one after another in one process; launch it without torchrun")
    launch.check_experiment_takes_flags()
    combinations = with_seeds(launch, sweep_combinations(launch.overrides, split=launch.args.sweep))
    identities = [launch.identity(overrides=combination) for combination in combinations]  # every value checked first
    for identity in identities:
        launch.check_config(identity)
    launch.warn_of_new_keys()
    print(sweep_header(launch))
    table, rows, code = launch.table, [], 0
    for number, (combination, identity) in enumerate(zip(combinations, identities), start=1):
        label = " ".join(f"{key}={value}" for key, value in combination
                         if key not in launch.where_keys) or "(the config as it is)"
        found = table.find_run(identity)
        if found is not None:
            print(f"[{number}/{len(combinations)}] {label}: skipped, {found.status} as run {found.run_id}")
            results = read_run(table.path, found.run_id).results if found.status == "finished" else {}
            rows.append((label, found.run_id, found.status, results))
            continue
        print(f"[{number}/{len(combinations)}] {label}", flush=True)
        run = table.start_run(identity, config_path=launch.args.config, command=combination_command(launch, combination),
                              commit=git_commit(launch.code_dir), diff=git_diff(launch.code_dir))
        try:
            results, stopped = execute(launch, run, identity, launch.args.verbose)
        except UserError:  # a mistake every other combination would repeat: stop here
            rows.append((label, run.id, run.status, {}))
            print_sweep_table(rows)
            raise
        except Exception:  # a crash of one combination: show it, keep it failed in the table, go on with the next
            traceback.print_exc()
            results, stopped, code = {}, 0, 1
        rows.append((label, run.id, run.status, results or {}))
        if stopped:
            print_sweep_table(rows)
            print("the sweep stopped; the same command resumes it, skipping the finished combinations",
                  file=sys.stderr)
            return stopped
    print_sweep_table(rows)
    if launch.args.seeds is not None:
        print("compare the groups of seeds with: python main.py --compare "
              + " ".join(str(run_id) for _, run_id, status, _ in rows if status == "finished"))
    return code


def sweep_combinations(overrides, split=True):
    """Every combination of the overrides' comma-separated values (`split`), or the overrides as they are: lists of
    (dotted key, value text)."""
    axes = [[(key, value) for value in (sweep_values(text) if split else [text])] for key, text in overrides]
    return [list(combination) for combination in itertools.product(*axes)]


def with_seeds(launch, combinations):
    """Each combination once per seed of --seeds: N seeds from the combination's own seed on, or the seeds listed."""
    text = launch.args.seeds
    if text is None:
        return combinations
    if any(key == SEED_KEY for key, _ in launch.overrides) and launch.args.sweep:
        raise UserError(f"--seeds runs several seeds of every combination; drop the --config.{SEED_KEY} values")
    values = sweep_values(text)
    if not all(value.strip().lstrip("-").isdigit() for value in values) or (len(values) == 1 and int(values[0]) < 1):
        raise UserError(f"--seeds takes a number of seeds (--seeds=5) or the seeds themselves (--seeds=0,3,7), "
                        f"got {text!r}")
    seeded = []
    for combination in combinations:
        if len(values) == 1:
            first = launch.config(combination).get(SEED_KEY, 0)
            seeds = range(first, first + int(values[0]))
        else:
            seeds = [int(value) for value in values]
        seeded += [[*[(k, v) for k, v in combination if k != SEED_KEY], (SEED_KEY, str(seed))] for seed in seeds]
    return seeded


def sweep_header(launch):
    """What the command runs: its combinations, and how many seeds of each."""
    combinations = sweep_combinations(launch.overrides, split=launch.args.sweep)
    seeds = with_seeds(launch, combinations[:1])
    each = f", each with {len(seeds)} seeds ({len(seeds) * len(combinations)} runs)" if launch.args.seeds else ""
    if not launch.args.sweep:
        return f"seeds: {len(seeds)} runs, seeds {', '.join(value for *_, (_, value) in seeds)}"
    keys = ", ".join(key for key, _ in launch.overrides)
    count = f"{len(combinations)} combination{'s' if len(combinations) > 1 else ''}"
    return (f"sweep: {count} of {keys}" if keys else f"sweep: {count}") + each


def combination_command(launch, combination):
    """The single command that runs one combination, as recorded with its run."""
    fixed = [arg for arg in launch.argv if arg != "--sweep" and not arg.startswith(OVERRIDE_PREFIX)]
    return command_of([*fixed, *(f"{OVERRIDE_PREFIX}{key}={value}" for key, value in combination)])


def print_sweep_table(rows):
    names = sorted({name for *_, results in rows for name in results})
    header = ["combination", "run", "status", *names]
    lines = [header] + [[label, str(run_id), status, *(format_value(results[n]) if n in results else "" for n in names)]
                        for label, run_id, status, results in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
