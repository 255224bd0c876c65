"""A run table you can trust: failed, interrupted, killed, resumed and concurrent runs, through real processes."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import (MAIN, assert_refused, logged_epochs, make_mnist_folder, private_mounts_work, query,
                     recorded_numbers, run_main, run_tiny, start_main, tiny_config, wait_for)

pytestmark = pytest.mark.slow
TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")


@pytest.fixture(scope="module")
def slow_root(tmp_path_factory):
    """Enough synthetic images that an epoch lasts long enough to be interrupted in the middle of a run."""
    return make_mnist_folder(tmp_path_factory.mktemp("slow-data"), n_train=2400, n_test=200)


@pytest.fixture
def slow_workdir(tmp_path, slow_root):
    (tmp_path / "configs").mkdir()
    config = tiny_config(slow_root, **{"training.num_epochs": 4, "data.batch_size": 32})
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(config))
    return tmp_path


def stop_after_first_epoch(workdir, sig, *args):
    """Start a run, send `sig` once it has logged its first epoch; returns the finished Popen and its stderr."""
    db = workdir / "results" / "resultTable.db"
    process = start_main(workdir, *TINY, *args)
    wait_for(lambda: logged_epochs(db, 1) >= 1 or process.poll() is not None, what="the first epoch")
    assert process.poll() is None, process.communicate()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process, stderr


def test_sigterm_marks_the_run_failed_keeps_its_scalars_and_resume_matches_an_uninterrupted_run(slow_workdir):
    db = slow_workdir / "results" / "resultTable.db"
    process, stderr = stop_after_first_epoch(slow_workdir, signal.SIGTERM)
    assert process.returncode == 143
    assert "terminated: run 1 is marked failed" in stderr and "--resume=1" in stderr
    assert "Traceback" not in stderr
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [("failed",)]
    kept, _ = recorded_numbers(db, 1)
    assert logged_epochs(db, 1) >= 1 and any(label == "step_loss" for _, label, *_ in kept)

    resumed = run_main(slow_workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [("finished",)]
    assert_refused(run_main(slow_workdir, "--resume=1"), "run 1 finished", "cannot be resumed")

    # The same config never interrupted (a comment changes the identity, not the computation).
    reference = run_tiny(slow_workdir, "--comment=reference")
    assert reference.returncode == 0, reference.stderr
    assert recorded_numbers(db, 1) == recorded_numbers(db, 2)  # every point and result, bit for bit (timings aside)
    curves, _ = recorded_numbers(db, 1)
    assert len(curves) == len({(split, label, step) for split, label, _, step, _ in curves})  # no point twice


def test_sigkill_leaves_running_until_the_next_launch_marks_it_failed_and_resumes(slow_workdir):
    db = slow_workdir / "results" / "resultTable.db"
    process, _ = stop_after_first_epoch(slow_workdir, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [("running",)]
    assert logged_epochs(db, 1) >= 1  # flushed at each epoch's end, so even SIGKILL keeps finished epochs

    # The process is gone: a new launch of the same command is not refused; run 1 is kept, hidden, as failed.
    retry = run_tiny(slow_workdir)
    assert retry.returncode == 0, retry.stderr
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "failed", 1), (2, "finished", 0)]
    assert logged_epochs(db, 1) >= 1


def test_ctrl_c_stops_cleanly_and_the_run_can_be_resumed(slow_workdir):
    db = slow_workdir / "results" / "resultTable.db"
    process, stderr = stop_after_first_epoch(slow_workdir, signal.SIGINT)
    assert process.returncode == 130 and "interrupted: run 1 is marked failed" in stderr
    assert "Traceback" not in stderr
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [("failed",)]
    assert run_main(slow_workdir, "--resume=1", "--verbose=0").returncode == 0
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [("finished",)]


def test_a_bug_in_experiment_code_shows_its_traceback_and_fails_the_run_keeping_what_it_logged(workdir, code_copy):
    db = workdir / "results" / "resultTable.db"
    loop = code_copy / "experiments" / "experiment1.py"
    loop.write_text(loop.read_text().replace(
        "        val_metrics = evaluate(", "        assert epoch < 2, 'a bug in epoch 2'\n        val_metrics = evaluate("))
    crashed = run_tiny(workdir, main=code_copy / "main.py")
    assert crashed.returncode == 1
    assert "Traceback" in crashed.stderr and "a bug in epoch 2" in crashed.stderr
    assert query(db, "SELECT status FROM Experiments") == [("failed",)]
    # Every scalar logged before the crash is kept: the whole first epoch and epoch 2's step losses.
    assert logged_epochs(db, 1) == 1
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=1 AND label='step_loss' AND epoch=2")[0][0] > 0
    # The failed config is not blocked: the retry is recorded anew and the failed attempt is kept, hidden.
    assert run_tiny(workdir, main=code_copy / "main.py").returncode == 1
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "failed", 1), (2, "failed", 0)]


@pytest.mark.parametrize("copies", [2, 4])
def test_identical_launches_at_once_run_exactly_once(workdir, copies):
    processes = [start_main(workdir, *TINY) for _ in range(copies)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in outcomes) == [0] + [2] * (copies - 1), outcomes
    assert all("already has this config" in err for code, err in outcomes if code == 2)
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status FROM Experiments") == [(1, "finished")]


def test_eight_different_launches_at_once_are_all_recorded(workdir):
    processes = [start_main(workdir, *TINY, f"--config.seed={seed}") for seed in range(8)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    assert [code for code, _ in outcomes] == [0] * 8, outcomes
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT COUNT(*), SUM(status='finished') FROM Experiments") == [(8, 8)]
    assert query(db, "SELECT COUNT(DISTINCT run_id) FROM Logs WHERE label='accuracy' AND split='val'") == [(8,)]


def test_concurrent_debug_runs_never_mix_their_records(workdir):
    processes = [start_main(workdir, *TINY, "--debug") for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert 0 in [code for code, _ in outcomes], outcomes
    for code, err in outcomes:
        assert code == 0 or (code == 2 and "debug run -1 is in progress" in err), outcomes
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status FROM Experiments") == [(-1, "finished")]
    assert logged_epochs(db, -1) == 2  # one run's curve, not two interleaved


def test_resume_refuses_what_cannot_be_resumed(workdir):
    assert_refused(run_main(workdir, "--resume=3"), "no run table")
    assert run_tiny(workdir).returncode == 0
    assert_refused(run_main(workdir, "--resume=3"), "there is no run 3")
    assert_refused(run_main(workdir, "--resume=1", "--watch=loss"), "drop --watch")


def test_a_read_only_results_folder_is_refused_before_training_and_left_alone(workdir, tmp_path):
    if not private_mounts_work(tmp_path):
        pytest.skip("a read-only folder for root needs a read-only bind mount in a private mount namespace "
                    "(root and unshare); tried, and it does not work here")
    assert run_tiny(workdir, "--comment=first").returncode == 0
    results = workdir / "results"
    before = {path.name: path.read_bytes() for path in results.iterdir() if path.is_file()}
    # The same launch as a user would make it, in a mount namespace where results/ is read-only.
    command = " ".join([sys.executable, str(MAIN), "--experiment=experiment1", "--config=configs/tiny.yml"])
    script = f"mount --bind {results} {results} && mount -o remount,bind,ro {results} && exec {command}"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert_refused(done, f"cannot write in {Path('results')}", "nothing was changed")
    assert {path.name: path.read_bytes() for path in results.iterdir() if path.is_file()} == before
