"""Resume points, through the front door in process: a stop signal keeps the step it lands in, and the resumed run
ends with exactly the numbers and checkpoints of the run that was never stopped; resume points every N steps; early
stopping."""
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import (REPO, assert_refused, env_recording_in, query, recorded_numbers, run_in_process, signal_at_call,
                     signal_at_step, tiny_charlm_config)
import training.loop
from utils.runtable.readers import run_output

# Shorter batches than the tiny configs' own: 16 steps an epoch for the CNN, 65 for the language model.
STEPS = {"experiment1": 16, "charlm": 65, "tabular": 25}


@pytest.fixture
def tiny_long(tiny):
    """Each shipped experiment's tiny config, with epochs of STEPS steps."""
    config = tiny.folder / tiny.config
    changes = {"experiment1": {"data": {"batch_size": 32}},
               "tabular": {"data": {"batch_size": 8}, "training": {"num_epochs": 2}}}.get(tiny.experiment, {})
    values = yaml.safe_load(config.read_text())
    for section, keys in changes.items():
        values[section].update(keys)
    config.write_text(yaml.safe_dump(values))
    return tiny


def copy_of(tiny, folder):
    """The same experiment and config in another working folder (its own run table)."""
    (folder / "configs").mkdir(parents=True)
    (folder / tiny.config).write_text((tiny.folder / tiny.config).read_text())
    return folder


def trained_state(folder, run_id=1):
    """The weights and optimizer state of a run's best.pt and last.pt: what its checkpoints hold that training made."""
    states = {}
    for name in ("best.pt", "last.pt"):
        state = torch.load(folder / "results" / str(run_id) / name, weights_only=True)
        states[name] = (state["model"], state.get("optimizer"))
    return states


