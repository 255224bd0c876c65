"""Registering and refusing runs: the one place that decides whether a launch may run, and under which run ID.

deepboard 0.3.0's own `ResultTable.new_run` cannot be trusted with this: it reads the status from the wrong column
(a failed run blocks its config forever) and checks and inserts on separate connections (twins both run). Here a run
is registered under a file lock in one write transaction, and records its host and process so that a run killed
outright (SIGKILL, out-of-memory, reboot) is recognised as failed by the next launch.
"""
import fcntl
import json
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from utils.config import flatten_values, load_config_text, without_keys
from utils.errors import UserError, disk_full, is_disk_full
from utils.runtable import liveness
from utils.runtable.readers import DEBUG_RUN_ID, read_row
from utils.runtable.run import Run
from utils.runtable.schema import (connect, create_table, network_filesystem_warning, prepare_for_writing,
                                   side_columns)


PROCESS_COLUMNS = ("host", "pid", "process_token", "heartbeat")  # liveness.Process, as the side table holds it


class FoundRun(NamedTuple):
    """A recorded run that blocks a new launch of the same identity."""
    run_id: int
    status: str
    process: liveness.Process | None


class RunTable:
    """The ResultTable file at `path`; it is created on the first run that starts, never by a refused launch."""

    def __init__(self, path):
        self.path = Path(path)
        self.results_dir = self.path.parent
        self._warned = False  # about a network filesystem: once per launch

    def find_run(self, identity):
        """The FoundRun with this identity that blocks a new one, or None.

        Finished runs block, and so do running ones whose process is alive or cannot be checked (another host);
        failed runs, and running ones whose process is gone, do not.
        """
        if not self.path.exists():
            return None
        with connect(self.path, readonly=True) as db:
            return _find(db, identity)

    def refuse_duplicate(self, identity):
        """Raise a UserError naming the existing run if this identity already ran (or runs)."""
        found = self.find_run(identity)
        if found is not None:
            raise UserError(_duplicate_message(identity, found))

    def start_run(self, identity, *, config_path, command, commit, diff, debug=False):
        """A new Run registered in the table: run ID -1 for `debug` (replacing the last one), else the next ID."""
        with self._write() as db:
            if debug:
                _refuse_live_debug_run(db)
                _delete_run(db, DEBUG_RUN_ID)
                run_id = DEBUG_RUN_ID
            else:
                found = _find(db, identity)
                if found is not None:
                    raise UserError(_duplicate_message(identity, found))
                # Earlier attempts of this identity failed: keep their data, hidden, and record a fresh run.
                db.execute("UPDATE Experiments SET hidden=1 WHERE experiment=? AND config_hash=? AND cli=? "
                           "AND comment=? AND hidden=0 AND run_id!=?", (*identity.key(), DEBUG_RUN_ID))
                run_id = None
            cursor = db.execute(
                "INSERT INTO Experiments (run_id, experiment, config, config_hash, cli, command, comment, tag, start, "
                "status, commit_hash, diff) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, 'running', ?, ?)",
                (run_id, identity.experiment, str(config_path), identity.config_hash, identity.cli, command,
                 identity.comment, datetime.now().isoformat(sep=" "), commit, diff))
            run_id = cursor.lastrowid if run_id is None else run_id
            db.execute("INSERT INTO ConfigFile (run_id, file_content) VALUES (?, ?)", (run_id, identity.config_text))
            _record_launch(db, run_id, identity)
        folder = self.folder(run_id)
        if debug:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return Run(self.path, run_id, folder)

    def resume_run(self, run_id, check=None):
        """(Run, RunIdentity) to continue the failed run `run_id` in place, with its recorded config and flags.

        `check(identity)` may refuse (raise) before anything is changed.
        """
        if not self.path.exists():
            raise UserError(f"there is no run table at {self.path}, so no run {run_id} to resume")
        with self._write() as db:
            row = read_row(db, self.path, run_id)
            if row.status == "finished":
                raise UserError(f"run {run_id} finished; a finished run cannot be resumed (its results stand)")
            if row.status == "running":
                where = _process(db, run_id)
                raise UserError(f"run {run_id} is still running{f' on {where.describe()}' if where else ''}; "
                                f"resume it once it has stopped")
            if row.hidden:
                raise UserError(f"run {run_id} is hidden (it was retried as a new run); resume the newer run instead")
            if check is not None:
                check(row.identity)
            db.execute("UPDATE Experiments SET status='running' WHERE run_id=?", (run_id,))
            process = liveness.this_process()
            db.execute("UPDATE TemplateLaunch SET host=?, pid=?, process_token=?, heartbeat=? WHERE run_id=?",
                       (process.host, process.pid, process.token, process.heartbeat, run_id))
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        return Run(self.path, run_id, folder, resumed=True), row.identity

    def keys_new_to(self, experiment, keys):
        """Those of the dotted `keys` that every recorded run of `experiment` lacks; empty once one run has them all.

        A YAML that gains a key with a value changes the identity of every config it holds: the launch says so, once
        (the first run with the key makes the warning stop).
        """
        if not self.path.exists():
            return []
        with connect(self.path, readonly=True) as db:
            if "config_keys" not in side_columns(db):
                return []
            recorded = [set(json.loads(keys)) for (keys,) in db.execute(
                "SELECT DISTINCT L.config_keys FROM TemplateLaunch L JOIN Experiments E ON E.run_id = L.run_id "
                "WHERE E.experiment=? AND E.run_id!=? AND L.config_keys IS NOT NULL",
                (experiment, DEBUG_RUN_ID))]
        keys = set(keys)
        if not recorded or any(keys <= known for known in recorded):
            return []
        return sorted(keys - set.union(*recorded))

    def status(self, run_id):
        """The status of run `run_id` ('running', 'finished', 'failed'), or None if there is no such run."""
        with connect(self.path, readonly=True) as db:
            row = db.execute("SELECT status FROM Experiments WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def folder(self, run_id):
        """The folder of run `run_id`'s checkpoints."""
        return self.results_dir / ("debug" if run_id == DEBUG_RUN_ID else str(run_id))

    @contextmanager
    def _write(self):
        """A write transaction on the table (created if missing), under an exclusive lock across processes.

        Before anything else, runs left 'running' by a process that is gone are marked failed.
        """
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(self.results_dir, "the run table's lock file", None) from None
            raise UserError(f"cannot write in {self.results_dir} ({e.strerror}); "
                            f"run from a folder where results/ is writable, nothing was changed") from None
        if not self._warned:
            self._warned = True
            warning = network_filesystem_warning(self.results_dir)
            if warning:
                print(warning, file=sys.stderr)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not self.path.exists():
                    create_table(self.path)
                with connect(self.path) as db:
                    db.execute("BEGIN IMMEDIATE")  # check and insert in one write transaction
                    prepare_for_writing(db)
                    _mark_gone_runs_failed(db)
                    yield db
                    db.commit()
            except (sqlite3.OperationalError, OSError) as e:
                if is_disk_full(e):
                    raise disk_full(self.results_dir, "to the run table", None) from None
                raise


def _find(db, identity):
    columns = side_columns(db)
    process_columns = ", ".join(f"L.{name}" if name in columns else "NULL" for name in PROCESS_COLUMNS)
    rows = db.execute(
        f"SELECT E.run_id, E.status, {process_columns} FROM Experiments E "
        + ("LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id " if columns else "")
        + "WHERE experiment=? AND config_hash=? AND cli=? AND comment=? AND hidden=0 AND E.run_id!=? "
          "AND status!='failed' ORDER BY E.run_id", (*identity.key(), DEBUG_RUN_ID)).fetchall()
    for run_id, status, *process in rows:
        process = liveness.Process(*process) if process[0] is not None else None
        if status == "finished" or not liveness.is_gone(process):
            return FoundRun(run_id, status, process)
    return None


def _record_launch(db, run_id, identity):
    process = liveness.this_process()
    db.execute("INSERT OR REPLACE INTO TemplateLaunch (run_id, host, pid, process_token, heartbeat, flags, "
               "data_fingerprint, config_keys, group_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (run_id, process.host, process.pid, process.token, process.heartbeat,
                json.dumps(identity.flags, sort_keys=True), identity.data, json.dumps(config_keys(identity)),
                identity.group_hash))


