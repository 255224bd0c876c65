"""The same command gives the same numbers, every run stores what re-creating it needs, --reproduce checks it."""
import json
import subprocess

import pytest

from helpers import (assert_refused, make_mnist_folder, query, recorded_numbers, run_in_process, run_main, run_tiny,
                     tiny_in_process)


def test_the_same_command_twice_gives_bit_identical_curves_and_results(workdir):
    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir).returncode == 0
    assert tiny_in_process(workdir, "--comment=again").returncode == 0  # a comment changes the identity, not the numbers
    assert recorded_numbers(db, 1) == recorded_numbers(db, 2)
    timings = {label for (label,) in query(db, "SELECT DISTINCT label FROM Logs")} - {"step_loss", "loss", "accuracy"}
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
    for key in ("python", "torch", "torchvision", "deepboard", "numpy", "device_type", "device_name", "hostname"):
        assert environment[key], key
    assert environment["device_type"] == "cpu"


def test_reproduce_passes_on_an_unchanged_run(workdir):
    assert tiny_in_process(workdir).returncode == 0
    again = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run 1 reproduced: all" in again.stdout
    assert any(line.startswith("test_accuracy") and line.endswith("same") for line in again.stdout.splitlines())
    db = workdir / "results" / "resultTable.db"
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
    # The tolerance is configurable: loose enough, the same comparison passes.
    assert run_in_process(workdir, "--reproduce=1", "--verbose=0", "--tolerance=100").returncode == 0


@pytest.mark.slow
def test_reproduce_fails_and_warns_after_the_code_changed(workdir, code_copy):
    assert run_tiny(workdir, main=code_copy / "main.py").returncode == 0
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
                   "only where-keys (data.path, data.download) may change, drop --config.seed")
    assert_refused(run_in_process(workdir, "--reproduce=1", "--watch=loss"), "drop --watch")
    assert_refused(run_in_process(workdir, "--tolerance=0.1", "--experiment=experiment1", "--config=configs/tiny.yml"),
                   "--tolerance only applies to --reproduce and --verify")
