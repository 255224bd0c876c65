"""--reproduce=RUNID: run a recorded run again as debug run -1, and compare every result and curve with the record.

Also the comparison itself: results and curves side by side, and what changed around them (code, versions, device).
"""
import json
import math
import sys

from modes.launch import command_of
from modes.resume import CODE_TEXT, check_world_size, refuse_evaluation
from modes.run import NONDETERMINISTIC_TOLERANCE, run_registered
from utils.config import load_config_text
from utils.measures import is_timing
from utils.provenance import git_commit, git_diff
from utils.runtable.readers import DEBUG_RUN_ID, read_run, run_text
from utils.tables import table_lines

ENVIRONMENT_KEYS = ("python", "torch", "torchvision", "deepboard", "numpy", "device_type", "device_name", "cuda",
                    "cudnn", "threads")


def reproduce(launch):
    """Exit code of re-running run `--reproduce`: 0 when every value matches, 1 when any differs."""
    project = launch.project
    table = project.table
    recorded = read_run(table.path, launch.args.reproduce)
    refuse_evaluation(recorded.identity, recorded.run_id, "reproduce")
    identity = launch.relocated(recorded.identity)  # the data may lie elsewhere now: --config.data.path=DIR

    def register(world_size):
        check_world_size(recorded.identity, recorded.run_id, world_size, "--reproduce")
        project.find_experiment(recorded.identity.experiment)
        run = table.start_run(identity, config_path=f"(run {recorded.run_id})", command=command_of(launch.argv),
                              commit=git_commit(project.code_dir), diff=git_diff(project.code_dir), debug=True)
        return run, identity

    results, code, run = run_registered(project, register, launch.output_flags(),
                                        cpu=identity.flags.get("cpu", False), threads=recorded.threads)
    if results is None or run is None:  # failed, or a torchrun rank other than 0
        return code
    new = read_run(table.path, DEBUG_RUN_ID)
    for line in provenance_warnings(recorded, new.commit, new.diff, new.environment, identity.data):
        print(line, file=sys.stderr)
    versions = run_text(table.path, recorded.run_id, CODE_TEXT)  # one entry a version, once a resume changed it
    if versions:
        print(f"warning: run {recorded.run_id} ran with {len(json.loads(versions))} versions of the code (it was "
              f"resumed with other code; its text 'code' lists them): this replay runs one", file=sys.stderr)
    tolerance = tolerance_for(recorded.identity, launch.args.tolerance)
    if launch.args.tolerance is None and tolerance:
        print(f"note: run {recorded.run_id} was recorded with training.deterministic: false, so it is not "
              f"bit-reproducible: values within {tolerance:g} of each other count as the same (--tolerance=X to "
              f"choose)", file=sys.stderr)
    lines, differing = compare_runs(recorded, new, tolerance)
    print("\n".join(lines))
    if differing:
        print(f"run {recorded.run_id} NOT reproduced: {differing} of {len(lines) - 1} values differ "
              f"(tolerance {tolerance:g}; timings are not compared)")
        return 1
    print(f"run {recorded.run_id} reproduced: all {len(lines) - 1} results and curves match "
          f"(tolerance {tolerance:g}; timings are not compared)")
    return 0


def tolerance_for(identity, asked):
    """The tolerance of a comparison with the recorded run of `identity`: the one asked for (--tolerance), else 0, or
    NONDETERMINISTIC_TOLERANCE for a run recorded with training.deterministic: false (not bit-reproducible)."""
    if asked is not None:
        return asked
    training = (load_config_text(identity.config_text) or {}).get("training")
    deterministic = training.get("deterministic", True) if isinstance(training, dict) else True
    return NONDETERMINISTIC_TOLERANCE if deterministic is False else 0.0


def compare_runs(recorded, new, tolerance=0.0):
    """(report lines, number of values that differ) between two RecordedRuns, timings left out.

    A number differs when it is further than `tolerance` from its recorded value; a curve differs when any of its
    points does, or when it has other steps.
    """
    rows, differing = [("", f"run {recorded.run_id}", f"run {new.run_id}", "")], 0
    measures = recorded.identity.measures
    for name in measures.ordered(set(recorded.results) | set(new.results)):
        if is_timing(name):
            continue
        old, now = recorded.results.get(name), new.results.get(name)
        verdict = _verdict([old], [now], tolerance)
        differing += verdict != "same"
        rows.append((name, _show(old), _show(now), verdict))
    for tag in measures.ordered(set(recorded.scalars) | set(new.scalars)):
        if is_timing(tag):
            continue
        old, now = recorded.scalars.get(tag, []), new.scalars.get(tag, [])
        if [step for step, _ in old] != [step for step, _ in now]:
            verdict = f"DIFFERS: steps {_steps(old)} vs {_steps(now)}"
        else:
            verdict = _verdict([v for _, v in old], [v for _, v in now], tolerance)
        differing += verdict != "same"
        rows.append((f"{tag} ({len(old)} points)", _curve(old), _curve(now), verdict))
    return table_lines(rows), differing


def provenance_warnings(recorded, commit, diff, environment, data=None):
    """Lines warning where the code, data or environment of a re-run differs from what the recorded run had."""
    warnings = []
    if recorded.identity.data and data != recorded.identity.data:
        warnings.append(f"warning: the data is not what run {recorded.run_id} was trained on (fingerprint "
                        f"{(data or 'none')[:12]}, recorded {recorded.identity.data[:12]})")
    if recorded.commit != commit:
        warnings.append(f"warning: run {recorded.run_id} was recorded at commit {recorded.commit or 'none'}, "
                        f"the checkout is at {commit or 'none'}")
    if (recorded.diff or "") != (diff or ""):
        warnings.append(f"warning: uncommitted changes differ from those recorded with run {recorded.run_id} "
                        f"(see its diff in deepboard)")
    for key in ENVIRONMENT_KEYS:
        old, now = recorded.environment.get(key), environment.get(key)
        if key in recorded.environment and old != now:
            warnings.append(f"warning: {key} was {old}, is now {now}; results may differ for that reason alone")
    return warnings


def _verdict(old_values, new_values, tolerance):
    gaps = [_gap(a, b) for a, b in zip(old_values, new_values)]
    if all(gap <= tolerance for gap in gaps):
        return "same"
    worst = max(gaps)
    count = sum(gap > tolerance for gap in gaps)
    where = f"{count} of {len(gaps)} points, " if len(gaps) > 1 else ""
    return f"DIFFERS ({where}max gap {worst:.3g})"


def _gap(a, b):
    """Absolute difference of two recorded values; infinite when they cannot be compared as numbers and differ."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        gap = abs(a - b)
        return math.inf if math.isnan(gap) else gap
    return 0.0 if a == b else math.inf


def _show(value):
    return "missing" if value is None else f"{value:.10g}" if isinstance(value, float) else str(value)


def _curve(points):
    return "missing" if not points else f"last {points[-1][1]:.10g}"


def _steps(points):
    return f"{points[0][0]}..{points[-1][0]} ({len(points)})" if points else "none"
