"""Scaling out: torchrun with DistributedDataParallel (gloo on the CPU), through the real main.py."""
import os
import re
import signal
import sys

import pytest
import torch
import yaml

from data.loaders import make_loaders
from helpers import (MAIN, REPO, assert_refused, logged_epochs, make_mnist_folder, query,
                     recorded_numbers, run_main, tiny_config, tiny_in_process, wait_for)
from models.cnn import make_model
from training.loop import evaluate
from training.tasks import Classification
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
# torchrun of the interpreter running the tests, whatever is on PATH
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(MAIN)]
TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")


@pytest.fixture
def long_workdir(tmp_path):
    """A config whose 2-process run lasts long enough (4 epochs of 2,400 images) to be stopped after an epoch."""
    data = make_mnist_folder(tmp_path / "data", n_train=2400, n_test=200)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(
        tiny_config(data, **{"training.num_epochs": 4, "data.batch_size": 32})))
    return tmp_path


def rank_lines(output):
    """The lines the ranks printed, without torchrun's own reporting."""
    return [line for line in output.splitlines() if line.startswith(("error:", "terminated:", "run "))]


def test_torchrun_records_one_run_with_reduced_metrics_and_refuses_another_number_of_processes(long_workdir, spawn):
    db = long_workdir / "results" / "resultTable.db"
    # A global batch the two processes cannot share: refused before anything is recorded.
    uneven = spawn.run(long_workdir, command=[*TORCHRUN, *TINY, "--config.data.batch_size=33"])
    assert uneven.returncode != 0
    assert rank_lines(uneven.stdout + uneven.stderr) == [
        "error: data.batch_size 33 is the global batch: it must divide evenly among 2 torchrun processes "
        "(make it a multiple of 2)"]  # rank 0 says it once; the other rank follows it without a word
    assert not db.exists() or query(db, "SELECT COUNT(*) FROM Experiments") == [(0,)]

    # Stopped as a scheduler stops a job (SIGTERM to every process) after its first epoch.
    stopped = spawn(long_workdir, command=[*TORCHRUN, *TINY])
    wait_for(lambda: logged_epochs(db, 1) >= 1 or stopped.poll() is not None, what="the first epoch")
    assert stopped.poll() is None, stopped.communicate()
    os.killpg(stopped.pid, signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=60)  # no rank waits on a collective the others left
    [line] = rank_lines(stderr)
    where = (r"(in epoch \d+ after step \d+ \(\d+ of its 71 steps done\)|in epoch \d+ at its validation \(after step "
             r"\d+\)|after epoch \d+ \(step \d+\))")
    assert re.fullmatch(rf"terminated: run 1 is marked failed, with all it logged; it continues {where} with torchrun "
                        rf"--nproc_per_node=2 main.py --resume=1", line), line
    assert query(db, "SELECT run_id, status, cli FROM Experiments") == [(1, "failed", "world_size=2")]

    # BatchNorm saw each rank's shard: one process cannot continue or reproduce what two computed.
    assert_refused(run_main(long_workdir, "--resume=1"),
                   "run 1 ran on 2 process(es), this launch has 1")
    resumed = spawn.run(long_workdir, command=[*TORCHRUN, "--resume=1"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Rank 0 alone prints and records; the ranks' final weights are checked to be the same bytes.
    assert resumed.stdout.count("run 1 finished") == 1
    assert resumed.stdout.count("final weights identical on all 2 ranks") == 1
    assert query(db, "SELECT run_id, status, cli FROM Experiments") == [(1, "finished", "world_size=2")]
    assert query(db, "SELECT value FROM Results WHERE metric='world_size' AND is_hparam=1") == [(2,)]
    assert logged_epochs(db, 1) == 4 and sorted((long_workdir / "results" / "1").iterdir())[0].name == "best.pt"
    assert_refused(run_main(long_workdir, "--reproduce=1"), "run 1 ran on 2 process(es), this launch has 1")

    # The recorded metrics describe the whole data, not one rank's half: the same checkpoint evaluated by one
    # process on the full validation and test sets gives exactly the recorded numbers.
    config = yaml.safe_load(query(db, "SELECT file_content FROM ConfigFile WHERE run_id=1")[0][0])
    _, val, test, info = make_loaders(config, torch.device("cpu"), seed=config["seed"])
    model = make_model(config, info, torch.device("cpu"))
    load_checkpoint(long_workdir / "results" / "1" / "best.pt", model, torch.device("cpu"))
    results = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=0"))
    assert evaluate(model, test, Classification())["accuracy"] == results["test_accuracy"]
    assert evaluate(model, val, Classification())["accuracy"] == results["best_val_accuracy"]

    # A 2-process run is not the same run as a single-process one, and the duplicate check still works.
    again = spawn.run(long_workdir, command=[*TORCHRUN, *TINY])
    [refusal] = rank_lines(again.stderr)
    assert again.returncode != 0 and "already has this config" in refusal
    assert tiny_in_process(long_workdir).returncode == 0
    assert query(db, "SELECT run_id, cli FROM Experiments ORDER BY run_id") == [(1, "world_size=2"), (2, "")]


@pytest.mark.fault("kills")
def test_a_sigterm_that_reaches_one_rank_mid_epoch_stops_every_rank_after_the_same_step(long_workdir, spawn, tmp_path):
    args = [*TINY[:2], "--verbose=1", "--config.training.num_epochs=2"]
    reference = tmp_path / "reference"
    (reference / "configs").mkdir(parents=True)
    (reference / "configs" / "tiny.yml").write_text((long_workdir / "configs" / "tiny.yml").read_text())
    done = spawn.run(reference, command=[*TORCHRUN, *args])
    assert done.returncode == 0, done.stdout + done.stderr

    # Only rank 1 gets the signal, as its 100th step begins (epoch 2: 71 steps an epoch); rank 0 learns it after
    # that step, and both stop there: rank 0 writes every rank's state in the resume point.
    signalled = [*TORCHRUN[:-1], str(REPO / "tests" / "signal_at.py"), "SIGTERM", "100", *args]
    process = spawn(long_workdir, command=signalled, env={"SIGNAL_AT_RANK": "1"})
    process.communicate(timeout=300)
    db = long_workdir / "results" / "resultTable.db"
    assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id)") == [
        ("failed", "terminated")]
    resumed = spawn.run(long_workdir, command=[*TORCHRUN, "--resume=1"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "run 1: resuming in epoch 2 after step 100 (29 of its 71 steps done)" in resumed.stdout
    assert recorded_numbers(db, 1) == recorded_numbers(reference / "results" / "resultTable.db", 1)
