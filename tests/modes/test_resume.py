"""--resume=RUNID through the front door, in process: a stopped run continues; anything else is refused."""
from helpers import assert_refused, interrupt_after_first_epoch, query, run_in_process, tiny_in_process
from utils.runtable.liveness import this_process


def test_resume_continues_a_stopped_run_and_refuses_a_running_a_hidden_and_a_finished_one(workdir, monkeypatch):
    assert_refused(run_in_process(workdir, "--resume=1"), "no run table")
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir).returncode == 130
    db = workdir / "results" / "resultTable.db"
    assert_refused(run_in_process(workdir, "--resume=3"), "there is no run 3")
    assert_refused(run_in_process(workdir, "--resume=1", "--watch=loss"), "drop --watch")

    # Running: held by a live process of this host (this very test).
    me = this_process()
    query(db, "UPDATE Experiments SET status='running' WHERE run_id=1")
    query(db, "UPDATE TemplateLaunch SET host=?, pid=?, process_token=?, heartbeat=? WHERE run_id=1",
          me.host, me.pid, me.token, me.heartbeat)
    assert_refused(run_in_process(workdir, "--resume=1"), "run 1 is still running on")
    query(db, "UPDATE Experiments SET status='failed' WHERE run_id=1")

    resumed = run_in_process(workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert query(db, "SELECT run_id, status FROM Experiments") == [(1, "finished")]
    assert_refused(run_in_process(workdir, "--resume=1"), "run 1 finished; a finished run cannot be resumed")

    # Hidden: a failed attempt that a relaunch of its config has replaced.
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir, "--comment=second").returncode == 130
    assert tiny_in_process(workdir, "--comment=second").returncode == 0
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "failed", 1), (3, "finished", 0)]
    assert_refused(run_in_process(workdir, "--resume=2"), "run 2 is hidden")
