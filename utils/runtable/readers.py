"""Reading the run table: recorded runs for --reproduce and friends, and pandas frames for notebooks.

Everything here opens the table read-only with sqlite3 and never builds a deepboard writer: deepboard's
`ResultTable.load_run` returns a LogWriter that hooks `sys.excepthook` and marks the run failed when the reading
script later crashes. Reading can never change the table.
"""
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.config import load_config_text
from utils.errors import UserError
from utils.measures import Measures, recorded_measures
from utils.output import OUTPUT_LOG
from utils.runtable.identity import SEED_KEY, RunIdentity, group_hash
from utils.runtable.schema import connect, side_columns

DEBUG_RUN_ID = -1
SAME_DIFF_AS = "(the same uncommitted changes as run "  # how a run names the run that holds its long diff


def same_diff_as(run_id, diff_hash):
    """What a run's diff column holds when run `run_id` holds the same long diff (see registry._stored_diff)."""
    return f"{SAME_DIFF_AS}{run_id} (sha256 {diff_hash})"


def as_recorded(text, escaped):
    """A config, command line or diff as the run had it, from what the table holds: with &, < and > escaped for
    deepboard's pages when `escaped` (see registry.shown_as_text)."""
    return html.unescape(text) if escaped and text else text


def diff_holder(diff):
    """The run ID that a diff column written by same_diff_as names, or None for a diff held whole."""
    return int(diff[len(SAME_DIFF_AS):].split()[0]) if diff and diff.startswith(SAME_DIFF_AS) else None


@dataclass
class RecordedRun:
    """What the table holds of one run: enough to run it again and to compare the outcome."""
    run_id: int
    status: str
    hidden: bool
    identity: RunIdentity
    commit: str
    diff: str
    environment: dict  # versions, device, host (see utils.provenance.environment)
    results: dict  # final results, hparams excluded
    scalars: dict  # tag -> [(step, value), ...] in step order
    epoch_ends: dict  # epoch -> the last step at which the run logged a point of that epoch
    threads: int | None  # the CPU threads it computed with


class NotTemplateRun(UserError):
    """A run in the table that this template's main.py did not record (deepboard's API, another script)."""


class DamagedRun(UserError):
    """A run whose record cannot be read (its flags, measures or config not valid, a text where a number belongs):
    it is named and left as it is; the rest of the table still reads."""

    def __init__(self, path, run_id, what):
        super().__init__(f"run {run_id} in {path} is damaged ({what}); it is left as it is, the rest of the table "
                         f"still reads")


@dataclass
class RunRow:
    """A run's row and its identity, as registering and resuming need them."""
    run_id: int
    status: str
    hidden: bool
    commit: str
    diff: str
    identity: RunIdentity
    threads: int | None  # the CPU threads it computed with (recorded as an hparam)


def read_row(db, path, run_id):
    """The RunRow of `run_id` on an open connection; a UserError if it is missing or was not recorded by main.py."""
    columns = side_columns(db)
    side = [f"L.{name}" if name in columns else "NULL"
            for name in ("flags", "data_fingerprint", "measures", "shown_escaped")]
    row = db.execute(
        f"SELECT E.experiment, E.status, E.hidden, E.comment, E.commit_hash, E.diff, E.config_hash, C.file_content, "
        f"{', '.join(side)} FROM Experiments E "
        + ("LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id " if columns else "")
        + "LEFT JOIN ConfigFile C ON C.run_id = E.run_id WHERE E.run_id=?", (run_id,)).fetchone()
    if row is None:
        raise UserError(f"there is no run {run_id} in {path}; see the Run ID column of deepboard")
    experiment, status, hidden, comment, commit, diff, config_hash, config_text, flags, data, measures, escaped = row
    config_text, diff = as_recorded(config_text, escaped), as_recorded(diff, escaped)
    holder_id = diff_holder(diff)
    if holder_id is not None:  # stored once, in an earlier run
        holder = db.execute("SELECT E.diff, " + ("L.shown_escaped" if "shown_escaped" in columns else "NULL")
                            + " FROM Experiments E LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id "
                              "WHERE E.run_id=?", (holder_id,)).fetchone()
        diff = as_recorded(*holder) if holder else diff
    if flags is None or config_text is None:
        raise NotTemplateRun(f"run {run_id} was not recorded by this template's main.py (another program wrote it "
                             f"into the table); its config and flags are unknown")
    flags = _readable(path, run_id, "flags", flags, json.loads, dict)
    _readable(path, run_id, "config", config_text, load_config_text, dict)
    identity = RunIdentity(experiment, config_text, flags, comment, data=data, recorded_hash=config_hash,
                           measures=_readable(path, run_id, "measures", measures,
                                              lambda text: recorded_measures(text, flags), Measures))
    threads = db.execute("SELECT value FROM Results WHERE run_id=? AND metric='threads' AND is_hparam=1",
                         (run_id,)).fetchone()
    return RunRow(run_id, status, bool(hidden), commit, diff, identity, threads[0] if threads else None)


