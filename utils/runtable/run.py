"""The logging API of one registered run: hparams, texts, scalars and results, ending finished or failed."""
import time
from contextlib import contextmanager
from pathlib import Path

from utils.runtable.schema import connect

FLUSH_EVERY = 200  # scalars buffered before they are written (also written at every flush() and at the end)


class Run:
    """One registered run: records hparams, scalars and results in the table, and ends finished or failed.

    Used as a context manager, a run that leaves the block by an exception (Ctrl-C and SIGTERM included) is marked
    failed, after every scalar it logged has been written. Once finished, nothing can change it.
    """

    def __init__(self, table_path, run_id, folder, resumed=False):
        self.id = run_id
        self.folder = Path(folder)
        self.resumed = resumed  # continuing a failed run: the experiment restores its last epoch checkpoint
        self.status = "running"
        self._path = table_path
        self._buffer = []
        self._start = time.monotonic()

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
        """Write the buffered scalars now."""
        if self._buffer:
            with self._writing() as db:
                db.executemany("INSERT INTO Logs (run_id, epoch, step, split, label, value, wall_time, run_rep) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._buffer)
            self._buffer = []

    def discard_logs_after(self, epoch):
        """Delete this run's scalars of epochs after `epoch`: a resumed run replays them from its last checkpoint."""
        with self._writing() as db:
            db.execute("DELETE FROM Logs WHERE run_id=? AND epoch>?", (self.id, epoch))

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
        with connect(self._path) as db:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.commit()


class Replica(Run):
    """The run as torchrun's ranks other than 0 see it: the same ID and folder, recording nothing (rank 0 records)."""

    def __init__(self, run_id, folder, resumed=False):
        super().__init__(None, run_id, folder, resumed)

    def log_hparams(self, hparams):
        pass

    def log_text(self, tag, text):
        pass

    def log_scalar(self, tag, value, step, epoch):
        pass

    def flush(self):
        pass

    def discard_logs_after(self, epoch):
        pass

    def finish(self, results):
        self.status = "finished"

    def fail(self):
        self.status = "failed"