def config_keys(identity):
    """The dotted keys that count in `identity`'s config (set, and not where-keys)."""
    config = without_keys(load_config_text(identity.config_text), set(identity.where_keys))
    return sorted(flatten_values(config))


def _process(db, run_id):
    row = db.execute(f"SELECT {', '.join(PROCESS_COLUMNS)} FROM TemplateLaunch WHERE run_id=?", (run_id,)).fetchone()
    return None if row is None else liveness.Process(*row)


def _mark_gone_runs_failed(db):
    """Mark failed every run left 'running' by a process that is gone: of this host and no longer there (SIGKILL,
    OOM, reboot), or of another host and silent for longer than the heartbeat lease (a dead node)."""
    rows = db.execute(f"SELECT E.run_id, {', '.join('L.' + name for name in PROCESS_COLUMNS)} FROM Experiments E "
                      "JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE E.status='running'").fetchall()
    gone = [(run_id,) for run_id, *process in rows if liveness.is_gone(liveness.Process(*process))]
    db.executemany("UPDATE Experiments SET status='failed' WHERE run_id=?", gone)


def _refuse_live_debug_run(db):
    process = _process(db, DEBUG_RUN_ID)
    status = db.execute("SELECT status FROM Experiments WHERE run_id=?", (DEBUG_RUN_ID,)).fetchone()
    if status == ("running",) and process is not None and not liveness.is_gone(process):
        raise UserError(f"debug run -1 is in progress on {process.describe()}; wait for it to end, or record this "
                        f"one as a normal run with --comment=\"...\"")


def _delete_run(db, run_id):
    for table in ("Experiments", "ConfigFile", "Logs", "Images", "Fragments", "Results", "TemplateLaunch"):
        db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))


def _duplicate_message(identity, found):
    if found.status == "finished":
        state = "finished"
    else:
        state = f"running on {found.process.describe()}" if found.process else "running"
    return (f"run {found.run_id} ({identity.experiment}, {state}) already has this config and these flags; "
            f"to run anyway use --debug (not recorded), --comment=\"...\" (a recorded variant), "
            f"or change a parameter (--config.KEY=VALUE)")
