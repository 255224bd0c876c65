"""The run table: the only module that talks to deepboard.

Runs live in a deepboard 0.3 ResultTable (`results/resultTable.db`), so that `deepboard results/resultTable.db` and
deepboard's reading API show them. deepboard creates the table; this layer writes the runs itself, on deepboard's
schema, because deepboard 0.3.0's writers cannot be trusted with them: `ResultTable.new_run` reads the status from the
wrong column (a failed run blocks its config forever) and checks and inserts on separate connections (twins both run);
every `LogWriter` chains `sys.excepthook` (a later crash flips finished runs to failed) and gives up on a busy table
after 5 s. Here a run is registered under a file lock in one write transaction, marks itself failed on any exception
or signal after writing what it logged, and records its host and process so that a run killed outright (SIGKILL,
out-of-memory, reboot) is recognised as failed by the next launch. deepboard itself is imported only to create a table,
so that a refused launch answers fast.
"""
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from utils.errors import UserError

DEBUG_RUN_ID = -1
UNIQUE_COLUMNS = ("experiment", "config_hash", "cli", "comment")
SUPPORTED_VERSION_PREFIX = "0.3."  # deepboard's table format; 0.3.x tables are all alike
BUSY_TIMEOUT_S = 120  # how long a write waits for another process's write before giving up
FLUSH_EVERY = 200  # scalars buffered before they are written (also written at every flush() and at the end)

