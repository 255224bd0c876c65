"""--sweep: the product of comma-separated values, each combination a run, finished ones skipped on a relaunch."""
import signal
import subprocess
import sys

import pytest
import yaml

from helpers import (MAIN, assert_refused, logged_epochs, make_mnist_folder, query, tiny_config, tiny_in_process,
                     wait_for)
from modes.sweep import sweep_combinations
from utils.config import sweep_values

SWEEP = ("--sweep", "--config.training.learning_rate=0.05,0.02", "--config.model.channels=[4,8],[8,8]")


def test_values_split_at_top_level_commas_only():
    assert sweep_values("0.1,0.01") == ["0.1", "0.01"]
    assert sweep_values("[16,32],[32,64]") == ["[16,32]", "[32,64]"]
    assert sweep_values("{a: 1, b: 2},x") == ["{a: 1, b: 2}", "x"]
    assert sweep_values("plain") == ["plain"]
    assert sweep_combinations([("a", "1,2"), ("b", "x,y")]) == [
        [("a", "1"), ("b", "x")], [("a", "1"), ("b", "y")], [("a", "2"), ("b", "x")], [("a", "2"), ("b", "y")]]


def test_a_sweep_runs_the_product_and_a_second_launch_skips_what_finished(workdir):
    done = tiny_in_process(workdir, *SWEEP)
    assert done.returncode == 0, done.stderr
    assert "sweep: 4 combinations of training.learning_rate, model.channels" in done.stdout
    db = workdir / "results" / "resultTable.db"
    configs = [yaml.safe_load(text) for (text,) in query(db, "SELECT file_content FROM ConfigFile ORDER BY run_id")]
    assert [(c["training"]["learning_rate"], c["model"]["channels"]) for c in configs] == [
        (0.05, [4, 8]), (0.05, [8, 8]), (0.02, [4, 8]), (0.02, [8, 8])]
    commands = [command for (command,) in query(db, "SELECT command FROM Experiments ORDER BY run_id")]
    assert "--sweep" not in commands[1] and "--config.model.channels=[8,8]" in commands[1]  # each run's own command
    table = done.stdout.splitlines()[-5:]
    assert table[0].split()[:3] == ["combination", "run", "status"] and "test_accuracy" in table[0]
    assert [line.split()[2:4] for line in table[1:]] == [["1", "finished"], ["2", "finished"], ["3", "finished"],
                                                          ["4", "finished"]]

    again = tiny_in_process(workdir, *SWEEP)
    assert again.returncode == 0
    assert again.stdout.count("skipped, finished as run") == 4
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(4,)]


def test_without_sweep_a_comma_is_never_split(workdir):
    assert_refused(tiny_in_process(workdir, "--config.training.learning_rate=0.05,0.02"), "expects a number",
                   "add --sweep")
    assert_refused(tiny_in_process(workdir, "--sweep", "--debug", "--config.seed=1,2"), "drop --debug")
    assert_refused(tiny_in_process(workdir, "--sweep", "--config.seed=1,x"), "'seed' expects an integer")
    assert not (workdir / "results").exists()  # every value is checked before the first run


def test_a_sweep_refuses_a_mistake_every_combination_would_repeat_before_the_first_run(workdir, tmp_path):
    stopped = tiny_in_process(workdir, "--sweep", "--config.seed=1,2", f"--config.data.path={tmp_path / 'nothing'}")
    assert_refused(stopped, "MNIST files missing")
    assert not (workdir / "results").exists()
    assert_refused(tiny_in_process(workdir, "--sweep", "--config.seed=1,2", "--config.data.val_size=128,640"),
                   "data.val_size must be between 1 and 639")
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_a_stopped_sweep_resumes_where_it_was_and_retries_the_failed_combination(tmp_path):
    data = make_mnist_folder(tmp_path / "data", n_train=2400, n_test=200)
    (tmp_path / "configs").mkdir()
    config = tiny_config(data, **{"training.num_epochs": 4, "data.batch_size": 32})
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(config))
    db = tmp_path / "results" / "resultTable.db"
    sweep = ["--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", "--sweep",
             "--config.seed=1,2,3"]

    process = subprocess.Popen([sys.executable, str(MAIN), *sweep], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_epochs(db, 2) >= 1 or process.poll() is not None, what="the second combination")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, out + err
    assert "the same command resumes it" in err
    assert query(db, "SELECT run_id, status FROM Experiments ORDER BY run_id") == [(1, "finished"), (2, "failed")]

    again = subprocess.run([sys.executable, str(MAIN), *sweep], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "[1/3] seed=1: skipped, finished as run 1" in again.stdout
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "failed", 1), (3, "finished", 0), (4, "finished", 0)]
    assert [line.split()[:3] for line in again.stdout.splitlines()[-3:]] == [
        ["seed=1", "1", "finished"], ["seed=2", "3", "finished"], ["seed=3", "4", "finished"]]