def _readable(path, run_id, name, text, parse, kind):
    """`parse(text)`, or a DamagedRun naming the run and what of it cannot be read (it fails, or is not a `kind`)."""
    try:
        value = parse(text)
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        value = None
    if not isinstance(value, kind):
        raise DamagedRun(path, run_id, f"its {name} cannot be read")
    return value


def read_row_of(path, run_id):
    """The RunRow of `run_id` in the table at `path` (its identity and status, without its points)."""
    with _open(path) as db:
        return read_row(db, path, run_id)


def run_owners(path, run_ids):
    """{run ID: RunIdentity.owner, or None when the table has no such run of main.py's} for `run_ids`."""
    if not Path(path).exists():
        return dict.fromkeys(run_ids)
    owners = {}
    with _open(path) as db:
        for run_id in run_ids:
            try:
                owners[run_id] = read_row(db, path, run_id).identity.owner
            except UserError:  # no such run, or one another program wrote
                owners[run_id] = None
    return owners


def _is_number(value):
    """Whether a recorded value is a number (None: a NaN, which SQLite stores as NULL), not a text or bytes."""
    return value is None or isinstance(value, int | float)


def _number(path, run_id, name, value):
    """A recorded value: SQLite stores a NaN (a diverged run's) as NULL, read back as the NaN it was; anything but a
    number is a DamagedRun."""
    if not _is_number(value):
        shown = f"{len(value)} bytes" if isinstance(value, bytes) else repr(str(value)[:40])
        raise DamagedRun(path, run_id, f"its {name} is {shown}, not a number")
    return math.nan if value is None else value


def read_run(path, run_id):
    """The RecordedRun of `run_id` in the table at `path`, or a UserError if there is no such run."""
    with _open(path) as db:
        row = read_row(db, path, run_id)
        environment = db.execute("SELECT fragment FROM Fragments WHERE run_id=? AND tag='environment' "
                                 "ORDER BY id_ DESC LIMIT 1", (run_id,)).fetchone()
        results = {metric: _number(path, run_id, metric, value) for metric, value in db.execute(
            "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", (run_id,))}
        scalars = {}
        for split, label, step, value in db.execute(
                "SELECT split, label, step, value FROM Logs WHERE run_id=? ORDER BY split, label, step, id_",
                (run_id,)):
            tag = f"{split}/{label}" if split else label
            scalars.setdefault(tag, []).append((step, _number(path, run_id, f"{tag} at step {step}", value)))
        epoch_ends = dict(db.execute("SELECT epoch, MAX(step) FROM Logs WHERE run_id=? GROUP BY epoch", (run_id,)))
    return RecordedRun(row.run_id, row.status, row.hidden, row.identity, row.commit, row.diff,
                       json.loads(environment[0]) if environment else {}, results, scalars, epoch_ends, row.threads)


DEFAULT_TABLE_NAME = "resultTable.db"


