"""Registering and refusing runs: the one place that decides whether a launch may run, and under which run ID.

deepboard 0.3.0's own `ResultTable.new_run` cannot be trusted with this: it reads the status from the wrong column
(a failed run blocks its config forever) and checks and inserts on separate connections (twins both run). Here a run
is registered under a file lock in one write transaction, and records its host and process so that a run killed
outright (SIGKILL, out-of-memory, reboot) is recognised as failed by the next launch.
"""
import fcntl
import hashlib
import html
import json
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from utils.config import flatten_values
from utils.errors import UserError, disk_full, is_disk_full
from utils.runtable import liveness
from utils.runtable.identity import EVALUATES
from utils.runtable.readers import DEBUG_RUN_ID, SAME_DIFF_AS, read_row, run_folder, same_diff_as, table_files
from utils.runtable.run import Run
from utils.runtable.schema import (LARGEST_RUN_ID, connect, create_table, network_filesystem_warning,
                                   prepare_for_writing, side_columns)


PROCESS_COLUMNS = ("host", "pid", "process_token", "heartbeat")  # liveness.Process, as the side table holds it
DIFF_INLINE_LIMIT = 2048  # characters of uncommitted changes kept in every run that has them


class Claim(NamedTuple):
    """What a sweep's worker got for one combination: a Run to execute, or why not (finished, running, crashed)."""
    run: Run | None
    state: str
    run_id: int | None
    threads: int | None = None  # of a run to resume: the CPU threads it computed with


class FoundRun(NamedTuple):
    """A recorded run that blocks a new launch of the same identity."""
    run_id: int
    status: str
    process: liveness.Process | None


