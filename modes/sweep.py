"""--sweep: run every combination of comma-separated override values, each a run of its own.

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
from utils.runtable.readers import read_run


def sweep(launch):
    """Exit code of the sweep: 0 when every combination finished, 1 when one crashed, 130/143 when stopped."""
    if torchrun_world_size() > 1:
        raise UserError("--sweep runs its combinations one after another in one process; launch it without torchrun")
    launch.check_experiment_takes_flags()
    combinations = sweep_combinations(launch.overrides)
    identities = [launch.identity(overrides=combination) for combination in combinations]  # every value checked first
    for identity in identities:
        launch.check_config(identity)
    launch.warn_of_new_keys()
    keys = ", ".join(key for key, _ in launch.overrides)
    count = f"{len(combinations)} combination{'s' if len(combinations) > 1 else ''}"
    print(f"sweep: {count} of {keys}" if keys else f"sweep: {count}")
    table, rows, code = launch.table, [], 0
    for number, (combination, identity) in enumerate(zip(combinations, identities), start=1):
        label = " ".join(f"{key}={value}" for key, value in combination) or "(the config as it is)"
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
    return code


def sweep_combinations(overrides):
    """Every combination of the overrides' comma-separated values: lists of (dotted key, value text)."""
    axes = [[(key, value) for value in sweep_values(text)] for key, text in overrides]
    return [list(combination) for combination in itertools.product(*axes)]


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
