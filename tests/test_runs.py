"""What a run records, through main.py in process: its row, hparams, curves, results and checkpoints; duplicates,
debug runs and new runs."""
import json
import re
import sys

import pytest
import torch
import yaml

from data.loaders import make_loaders
from helpers import REPO, assert_refused, query, run_in_process, tiny_in_process
from models.cnn import make_model
from training.loop import evaluate
from training.tasks import Classification
from utils.checkpoint import load_checkpoint


def results_of(db, run_id):
    return dict(query(db, "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", run_id))


def test_a_run_records_its_row_hparams_curves_results_and_checkpoint(workdir):
    done = tiny_in_process(workdir)
    assert done.returncode == 0, done.stderr
    assert "run 1 finished: test_accuracy" in done.stdout
    db = workdir / "results" / "resultTable.db"

    [(run_id, experiment, config, status, cli, comment, config_text)] = query(
        db, "SELECT E.run_id, experiment, config, status, cli, comment, file_content "
            "FROM Experiments E JOIN ConfigFile C ON E.run_id = C.run_id")
    assert (run_id, experiment, config, status, cli, comment) == (
        1, "experiment1", "configs/tiny.yml", "finished", "", "")
    assert yaml.safe_load(config_text)["training"]["num_epochs"] == 2  # the merged config is stored

    # Every key set in the merged config is an hparam, with the flags, the threads and the world size; a null key
    # (data.image_size, and data.name at its implied mnist) is not set.
    hparams = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=1"))
    config_keys = {f"{section}.{key}" for section, values in yaml.safe_load(config_text).items()
                   if isinstance(values, dict) for key, value in values.items() if value is not None} | {"seed"}
    assert "data.name" not in hparams and "data.image_size" not in hparams
    assert config_keys <= hparams.keys()
    assert hparams["training.learning_rate"] == 0.015 and hparams["data.batch_size"] == 128
    assert hparams["training.momentum"] == 0.9 and hparams["model.channels"] == "[4, 8]"
    assert hparams["watch"] == "accuracy" and hparams["world_size"] == 1 and hparams["threads"] >= 1

    # The environment names torch with its build tag (CPU and CUDA builds run different kernels), cuDNN, threads.
    environment = json.loads(query(db, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='environment'")[0][0])
    assert environment["torch"] == torch.__version__
    assert environment["cudnn"] == torch.backends.cudnn.version() and environment["threads"] == hparams["threads"]

    curves = dict(query(db, "SELECT split || '/' || label, COUNT(*) FROM Logs WHERE run_id=1 GROUP BY 1"))
    steps_per_epoch = -(-(640 - 128) // 128)
    assert curves == {"train/step_loss": 2 * steps_per_epoch // 2, "train/loss": 2, "train/accuracy": 2,
                      "train/epoch_time": 2, "train/throughput": 2, "val/loss": 2, "val/accuracy": 2}

    results = results_of(db, 1)
    assert results["test_accuracy"] > 0.5  # chance is 0.1: a real model was trained
    assert results["test_loss"] > 0 and results["best_epoch"] in (1, 2)

    # The checkpoint on disk is the model that was tested: reload it and evaluate the test set again.
    config = yaml.safe_load(config_text)
    _, _, test, info = make_loaders(config, torch.device("cpu"), seed=config["seed"])
    model = make_model(config, info, torch.device("cpu"))
    checkpoint = load_checkpoint(workdir / "results" / "1" / "best.pt", model, torch.device("cpu"))
    assert checkpoint["epoch"] == results["best_epoch"]
    assert evaluate(model, test, Classification())["accuracy"] == results["test_accuracy"]
    assert (workdir / "results" / "1" / "last.pt").exists()


def test_identity_duplicates_debug_runs_and_new_runs(workdir):
    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir).returncode == 0

    refused = tiny_in_process(workdir)
    assert_refused(refused, "run 1", "--debug", "--comment", "--config.KEY=VALUE")
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(1,)]
    # Setting a key to the value the YAML has is the same config: still a duplicate; --verbose changes nothing.
    assert_refused(tiny_in_process(workdir, "--config.training.num_epochs=2", "--verbose=2"), "run 1")

    for _ in range(2):
        debug = tiny_in_process(workdir, "--debug")
        assert debug.returncode == 0, debug.stderr
        assert "run -1 finished" in debug.stdout
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE run_id=-1") == [(1,)]
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=-1 AND label='accuracy' AND split='val'") == [(2,)]
    assert (workdir / "results" / "debug" / "best.pt").exists()

    assert tiny_in_process(workdir, "--watch=loss").returncode == 0
    assert tiny_in_process(workdir, "--config.training.num_epochs=1").returncode == 0
    assert tiny_in_process(workdir, "--comment=same config, new note").returncode == 0
    assert tiny_in_process(workdir, "--cpu").returncode == 0  # --cpu is part of the identity
    rows = query(db, "SELECT run_id, cli, comment, status FROM Experiments WHERE run_id > 0 ORDER BY run_id")
    assert rows == [(1, "", "", "finished"), (2, "watch=loss", "", "finished"), (3, "", "", "finished"),
                    (4, "", "same config, new note", "finished"), (5, "cpu=True", "", "finished")]
    assert "best_val_loss" in results_of(db, 2)
    assert sorted(p.name for p in (workdir / "results").iterdir() if p.is_dir()) == ["1", "2", "3", "4", "5", "debug"]

    # Editing the YAML gives a new identity; restoring it gives the old one back. The file's path is not identity.
    tiny = workdir / "configs" / "tiny.yml"
    original = tiny.read_text()
    tiny.write_text(original.replace("num_epochs: 2", "num_epochs: 1"))
    assert_refused(tiny_in_process(workdir), "run 3")
    tiny.write_text(original)
    (workdir / "configs" / "copy.yml").write_text(original)
    assert_refused(run_in_process(workdir, "--experiment=experiment1", "--config=configs/copy.yml"), "run 1")


def test_the_table_opens_in_deepboard(workdir):
    assert tiny_in_process(workdir, "--debug").returncode == 0
    from deepboard.resultTable import ResultTable
    hook = sys.excepthook
    try:
        table = ResultTable(str(workdir / "results" / "resultTable.db"))
        writer = table.load_run(-1)  # deepboard's own reader, as its GUI uses it
        assert writer.status == "finished"
        assert {"train/step_loss", "val/accuracy"} <= set(writer.scalars)
        assert len(writer.get_scalar("val/accuracy")) == 2
    finally:
        sys.excepthook = hook  # deepboard's writer chained the hook: keep it out of the other tests


@pytest.mark.fault("run tables")
def test_a_file_that_is_not_a_run_table_is_refused_and_left_alone(workdir):
    (workdir / "results").mkdir()
    db = workdir / "results" / "resultTable.db"
    db.write_text("not a database")
    assert_refused(tiny_in_process(workdir), "is not a deepboard run table")
    assert db.read_text() == "not a database"


@pytest.mark.fault("run tables")
def test_a_table_from_another_deepboard_version_is_refused_and_left_alone(workdir):
    assert tiny_in_process(workdir, "--debug").returncode == 0
    db = workdir / "results" / "resultTable.db"
    query(db, "UPDATE Meta SET value='0.2.3' WHERE key='deepboard_version'")
    before = db.read_bytes()
    assert_refused(tiny_in_process(workdir), "made by deepboard 0.2.3")
    assert db.read_bytes() == before


def test_the_project_config_runs_with_overrides_and_prints_progress(workdir, mnist_root):
    """The README's command on the real configs/config.yml, shrunk by dotted overrides alone."""
    done = run_in_process(workdir, "--experiment=experiment1", f"--config={REPO / 'configs' / 'config.yml'}",
                          f"--config.data.path={mnist_root}", "--config.data.download=false",
                          "--config.data.val_size=128", "--config.data.batch_size=64", "--config.model.channels=[4,8]",
                          "--config.model.hidden=16", "--config.training.num_epochs=1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "run 1: experiment1, checkpoints in results/1"
    assert lines[1].startswith("epoch 1/1: train loss ") and " | val loss " in lines[1]
    assert lines[2].startswith("run 1 finished: test_accuracy ")


def test_the_bf16_autocast_path_used_on_gpus_also_runs_on_the_cpu(workdir):
    done = tiny_in_process(workdir, "--config.training.precision=bf16")
    assert done.returncode == 0, done.stderr
    db = workdir / "results" / "resultTable.db"
    assert dict(query(db, "SELECT metric, value FROM Results WHERE is_hparam=1"))["training.precision"] == "bf16"
    assert results_of(db, 1)["test_accuracy"] > 0.5


def test_deepboard_shows_the_hparam_columns_in_which_runs_differ(workdir):
    db = workdir / "results" / "resultTable.db"

    def shown():
        return {name for (name,) in query(db, "SELECT Name FROM ResultDisplay WHERE display_order IS NOT NULL")}

    assert tiny_in_process(workdir).returncode == 0
    assert {"test_accuracy", "test_loss", "best_epoch", "best_val_accuracy"} <= shown()
    assert not {"seed", "training.learning_rate", "data.path"} & shown()  # one run: nothing differs yet
    assert tiny_in_process(workdir, "--config.training.learning_rate=0.01").returncode == 0
    assert "training.learning_rate" in shown() and "seed" not in shown()
    query(db, "UPDATE ResultDisplay SET display_order=NULL WHERE Name='training.learning_rate'")  # the user hides it
    assert tiny_in_process(workdir, "--config.training.learning_rate=0.02", "--config.seed=1").returncode == 0
    assert "seed" in shown() and "training.learning_rate" not in shown()  # a column shown once is the user's


@pytest.mark.fault("run tables")
@pytest.mark.parametrize("damage, message", [
    ("DROP TABLE Fragments", "without its table Fragments"),
    ("ALTER TABLE Logs DROP COLUMN wall_time", "without the column wall_time of its table Logs"),
])
def test_a_table_missing_a_table_or_a_column_is_refused_and_left_alone(workdir, damage, message):
    assert tiny_in_process(workdir, "--debug").returncode == 0
    db = workdir / "results" / "resultTable.db"
    query(db, damage)
    before = db.read_bytes()
    for args in (("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0"), ("--compare",),
                 ("--resume=-1",)):
        assert_refused(run_in_process(workdir, *args), message, "nothing was changed")
    assert db.read_bytes() == before


class Unpooling(torch.nn.Module):
    """A user's model that undoes its max-pooling: torch has no deterministic kernel for that, on the CPU either."""

    def __init__(self, classes):
        super().__init__()
        self.pool, self.unpool = torch.nn.MaxPool2d(2, return_indices=True), torch.nn.MaxUnpool2d(2)
        self.out = torch.nn.Linear(28 * 28, classes)

    def forward(self, images):
        pooled, where = self.pool(images)
        return self.out(self.unpool(pooled, where).flatten(1))


@pytest.mark.fault("valid configs")
@pytest.mark.slow
def test_an_operation_without_a_deterministic_kernel_stops_the_run_in_one_line_and_names_the_way_out(workdir,
                                                                                                     monkeypatch):
    import models.cnn

    monkeypatch.setattr(models.cnn, "make_model", lambda config, info, device: Unpooling(info.num_classes))
    refused = tiny_in_process(workdir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]  # after the line that names the table it records in
    assert line.startswith("error: run 1 stopped: max_unpooling2d_forward_out has no deterministic implementation "
                           "on cpu") and "--config.training.deterministic=false (a new run, recorded as not " \
                                        "bit-reproducible)" in line
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id)") == [
        ("failed", "nondeterministic op")]
    shown = re.search(r"^error: run 4 stopped: .*$", (REPO / "docs" / "reproducibility.md").read_text(), re.M)
    assert line == shown.group(0).replace("run 4", "run 1")  # the line the documentation shows
    log = (workdir / "results" / "1" / "output.log").read_text()  # the run's own output ends with what ended it
    assert log.strip().splitlines()[-1] == line

    done = tiny_in_process(workdir, "--config.training.deterministic=false", "--verbose=1")
    assert done.returncode == 0, done.stderr
    assert "note: training.deterministic is false: run 2 is not bit-reproducible (--reproduce compares it within " \
           "0.01)" in done.stderr
    [(environment,)] = query(db, "SELECT fragment FROM Fragments WHERE tag='environment' AND run_id=2")
    assert json.loads(environment)["deterministic"] is False
    again = run_in_process(workdir, "--reproduce=2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert ("note: run 2 was recorded with training.deterministic: false, so it is not bit-reproducible: values "
            "within 0.01 of each other count as the same (--tolerance=X to choose)") in again.stderr
    assert again.stdout.strip().splitlines()[-1].endswith("match (tolerance 0.01; timings are not compared)")