class RunTable:
    """The ResultTable file at `path`; it is created on the first run that starts, never by a refused launch."""

    def __init__(self, path, note=None):
        """`note` is printed (on stderr) once the first write is made: where the runs go, when that may surprise."""
        self.path = Path(path)
        self.files = table_files(self.path)  # its runs' folders, search journal and caches: no other table's
        self.note = note
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
            else:
                found = _find(db, identity)
                if found is not None:
                    raise UserError(_duplicate_message(identity, found))
            run_id = _insert_run(db, identity, config_path, command, commit, diff,
                                 DEBUG_RUN_ID if debug else None)
        folder = self.folder(run_id)
        if debug:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return Run(self.path, run_id, folder, measures=identity.measures, owner=identity.owner)

    def claim(self, identity, *, config_path, command, commit, diff, max_crashes=2, judge=None):
        """A Claim of `identity` for a sweep's worker, decided in one write transaction.

        A new run when the identity never ran (or only crashed fewer than `max_crashes` times with this code); the
        failed run itself, to resume, when it stopped for another reason (a kill, a signal, a full disk); no run when
        it finished, runs in a live process, or crashed `max_crashes` times with this very code. The run is handed
        `judge` (see Run).
        """
        with self._write() as db:
            rows = db.execute(
                "SELECT E.run_id, E.status, E.hidden, L.failure, L.code FROM Experiments E "
                "LEFT JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE E.experiment=? AND E.config_hash=? "
                "AND E.cli=? AND E.comment=? AND E.run_id!=? ORDER BY E.run_id", (*identity.key(), DEBUG_RUN_ID))
            rows = rows.fetchall()
            visible = [row for row in rows if not row[2]]
            if any(status == "finished" for _, status, *_ in visible):
                return Claim(None, "finished", visible[-1][0])
            if any(status == "running" for _, status, *_ in visible):
                return Claim(None, "running", visible[-1][0])
            if visible and visible[-1][3] == "pruned":  # a search stopped it: it is never resumed
                return Claim(None, "pruned", visible[-1][0])
            crashes = sum(failure == "crash" and code == code_of(commit, diff) for *_, failure, code in rows)
            if crashes >= max_crashes:
                return Claim(None, "crashed", visible[-1][0] if visible else rows[-1][0])
            threads = None
            if visible and visible[-1][3] != "crash":  # killed, interrupted or out of disk: continue where it was
                run_id = visible[-1][0]
                db.execute("UPDATE Experiments SET status='running' WHERE run_id=?", (run_id,))
                _record_process(db, run_id, code_of(commit, diff))
                resumed = True
                threads = read_row(db, self.path, run_id).threads
            else:
                run_id = _insert_run(db, identity, config_path, command, commit, diff)
                resumed = False
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        return Claim(Run(self.path, run_id, folder, resumed=resumed, measures=identity.measures, owner=identity.owner,
                         judge=judge),
                     "claimed", run_id,
                     threads)

    def latest_run(self, identity):
        """(run ID, status) of the visible run of `identity` (a failed one included), or None."""
        if not self.path.exists():
            return None
        with connect(self.path, readonly=True) as db:
            row = db.execute("SELECT run_id, status FROM Experiments WHERE experiment=? AND config_hash=? AND cli=? "
                             "AND comment=? AND hidden=0 AND run_id!=? ORDER BY run_id DESC LIMIT 1",
                             (*identity.key(), DEBUG_RUN_ID)).fetchone()
        return None if row is None else tuple(row)

    def join_sweep(self, sweep, worker):
        """Record that `worker` (this process) works on `sweep`."""
        process = liveness.this_process()
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO TemplateSweepWorker (sweep, worker, host, pid, process_token, "
                       "heartbeat, done) VALUES (?, ?, ?, ?, ?, ?, 0)",
                       (sweep, worker, process.host, process.pid, process.token, process.heartbeat))

    def beat_in_sweep(self, sweep, worker):
        """Say that `worker`, waiting for others' combinations, is still alive."""
        with self._write() as db:
            db.execute("UPDATE TemplateSweepWorker SET heartbeat=? WHERE sweep=? AND worker=?",
                       (liveness.this_process().heartbeat, sweep, worker))

    def leave_sweep(self, sweep, worker):
        """Record that `worker` is done with `sweep`; True when no other worker of it is still at work (the last)."""
        with self._write() as db:
            db.execute("UPDATE TemplateSweepWorker SET done=1 WHERE sweep=? AND worker=?", (sweep, worker))
            others = db.execute(f"SELECT {', '.join(PROCESS_COLUMNS)} FROM TemplateSweepWorker WHERE sweep=? "
                                f"AND worker!=? AND done=0", (sweep, worker)).fetchall()
        return all(liveness.is_gone(liveness.Process(*process)) for process in others)

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
            failure = db.execute("SELECT failure FROM TemplateLaunch WHERE run_id=?", (run_id,)).fetchone()
            if failure is not None and failure[0] == "pruned":
                raise UserError(f"run {run_id} was pruned by a search (its validation fell behind); a pruned run is "
                                f"never resumed")
            if check is not None:
                check(row.identity)
            db.execute("UPDATE Experiments SET status='running' WHERE run_id=?", (run_id,))
            _record_process(db, run_id)
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        return (Run(self.path, run_id, folder, resumed=True, measures=row.identity.measures,
                    owner=row.identity.owner), row.identity)

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
        return run_folder(self.path, run_id)

    @contextmanager
    def _write(self):
        """A write transaction on the table (created if missing), under an exclusive lock across processes.

        Before anything else, runs left 'running' by a process that is gone are marked failed.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a", encoding="utf-8")
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(self.path.parent, "the run table's lock file", None) from None
            raise UserError(f"cannot write in {self.path.parent} ({e.strerror}); make it writable or set "
                            f"RESULT_TABLE to a table in a folder that is, nothing was changed") from None
        if not self._warned:
            self._warned = True
            warning = network_filesystem_warning(self.path.parent)
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
                if self.note:  # a refusal, raised inside the transaction, writes nothing and says nothing of it
                    print(self.note, file=sys.stderr, flush=True)
                    self.note = None
            except (sqlite3.OperationalError, OSError) as e:
                if is_disk_full(e, self.path.parent):
                    raise disk_full(self.path.parent, "to the run table", None) from None
                if cannot_write(e):
                    raise UserError(f"cannot write to the run table {self.path} ({e}); make it and its folder "
                                    f"writable (an immutable one: chattr -i), or set RESULT_TABLE to a table that "
                                    f"is, nothing was changed") from None
                raise


def cannot_write(error):
    """True for what SQLite says of a table it may not write: a read-only or immutable file, a folder in which it
    cannot create its journal."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                                                 sqlite3.SQLITE_PERM)


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


def _insert_run(db, identity, config_path, command, commit, diff, run_id=None):
    """Record a new running run of `identity` (run ID `run_id`, or the next one); returns its run ID.

    Earlier failed attempts of the identity are kept, hidden.
    """
    if run_id is None:
        last = db.execute("SELECT MAX(COALESCE((SELECT MAX(run_id) FROM Experiments), 0), COALESCE((SELECT seq "
                          "FROM sqlite_sequence WHERE name='Experiments'), 0))").fetchone()[0]
        if last >= LARGEST_RUN_ID:  # SQLite would answer "database or disk is full"
            raise UserError(f"this run table has given out its last run ID ({last:,}); record in a new table "
                            f"(RESULT_TABLE=...), nothing was changed")
        db.execute("UPDATE Experiments SET hidden=1 WHERE experiment=? AND config_hash=? AND cli=? AND comment=? "
                   "AND hidden=0 AND run_id!=?", (*identity.key(), DEBUG_RUN_ID))
    diff_hash = hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None
    evaluated = identity.flags.get(EVALUATES)
    stored_diff = _stored_diff(db, diff, diff_hash)
    cursor = db.execute(
        "INSERT INTO Experiments (run_id, experiment, config, config_hash, cli, command, comment, tag, start, "
        "status, commit_hash, diff) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
        (run_id, identity.experiment, str(config_path), identity.config_hash, identity.cli, shown_as_text(command),
         identity.comment, f"evaluates run {evaluated}" if evaluated is not None else "",
         datetime.now().isoformat(sep=" "), commit, shown_as_text(stored_diff) if stored_diff == diff else stored_diff))
    run_id = cursor.lastrowid if run_id is None else run_id
    db.execute("INSERT INTO ConfigFile (run_id, file_content) VALUES (?, ?)",
               (run_id, shown_as_text(identity.config_text)))
    process = liveness.this_process()
    db.execute("INSERT OR REPLACE INTO TemplateLaunch (run_id, host, pid, process_token, heartbeat, flags, "
               "data_fingerprint, config_keys, group_hash, code, diff_hash, measures, evaluates, shown_escaped) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
               (run_id, process.host, process.pid, process.token, process.heartbeat,
                json.dumps(identity.flags, sort_keys=True), identity.data, json.dumps(config_keys(identity)),
                identity.group_hash, code_of(commit, diff), diff_hash, identity.measures.to_json(),
                identity.flags.get(EVALUATES)))
    return run_id


