"""Scaling out: torchrun with DistributedDataParallel (gloo on the CPU), and sweeps that resume."""
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from data.mnist import make_loaders
from helpers import MAIN, assert_refused, logged_epochs, make_mnist_folder, query, run_tiny, tiny_config, wait_for
from models.cnn import make_model
from training.loop import evaluate
from utils.checkpoint import load_checkpoint

TORCHRUN = shutil.which("torchrun")
SWEEP = ("--sweep", "--config.training.learning_rate=0.05,0.02", "--config.model.channels=[4,8],[8,8]")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun comes with torch; it is not on PATH here")
def test_torchrun_two_processes_record_one_run_with_reduced_metrics_and_identical_weights(workdir):
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(MAIN), "--experiment=experiment1",
                           "--config=configs/tiny.yml"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # Rank 0 alone prints and records; the ranks' final weights are checked to be the same bytes.
    assert done.stdout.count("run 1 finished") == 1 and done.stdout.count("epoch 2/2:") == 1
    assert done.stdout.count("final weights identical on all 2 ranks") == 1
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status, cli FROM Experiments") == [(1, "finished", "world_size=2")]
    assert query(db, "SELECT value FROM Results WHERE metric='world_size' AND is_hparam=1") == [(2,)]
    assert logged_epochs(db, 1) == 2 and sorted((workdir / "results" / "1").iterdir())[0].name == "best.pt"

    # The recorded metrics describe the whole data, not one rank's half: the same checkpoint evaluated by one
    # process on the full validation and test sets gives exactly the recorded numbers.
    config = yaml.safe_load(query(db, "SELECT file_content FROM ConfigFile WHERE run_id=1")[0][0])
    model = make_model(config, torch.device("cpu"))
    load_checkpoint(workdir / "results" / "1" / "best.pt", model, torch.device("cpu"))
    _, val, test = make_loaders(config, torch.device("cpu"), seed=config["seed"])
    results = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=0"))
    assert evaluate(model, test)["accuracy"] == results["test_accuracy"]
    assert evaluate(model, val)["accuracy"] == results["best_val_accuracy"]

    # A 2-process run is not the same run as a single-process one, and the duplicate check still works.
    again = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(MAIN), "--experiment=experiment1",
                            "--config=configs/tiny.yml"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and again.stderr.count("already has this config") == 1
    assert run_tiny(workdir).returncode == 0
    assert query(db, "SELECT run_id, cli FROM Experiments ORDER BY run_id") == [(1, "world_size=2"), (2, "")]


def test_a_sweep_runs_the_product_and_a_second_launch_skips_what_finished(workdir):
    done = run_tiny(workdir, *SWEEP)
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

    again = run_tiny(workdir, *SWEEP)
    assert again.returncode == 0
    assert again.stdout.count("skipped, finished as run") == 4
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(4,)]


def test_without_sweep_a_comma_is_never_split(workdir):
    assert_refused(run_tiny(workdir, "--config.training.learning_rate=0.05,0.02"), "expects a number",
                   "add --sweep")
    assert_refused(run_tiny(workdir, "--sweep", "--debug", "--config.seed=1,2"), "drop --debug")
    assert_refused(run_tiny(workdir, "--sweep", "--config.seed=1,x"), "'seed' expects an integer")
    assert not (workdir / "results").exists()  # every value is checked before the first run


def test_a_sweep_stops_with_one_line_on_a_mistake_every_combination_would_repeat(workdir, tmp_path):
    stopped = run_tiny(workdir, "--sweep", "--config.seed=1,2", f"--config.data.path={tmp_path / 'nothing'}")
    assert_refused(stopped, "MNIST files missing")
    assert stopped.stdout.splitlines()[-1].split()[-2:] == ["1", "failed"]
    assert query(workdir / "results" / "resultTable.db", "SELECT run_id, status FROM Experiments") == [(1, "failed")]


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
