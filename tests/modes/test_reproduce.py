"""The same command gives the same numbers, every run stores what re-creating it needs, --reproduce checks it."""
import json
import subprocess

import pytest

import main
from helpers import (assert_refused, git_commit_all, make_mnist_folder, query, recorded_numbers, run_in_process,
                     run_main, run_tiny, tiny_in_process)


def test_the_same_command_twice_gives_bit_identical_curves_and_results(tiny, tmp_path):
    again = tmp_path / "again"  # a fresh folder, where the very same command is no duplicate
    again.mkdir()
    (again / "configs").symlink_to(tiny.folder / "configs")
    for folder in (tiny.folder, again):
        assert run_in_process(folder, *tiny.args).returncode == 0
    first, second = (folder / "results" / "resultTable.db" for folder in (tiny.folder, again))
    assert query(first, "SELECT run_id, command FROM Experiments") == query(second, "SELECT run_id, command FROM "
                                                                                    "Experiments")
    assert recorded_numbers(first, 1) == recorded_numbers(second, 1)
    curves, results = recorded_numbers(first, 1)
    assert len(curves) >= 12 and len(results) >= 4  # not two empty records
    measured = {"step_loss", *main.experiments[tiny.experiment].measures.better}
    timings = {label for (label,) in query(first, "SELECT DISTINCT label FROM Logs")} - measured
    assert timings == {"epoch_time", "throughput"}  # the only values allowed to differ say so in their names


