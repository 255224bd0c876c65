"""Results folders are shared and travel: a copy elsewhere works as the original did, and runs another program wrote
into the table are listed, compared or skipped with a line, never a crash."""
import shutil

import pytest

from helpers import (add_foreign_runs, assert_refused, interrupt_after_first_epoch, query, run_in_process,
                     tiny_in_process)
from modes.compare import comparison, grouped_runs
from utils.runtable.readers import curves_frame, runs_frame


@pytest.mark.slow  # six trainings and three replays in process: the full suite's share
def test_a_results_folder_copied_elsewhere_lists_compares_resumes_reproduces_and_verifies(workdir, tmp_path,
                                                                                           monkeypatch):
    assert tiny_in_process(workdir, "--seeds=2").returncode == 0
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir, "--comment=stopped").returncode == 130

    elsewhere = tmp_path / "archive" / "restored a year later"
    shutil.copytree(workdir / "results", elsewhere / "results")
    shutil.copytree(workdir / "configs", elsewhere / "configs")
    shutil.rmtree(workdir / "results")  # the original is gone: nothing may point back at it
    db = elsewhere / "results" / "resultTable.db"

    assert list(runs_frame(db).status) == ["finished", "finished", "failed"]
    assert len(curves_frame(db, [1, 2, 3])) > 0
    compared = run_in_process(elsewhere, "--compare")
    assert compared.returncode == 0 and "2 runs (1, 2)" in compared.stdout, compared.stdout + compared.stderr
    resumed = run_in_process(elsewhere, "--resume=3", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert run_in_process(elsewhere, "--reproduce=1").returncode == 0
    verified = run_in_process(elsewhere, "--verify")
    assert verified.returncode == 0 and "all 3 replayed runs match their record" in verified.stdout, verified.stdout
    assert query(db, "SELECT run_id, status FROM Experiments WHERE run_id > 0 ORDER BY run_id") == [
        (1, "finished"), (2, "finished"), (3, "finished")]
    assert not (workdir / "results").exists()


@pytest.mark.fault("run tables")
def test_runs_another_program_wrote_are_listed_compared_or_skipped_with_a_line(workdir):
    assert tiny_in_process(workdir, "--seeds=2").returncode == 0
    db = workdir / "results" / "resultTable.db"
    finished, failed, running = add_foreign_runs(db, workdir)
    before = query(db, "SELECT run_id, status FROM Experiments ORDER BY run_id")

    frame = runs_frame(db)
    assert list(frame.index) == [1, 2, finished, failed, running] and frame.loc[finished, "test_accuracy"] == 0.25
    groups, left_out = grouped_runs(db)
    assert left_out == [finished] and len(comparison(db, groups)) == 1
    compared = run_in_process(workdir, "--compare")
    assert compared.returncode == 0
    assert f"note: run {finished} left out: no config, record or results" in compared.stderr
    assert_refused(run_in_process(workdir, "--compare", str(finished)), f"run {finished} cannot be compared")
    verified = run_in_process(workdir, "--verify")
    assert verified.returncode == 0, verified.stderr
    assert f"run {finished}: skipped: not recorded by this template's main.py" in verified.stdout
    for mode, run_id in (("--resume", failed), ("--resume", running), ("--reproduce", finished)):
        assert_refused(run_in_process(workdir, f"{mode}={run_id}"), f"run {run_id} was not recorded by this template")
    assert tiny_in_process(workdir, "--seeds=3").returncode == 0  # the template's own runs go on around them
    assert query(db, f"SELECT run_id, status FROM Experiments WHERE run_id <= {running} ORDER BY run_id") == before
