"""--verify [RUNID ...]: prove that the code still computes what recorded runs computed, before every commit.

Each run is replayed from its recorded config and flags for its first epoch (or --steps=N steps) on this machine,
recording nothing, and every value it logs in that window is compared with the recorded one.
"""
import math
import tempfile

from modes.reproduce import tolerance_for
from utils.runtable.identity import EVALUATES
from modes.run import execute
from utils.errors import UserError
from utils.measures import is_timing
from utils.runtable.readers import DamagedRun, NotTemplateRun, newest_finished_runs, read_run
from utils.runtable.run import Replica


class EnoughSteps(BaseException):
    """The replay has logged every step it compares (a BaseException, so no experiment code swallows it)."""


class Replay(Replica):
    """A run that records nothing in the table: it keeps the points logged up to `last_step`, then stops the run."""

    def __init__(self, run_id, folder, last_step, measures):
        super().__init__(run_id, folder, measures=measures)
        self.last_step = last_step
        self.points = {}

    def log_scalar(self, tag, value, step, epoch):
        if step > self.last_step:
            raise EnoughSteps()
        self.points.setdefault(tag, []).append((step, float(value)))


def verify(launch):
    """Exit code: 0 when every replayed run matches its record, 1 when any differs (skipped runs do not count)."""
    launch.check_only_where_keys_overridden()
    path = launch.project.table.path
    if not path.exists():
        raise UserError(f"there is no run table at {path}, so no run to verify")
    run_ids = launch.args.verify or newest_finished_runs(path)
    if not run_ids:
        print("nothing to verify: the table holds no finished run")
        return 0
    differing, skipped = 0, 0
    for run_id in run_ids:
        try:
            recorded = read_run(path, run_id)
        except NotTemplateRun:
            print(f"run {run_id}: skipped: not recorded by this template's main.py (another program wrote it)")
            skipped += 1
            continue
        except DamagedRun as e:
            print(f"run {run_id}: skipped: {e}")
            skipped += 1
            continue
        matches, line = verify_run(launch, recorded)
        print(f"run {run_id} ({describe(recorded.identity)}): {line}", flush=True)
        differing += matches is False
        skipped += matches is None
    replayed = len(run_ids) - skipped
    runs = f"{replayed} replayed run{'s' if replayed != 1 else ''}"
    summary = f"{differing} of {runs} DIFFER from their record" if differing else f"all {runs} match their record"
    print(summary + (f" ({skipped} skipped)" if skipped else ""))
    return 1 if differing else 0


def describe(identity):
    return " ".join(filter(None, [identity.experiment, identity.cli, identity.comment and repr(identity.comment)]))


def verify_run(launch, recorded):
    """(True / False / None for skipped, the line that says so) for one recorded run."""
    if recorded.identity.flags.get(EVALUATES) is not None:
        return None, f"skipped: an evaluation of run {recorded.identity.flags[EVALUATES]}, it trained nothing"
    tolerance = tolerance_for(recorded.identity, launch.args.tolerance)
    world_size = recorded.identity.flags.get("world_size", 1)
    if world_size > 1:
        return None, f"skipped: it ran on {world_size} torchrun processes, a replay here has one"
    device_type = current_device_type(recorded.identity.flags.get("cpu", False))
    recorded_device = recorded.environment.get("device_type", device_type)
    if recorded_device != device_type and not launch.args.tolerance:
        return None, (f"skipped: recorded on {recorded_device}, this replay would run on {device_type}, whose kernels "
                      f"round differently (compare anyway with --tolerance=X)")
    last_step = launch.args.steps or recorded.epoch_ends.get(1)
    if last_step is None:
        return None, "skipped: it logged nothing in its first epoch"
    try:
        identity = launch.relocated(recorded.identity)
    except UserError as e:
        return False, f"cannot replay: {e}"
    if recorded.identity.data and identity.data != recorded.identity.data:
        return False, (f"DIFFERS: the data is not what it was trained on (fingerprint {identity.data[:12]}, recorded "
                       f"{recorded.identity.data[:12]}); point --config.data.path at its data")
    with tempfile.TemporaryDirectory(prefix="verify-") as folder:
        replay = Replay(recorded.run_id, folder, last_step, identity.measures)
        try:
            execute(launch.project, replay, identity, {**launch.output_flags(), "verbose": 0}, announce=False,
                    threads=recorded.threads)
        except EnoughSteps:
            pass
    return compare_window(recorded.scalars, replay.points, last_step, tolerance)


def current_device_type(force_cpu):
    from utils.device import pick_device

    return pick_device(force_cpu).type


def compare_window(recorded, replayed, last_step, tolerance):
    """(matches, line) comparing every recorded point up to `last_step` with the replay's, timings left out."""
    expected = {(tag, step): value for tag, points in recorded.items() if not is_timing(tag)
                for step, value in points if step <= last_step}
    got = {(tag, step): value for tag, points in replayed.items() if not is_timing(tag) for step, value in points}
    differences = []
    for key in sorted(expected.keys() | got.keys(), key=lambda key: (key[1], key[0])):
        old, new = expected.get(key), got.get(key)
        if old is None or new is None or not _close(old, new, tolerance):
            differences.append((key, old, new))
    window = f"{len(expected)} value{'s' if len(expected) != 1 else ''} of steps 1-{last_step}"
    if not differences:
        return True, f"matches ({window}{'' if tolerance == 0 else f', tolerance {tolerance:g}'})"
    (tag, step), old, new = differences[0]
    return False, (f"DIFFERS first at {tag} step {step}: recorded {_show(old)}, now {_show(new)} "
                   f"({len(differences)} of {window} differ)")


def _close(a, b, tolerance):
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= tolerance


def _show(value):
    return "nothing" if value is None else f"{value:.10g}"
