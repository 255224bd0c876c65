"""The run table in process: registering, refusing and resuming runs, what a run records, and read-only readers."""
import sys

import pytest

from helpers import query
from utils.errors import UserError
from utils.runtable.identity import RunIdentity
from utils.runtable.readers import read_run, runs_frame
from utils.runtable.registry import RunTable


@pytest.fixture
def table(tmp_path):
    return RunTable(tmp_path / "results" / "resultTable.db")


def start(table, comment="", debug=False, config="seed: 0\n"):
    return table.start_run(RunIdentity("experiment1", config, comment=comment), config_path="c.yml",
                           command="main.py", commit=None, diff=None, debug=debug)


def test_a_refused_launch_creates_nothing(table):
    assert table.find_run(RunIdentity("experiment1", "seed: 0\n")) is None
    assert not table.path.exists() and not table.path.parent.exists()


def test_a_finished_or_running_identity_is_refused_and_a_failed_one_runs_again_keeping_the_attempt(table):
    first = start(table)
    with pytest.raises(UserError, match=r"run 1 \(experiment1, running on .* \(pid \d+\)\) already has this config"):
        start(table)  # this process is alive: its run blocks the identity
    first.finish({"test_accuracy": 0.5})
    with pytest.raises(UserError, match=r"run 1 \(experiment1, finished\)"):
        table.refuse_duplicate(RunIdentity("experiment1", "seed: 0\n"))
    other = start(table, config="seed: 1\n")
    other.fail()
    retry = start(table, config="seed: 1\n")
    assert retry.id == 3
    assert query(table.path, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "failed", 1), (3, "running", 0)]


def test_debug_runs_replace_each_other_and_their_folder(table):
    first = start(table, debug=True)
    (first.folder / "best.pt").write_text("old")
    first.log_scalar("val/accuracy", 0.1, step=1, epoch=1)
    first.finish({"test_accuracy": 0.1})
    second = start(table, debug=True)
    assert second.id == -1 and not (second.folder / "best.pt").exists()
    assert query(table.path, "SELECT COUNT(*) FROM Logs WHERE run_id=-1") == [(0,)]
    with pytest.raises(UserError, match="debug run -1 is in progress"):
        start(table, debug=True)


def test_resume_takes_only_a_failed_visible_run(table):
    finished = start(table)
    finished.finish({})
    running = start(table, config="seed: 1\n")
    with pytest.raises(UserError, match="run 1 finished; a finished run cannot be resumed"):
        table.resume_run(1)
    with pytest.raises(UserError, match="run 2 is still running on"):
        table.resume_run(2)
    running.fail()
    start(table, config="seed: 1\n").fail()  # a retry: run 2 is now hidden behind run 3
    with pytest.raises(UserError, match="run 2 is hidden"):
        table.resume_run(2)
    with pytest.raises(UserError, match="there is no run 9"):
        table.resume_run(9)
    run, identity = table.resume_run(3)
    assert run.resumed and identity.config_text == "seed: 1\n" and table.status(3) == "running"


@pytest.mark.fault("readers")
def test_a_finished_run_is_never_changed_by_a_later_crash_in_the_same_process(table):
    with start(table, comment="a") as first:
        first.log_scalar("val/accuracy", 0.5, step=1, epoch=1)
        first.finish({"test_accuracy": 0.5})
    with pytest.raises(ZeroDivisionError):
        with start(table, comment="b") as second:
            second.log_scalar("val/accuracy", 0.1, step=1, epoch=1)
            raise ZeroDivisionError("a crash in the experiment")
    sys.excepthook(ZeroDivisionError, ZeroDivisionError(), None)  # what an uncaught crash would call
    first.fail()
    assert table.status(first.id) == "finished" and table.status(second.id) == "failed"
    assert query(table.path, "SELECT COUNT(*) FROM Logs WHERE run_id=?", second.id) == [(1,)]  # flushed on failure
    with pytest.raises(RuntimeError, match="finished"):
        first.log_scalar("val/accuracy", 0.9, step=2, epoch=2)
    assert table.find_run(RunIdentity("experiment1", "seed: 0\n")) is None  # without a comment it never ran


def test_readers_give_what_was_recorded(table):
    with start(table) as run:
        run.log_hparams({"training.learning_rate": 0.1, "model.channels": [4, 8]})
        run.log_scalar("val/accuracy", 0.5, step=10, epoch=1)
        run.log_scalar("val/accuracy", 0.7, step=20, epoch=2)
        run.finish({"test_accuracy": 0.75})
    recorded = read_run(table.path, 1)
    assert recorded.status == "finished" and recorded.results == {"test_accuracy": 0.75}
    assert recorded.scalars == {"val/accuracy": [(10, 0.5), (20, 0.7)]}
    frame = runs_frame(table.path)
    assert frame.loc[1, "training.learning_rate"] == 0.1 and frame.loc[1, "model.channels"] == "[4, 8]"
    assert frame.loc[1, "test_accuracy"] == 0.75
    with pytest.raises(UserError, match="there is no run table"):
        read_run(table.path.with_name("other.db"), 1)


def test_the_indexes_are_made_with_a_new_table_and_added_to_an_older_one_by_the_first_write(table):
    from utils.runtable.schema import INDEXES

    def indexes():
        return {name for (name,) in query(table.path, "SELECT name FROM sqlite_master WHERE type='index'")}

    with start(table) as run:
        run.log_scalar("val/accuracy", 0.5, step=1, epoch=1)
        run.finish({"test_accuracy": 0.5})
    assert set(INDEXES) <= indexes()
    for name in INDEXES:  # a table written by an older template, without them
        query(table.path, f"DROP INDEX {name}")

    def run_one():
        return [query(table.path, f"SELECT * FROM {name} WHERE run_id=1")
                for name in ("Experiments", "Logs", "Results")]

    before = run_one()
    assert table.find_run(RunIdentity("experiment1", "seed: 0\n")) is not None  # reading adds nothing
    assert not set(INDEXES) & indexes()
    start(table, config="seed: 1\n").finish({})
    assert set(INDEXES) <= indexes() and run_one() == before


def test_a_long_diff_is_held_once_and_every_run_reads_it_whole(table):
    diff = "diff --git a/models/cnn.py b/models/cnn.py\n" + "+# a long change\n" * 300

    def launch(seed):
        return table.start_run(RunIdentity("experiment1", f"seed: {seed}\n"), config_path="c.yml", command="main.py",
                               commit="abc", diff=diff)

    for seed in range(3):
        launch(seed).finish({})
    stored = [text for (text,) in query(table.path, "SELECT diff FROM Experiments ORDER BY run_id")]
    assert stored[0] == diff and all(text.startswith("(the same uncommitted changes as run 1 ") for text in stored[1:])
    assert all(read_run(table.path, run_id).diff == diff for run_id in (1, 2, 3))
    short = table.start_run(RunIdentity("experiment1", "seed: 9\n"), config_path="c.yml", command="main.py",
                            commit="abc", diff="+one line\n")
    assert query(table.path, "SELECT diff FROM Experiments WHERE run_id=?", short.id) == [("+one line\n",)]
