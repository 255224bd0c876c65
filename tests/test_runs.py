"""End to end through the real main.py: what a run records, duplicates, debug runs, new runs, checkpoints."""
import torch
import yaml

from data.mnist import make_loaders
from helpers import REPO, assert_refused, query, run_main, run_tiny
from models.cnn import make_model
from training.loop import evaluate
from utils.checkpoint import load_checkpoint


def results_of(db, run_id):
    return dict(query(db, "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", run_id))


def test_a_run_records_its_row_hparams_curves_results_and_checkpoint(workdir):
    done = run_tiny(workdir)
    assert done.returncode == 0, done.stderr
    assert "run 1 finished: test_accuracy" in done.stdout
    db = workdir / "results" / "resultTable.db"

    [(run_id, experiment, config, status, cli, comment, config_text)] = query(
        db, "SELECT E.run_id, experiment, config, status, cli, comment, file_content "
            "FROM Experiments E JOIN ConfigFile C ON E.run_id = C.run_id")
    assert (run_id, experiment, config, status, cli, comment) == (
        1, "experiment1", "configs/tiny.yml", "finished", "", "")
    assert yaml.safe_load(config_text)["training"]["num_epochs"] == 2  # the merged config is stored

    hparams = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=1"))
    assert hparams["learning_rate"] == 0.05 and hparams["num_epochs"] == 2 and hparams["batch_size"] == 64
    assert {"weight_decay", "dropout", "seed", "watch"} <= hparams.keys()

    curves = dict(query(db, "SELECT split || '/' || label, COUNT(*) FROM Logs WHERE run_id=1 GROUP BY 1"))
    steps_per_epoch = -(-(640 - 128) // 64)
    assert curves == {"train/step_loss": 2 * steps_per_epoch // 2, "train/loss": 2, "train/accuracy": 2,
                      "train/epoch_time": 2, "train/throughput": 2, "val/loss": 2, "val/accuracy": 2}

    results = results_of(db, 1)
    assert results["test_accuracy"] > 0.8  # the synthetic classes are easy: a real model was trained
    assert results["test_loss"] > 0 and results["best_epoch"] in (1, 2)

    # The checkpoint on disk is the model that was tested: reload it and evaluate the test set again.
    config = yaml.safe_load(config_text)
    checkpoint_path = workdir / "results" / "1" / "best.pt"
    model = make_model(config, torch.device("cpu"))
    checkpoint = load_checkpoint(checkpoint_path, model, torch.device("cpu"))
    assert checkpoint["epoch"] == results["best_epoch"]
    _, _, test = make_loaders(config, torch.device("cpu"), seed=config["seed"])
    assert evaluate(model, test)["accuracy"] == results["test_accuracy"]


def test_identity_duplicates_debug_runs_and_new_runs(workdir):
    db = workdir / "results" / "resultTable.db"
    assert run_tiny(workdir).returncode == 0

    refused = run_tiny(workdir)
    assert_refused(refused, "run 1", "--debug", "--comment", "--config.KEY=VALUE")
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(1,)]
    # Setting a key to the value the YAML has is the same config: still a duplicate; --verbose changes nothing.
    assert_refused(run_tiny(workdir, "--config.training.num_epochs=2", "--verbose=2"), "run 1")

    for attempt in range(2):
        debug = run_tiny(workdir, "--debug")
        assert debug.returncode == 0, debug.stderr
        assert "run -1 finished" in debug.stdout
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE run_id=-1") == [(1,)]
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=-1 AND label='accuracy' AND split='val'") == [(2,)]
    assert (workdir / "results" / "debug" / "best.pt").exists()

    assert run_tiny(workdir, "--watch=loss").returncode == 0
    assert run_tiny(workdir, "--config.training.num_epochs=1").returncode == 0
    assert run_tiny(workdir, "--comment=same config, new note").returncode == 0
    rows = query(db, "SELECT run_id, cli, comment, status FROM Experiments WHERE run_id > 0 ORDER BY run_id")
    assert rows == [(1, "", "", "finished"), (2, "watch=loss", "", "finished"), (3, "", "", "finished"),
                    (4, "", "same config, new note", "finished")]
    assert "best_val_loss" in results_of(db, 2)
    assert sorted(p.name for p in (workdir / "results").iterdir() if p.is_dir()) == ["1", "2", "3", "4", "debug"]

    # Editing the YAML gives a new identity; restoring it gives the old one back.
    tiny = workdir / "configs" / "tiny.yml"
    original = tiny.read_text()
    tiny.write_text(original.replace("num_epochs: 2", "num_epochs: 1"))
    assert_refused(run_tiny(workdir), "run 3")
    tiny.write_text(original)
    assert_refused(run_tiny(workdir), "run 1")


def test_the_table_opens_in_deepboard(workdir):
    assert run_tiny(workdir, "--debug").returncode == 0
    from deepboard.resultTable import ResultTable
    table = ResultTable(str(workdir / "results" / "resultTable.db"))
    writer = table.load_run(-1)
    assert writer.status == "finished"
    assert {"train/step_loss", "val/accuracy"} <= set(writer.scalars)
    assert len(writer.get_scalar("val/accuracy")) == 2


def test_a_file_that_is_not_a_run_table_is_refused_and_left_alone(workdir):
    (workdir / "results").mkdir()
    db = workdir / "results" / "resultTable.db"
    db.write_text("not a database")
    assert_refused(run_tiny(workdir), "is not a deepboard run table")
    assert db.read_text() == "not a database"


def test_the_project_config_runs_with_overrides_and_prints_progress(workdir, mnist_root):
    """The README's command on the real configs/config.yml, shrunk by dotted overrides alone."""
    done = run_main(workdir, "--experiment=experiment1", f"--config={REPO / 'configs' / 'config.yml'}",
                    f"--config.data.path={mnist_root}", "--config.data.download=false", "--config.data.val_size=128",
                    "--config.data.batch_size=64", "--config.model.channels=[4,8]", "--config.model.hidden=16",
                    "--config.training.num_epochs=1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "run 1: experiment1, checkpoints in results/1"
    assert lines[1].startswith("epoch 1/1: train loss ") and " | val loss " in lines[1]
    assert lines[2].startswith("run 1 finished: test_accuracy ")


def test_the_bf16_autocast_path_used_on_gpus_also_runs_on_the_cpu(workdir):
    done = run_tiny(workdir, "--config.training.autocast=bf16")
    assert done.returncode == 0, done.stderr
    db = workdir / "results" / "resultTable.db"
    hparams = dict(query(db, "SELECT metric, value FROM Results WHERE is_hparam=1"))
    assert hparams["autocast"] == "bfloat16" and hparams["world_size"] == 1 and hparams["threads"] >= 1
    assert results_of(db, 1)["test_accuracy"] > 0.5
    assert_refused(run_tiny(workdir, "--config.training.autocast=fp8"), "training.autocast must be auto, bf16 or off")
