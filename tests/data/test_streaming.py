"""Every promise on every data path, through real processes: CIFAR batches, an image folder held in memory and the
same folder streamed by worker processes give bit-identical reruns, resume exactly after SIGTERM or SIGKILL, do not
depend on the number of workers, and train under torchrun."""
import os
import signal
import sys

import pytest
import yaml

from helpers import (MAIN, REPO, logged_epochs, make_cifar_folder, make_image_folder, query, recorded_numbers, run_main,
                     tiny_config, wait_for)

pytestmark = pytest.mark.slow
TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(MAIN)]
STREAMED = {"data.memory_limit_mb": 0, "data.workers": 2}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Enough images of each kind that an epoch lasts long enough to be stopped in the middle of a run."""
    root = tmp_path_factory.mktemp("kinds")
    return {"cifar10": make_cifar_folder(root / "cifar", n_train=2400, n_test=200),
            "folder": make_image_folder(root / "images", n_train=2400, n_test=200)}


KINDS = {"cifar batches": ("cifar10", {}), "folder in memory": ("folder", {}), "folder streamed": ("folder", STREAMED)}


def workdir_for(folder, datasets, kind, **changes):
    name, settings = KINDS[kind]
    config = tiny_config(datasets[name], **{"data.name": name, "training.num_epochs": 3, "data.batch_size": 32,
                                            "training.threads": 1, **settings, **changes})
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "tiny.yml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.fault("kills")
@pytest.mark.parametrize("kind", KINDS)
def test_the_same_command_twice_and_a_run_stopped_and_resumed_give_the_same_numbers(tmp_path, spawn, datasets,
                                                                                    kind):
    runs = {}
    for name in ("first", "again"):
        folder = workdir_for(tmp_path / name, datasets, kind)
        done = spawn.run(folder, *TINY)
        assert done.returncode == 0, done.stderr
        runs[name] = recorded_numbers(folder / "results" / "resultTable.db", 1)
    assert runs["first"] == runs["again"] and len(runs["first"][0]) > 10

    for stop in (signal.SIGTERM, signal.SIGKILL):
        folder = workdir_for(tmp_path / stop.name, datasets, kind)
        db = folder / "results" / "resultTable.db"
        process = spawn(folder, *TINY)
        wait_for(lambda db=db, process=process: logged_epochs(db, 1) >= 1 or process.poll() is not None,
                 what="the first epoch")
        assert process.poll() is None, process.communicate()
        process.send_signal(stop)  # in the middle of the second epoch
        process.communicate(timeout=120)
        assert logged_epochs(db, 1) < 3
        resumed = spawn.run(folder, "--resume=1", "--verbose=0")
        assert resumed.returncode == 0, resumed.stderr
        assert recorded_numbers(db, 1) == runs["first"], stop.name


@pytest.mark.fault("kills")
@pytest.mark.parametrize("stop, code, what", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_stop_sent_to_the_run_and_its_loader_workers_mid_epoch_resumes_from_that_step(tmp_path, spawn, datasets,
                                                                                       stop, code, what):
    reference = workdir_for(tmp_path / "reference", datasets, "folder streamed")
    assert spawn.run(reference, *TINY).returncode == 0
    # As a terminal's Ctrl-C or a cluster's SIGTERM: to the whole process group, the 2 decoding workers included,
    # as the 100th step begins (the 29th of the second epoch: 2,272 training images in batches of 32).
    folder = workdir_for(tmp_path / "stopped", datasets, "folder streamed")
    stopped = spawn.run(folder, command=[sys.executable, str(REPO / "tests" / "signal_at.py"), stop, "100", *TINY])
    assert stopped.returncode == code and "Traceback" not in stopped.stderr, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"{what}: run 1 is marked failed, with all it logged; it continues in epoch 2 after step 100 (29 of its 71 "
        f"steps done) with python main.py --resume=1")
    resumed = spawn.run(folder, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    db = folder / "results" / "resultTable.db"
    assert recorded_numbers(db, 1) == recorded_numbers(reference / "results" / "resultTable.db", 1)


def test_the_number_of_loader_workers_does_not_change_a_single_number(tmp_path, spawn, datasets):
    folder = workdir_for(tmp_path, datasets, "folder streamed", **{"data.workers": 0, "training.num_epochs": 2})
    assert spawn.run(folder, *TINY).returncode == 0
    for workers in (2, 4, 64):
        again = spawn.run(folder, "--reproduce=1", f"--config.data.workers={workers}")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "run 1 reproduced: all" in again.stdout
    # More workers than cores only compete (each of the three loaders starts its own): capped, with a note.
    cores = len(os.sched_getaffinity(0))
    assert (f"note: data.workers=64 is more than the {cores} cores this process may use; {cores} worker processes "
            f"decode") in again.stderr


def test_torchrun_streams_a_folder_with_each_rank_reading_its_share(tmp_path, spawn, datasets):
    folder = workdir_for(tmp_path, datasets, "folder streamed", **{"training.num_epochs": 2})
    done = spawn.run(folder, command=[*TORCHRUN, *TINY[:2], "--verbose=1"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("final weights identical on all 2 ranks") == 1
    db = folder / "results" / "resultTable.db"
    assert query(db, "SELECT status, cli FROM Experiments") == [("finished", "world_size=2")]
    assert logged_epochs(db, 1) == 2
    single = run_main(folder, *TINY)  # another run: BatchNorm saw each rank's half of every batch
    assert single.returncode == 0, single.stderr
