"""The run table's file: creating it, opening it checked, and the template's side table beside deepboard's.

This is the only module that imports deepboard, and only to create a new table, so that deepboard's GUI and API read
it as their own; everything else reads and writes it with sqlite3 on deepboard's 0.3 schema.
"""
import glob
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError
from utils.stopping import stops_held

LARGEST_RUN_ID = 2**63 - 1  # SQLite's largest integer: a table gives out no run ID past it
UNIQUE_COLUMNS = ("experiment", "config_hash", "cli", "comment")
SUPPORTED_VERSION_PREFIX = "0.3."  # deepboard's table format; 0.3.x tables are all alike
BUSY_TIMEOUT_S = 120  # how long a write waits for another process's write before giving up

# The template's own bookkeeping of each run it recorded: which process runs it, with which flags. Columns added
# later are added to an existing table by the first launch that writes (ALTER TABLE ... ADD COLUMN).
SIDE_TABLE = "TemplateLaunch"
SIDE_COLUMNS = {
    "run_id": "INTEGER PRIMARY KEY", "host": "TEXT NOT NULL", "pid": "INTEGER NOT NULL", "process_token": "TEXT",
    "flags": "TEXT NOT NULL",
    "data_fingerprint": "TEXT",  # what the data was (the identity hashes it with the config)
    "config_keys": "TEXT",  # the dotted keys the run's config set (JSON), to tell when a config gains a key
    "group_hash": "TEXT",  # shared by the runs that differ only in their seed (see identity.group_hash)
    "heartbeat": "REAL",  # when the running process last said it was alive (epoch seconds; see liveness.py)
    "failure": "TEXT",  # why a failed run stopped: crash, interrupted, terminated, disk full, killed, pruned,
    # nondeterministic op
    "code": "TEXT",  # a hash of the code it ran (commit and diff): a sweep retries a crash once per code
    "diff_hash": "TEXT",  # of its uncommitted changes, which the table holds once (see registry._stored_diff)
    "measures": "TEXT",  # what it measured, which way is better, what selected (utils.measures.Measures, JSON)
    "evaluates": "INTEGER",  # the run whose model an evaluation scored (--evaluate); null for a training run
    # 1: its config file, command line and diff are stored with &, < and > escaped, because deepboard's pages insert
    # them as HTML; the readers give them back as they were (runs recorded before hold them as they were)
    "shown_escaped": "INTEGER",
}
# The workers of each sweep (any number of identical --sweep commands), so that the last one to end prints its table.
SWEEP_WORKERS = """CREATE TABLE IF NOT EXISTS TemplateSweepWorker (sweep TEXT NOT NULL, worker TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, process_token TEXT, heartbeat REAL, done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sweep, worker))"""
# Every per-run query filters on run_id: without these, each one scans the whole table (minutes at 10,000 runs).
INDEXES = {
    "template_logs_run": "Logs(run_id, split, label, step)",
    "template_results_run": "Results(run_id)",
    "template_fragments_run": "Fragments(run_id)",
    "template_images_run": "Images(run_id)",
    "template_launch_diff": "TemplateLaunch(diff_hash)",
    "template_results_metric": "Results(metric, is_hparam)",
}


