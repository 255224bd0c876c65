"""Scaling out: torchrun with DistributedDataParallel (gloo on the CPU), through the real main.py."""
import subprocess
import sys

import pytest
import torch
import yaml

from data.mnist import make_loaders
from helpers import MAIN, logged_epochs, query, run_tiny
from models.cnn import make_model
from training.loop import evaluate
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
# torchrun of the interpreter running the tests, whatever is on PATH
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def test_torchrun_two_processes_record_one_run_with_reduced_metrics_and_identical_weights(workdir):
    done = subprocess.run([*TORCHRUN, "--nproc_per_node=2", str(MAIN), "--experiment=experiment1",
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
    again = subprocess.run([*TORCHRUN, "--nproc_per_node=2", str(MAIN), "--experiment=experiment1",
                            "--config=configs/tiny.yml"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and again.stderr.count("already has this config") == 1
    assert run_tiny(workdir).returncode == 0
    assert query(db, "SELECT run_id, cli FROM Experiments ORDER BY run_id") == [(1, "world_size=2"), (2, "")]
