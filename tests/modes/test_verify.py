"""--verify: replaying the first steps of recorded runs proves that a code change kept (or broke) their numbers."""
import subprocess

import pytest
import torch.nn.functional

from helpers import assert_refused, query, run_in_process, run_main, tiny_in_process


def test_verify_passes_on_unchanged_code_records_nothing_and_names_a_run_whose_numbers_moved(workdir, monkeypatch):
    assert tiny_in_process(workdir).returncode == 0
    assert tiny_in_process(workdir, "--config.seed=3").returncode == 0
    assert tiny_in_process(workdir, "--config.seed=3", "--comment=twin").returncode == 0
    db = workdir / "results" / "resultTable.db"
    before = db.read_bytes()

    done = run_in_process(workdir, "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "run 1 (experiment1): matches (6 values of steps 1-4)",
        "run 2 (experiment1): matches (6 values of steps 1-4)",
        "run 3 (experiment1 'twin'): matches (6 values of steps 1-4)",
        "all 3 replayed runs match their record"]
    assert db.read_bytes() == before  # nothing added, nothing changed
    assert run_in_process(workdir, "--verify", "2", "--steps=3").stdout.startswith(
        "run 2 (experiment1): matches (1 value of steps 1-3)")

    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: cross_entropy(*a, **k) * 1.01)
    changed = run_in_process(workdir, "--verify", "1", "3")
    assert changed.returncode == 1
    lines = changed.stdout.splitlines()
    assert lines[0].startswith("run 1 (experiment1): DIFFERS first at train/step_loss step 2: recorded ")
    assert lines[1].startswith("run 3 (experiment1 'twin'): DIFFERS")
    assert lines[-1] == "2 of 2 replayed runs DIFFER from their record"
    assert db.read_bytes() == before


def test_verify_refuses_what_it_cannot_do(workdir):
    assert_refused(run_in_process(workdir, "--verify"), "no run table")
    assert tiny_in_process(workdir).returncode == 0
    assert_refused(run_in_process(workdir, "--verify", "--config.seed=2"), "only where-keys", "drop --config.seed")
    assert_refused(run_in_process(workdir, "--verify", "--watch=loss"), "drop --watch")
    assert_refused(run_in_process(workdir, "--steps=3"), "--steps only applies to --verify")
    assert_refused(run_in_process(workdir, "--verify", "--steps=0"), "--steps=N replays N >= 1 steps")
    assert_refused(run_in_process(workdir, "--verify", "7"), "there is no run 7")


def test_a_run_recorded_on_another_device_type_is_skipped_unless_a_tolerance_is_given(workdir):
    assert tiny_in_process(workdir).returncode == 0
    db = workdir / "results" / "resultTable.db"
    query(db, "UPDATE Fragments SET fragment=replace(fragment, '\"device_type\": \"cpu\"', "
              "'\"device_type\": \"cuda\"') "
              "WHERE tag='environment'")
    skipped = run_in_process(workdir, "--verify")
    assert skipped.returncode == 0
    assert "run 1 (experiment1): skipped: recorded on cuda, this replay would run on cpu" in skipped.stdout
    compared = run_in_process(workdir, "--verify", "--tolerance=1e-3")
    assert compared.returncode == 0 and "matches (6 values of steps 1-4, tolerance 0.001)" in compared.stdout


@pytest.mark.slow
def test_a_code_change_that_keeps_behaviour_passes_and_one_that_alters_it_fails(tiny, code_copy):
    main, workdir, name = code_copy / "main.py", tiny.folder, tiny.experiment
    assert run_main(workdir, *tiny.args, main=main).returncode == 0
    assert run_main(workdir, *tiny.args, "--config.seed=2", main=main).returncode == 0
    originals = {path: path.read_text() for path in (code_copy / "training").glob("*.py")}

    def change_code(*replacements, file="loop.py"):
        path = code_copy / "training" / file
        for changed, text in originals.items():
            changed.write_text(text)
        text = originals[path]
        for old, new in replacements:
            assert old in text
            text = text.replace(old, new)
        path.write_text(text)
        return run_main(workdir, "--verify", main=main)

    def scaling(default):  # a new parameter of one training step: a factor on its loss
        return (("def _step(model, batch, optimizer, scheduler, task, recipe, state, device):",
                 f"def _step(model, batch, optimizer, scheduler, task, recipe, state, device, scale={default}):"),
                ("            loss = task.loss(output, part)\n",
                 "            loss = task.loss(output, part)\n"
                 "            if scale is not None:\n"
                 "                loss = loss * scale\n"))

    # A new parameter whose default keeps the old behaviour: every run still matches.
    neutral = change_code(*scaling(None))
    assert neutral.returncode == 0, neutral.stdout + neutral.stderr
    assert neutral.stdout.splitlines()[-1] == "all 2 replayed runs match their record"

    # The same parameter with a default that does something: both runs are named as differing.
    scaled = change_code(*scaling(0.5))
    assert scaled.returncode == 1
    assert [line.split(":")[0] for line in scaled.stdout.splitlines()[:2]] == [f"run 1 ({name})", f"run 2 ({name})"]
    assert all("DIFFERS" in line for line in scaled.stdout.splitlines()[:2])

    # A changed loss, in the task's code.
    loss_of = "F.mse_loss(output.float()" if name == "tabular" else "F.cross_entropy(output.float()"
    loss = change_code((f"return {loss_of}", f"return 0.5 * {loss_of}"), file="tasks.py")
    assert loss.returncode == 1 and f"run 1 ({name}): DIFFERS first at train/step_loss" in loss.stdout
    assert subprocess.run(["git", "-C", str(code_copy), "checkout", "-q", "--", "."]).returncode == 0
    assert run_main(workdir, "--verify", main=main).returncode == 0