def create_table(path):
    """Create a new, empty run table at `path` with deepboard's schema (its GUI expects exactly that), whole or not
    at all: it is made under another name and renamed into place, with stop signals held until it is, so that a
    Ctrl-C or a kill at any instant leaves no half-made table that every later launch would refuse."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.creating-{os.getpid()}")
    with stops_held():
        try:
            from deepboard.resultTable import ResultTable
            ResultTable(str(partial), unique_columns=UNIQUE_COLUMNS)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    for leftover in path.parent.glob(f"{glob.escape(path.name)}.creating-*"):  # of a process killed while creating
        leftover.unlink(missing_ok=True)


# A finished run's status is final, whoever writes: deepboard's own writers (which its GUI, and scripts calling
# ResultTable.load_run, build for reading) flip every run they loaded to "failed" when their process later crashes.
FINISHED_IS_FINAL = """CREATE TRIGGER IF NOT EXISTS template_finished_is_final BEFORE UPDATE OF status ON Experiments
    WHEN OLD.status = 'finished' AND NEW.status != 'finished' BEGIN SELECT RAISE(IGNORE); END"""


# The hparam columns the template hid in deepboard's main page until two runs differ in them (see Run.log_hparams).
HIDDEN_COLUMNS = "CREATE TABLE IF NOT EXISTS TemplateHiddenColumn (name TEXT PRIMARY KEY)"


def prepare_for_writing(db):
    """Add the side table, its newer columns, the indexes and the trigger that keeps finished runs finished to a
    checked table, changing nothing else in it."""
    columns = ", ".join(f"{name} {kind}" for name, kind in SIDE_COLUMNS.items())
    db.execute(f"CREATE TABLE IF NOT EXISTS {SIDE_TABLE} ({columns})")
    present = {row[1] for row in db.execute(f"PRAGMA table_info({SIDE_TABLE})")}
    for name, kind in SIDE_COLUMNS.items():
        if name not in present:
            db.execute(f"ALTER TABLE {SIDE_TABLE} ADD COLUMN {name} {kind}")
    for name, target in INDEXES.items():
        db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")
    db.execute(FINISHED_IS_FINAL)
    db.execute(SWEEP_WORKERS)
    db.execute(HIDDEN_COLUMNS)


@contextmanager
def connect(path, readonly=False):
    """A connection to the checked table at `path`; `readonly` opens it so that nothing can be written through it.

    A UserError if the file is not a deepboard 0.3 ResultTable.
    """
    path = Path(path)
    try:
        if readonly:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                 isolation_level=None)
        else:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise UserError(f"cannot open the run table {path}: {e}") from None
    try:
        check_version(db, path)
        yield db
    finally:
        db.close()


# deepboard 0.3's tables and the columns of each that it and the template read and write: a file lacking one (edited
# by hand, or by another tool) is refused whole, before anything reads or writes it.
DEEPBOARD_TABLES = {
    "Experiments": ("run_id", "experiment", "config", "config_hash", "cli", "command", "comment", "note", "tag",
                    "color", "start", "status", "commit_hash", "diff", "hidden"),
    "Results": ("id_", "run_id", "metric", "value", "is_hparam"),
    "Logs": ("id_", "run_id", "epoch", "step", "split", "label", "value", "wall_time", "run_rep"),
    "ConfigFile": ("run_id", "file_content"),
    "Images": ("id_", "run_id", "step", "epoch", "run_rep", "img_type", "tag", "image"),
    "Fragments": ("id_", "run_id", "step", "epoch", "run_rep", "fragment_type", "tag", "fragment"),
    "ResultDisplay": ("Name", "display_order", "alias", "is_hparam"),
}


def check_version(db, path):
    try:
        row = db.execute("SELECT value FROM Meta WHERE key='deepboard_version'").fetchone()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path} is not a deepboard run table ({e}); move it away or point elsewhere, "
                        f"nothing was changed") from None
    version = None if row is None else row[0]
    if version is None or not version.startswith(SUPPORTED_VERSION_PREFIX):
        raise UserError(f"{path} was made by deepboard {version or '< 0.3'}, this template reads "
                        f"{SUPPORTED_VERSION_PREFIX}x tables; move it away to start a new table, nothing was changed")
    for table, columns in DEEPBOARD_TABLES.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = [column for column in columns if column not in present]
        if missing:
            what = f"its table {table}" if not present else f"the column {missing[0]} of its table {table}"
            raise UserError(f"{path} is a deepboard table without {what}; restore it from a copy, or move it away to "
                            f"start a new table, nothing was changed")


def side_columns(db):
    """The columns the side table has in this file (an older table may lack some, or the whole table)."""
    return {row[1] for row in db.execute(f"PRAGMA table_info({SIDE_TABLE})")}


# Filesystems whose POSIX locks SQLite cannot always rely on (their lock daemons and caches differ by setup).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "9p", "afs", "ocfs2", "panfs", "pvfs2", "orangefs")


def filesystem_type(path, mounts="/proc/mounts"):
    """The type of the filesystem that holds `path` (its nearest existing folder), from the mount table; or None."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    best, kind = "", None
    try:
        lines = Path(mounts).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def network_filesystem_warning(path, mounts="/proc/mounts"):
    """A one-line warning when `path` lies on a network filesystem, else None."""
    kind = filesystem_type(path, mounts)
    if kind is None or kind not in NETWORK_FILESYSTEMS:
        return None
    return (f"warning: {path} lies on a network filesystem ({kind}): the run table relies on working POSIX locks "
            f"there; if they are broken, concurrent launches can corrupt it (see docs/faults.md: results on a shared "
            f"filesystem)")