# The template's own bookkeeping, beside deepboard's tables: which process runs which run, with which flags.
LAUNCH_SCHEMA = """CREATE TABLE IF NOT EXISTS TemplateLaunch (
    run_id INTEGER PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, process_token TEXT, flags TEXT NOT NULL)"""


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same: experiment, merged config, and the flags that change results."""
    experiment: str
    config_text: str  # canonical dump of the merged config (overrides applied)
    flags: dict = field(default_factory=dict)  # result-changing flags that differ from their defaults
    comment: str = ""

    @property
    def config_hash(self):
        return hashlib.sha256(self.config_text.encode()).hexdigest()

    @property
    def cli(self):
        return " ".join(f"{name}={value}" for name, value in sorted(self.flags.items()))


@dataclass
class RecordedRun:
    """What the table holds of one run: enough to run it again and to compare the outcome."""
    run_id: int
    status: str
    identity: RunIdentity
    commit: str
    diff: str
    environment: dict  # versions, device, host (see utils.provenance.environment)
    results: dict  # final results, hparams excluded
    scalars: dict  # tag -> [(step, value), ...] in step order


class RunTable:
    """The ResultTable file at `path`; it is created on the first run that starts, never by a refused launch."""

    def __init__(self, path):
        self.path = Path(path)
        self.results_dir = self.path.parent

    def find_run(self, identity):
        """(run ID, status, host, pid) of the visible run with this identity that blocks a new one, or None.

        Finished runs block, and so do running ones whose process is alive or cannot be checked (another host);
        failed runs, and running ones whose process is gone, do not.
        """
        if not self.path.exists():
            return None
        with self._connect() as db:
            return self._find(db, identity)

    def refuse_duplicate(self, identity):
        """Raise a UserError naming the existing run if this identity already ran (or runs)."""
        found = self.find_run(identity)
        if found is not None:
            raise UserError(_duplicate_message(identity, *found))

    def start_run(self, identity, *, config_path, command, commit, diff, debug=False):
        """A new Run registered in the table: run ID -1 for `debug` (replacing the last one), else the next ID."""
        with self._write() as db:
            if debug:
                _refuse_live_debug_run(db)
                _delete_run(db, DEBUG_RUN_ID)
                run_id = DEBUG_RUN_ID
            else:
                found = self._find(db, identity)
                if found is not None:
                    raise UserError(_duplicate_message(identity, *found))
                # Earlier attempts of this identity failed: keep their data, hidden, and record a fresh run.
                db.execute("UPDATE Experiments SET hidden=1 WHERE experiment=? AND config_hash=? AND cli=? "
                           "AND comment=? AND hidden=0 AND run_id!=?", (*_identity_values(identity), DEBUG_RUN_ID))
                run_id = None
            cursor = db.execute(
                "INSERT INTO Experiments (run_id, experiment, config, config_hash, cli, command, comment, tag, start, "
                "status, commit_hash, diff) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, 'running', ?, ?)",
                (run_id, identity.experiment, str(config_path), identity.config_hash, identity.cli, command,
                 identity.comment, datetime.now().isoformat(sep=" "), commit, diff))
            run_id = cursor.lastrowid if run_id is None else run_id
            db.execute("INSERT INTO ConfigFile (run_id, file_content) VALUES (?, ?)", (run_id, identity.config_text))
            _record_launch(db, run_id, identity.flags)
        folder = self._folder(run_id)
        if debug:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return Run(self, run_id, folder)

    def resume_run(self, run_id, check=None):
        """(Run, RunIdentity) to continue the failed run `run_id` in place, with its recorded config and flags.

        `check(identity)` may refuse (raise) before anything is changed.
        """
        if not self.path.exists():
            raise UserError(f"there is no run table at {self.path}, so no run {run_id} to resume")
        with self._write() as db:
            row = self._recorded_row(db, run_id)
            if row["status"] == "finished":
                raise UserError(f"run {run_id} finished; a finished run cannot be resumed (its results stand)")
            if row["status"] == "running":
                raise UserError(f"run {run_id} is still running{_where(db, run_id)}; resume it once it has stopped")
            if row["hidden"]:
                raise UserError(f"run {run_id} is hidden (it was retried as a new run); resume the newer run instead")
            if check is not None:
                check(row["identity"])
            db.execute("UPDATE Experiments SET status='running' WHERE run_id=?", (run_id,))
            _record_launch(db, run_id, row["identity"].flags)
        folder = self._folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        return Run(self, run_id, folder, resumed=True), row["identity"]

    def recorded_run(self, run_id):
        """The RecordedRun of `run_id`, or a UserError if the table has no such run made by this template."""
        if not self.path.exists():
            raise UserError(f"there is no run table at {self.path}, so no run {run_id}")
        with self._connect() as db:
            row = self._recorded_row(db, run_id)
            environment = db.execute("SELECT fragment FROM Fragments WHERE run_id=? AND tag='environment' "
                                     "ORDER BY id_ DESC LIMIT 1", (run_id,)).fetchone()
            results = dict(db.execute("SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", (run_id,)))
            scalars = {}
            for split, label, step, value in db.execute(
                    "SELECT split, label, step, value FROM Logs WHERE run_id=? ORDER BY split, label, step, id_",
                    (run_id,)):
                scalars.setdefault(f"{split}/{label}" if split else label, []).append((step, value))
        return RecordedRun(run_id, row["status"], row["identity"], row["commit"], row["diff"],
                           json.loads(environment[0]) if environment else {}, results, scalars)

    def status(self, run_id):
        """The status of run `run_id` ('running', 'finished', 'failed'), or None if there is no such run."""
        with self._connect() as db:
            row = db.execute("SELECT status FROM Experiments WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def _recorded_row(self, db, run_id):
        """{status, hidden, commit, diff, identity} of run `run_id`; a UserError if it is missing or not ours."""
        row = db.execute("SELECT E.experiment, E.status, E.hidden, E.comment, E.commit_hash, E.diff, C.file_content, "
                         "L.flags FROM Experiments E JOIN ConfigFile C ON C.run_id = E.run_id "
                         "LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE E.run_id=?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"there is no run {run_id} in {self.path}; see the Run ID column of deepboard")
        experiment, status, hidden, comment, commit, diff, config_text, flags = row
        if flags is None:
            raise UserError(f"run {run_id} was not recorded by this template's main.py; its flags are unknown")
        identity = RunIdentity(experiment, config_text, json.loads(flags), comment)
        return {"status": status, "hidden": hidden, "commit": commit, "diff": diff, "identity": identity}

    def _folder(self, run_id):
        return self.results_dir / ("debug" if run_id == DEBUG_RUN_ID else str(run_id))

    def _find(self, db, identity):
        rows = db.execute(
            "SELECT E.run_id, E.status, L.host, L.pid, L.process_token FROM Experiments E "
            "LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE experiment=? AND config_hash=? AND cli=? "
            "AND comment=? AND hidden=0 AND E.run_id!=? AND status!='failed' ORDER BY E.run_id",
            (*_identity_values(identity), DEBUG_RUN_ID)).fetchall()
        for run_id, status, host, pid, token in rows:
            if status == "finished" or not _process_is_gone(host, pid, token):
                return run_id, status, host, pid
        return None

    @contextmanager
    def _write(self):
        """A write transaction on the table (created if missing), under an exclusive lock across processes.

        Before anything else, runs left 'running' by a process that is gone are marked failed.
        """
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as e:
            raise UserError(f"cannot write in {self.results_dir} ({e.strerror}); "
                            f"run from a folder where results/ is writable, nothing was changed") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.path.exists():
                from deepboard.resultTable import ResultTable  # deepboard creates the schema its GUI expects
                ResultTable(str(self.path), unique_columns=UNIQUE_COLUMNS)
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")  # check and insert in one write transaction
                _mark_gone_runs_failed(db)
                yield db
                db.commit()

    @contextmanager
    def _connect(self):
        """A connection to a checked table: a clear UserError if the file is not a deepboard 0.3 ResultTable."""
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise UserError(f"cannot open the run table {self.path}: {e}") from None
        try:
            _check_version(db, self.path)
            try:
                db.execute(LAUNCH_SCHEMA)
            except sqlite3.OperationalError:
                pass  # a read-only table: reading works without it
            yield db
        finally:
            db.close()


class Run:
    """One registered run: records hparams, scalars and results in the table, and ends finished or failed.

    Used as a context manager, a run that leaves the block by an exception (Ctrl-C and SIGTERM included) is marked
    failed, after every scalar it logged has been written. Once finished, nothing can change it.
    """

    def __init__(self, table, run_id, folder, resumed=False):
        self.id = run_id
        self.folder = folder
        self.resumed = resumed  # continuing a failed run: the experiment restores its last epoch checkpoint
        self._table = table
        self._buffer = []
        self._start = time.monotonic()
        self.status = "running"

    def log_hparams(self, hparams):
        """Record hyperparameters (deepboard shows them as columns); lists and None are stored as text."""
        rows = [(self.id, name, value if isinstance(value, (int, float, str)) else str(value), 1)
                for name, value in hparams.items()]
        with self._writing() as db:
            db.executemany("DELETE FROM Results WHERE run_id=? AND metric=? AND is_hparam=1",
                           [(self.id, name) for name in hparams])
            db.executemany("INSERT INTO Results (run_id, metric, value, is_hparam) VALUES (?, ?, ?, ?)", rows)

    def log_text(self, tag, text):
        """Record a text under `tag` (deepboard shows it in the run's text fragments); replaces an earlier one."""
        with self._writing() as db:
            db.execute("DELETE FROM Fragments WHERE run_id=? AND tag=?", (self.id, tag))
            db.execute("INSERT INTO Fragments (run_id, step, epoch, run_rep, fragment_type, tag, fragment) "
                       "VALUES (?, 0, 0, 0, 'RAW', ?, ?)", (self.id, tag, text))

    def log_scalar(self, tag, value, step, epoch):
        """Record one point of the curve `tag` ('split/name', e.g. 'val/accuracy'); written in batches."""
        self._check_open()
        split, _, label = tag.rpartition("/")
        self._buffer.append((self.id, epoch, step, split, label, float(value), time.monotonic() - self._start, 0))
        if len(self._buffer) >= FLUSH_EVERY:
            self.flush()

    def flush(self):
        """Write the buffered scalars now (the experiment calls this at every epoch's end)."""
        if self._buffer:
            with self._writing() as db:
                db.executemany("INSERT INTO Logs (run_id, epoch, step, split, label, value, wall_time, run_rep) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._buffer)
            self._buffer = []

    def discard_logs_after(self, step):
        """Delete this run's scalars logged after `step`: a resumed run replays them from its last checkpoint."""
        with self._writing() as db:
            db.execute("DELETE FROM Logs WHERE run_id=? AND step>?", (self.id, step))

    def finish(self, results):
        """Record the final results and mark the run finished; the run is read-only afterwards."""
        self.flush()
        with self._writing() as db:
            db.executemany("DELETE FROM Results WHERE run_id=? AND metric=? AND is_hparam=0",
                           [(self.id, name) for name in results])
            db.executemany("INSERT INTO Results (run_id, metric, value, is_hparam) VALUES (?, ?, ?, 0)",
                           [(self.id, name, value) for name, value in results.items()])
            db.execute("UPDATE Experiments SET status='finished' WHERE run_id=?", (self.id,))
        self.status = "finished"

    def fail(self):
        """Write every buffered scalar, then mark the run failed so that its config can be run (or resumed) again."""
        if self.status != "running":
            return
        try:
            self.flush()
        finally:
            with self._writing(check_open=False) as db:
                db.execute("UPDATE Experiments SET status='failed' WHERE run_id=?", (self.id,))
            self.status = "failed"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.fail()
        return False

    def _check_open(self):
        if self.status != "running":
            raise RuntimeError(f"run {self.id} is {self.status}; nothing more can be recorded in it")

    @contextmanager
    def _writing(self, check_open=True):
        if check_open:
            self._check_open()
        with self._table._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.commit()


class Replica(Run):
    """The run as torchrun's ranks other than 0 see it: the same ID and folder, recording nothing (rank 0 records)."""

    def __init__(self, run_id, folder, resumed=False):
        self.id, self.folder, self.resumed, self.status = run_id, Path(folder), resumed, "running"

    def log_hparams(self, hparams):
        pass

    def log_text(self, tag, text):
        pass

    def log_scalar(self, tag, value, step, epoch):
        pass

    def flush(self):
        pass

    def discard_logs_after(self, step):
        pass

    def finish(self, results):
        self.status = "finished"

    def fail(self):
        self.status = "failed"


def _identity_values(identity):
    return identity.experiment, identity.config_hash, identity.cli, identity.comment


def _record_launch(db, run_id, flags):
    db.execute("INSERT OR REPLACE INTO TemplateLaunch (run_id, host, pid, process_token, flags) VALUES (?, ?, ?, ?, ?)",
               (run_id, socket.gethostname(), os.getpid(), _process_token(os.getpid()),
                json.dumps(flags, sort_keys=True)))


def _mark_gone_runs_failed(db):
    """Mark failed every run left 'running' by a process of this host that no longer exists (SIGKILL, OOM, reboot)."""
    rows = db.execute("SELECT E.run_id, L.host, L.pid, L.process_token FROM Experiments E "
                      "JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE E.status='running'").fetchall()
    gone = [(run_id,) for run_id, host, pid, token in rows if _process_is_gone(host, pid, token)]
    db.executemany("UPDATE Experiments SET status='failed' WHERE run_id=?", gone)


def _process_is_gone(host, pid, token):
    """True when the process recorded for a run is known to have ended; runs of other hosts cannot be checked."""
    if host is None or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user holds the pid: check its start time below
    return token is not None and _process_token(pid) != token


def _process_token(pid):
    """Boot ID and start time of process `pid` (Linux): tells a pid reused after a reboot or a restart apart."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start_ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return f"{boot_id}:{start_ticks}"
    except (OSError, IndexError):
        return None


def _refuse_live_debug_run(db):
    row = db.execute("SELECT L.host, L.pid, L.process_token FROM Experiments E JOIN TemplateLaunch L "
                     "ON L.run_id = E.run_id WHERE E.run_id=? AND E.status='running'", (DEBUG_RUN_ID,)).fetchone()
    if row is not None and not _process_is_gone(*row):
        raise UserError(f"debug run -1 is in progress on {row[0]} (pid {row[1]}); wait for it to end, or record this "
                        f"one as a normal run with --comment=\"...\"")


def _where(db, run_id):
    row = db.execute("SELECT host, pid FROM TemplateLaunch WHERE run_id=?", (run_id,)).fetchone()
    return "" if row is None else f" on {row[0]} (pid {row[1]})"


def _check_version(db, path):
    try:
        row = db.execute("SELECT value FROM Meta WHERE key='deepboard_version'").fetchone()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path} is not a deepboard run table ({e}); move it away or point elsewhere, "
                        f"nothing was changed") from None
    version = None if row is None else row[0]
    if version is None or not version.startswith(SUPPORTED_VERSION_PREFIX):
        raise UserError(f"{path} was made by deepboard {version or '< 0.3'}, this template reads "
                        f"{SUPPORTED_VERSION_PREFIX}x tables; move it away to start a new table, nothing was changed")


def _delete_run(db, run_id):
    for table in ("Experiments", "ConfigFile", "Logs", "Images", "Fragments", "Results", "TemplateLaunch"):
        db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))


def _duplicate_message(identity, run_id, status, host, pid):
    state = "finished" if status == "finished" else f"running on {host} (pid {pid})" if host else "running"
    return (f"run {run_id} ({identity.experiment}, {state}) already has this config and these flags; "
            f"to run anyway use --debug (not recorded), --comment=\"...\" (a recorded variant), "
            f"or change a parameter (--config.KEY=VALUE)")


def open_for_reading(path):
    """deepboard's ResultTable for an existing table at `path` (deepboard would create a missing one silently)."""
    if not Path(path).exists():
        raise UserError(f"there is no run table at {path}; run an experiment first or point at another table")
    from deepboard.resultTable import ResultTable
    return ResultTable(str(path))


def runs_frame(path, show_hidden=False):
    """A pandas DataFrame with one row per run (index: run ID): its identity, status, hparams and results.

    Read through deepboard's API, but not through `ResultTable.get_results` / `to_pd`, which in deepboard 0.3.0 shift
    the diff and hidden columns and fail for a single run ID.
    """
    import pandas as pd

    table = open_for_reading(path)
    rows = []
    for run_id in sorted(table.runs):
        raw = table.get_experiment_raw(run_id)
        if raw["hidden"] and not show_hidden:
            continue
        with table.cursor as cursor:
            cursor.execute("SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", (run_id,))
            results = dict(cursor.fetchall())
        rows.append({"run_id": run_id, "experiment": raw["experiment"], "status": raw["status"],
                     "comment": raw["comment"], "start": raw["start"], "commit": raw["commit_hash"],
                     "hidden": bool(raw["hidden"]), **table.load_run(run_id).get_hparams(), **results})
    return pd.DataFrame(rows).set_index("run_id") if rows else pd.DataFrame()


def curves_frame(path, run_ids):
    """A long pandas DataFrame of every scalar the runs `run_ids` logged: run_id, tag, epoch, step, value."""
    import pandas as pd

    table = open_for_reading(path)
    rows = []
    for run_id in run_ids:
        run = table.load_run(run_id)
        for tag in run.scalars:
            rows += [{"run_id": run_id, "tag": tag, "epoch": point.epoch, "step": point.step, "value": point.value}
                     for point in run.get_scalar(tag)]
    return pd.DataFrame(rows, columns=["run_id", "tag", "epoch", "step", "value"])