def table_files(path):
    """The folder that holds what the table at `path` keeps besides itself (its runs' folders, its search journal, its
    data caches): the table's own folder for a table named resultTable.db (results/N/), a folder named after any other
    table beside it (results/other_files/N/ for results/other.db), so that two tables in one folder share nothing."""
    path = Path(path)
    return path.parent if path.name == DEFAULT_TABLE_NAME else path.parent / f"{path.stem}_files"


def run_folder(path, run_id):
    """The folder of run `run_id`'s checkpoints and output, among the files of the table at `path`."""
    return table_files(path) / ("debug" if run_id == DEBUG_RUN_ID else str(run_id))


def run_output(path, run_id):
    """Everything run `run_id` of the table at `path` printed, every launch of it (its resumes) included: its
    folder's output.log, else the text the table kept of it (its last part), else ''."""
    log = run_folder(path, run_id) / OUTPUT_LOG
    if log.is_file():
        return log.read_text(encoding="utf-8", errors="replace")
    with _open(path) as db:
        kept = db.execute("SELECT fragment FROM Fragments WHERE run_id=? AND tag='output' ORDER BY id_ DESC LIMIT 1",
                          (run_id,)).fetchone()
    return kept[0] if kept else ""


def newest_finished_runs(path):
    """The run IDs of the newest finished, visible training run of every distinct identity in the table, in order
    (evaluations aside: they trained nothing)."""
    with _open(path) as db:
        evaluations = _evaluation_ids(db)
        return [run_id for (run_id,) in db.execute(
            "SELECT MAX(run_id) FROM Experiments WHERE status='finished' AND hidden=0 AND run_id>0 "
            "GROUP BY experiment, config_hash, cli, comment ORDER BY 1") if run_id not in evaluations]


def _evaluation_ids(db):
    """The IDs of the rows that are evaluations of a run (--evaluate), not training runs."""
    if "evaluates" not in side_columns(db):
        return set()
    return {run_id for (run_id,) in db.execute("SELECT run_id FROM TemplateLaunch WHERE evaluates IS NOT NULL")}


@dataclass
class Evaluation:
    """A finished evaluation of a run's model (--evaluate): its own run ID, the run it scored, on which data."""
    run_id: int
    evaluates: int
    data: str | None  # the fingerprint of the data it scored
    results: dict


def evaluations(path, of=None):
    """[Evaluation] of every finished, visible evaluation in the table (debug ones aside; of the runs `of` only, when
    given), in order."""
    with _open(path) as db:
        if "evaluates" not in side_columns(db):
            return []
        rows = db.execute("SELECT E.run_id, L.evaluates, L.data_fingerprint FROM Experiments E JOIN TemplateLaunch L "
                          "ON L.run_id = E.run_id WHERE L.evaluates IS NOT NULL AND E.status='finished' AND "
                          "E.hidden=0 AND E.run_id>0 ORDER BY E.run_id").fetchall()
        found = []
        for run_id, evaluated, data in rows:
            if of is None or evaluated in of:
                results = dict(db.execute("SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0",
                                          (run_id,)))
                found.append(Evaluation(run_id, evaluated, data, results))
    return found


def run_text(path, run_id, tag):
    """The text `tag` of run `run_id` (its newest, for a tag logged epoch by epoch), or None."""
    with _open(path) as db:
        row = db.execute("SELECT fragment FROM Fragments WHERE run_id=? AND tag=? ORDER BY id_ DESC LIMIT 1",
                         (run_id, tag)).fetchone()
    return row[0] if row else None


@dataclass
class FinishedRun:
    """A finished, visible run as comparisons see it: which group it belongs to, its seed and its results."""
    run_id: int
    experiment: str
    cli: str
    comment: str
    group: tuple  # (group hash, data fingerprint): the runs that differ only in their seed
    seed: object
    results: dict
    measures: Measures  # what it measured and which way is better (recorded, or the earlier runs' LEGACY)


