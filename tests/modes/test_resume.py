"""--resume=RUNID through the front door, in process: a stopped run continues; anything else is refused."""
import pytest

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


class _Planted:
    """What a planted checkpoint holds: an object whose unpickling would create `marker` (any code could run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.fault("checkpoints")
def test_resume_refuses_a_planted_damaged_or_old_checkpoint_and_nothing_in_it_runs(workdir, monkeypatch):
    import numpy as np
    import torch

    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir).returncode == 130
    db = workdir / "results" / "resultTable.db"
    folder = workdir / "results" / "1"
    genuine = (folder / "last.pt").read_bytes()
    row = query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L ON L.run_id = E.run_id")
    marker = workdir / "code-ran"

    for name in ("last.pt", "best.pt"):
        kept = (folder / name).read_bytes()
        torch.save({"model": _Planted(marker)}, folder / name)
        assert_refused(run_in_process(workdir, "--resume=1"), f"results/1/{name} is refused: it holds", "io.open")
        assert not marker.exists()
        assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L "
                         "ON L.run_id = E.run_id") == row  # the run is as it was
        (folder / name).write_bytes(kept)

    (folder / "last.pt").write_bytes(genuine[:len(genuine) // 2])
    assert_refused(run_in_process(workdir, "--resume=1"), "results/1/last.pt is damaged or cut short")

    # The format of earlier versions: NumPy's and Python's random states pickled as they are.
    state = torch.load(__import__("io").BytesIO(genuine), weights_only=True)
    numpy_rng = state["numpy_rng"]
    state["numpy_rng"] = (numpy_rng["kind"], numpy_rng["keys"].numpy().astype(np.uint32), numpy_rng["pos"],
                          numpy_rng["has_gauss"], numpy_rng["gauss"])
    state["python_rng"] = (state["python_rng"]["version"], tuple(state["python_rng"]["internal"].tolist()),
                           state["python_rng"]["gauss"])
    torch.save(state, folder / "last.pt")
    assert_refused(run_in_process(workdir, "--resume=1"), "written by an earlier version of the template",
                   "--trust-old-checkpoint")
    assert_refused(run_in_process(workdir, "--verify", "--trust-old-checkpoint"), "only applies to --resume")
    resumed = run_in_process(workdir, "--resume=1", "--trust-old-checkpoint", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert "results/1/last.pt converted to the safe format" in resumed.stdout
    assert (folder / "last.pt").read_bytes() != genuine  # rewritten in the safe format, then training went on
    assert query(db, "SELECT status FROM Experiments") == [("finished",)]


@pytest.mark.fault("checkpoints")
def test_reproduce_and_verify_never_load_the_checkpoints_in_a_runs_folder(workdir):
    import torch

    assert tiny_in_process(workdir).returncode == 0
    marker = workdir / "code-ran"
    for name in ("last.pt", "best.pt"):
        torch.save({"model": _Planted(marker)}, workdir / "results" / "1" / name)
    assert run_in_process(workdir, "--reproduce=1").returncode == 0
    assert run_in_process(workdir, "--verify", "1").returncode == 0
    assert not marker.exists()


@pytest.mark.fault("checkpoints")
def test_resume_refuses_the_checkpoints_of_another_run_and_leaves_the_run_as_it_was(workdir, monkeypatch):
    import shutil

    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir).returncode == 0
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir, "--config.training.learning_rate=0.02").returncode == 130
    before = query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id) "
                       "WHERE run_id=2")
    own = {name: (workdir / "results" / "2" / name).read_bytes() for name in ("last.pt", "best.pt")}
    for name in ("last.pt", "best.pt"):  # cp results/1/*.pt results/2/
        shutil.copy(workdir / "results" / "1" / name, workdir / "results" / "2" / name)
    assert_refused(run_in_process(workdir, "--resume=2"), "results/2/last.pt was written by another run",
                   "nothing was changed")
    assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id) "
                     "WHERE run_id=2") == before == [("failed", "interrupted")]
    for name, content in own.items():  # its own checkpoints back: it resumes
        (workdir / "results" / "2" / name).write_bytes(content)
    assert run_in_process(workdir, "--resume=2", "--verbose=0").returncode == 0


def test_a_resumed_and_a_reproduced_run_print_metrics_in_their_declared_order(workdir, monkeypatch):
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir, "--verbose=1").returncode == 130
    monkeypatch.undo()
    resumed = run_in_process(workdir, "--resume=1")
    epoch_line = next(line for line in resumed.stdout.splitlines() if line.startswith("epoch 2/2"))
    assert epoch_line.index("loss") < epoch_line.index("accuracy"), epoch_line  # experiment1 declares loss first
    reproduced = run_in_process(workdir, "--reproduce=1")
    assert reproduced.returncode == 0, reproduced.stderr
    rows = [line.split()[0] for line in reproduced.stdout.splitlines()[-11:-1]]
    assert rows.index("test_loss") < rows.index("test_accuracy") and rows.index("val/loss") < rows.index(
        "val/accuracy"), rows


def test_a_validation_that_was_nan_in_epoch_1_gives_way_to_a_later_better_epoch(workdir, monkeypatch):
    import training.loop

    real, calls = training.loop.evaluate, []

    def nan_first(model, batches, task, **kwargs):
        calls.append(1)
        metrics = real(model, batches, task, **kwargs)
        return {name: float("nan") for name in metrics} if len(calls) == 1 else metrics
    monkeypatch.setattr(training.loop, "evaluate", nan_first)
    assert tiny_in_process(workdir).returncode == 0
    db = workdir / "results" / "resultTable.db"
    results = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=0"))
    assert results["best_epoch"] == 2 and results["best_val_accuracy"] > 0, results


def test_what_a_run_logs_before_its_epoch_loop_is_recorded_once_across_resumes(workdir, monkeypatch):
    """An evaluation of the initial model at epoch 0 (as an experiment may log one before its loop): a resume, whose
    model is the trained one by then, does not write it again, and --reproduce matches."""
    from utils.epochs import Epochs

    init = Epochs.__init__

    def logging_the_initial_model(self, run, model, *args, **kwargs):
        init(self, run, model, *args, **kwargs)
        run.log_scalar("val/initial_norm", float(sum(p.detach().norm() for p in model.parameters())), step=0, epoch=0)
        run.log_text("initial", f"{sum(p.numel() for p in model.parameters())} parameters", step=0, epoch=0)
    monkeypatch.setattr(Epochs, "__init__", logging_the_initial_model)
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir).returncode == 130
    resumed = run_in_process(workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=1 AND label='initial_norm'") == [(1,)]
    assert query(db, "SELECT COUNT(*) FROM Fragments WHERE run_id=1 AND tag='initial'") == [(1,)]
    reproduced = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert reproduced.returncode == 0 and "run 1 reproduced" in reproduced.stdout, reproduced.stdout