@pytest.mark.slow
def test_a_run_stores_config_command_seed_code_versions_device_and_host(workdir, code_copy):
    (code_copy / "notes_untracked.py").write_text("UNTRACKED_MARKER = 1\n")
    done = run_tiny(workdir, "--config.seed=3", main=code_copy / "main.py")
    assert done.returncode == 0, done.stderr
    db = workdir / "results" / "resultTable.db"
    commit = subprocess.run(["git", "-C", str(code_copy), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    [(command, commit_hash, diff, config_text)] = query(
        db, "SELECT command, commit_hash, diff, file_content FROM Experiments E JOIN ConfigFile C "
            "ON C.run_id = E.run_id WHERE E.run_id=1")
    assert "--config.seed=3" in command and "--config=configs/tiny.yml" in command
    assert commit_hash == commit
    assert "notes_untracked.py" in diff and "UNTRACKED_MARKER = 1" in diff  # untracked files are part of the diff
    assert "seed: 3" in config_text
    assert query(db, "SELECT value FROM Results WHERE run_id=1 AND metric='seed' AND is_hparam=1") == [(3,)]
    [(text,)] = query(db, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='environment'")
    environment = json.loads(text)
    # What the README promises: the versions of Python, torch (with its build tag), cuDNN, torchvision, deepboard
    # and NumPy, the device name, CUDA version, thread count and host (cuDNN and CUDA: null on a CPU run).
    for key in ("python", "torch", "torchvision", "deepboard", "numpy", "device_type", "device_name", "threads",
                "hostname"):
        assert environment[key], key
    assert "cudnn" in environment and "cuda" in environment
    assert "+" in environment["torch"] or environment["torch"].count(".") >= 2  # e.g. 2.14.1+cu130
    assert environment["device_type"] == "cpu" and environment["cuda"] is None
    assert environment["threads"] == query(db, "SELECT value FROM Results WHERE run_id=1 AND metric='threads' "
                                               "AND is_hparam=1")[0][0] >= 1


def test_reproduce_passes_on_an_unchanged_run(tiny):
    assert run_in_process(tiny.folder, *tiny.args).returncode == 0
    again = run_in_process(tiny.folder, "--reproduce=1", "--verbose=0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run 1 reproduced: all" in again.stdout
    held_out = main.experiments[tiny.experiment].measures.held_out_result  # test_accuracy, test_loss, test_mse
    assert any(line.startswith(held_out) and line.endswith("same") for line in again.stdout.splitlines())
    db = tiny.folder / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status FROM Experiments ORDER BY run_id") == [(-1, "finished"), (1, "finished")]
    assert recorded_numbers(db, -1) == recorded_numbers(db, 1)


def test_reproduce_fails_with_a_side_by_side_report_after_the_data_changed(workdir, tmp_path):
    data = make_mnist_folder(tmp_path / "own-data", gz=False)
    assert tiny_in_process(workdir, f"--config.data.path={data}").returncode == 0
    for path in (data / "MNIST" / "raw").glob("*images*"):  # invert the last images' pixels, sizes unchanged
        raw = bytearray(path.read_bytes())
        raw[-1000:] = bytes(255 - b for b in raw[-1000:])
        path.write_bytes(bytes(raw))
    again = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "run 1 NOT reproduced" in again.stdout and "Traceback" not in again.stderr
    report = again.stdout.splitlines()
    assert ["run", "1", "run", "-1"] in [line.split() for line in report]  # the side-by-side columns' header
    [test_loss] = [line for line in report if line.startswith("test_loss")]
    assert "DIFFERS" in test_loss and len(test_loss.split()) >= 4  # name, recorded value, new value, verdict
    assert "DIFFERS" in next(line for line in report if line.startswith("train/step_loss"))

    # --tolerance: just above the largest real difference passes, just below it fails.
    largest = largest_difference(workdir / "results" / "resultTable.db", 1, -1)
    assert 0 < largest < 100
    passes = run_in_process(workdir, "--reproduce=1", "--verbose=0", f"--tolerance={largest * 1.001!r}")
    assert passes.returncode == 0 and "run 1 reproduced" in passes.stdout, passes.stdout
    fails = run_in_process(workdir, "--reproduce=1", "--verbose=0", f"--tolerance={largest * 0.999!r}")
    assert fails.returncode == 1 and "run 1 NOT reproduced" in fails.stdout, fails.stdout


def largest_difference(db, run_a, run_b):
    """The largest absolute gap between two runs' results and points (timings left out)."""
    (curves_a, results_a), (curves_b, results_b) = recorded_numbers(db, run_a), recorded_numbers(db, run_b)
    points_a = {(split, label, step): value for split, label, _, step, value in curves_a}
    points_b = {(split, label, step): value for split, label, _, step, value in curves_b}
    assert points_a.keys() == points_b.keys()
    gaps = [abs(points_a[key] - points_b[key]) for key in points_a]
    gaps += [abs(a - b) for (name_a, a), (name_b, b) in zip(results_a, results_b) if name_a == name_b]
    return max(gaps)


def test_reproduce_warns_when_the_library_versions_or_the_device_differ(workdir):
    assert tiny_in_process(workdir).returncode == 0
    db = workdir / "results" / "resultTable.db"
    # Run 1 as if recorded with another torch on another processor.
    [(text,)] = query(db, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='environment'")
    environment = json.loads(text)
    now_torch, now_device = environment["torch"], environment["device_name"]
    environment.update(torch="2.0.0+cu118", device_name="Another CPU")
    query(db, "UPDATE Fragments SET fragment=? WHERE run_id=1 AND tag='environment'", json.dumps(environment))
    again = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert again.returncode == 0, again.stdout + again.stderr  # the same numbers on this machine
    assert f"warning: torch was 2.0.0+cu118, is now {now_torch}; results may differ for that reason alone" in \
        again.stderr
    assert f"warning: device_name was Another CPU, is now {now_device}" in again.stderr
    assert "commit" not in again.stderr and "uncommitted" not in again.stderr


@pytest.mark.slow
def test_reproduce_warns_of_a_new_commit_and_fails_after_a_change_of_the_code(workdir, code_copy):
    assert run_tiny(workdir, main=code_copy / "main.py").returncode == 0
    [(recorded,)] = query(workdir / "results" / "resultTable.db", "SELECT commit_hash FROM Experiments WHERE run_id=1")
    readme = code_copy / "README.md"
    readme.write_text(readme.read_text() + "\nA line that changes no number.\n")
    commit = git_commit_all(code_copy, "a commit that changes no number")
    same = run_main(workdir, "--reproduce=1", "--verbose=0", main=code_copy / "main.py")
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"warning: run 1 was recorded at commit {recorded}, the checkout is at {commit}" in same.stderr

    cnn = code_copy / "models" / "cnn.py"
    source = cnn.read_text()
    changed = source.replace("nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)",
                             "nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True)")
    assert changed != source, "the network changed shape: update the edit this test makes to it"
    cnn.write_text(changed)
    again = run_main(workdir, "--reproduce=1", "--verbose=0", main=code_copy / "main.py")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "uncommitted changes differ from those recorded with run 1" in again.stderr
    assert "run 1 NOT reproduced" in again.stdout


def test_reproduce_refuses_flags_it_takes_from_the_record(workdir):
    assert_refused(run_in_process(workdir, "--reproduce=4"), "no run table")
    assert tiny_in_process(workdir).returncode == 0
    assert_refused(run_in_process(workdir, "--reproduce=1", "--config.seed=2"),
                   "only where-keys (data.path, data.download, data.workers, data.memory_limit_mb, "
                   "training.checkpoint_every) may change, drop --config.seed")
    assert_refused(run_in_process(workdir, "--reproduce=1", "--watch=loss"), "drop --watch")
    assert_refused(run_in_process(workdir, "--tolerance=0.1", "--experiment=experiment1", "--config=configs/tiny.yml"),
                   "--tolerance only applies to --reproduce or --verify")


def test_a_metric_whose_name_holds_time_is_compared_like_any_other(workdir, monkeypatch):
    """Only the declared timings (utils.measures.TIMINGS) are left out: `lifetime_loss` changing is a difference."""
    import training.tasks

    summarize, launches = training.tasks.Classification.summarize, []

    def with_lifetime(self, sums, count):
        return {**summarize(self, sums, count), "lifetime_loss": 0.54 if len(launches) == 1 else 0.23}
    monkeypatch.setattr(training.tasks.Classification, "summarize", with_lifetime)
    launches.append(1)
    assert tiny_in_process(workdir).returncode == 0
    launches.append(2)
    again = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert again.returncode == 1 and "run 1 NOT reproduced" in again.stdout, again.stdout
    assert any(line.startswith("val/lifetime_loss") and "DIFFERS" in line for line in again.stdout.splitlines())
    assert not any(line.startswith(("train/epoch_time", "train/throughput")) for line in again.stdout.splitlines())


def summarized_as(monkeypatch, change):
    """Make the classifier's metrics pass through `change(metrics)` (what an experiment of yours might return)."""
    import training.tasks

    summarize = training.tasks.Classification.summarize
    monkeypatch.setattr(training.tasks.Classification, "summarize",
                        lambda self, sums, count: change(summarize(self, sums, count)))


def test_metrics_and_results_of_any_numeric_type_are_recorded_as_numbers(workdir, monkeypatch):
    import numpy as np
    import torch

    summarized_as(monkeypatch, lambda metrics: {"loss": np.float32(metrics["loss"]),
                                                "accuracy": torch.tensor(metrics["accuracy"])})
    done = tiny_in_process(workdir)
    assert done.returncode == 0, done.stderr
    db = workdir / "results" / "resultTable.db"
    kinds = query(db, "SELECT DISTINCT typeof(value) FROM Results WHERE run_id=1 AND is_hparam=0 UNION "
                      "SELECT DISTINCT typeof(value) FROM Logs WHERE run_id=1")
    assert sorted(kind for (kind,) in kinds) == ["integer", "real"]  # best_epoch, and numbers: never a BLOB


def test_a_metric_that_is_not_a_number_is_refused_at_the_first_epoch_and_a_fix_resumes(workdir, monkeypatch):
    summarized_as(monkeypatch, lambda metrics: {**metrics, "accuracy": {"top1": metrics["accuracy"]}})
    refused = tiny_in_process(workdir)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert last.startswith("error: 'train/accuracy' is dict") and "a run records numbers" in last
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT status FROM Experiments") == [("failed",)]
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=1 AND split='val'") == [(0,)]  # at the first epoch end
    monkeypatch.undo()
    resumed = run_in_process(workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0 and query(db, "SELECT status FROM Experiments") == [("finished",)], resumed.stderr


def test_a_run_whose_results_are_not_a_dict_is_one_line_and_keeps_what_it_recorded(workdir, monkeypatch):
    import experiments.experiment1

    function = experiments.experiment1.experiment1.function
    monkeypatch.setattr(experiments.experiment1.experiment1, "function",
                        lambda *args, **kwargs: [function(*args, **kwargs)])
    refused = tiny_in_process(workdir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: the experiment returned list, not its results")
    db = workdir / "results" / "resultTable.db"  # epochs.finish had recorded them: nothing trained is lost
    assert query(db, "SELECT status FROM Experiments") == [("finished",)]
    assert query(db, "SELECT COUNT(*) FROM Results WHERE run_id=1 AND metric LIKE 'test_%'") == [(2,)]


def test_a_diverged_run_is_reproduced_and_verified_nan_for_nan(workdir, monkeypatch):
    summarized_as(monkeypatch, lambda metrics: {**metrics, "loss": float("nan")})
    assert tiny_in_process(workdir).returncode == 0
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT value FROM Results WHERE run_id=1 AND metric='test_loss'") == [(None,)]  # SQLite's NaN
    again = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert again.returncode == 0 and "run 1 reproduced" in again.stdout, again.stdout + again.stderr
    assert any(line.startswith("test_loss") and "nan" in line and line.endswith("same")
               for line in again.stdout.splitlines())
    verified = run_in_process(workdir, "--verify")
    assert verified.returncode == 0 and "run 1 (experiment1): matches" in verified.stdout, verified.stdout