def finished_runs(path, where_keys=()):
    """([FinishedRun] of every finished, visible training run of the table (debug run and evaluations aside), in run ID
    order; the IDs of those left out because no group can be read from their config: runs another program wrote,
    without a YAML config).

    Runs of tables written before groups were recorded get their group from their config (slower, once per read).
    """
    with _open(path) as db:
        columns = side_columns(db)
        side = [f"L.{name}" if name in columns else "NULL"
                for name in ("group_hash", "data_fingerprint", "measures", "flags", "evaluates")]
        rows = db.execute(
            f"SELECT E.run_id, E.experiment, E.cli, E.comment, {', '.join(side)} FROM Experiments E "
            + ("LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id " if columns else "")
            + "WHERE E.status='finished' AND E.hidden=0 AND E.run_id>0 ORDER BY E.run_id").fetchall()
        results, seeds = {}, {}
        for run_id, metric, value, is_hparam in db.execute(
                "SELECT R.run_id, R.metric, R.value, R.is_hparam FROM Results R JOIN Experiments E "
                "ON E.run_id = R.run_id WHERE E.status='finished' AND E.hidden=0 AND E.run_id>0 "
                "AND (R.is_hparam=0 OR R.metric=?) ORDER BY R.id_", (SEED_KEY,)):
            if is_hparam:
                seeds[run_id] = value
            else:
                results.setdefault(run_id, {})[metric] = value
        ungrouped = [row[0] for row in rows if row[4] is None and row[8] is None]
        configs = _recorded_texts(db, "ConfigFile", "file_content", ungrouped)
    runs, left_out = [], []
    for run_id, experiment, cli, comment, group, data, measures, flags, evaluates in rows:
        if evaluates is not None:  # an evaluation of a run: no training run of a group
            continue
        try:
            if group is None:
                group = _group_of_config(experiment, configs.get(run_id), cli, comment, where_keys)
            recorded = recorded_measures(measures, json.loads(flags or "{}"))
        except (ValueError, KeyError, TypeError, AttributeError):  # a damaged row: the rest of the table still reads
            group = None
        if group is None or not all(_is_number(value) for value in results.get(run_id, {}).values()):
            left_out.append(run_id)
            continue
        runs.append(FinishedRun(run_id, experiment, cli, comment, (group, data), seeds.get(run_id),
                                results.get(run_id, {}), recorded))
    return runs, left_out


def _group_of_config(experiment, config_text, cli, comment, where_keys):
    """The group hash of a run recorded without one, from its config; None where that is not a YAML mapping."""
    try:
        if not isinstance(load_config_text(config_text or ""), dict):
            return None
    except yaml.YAMLError:
        return None
    return group_hash(experiment, config_text, cli, comment, where_keys)


def config_texts(path, run_ids):
    """{run ID: the merged config it ran with, as recorded} of the runs `run_ids`, read in one query."""
    with _open(path) as db:
        return _recorded_texts(db, "ConfigFile", "file_content", run_ids)


def recorded_commands(path, run_ids):
    """{run ID: the command line recorded with it} of the runs `run_ids`, read in one query."""
    with _open(path) as db:
        return _recorded_texts(db, "Experiments", "command", run_ids)


def _recorded_texts(db, table, column, run_ids):
    """{run ID: the text `table`.`column` holds for it, as the run had it (see as_recorded)} of the runs `run_ids`."""
    run_ids = sorted({int(run_id) for run_id in run_ids})
    if not run_ids:
        return {}
    escaped = "L.shown_escaped" if "shown_escaped" in side_columns(db) else "NULL"
    rows = db.execute(f"SELECT T.run_id, T.{column}, {escaped} FROM {table} T "
                      + ("LEFT JOIN TemplateLaunch L ON L.run_id = T.run_id " if escaped != "NULL" else "")
                      + f"WHERE T.run_id IN ({', '.join('?' * len(run_ids))})", run_ids)
    return {run_id: as_recorded(text, flag) for run_id, text, flag in rows}


def recorded_config_paths(path, run_ids):
    """{run ID: the config file it was launched with, as given} of the runs `run_ids`, read in one query."""
    return _experiment_column(path, run_ids, "config")


