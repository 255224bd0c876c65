"""The run table: the only module that talks to deepboard.

Runs live in deepboard's ResultTable (`results/resultTable.db`) so that `deepboard results/resultTable.db` shows them.
This layer decides a run's identity, refuses duplicates, registers runs atomically and records what an experiment
logs. It works on deepboard's schema directly where deepboard's own ResultTable.new_run is unsafe (it reads the status
from the wrong column, checks and inserts on separate connections, and hooks sys.excepthook), and it imports deepboard
only once a run really starts, so that a refused launch answers fast.
"""
import fcntl
import hashlib
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from utils.errors import UserError

DEBUG_RUN_ID = -1
UNIQUE_COLUMNS = ("experiment", "config_hash", "cli", "comment")
SUPPORTED_VERSION_PREFIX = "0.3."  # deepboard's table format; 0.3.x tables are all alike


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


class RunTable:
    """The ResultTable file at `path`; it is created on the first run that starts, never by a refused launch."""

    def __init__(self, path):
        self.path = Path(path)
        self.results_dir = self.path.parent

    def find_run(self, identity):
        """(run ID, status) of the visible, non-debug run with this identity, or None."""
        if not self.path.exists():
            return None
        with self._connect() as db:
            return self._find(db, identity)

    def refuse_duplicate(self, identity):
        """Raise a UserError naming the existing run if this identity already ran (or runs); failed runs may retry."""
        found = self.find_run(identity)
        if found is not None:
            raise UserError(_duplicate_message(identity, *found))

    def start_run(self, identity, *, config_path, command, commit, diff, debug=False):
        """A new Run registered in the table: run ID -1 for `debug` (replacing the last one), else the next ID."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._create_if_missing()
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")  # check and insert in one write transaction: no twin can slip between
                if debug:
                    _delete_run(db, DEBUG_RUN_ID)
                    run_id = DEBUG_RUN_ID
                else:
                    found = self._find(db, identity)
                    if found is not None:
                        raise UserError(_duplicate_message(identity, *found))
                    # A failed attempt of the same identity stays in the table, hidden, so its data is never lost.
                    db.execute("UPDATE Experiments SET hidden=1 WHERE experiment=? AND config_hash=? AND cli=? "
                               "AND comment=? AND status='failed' AND run_id!=?",
                               (identity.experiment, identity.config_hash, identity.cli, identity.comment, DEBUG_RUN_ID))
                    run_id = None
                cursor = db.execute(
                    "INSERT INTO Experiments (run_id, experiment, config, config_hash, cli, command, comment, tag, "
                    "start, status, commit_hash, diff) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, 'running', ?, ?)",
                    (run_id, identity.experiment, str(config_path), identity.config_hash, identity.cli, command,
                     identity.comment, datetime.now().isoformat(sep=" "), commit, diff))
                run_id = cursor.lastrowid if run_id is None else run_id
                db.execute("INSERT INTO ConfigFile (run_id, file_content) VALUES (?, ?)", (run_id, identity.config_text))
                db.commit()
        folder = self.results_dir / ("debug" if debug else str(run_id))
        if debug:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return Run(self.path, run_id, folder)

    def status(self, run_id):
        """The status of run `run_id` ('running', 'finished', 'failed'), or None if there is no such run."""
        with self._connect() as db:
            row = db.execute("SELECT status FROM Experiments WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def _find(self, db, identity):
        return db.execute(
            "SELECT run_id, status FROM Experiments WHERE experiment=? AND config_hash=? AND cli=? AND comment=? "
            "AND hidden=0 AND run_id!=? AND status!='failed' ORDER BY run_id LIMIT 1",
            (identity.experiment, identity.config_hash, identity.cli, identity.comment, DEBUG_RUN_ID)).fetchone()

    def _create_if_missing(self):
        if self.path.exists():
            return
        from deepboard.resultTable import ResultTable  # deepboard creates the schema its GUI expects
        ResultTable(str(self.path), unique_columns=UNIQUE_COLUMNS)

    @contextmanager
    def _connect(self):
        """A connection to a checked table: a clear UserError if the file is not a deepboard 0.3 ResultTable."""
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as e:
            raise UserError(f"cannot open the run table {self.path}: {e}") from None
        try:
            _check_version(db, self.path)
            yield db
        finally:
            db.close()

    @contextmanager
    def _lock(self):
        """An exclusive lock on the table for this process, held while the table is created or a run registered."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a")
        except OSError as e:
            raise UserError(f"cannot write in {self.results_dir} ({e.strerror}); "
                            f"run from a folder where results/ is writable") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


class Run:
    """One registered run: logs hparams and scalars to the table, ends as finished or failed.

    Used as a context manager, a run that leaves the block by an exception (Ctrl-C included) is marked failed, after
    every scalar it logged has been written.
    """

    def __init__(self, table_path, run_id, folder):
        from deepboard.resultTable import LogWriter
        self.id = run_id
        self.folder = folder
        hook = sys.excepthook
        # deepboard's LogWriter chains sys.excepthook so a later crash would mark this run failed; we mark runs ourselves.
        self._writer = LogWriter(str(table_path), run_id, datetime.now(), flush_each=50, auto_log_plt=False)
        sys.excepthook = hook
        self.finished = False

    def log_hparams(self, hparams):
        """Record hyperparameters (shown as columns in deepboard); lists and None are stored as text."""
        self._writer.add_hparams({k: v if isinstance(v, (int, float, str)) else str(v) for k, v in hparams.items()})

    def log_scalar(self, tag, value, step, epoch):
        """Record one point of the curve `tag` ('split/name', e.g. 'val/accuracy')."""
        self._writer.add_scalar(tag, value, step=step, epoch=epoch)

    def finish(self, results):
        """Record the final results and mark the run finished; the run is read-only afterwards."""
        self._writer.write_result(**results)  # flushes scalars, then sets status 'finished'
        self.finished = True

    def fail(self):
        """Write every buffered scalar, then mark the run failed so that its config can be run again."""
        if self.finished:
            return
        self._writer._flush_all()  # deepboard buffers scalars; a failed run keeps all it logged
        self._writer.set_status("failed")
        self._writer.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.fail()
        return False


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
    for table in ("Experiments", "ConfigFile", "Logs", "Images", "Fragments", "Results"):
        db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))


def _duplicate_message(identity, run_id, status):
    state = "finished" if status == "finished" else "is marked running"
    return (f"run {run_id} ({identity.experiment}, {state}) already has this config and these flags; "
            f"to run anyway use --debug (not recorded), --comment=\"...\" (a recorded variant), "
            f"or change a parameter (--config.KEY=VALUE)")