def shown_as_text(text):
    """`text` (a config, a command line, a diff) as deepboard's pages must hold it to show it as text: they insert it
    as HTML, so a `<script>` in a comment or an uncommitted file would run in the browser of whoever opens the run."""
    return html.escape(text, quote=False) if text else text


def _stored_diff(db, diff, diff_hash):
    """What Experiments.diff holds for a run with `diff`: the diff itself, or where the same one is held already.

    A sweep or a study of seeds records the same uncommitted changes thousands of times; deepboard's main page reads
    the diff column once for every hparam of every run, so a table of copies takes minutes to show. A long diff is
    kept whole once, in the first (non-debug) run that had it; later runs name that run (the readers follow it).
    """
    if not diff or len(diff) <= DIFF_INLINE_LIMIT:
        return diff
    row = db.execute("SELECT MIN(L.run_id) FROM TemplateLaunch L JOIN Experiments E ON E.run_id = L.run_id "
                     "WHERE L.diff_hash=? AND L.run_id>0 AND E.diff NOT LIKE ?",
                     (diff_hash, f"{SAME_DIFF_AS}%")).fetchone()
    return diff if row[0] is None else same_diff_as(row[0], diff_hash)


FAILURE_TAGS = ("crash", "interrupted", "terminated", "disk full", "killed", "pruned", "nondeterministic op")


def _record_process(db, run_id, code=None):
    """Record that this process now runs `run_id` (a resume), its failure reason cleared (in deepboard's tag too)."""
    db.execute(f"UPDATE Experiments SET tag='' WHERE run_id=? AND tag IN ({', '.join('?' * len(FAILURE_TAGS))})",
               (run_id, *FAILURE_TAGS))
    process = liveness.this_process()
    db.execute("UPDATE TemplateLaunch SET host=?, pid=?, process_token=?, heartbeat=?, failure=NULL, "
               "code=COALESCE(?, code) WHERE run_id=?",
               (process.host, process.pid, process.token, process.heartbeat, code, run_id))


def code_of(commit, diff):
    """A short hash of the code a run ran: its commit and uncommitted changes."""
    return hashlib.sha256(f"{commit}\n{diff}".encode()).hexdigest()[:16]


def config_keys(identity):
    """The dotted keys that count in `identity`'s config (set, not where-keys; renamed keys under their old name)."""
    return sorted(flatten_values(identity.counted_config))


def _process(db, run_id):
    row = db.execute(f"SELECT {', '.join(PROCESS_COLUMNS)} FROM TemplateLaunch WHERE run_id=?", (run_id,)).fetchone()
    return None if row is None else liveness.Process(*row)


def _mark_gone_runs_failed(db):
    """Mark failed every run left 'running' by a process that is gone: of this host and no longer there (SIGKILL,
    OOM, reboot), or of another host and silent for longer than the heartbeat lease (a dead node)."""
    rows = db.execute(f"SELECT E.run_id, {', '.join('L.' + name for name in PROCESS_COLUMNS)} FROM Experiments E "
                      "JOIN TemplateLaunch L ON L.run_id = E.run_id WHERE E.status='running'").fetchall()
    gone = [(run_id,) for run_id, *process in rows if liveness.is_gone(liveness.Process(*process))]
    db.executemany("UPDATE Experiments SET status='failed', tag='killed' WHERE run_id=?", gone)
    db.executemany("UPDATE TemplateLaunch SET failure='killed' WHERE run_id=?", gone)


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
            f"to run anyway use --debug (recorded as run -1, replaced by the next debug run), --comment=\"...\" "
            f"(a recorded variant), "
            f"or change a parameter (--config.KEY=VALUE)")