def _experiment_column(path, run_ids, column):
    run_ids = sorted({int(run_id) for run_id in run_ids})
    with _open(path) as db:
        return dict(db.execute(f"SELECT run_id, {column} FROM Experiments WHERE run_id IN "
                               f"({', '.join('?' * len(run_ids))})", run_ids)) if run_ids else {}


def pruned_runs(path):
    """The IDs of the visible runs a search's pruner stopped (failed with the reason 'pruned')."""
    with _open(path) as db:
        if "failure" not in side_columns(db):
            return []
        return [run_id for (run_id,) in db.execute(
            "SELECT E.run_id FROM Experiments E JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE E.hidden=0 AND "
            "E.status='failed' AND L.failure='pruned' ORDER BY E.run_id")]


def runs_frame(path, show_hidden=False):
    """A pandas DataFrame with one row per run (index: run ID): its identity, status, hparams and results; an
    evaluation (--evaluate) names the run it scored in `evaluates`."""
    import pandas as pd

    with _open(path) as db:
        # A run a search's pruner stopped is failed with the reason 'pruned': shown as its own status.
        columns = side_columns(db)
        status = ("CASE WHEN E.status='failed' AND L.failure='pruned' THEN 'pruned' ELSE E.status END"
                  if "failure" in columns else "E.status")
        evaluates = "L.evaluates" if "evaluates" in columns else "NULL"
        experiments = db.execute(
            f"SELECT E.run_id, E.experiment, {status}, E.comment, E.start, E.commit_hash, E.hidden, {evaluates} "
            f"FROM Experiments E " + ("LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id " if columns else "")
            + ("" if show_hidden else "WHERE E.hidden=0 ") + "ORDER BY E.run_id").fetchall()
        values, damaged = {}, set()
        for run_id, metric, value, is_hparam in db.execute("SELECT run_id, metric, value, is_hparam FROM Results "
                                                           "ORDER BY is_hparam DESC, id_"):
            values.setdefault(run_id, {})[metric] = value
            if not is_hparam and not _is_number(value):
                damaged.add(run_id)
    _note_left_out(damaged, "a result that is not a number")
    rows = [{"run_id": run_id, "experiment": experiment, "status": status, "comment": comment, "start": start,
             "commit": commit, "hidden": bool(hidden), "evaluates": evaluated, **values.get(run_id, {})}
            for run_id, experiment, status, comment, start, commit, hidden, evaluated in experiments
            if run_id not in damaged]
    return pd.DataFrame(rows).set_index("run_id") if rows else pd.DataFrame()


def curves_frame(path, run_ids):
    """A long pandas DataFrame of every scalar the runs `run_ids` logged: run_id, tag, epoch, step, value."""
    import pandas as pd

    run_ids = [int(run_id) for run_id in run_ids]
    with _open(path) as db:
        rows = []
        for run_id in run_ids:
            rows += db.execute("SELECT run_id, CASE WHEN split = '' THEN label ELSE split || '/' || label END, epoch, "
                               "step, value FROM Logs WHERE run_id=? ORDER BY split, label, step, id_",
                               (run_id,)).fetchall()
    damaged = {row[0] for row in rows if not _is_number(row[4])}
    _note_left_out(damaged, "a point that is not a number")
    return pd.DataFrame([row for row in rows if row[0] not in damaged],
                        columns=["run_id", "tag", "epoch", "step", "value"])


def _note_left_out(run_ids, why):
    """Say on stderr which damaged runs a frame leaves out, so that the rest of the table still reads."""
    if run_ids:
        named = ", ".join(str(run_id) for run_id in sorted(run_ids))
        print(f"note: run{'s' * (len(run_ids) > 1)} {named} left out: damaged ({why})", file=sys.stderr)


def _open(path):
    if not Path(path).exists():
        raise UserError(f"there is no run table at {path}; run an experiment first or point at another table")
    return connect(path, readonly=True)