def same(a, b):
    """Whether two nested structures of tensors and numbers are equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


# Where the stop lands: (a step that begins when it comes, or its validation pass), and what the run says of it.
STOPS = {
    "in the first step": (1, None, "in epoch 1 after step 1 (1 of its {steps} steps done)"),
    "mid-epoch": ("steps + 4", None, "in epoch 2 after step {step} (4 of its {steps} steps done)"),
    "in the last step of a pass": ("steps", None, "in epoch 1 at its validation (after step {steps})"),
    "in validation": (None, 2, "in epoch 2 at its validation (after step {step})"),
}


SIGNALS = {signal.SIGTERM: (143, "terminated"), signal.SIGINT: (130, "interrupted")}


@pytest.mark.fault("kills")
@pytest.mark.parametrize("where, signum", [
    ("mid-epoch", signal.SIGTERM),
    pytest.param("in validation", signal.SIGINT, marks=pytest.mark.slow),
    pytest.param("in the first step", signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("in the last step of a pass", signal.SIGINT, marks=pytest.mark.slow),
    pytest.param("mid-epoch", signal.SIGINT, marks=pytest.mark.slow),
    pytest.param("in validation", signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_stop_writes_the_step_it_lands_in_and_the_resumed_run_is_the_uninterrupted_one(tiny_long, tmp_path,
                                                                                        monkeypatch, where, signum):
    tiny, steps, (code, what) = tiny_long, STEPS[tiny_long.experiment], SIGNALS[signum]
    assert run_in_process(tiny.folder, *tiny.args).returncode == 0
    reference = recorded_numbers(tiny.folder / "results" / "resultTable.db", 1), trained_state(tiny.folder)

    folder = copy_of(tiny, tmp_path / "stopped")
    step, validation, said = STOPS[where]
    if validation is None:
        step = eval(step, {"steps": steps}) if isinstance(step, str) else step
        signal_at_step(monkeypatch, step, signum)
    else:
        step = 2 * steps
        signal_at_call(monkeypatch, training.loop, "evaluate", validation, signum)
    said = said.format(steps=steps, step=step)
    stopped = run_in_process(folder, *tiny.args)
    assert stopped.returncode == code, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (f"{what}: run 1 is marked failed, with all it logged; it "
                                                       f"continues {said} with python main.py --resume=1")
    db = folder / "results" / "resultTable.db"
    assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id)") == [
        ("failed", what)]
    position = torch.load(folder / "results" / "1" / "last.pt", weights_only=True)["position"]
    assert position["step"] == step and position["loops"][0]["elapsed"] > 0  # the pass's clock goes on from there

    resumed = run_in_process(folder, "--resume=1", "--verbose=1")
    assert resumed.returncode == 0, resumed.stderr
    assert f"run 1: resuming {said}\n" in resumed.stdout
    assert recorded_numbers(db, 1) == reference[0]  # every point once, every result, bit for bit
    assert same(trained_state(folder), reference[1])  # and the checkpoints' weights and optimizer state


def test_resume_points_every_n_steps_are_written_without_changing_the_run_or_its_identity(workdir, monkeypatch):
    import utils.epochs

    config = workdir / "configs" / "tiny.yml"
    config.write_text(config.read_text().replace("batch_size: 128", "batch_size: 32"))
    writes = []
    save = utils.epochs.save_training_state

    def saving(*args, **kwargs):
        writes.append(kwargs.get("position", {}).get("step", "epoch end"))
        return save(*args, **kwargs)

    monkeypatch.setattr(utils.epochs, "save_training_state", saving)
    done = run_in_process(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0",
                          "--config.training.checkpoint_every=5")
    assert done.returncode == 0, done.stderr
    assert writes == [5, 10, 15, "epoch end", 20, 25, 30, "epoch end"]  # 16 steps an epoch

    # How often the resume point is written is not what the run computes: the same run, refused as a duplicate.
    assert_refused(run_in_process(workdir, "--experiment=experiment1", "--config=configs/tiny.yml"),
                   "run 1 (experiment1, finished) already has this config")
    other = workdir.parent / "other"
    (other / "configs").mkdir(parents=True)
    (other / "configs" / "tiny.yml").write_text(config.read_text())
    assert run_in_process(other, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0"
                          ).returncode == 0
    assert recorded_numbers(other / "results" / "resultTable.db", 1) == recorded_numbers(
        workdir / "results" / "resultTable.db", 1)


def test_a_stopped_run_may_resume_with_another_checkpoint_interval(workdir, monkeypatch):
    config = workdir / "configs" / "tiny.yml"
    config.write_text(config.read_text().replace("batch_size: 128", "batch_size: 32"))
    signal_at_step(monkeypatch, 7)
    assert run_in_process(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0"
                          ).returncode == 143
    assert_refused(run_in_process(workdir, "--resume=1", "--config.training.patience=2"),
                   "drop --config.training.patience")
    resumed = run_in_process(workdir, "--resume=1", "--config.training.checkpoint_every=4", "--verbose=1")
    assert resumed.returncode == 0, resumed.stderr
    assert "run 1: resuming in epoch 1 after step 7 (7 of its 16 steps done)" in resumed.stdout


@pytest.mark.slow
def test_sweep_workers_resume_a_stopped_run_from_its_step(workdir, monkeypatch):
    config = workdir / "configs" / "tiny.yml"
    config.write_text(config.read_text().replace("batch_size: 128", "batch_size: 32"))
    args = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=1", "--seeds=2")
    signal_at_step(monkeypatch, 2 * 16 + 16 + 8)  # the second seed's run, 8 steps into its second epoch
    assert run_in_process(workdir, *args).returncode == 143
    again = run_in_process(workdir, *args)
    assert again.returncode == 0, again.stderr
    assert "run 2: resuming in epoch 2 after step 24 (8 of its 16 steps done)" in again.stdout
    reference = workdir.parent / "reference"
    (reference / "configs").mkdir(parents=True)
    (reference / "configs" / "tiny.yml").write_text(config.read_text())
    assert run_in_process(reference, *args).returncode == 0
    for run_id in (1, 2):
        assert recorded_numbers(workdir / "results" / "resultTable.db", run_id) == recorded_numbers(
            reference / "results" / "resultTable.db", run_id)


@pytest.mark.slow
def test_patience_stops_the_run_early_and_the_best_epoch_meets_the_test_set(tmp_path, text_root):
    # A learning rate far too high: the validation loss stops improving after an epoch or two.
    config = tiny_charlm_config(text_root, **{"training.num_epochs": 12, "training.learning_rate": 0.2,
                                              "training.schedule": "constant", "training.patience": 2})
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yml").write_text(yaml.safe_dump(config))
    done = run_in_process(tmp_path, "--experiment=charlm", "--config=configs/c.yml", "--verbose=1")
    assert done.returncode == 0, done.stderr
    db = tmp_path / "results" / "resultTable.db"
    results = dict(query(db, "SELECT metric, value FROM Results WHERE is_hparam=0"))
    best, trained = results["best_epoch"], results["epochs_trained"]
    assert results["stopped_early"] == 1 and trained == best + 2 < 12
    assert query(db, "SELECT status FROM Experiments") == [("finished",)]
    assert f"stopped early: val loss did not improve for 2 epochs after epoch {best}" in done.stdout
    assert query(db, "SELECT MAX(epoch) FROM Logs WHERE run_id=1") == [(trained,)]
    assert torch.load(tmp_path / "results" / "1" / "best.pt", weights_only=True)["epoch"] == best

    # With a patience that never runs out, the results say so.
    patient = run_in_process(tmp_path, "--experiment=charlm", "--config=configs/c.yml", "--verbose=0",
                             "--config.training.patience=100", "--config.training.num_epochs=3")
    assert patient.returncode == 0, patient.stderr
    results = dict(query(db, "SELECT metric, value FROM Results WHERE is_hparam=0 AND run_id=2"))
    assert results["stopped_early"] == 0 and results["epochs_trained"] == 3


def test_a_run_without_a_patience_records_the_results_it_always_did(workdir):
    assert run_in_process(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0"
                          ).returncode == 0
    assert sorted(metric for (metric,) in query(workdir / "results" / "resultTable.db",
                                                "SELECT metric FROM Results WHERE is_hparam=0")) == [
        "best_epoch", "best_val_accuracy", "test_accuracy", "test_loss"]


@pytest.mark.fault("kills")
@pytest.mark.slow
@pytest.mark.parametrize("instant, continues_after", [("step-13", 10), ("mid-checkpoint", 5)])
def test_a_kill_between_resume_points_loses_at_most_checkpoint_every_steps(tiny_long, tmp_path, instant,
                                                                          continues_after):
    every = ("--config.training.checkpoint_every=5",)
    assert run_in_process(tiny_long.folder, *tiny_long.args, *every).returncode == 0
    reference = recorded_numbers(tiny_long.folder / "results" / "resultTable.db", 1)
    folder = copy_of(tiny_long, tmp_path / "killed")
    # step-13: killed as its 13th step begins (resume points after steps 5 and 10); mid-checkpoint: killed half-way
    # through writing the resume point of step 10, which leaves the one of step 5 whole.
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), instant, *tiny_long.args[:2],
                             "--verbose=1", *every], cwd=folder, capture_output=True, text=True, timeout=300,
                            env=env_recording_in(folder))
    assert killed.returncode == -9, killed.stderr
    resumed = run_in_process(folder, "--resume=1", "--verbose=1")
    assert resumed.returncode == 0, resumed.stderr
    steps = STEPS[tiny_long.experiment]
    said = f"run 1: resuming in epoch 1 after step {continues_after} ({continues_after} of its {steps} steps done)"
    assert said in resumed.stdout
    db = folder / "results" / "resultTable.db"
    assert recorded_numbers(db, 1) == reference

    # What the run printed, before the kill and after the resume, is kept in its folder and reachable from the table.
    log = (folder / "results" / "1" / "output.log").read_text()
    segments = log.split("--- run 1")[1:]
    assert len(segments) == 2 and segments[1].startswith(", resumed, ")
    assert f"run 1: {tiny_long.experiment}, checkpoints in results/1" in segments[0]
    assert said in segments[1] and "epoch 2/2: train " in segments[1]
    [(kept,)] = query(db, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='output'")
    assert kept in log and said in kept
    assert run_output(db, 1) == log
