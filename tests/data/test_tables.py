"""Data that is neither images nor text: a CSV table by name, tensors from code, and data.limit on any dataset."""
import signal

import pytest
import torch
import yaml

import data.registry
from data.tensors import Tensors
from helpers import (REPO, assert_refused, interrupt_after_first_epoch, query, recorded_numbers, run_in_process,
                     signal_at_step, tiny_in_process, tiny_tabular_config)


def tabular(folder, *args):
    return run_in_process(folder, "--experiment=tabular", "--config=configs/tiny_tabular.yml", "--verbose=0", *args)


def test_a_table_trains_a_regression_whose_metrics_point_both_ways(table_workdir):
    done = tabular(table_workdir, "--verbose=2")
    assert done.returncode == 0, done.stderr
    assert "200 train / 50 validation / 50 test rows, 4 inputs -> y" in done.stdout
    db = table_workdir / "results" / "resultTable.db"
    results = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=0"))
    assert results["test_r2"] > 0.9 and results["test_mse"] < 0.3, results  # y is nearly linear in a, b, c
    assert_refused(tabular(table_workdir), "run 1")  # the same table and config: a duplicate
    # Another target column, or one changed value in the file, is other data: a new run.
    assert tabular(table_workdir, "--config.data.target=z").returncode == 0
    text = (table_workdir / "table.csv").read_text().splitlines()
    text[5] = text[5].replace(text[5].split(",")[0], "0.1234", 1)
    (table_workdir / "table.csv").write_text("\n".join(text) + "\n")
    assert tabular(table_workdir).returncode == 0
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE status='finished'") == [(3,)]


@pytest.mark.parametrize("row, message", [
    ("0.1,0.2,0.3,oops,1", "row 3, column 'y': 'oops' is not a number"),
    ("0.1,0.2,nan,1,1", "row 3, column 'c': 'nan' is not a finite number"),
    ("0.1,inf,0.3,1,1", "row 3, column 'b': 'inf' is not a finite number"),
    ("0.1,0.2,0.3", "row 3: 3 values, the header names 5 columns"),
])
def test_a_table_with_a_value_that_is_not_a_number_is_refused_naming_its_row(table_workdir, row, message):
    lines = (table_workdir / "table.csv").read_text().splitlines()
    lines.insert(2, row)
    (table_workdir / "table.csv").write_text("\n".join(lines) + "\n")
    assert_refused(tabular(table_workdir), "table.csv", message)
    assert not (table_workdir / "results" / "resultTable.db").exists() or not query(
        table_workdir / "results" / "resultTable.db", "SELECT run_id FROM Experiments")


@pytest.mark.parametrize("override, message", [
    ("--config.data.target=price", "has no column 'price'; its columns: a, b, c, y, z"),
    ("--config.data.inputs=[a,d]", "has no column 'd'"),
    ("--config.data.test_size=300", "data.test_size 300 must leave rows to train on"),
    ("--config.data.path=nowhere.csv", "nowhere.csv' is not a file; data.name csv reads a CSV file"),
    ("--config.data.limit=1000", "data.limit 1000 is more than the 200 training examples"),
])
def test_a_table_config_it_cannot_read_is_refused_in_one_line(table_workdir, override, message):
    assert_refused(tabular(table_workdir, override), message)


def test_the_shipped_config_asks_for_the_target_column(table_workdir):
    shipped = run_in_process(table_workdir, "--experiment=tabular", f"--config={REPO / 'configs' / 'tabular.yml'}",
                             "--config.data.path=table.csv")
    assert_refused(shipped, "data.target must name the column to predict (or list them), got None",
                   "--config.data.target=")


def test_the_inputs_are_standardised_from_the_training_rows_alone(table_workdir):
    from data.examples import make_example_loaders

    config = tiny_tabular_config(table_workdir / "table.csv", **{"data.val_size": 10})
    train, val, test, info = make_example_loaders(config, torch.device("cpu"), seed=0)
    rows = data.registry.find_dataset("csv").load(config["data"])
    assert info.inputs == ("a", "b", "c", "z") and info.targets == ("y",)
    assert torch.allclose(rows.train_inputs.mean(0), torch.tensor(info.mean, dtype=torch.float32), atol=1e-5)
    inputs = torch.cat([batch for batch, _ in val] + [batch for batch, _ in train])
    assert torch.allclose(inputs.mean(0), torch.zeros(4), atol=1e-5)  # train and validation rows: all training rows
    assert sum(len(targets) for _, targets in test) == 50


def test_a_dataset_in_code_may_return_any_tensors(table_workdir, monkeypatch):
    monkeypatch.setitem(data.registry.DATASETS, "waves", "helpers:regression_in_code")
    done = tabular(table_workdir, "--config.data.name=waves", "--verbose=2")
    assert done.returncode == 0, done.stderr
    assert "250 train / 50 validation / 100 test rows, [2, 8] inputs -> 2 values" in done.stdout
    assert_refused(tabular(table_workdir, "--config.data.name=waves"), "run 1")
    info = data.registry.find_dataset("waves").describe({"split_seed": 0})
    assert (info.input_shape, info.target_shape, info.output_size, info.regression) == ((2, 8), (2,), 2, True)


@pytest.mark.parametrize("returned, message", [
    (lambda: Tensors(torch.ones(4, 2), torch.ones(3), torch.ones(2, 2), torch.ones(2)), "the same number"),
    (lambda: Tensors(torch.ones(4, 2), torch.tensor([0, 1, 2, 5]), torch.ones(2, 2), torch.tensor([0, 1]),
                     classes=("a", "b", "c")), "class targets must lie in 0..2"),
    (lambda: Tensors(torch.tensor([[0.0], [float("nan")]]), torch.ones(2), torch.ones(1, 1), torch.ones(1)),
     "train_inputs hold NaN or infinity (example 1)"),
    (lambda: [1, 2, 3], "must return data.registry.Arrays (images) or data.tensors.Tensors"),
])
def test_tensors_a_model_could_not_take_are_refused_in_one_line(table_workdir, monkeypatch, returned, message):
    monkeypatch.setitem(data.registry.DATASETS, "bad", lambda cfg: returned())
    monkeypatch.setattr(data.registry, "find_dataset", lambda name, find=data.registry.find_dataset: (
        data.registry.InCode("bad", lambda cfg: returned()) if name == "bad" else find(name)))
    assert_refused(tabular(table_workdir, "--config.data.name=bad"), message)


def test_data_limit_trains_on_the_first_examples_of_any_dataset_and_is_part_of_the_identity(workdir):
    assert tiny_in_process(workdir).returncode == 0
    limited = tiny_in_process(workdir, "--config.data.limit=200", "--verbose=2")
    assert limited.returncode == 0, limited.stderr
    assert "200 train / 128 validation" in limited.stdout
    assert_refused(tiny_in_process(workdir, "--config.data.limit=200"), "run 2")
    assert tiny_in_process(workdir, "--config.data.limit=null").returncode == 2  # null: all, run 1 again
    steps = query(workdir / "results" / "resultTable.db",
                  "SELECT run_id, MAX(step) FROM Logs WHERE split='train' AND label='step_loss' GROUP BY run_id")
    assert steps == [(1, 8), (2, 4)]  # 512 images in batches of 128, then 200


def test_data_limit_on_a_text_trains_on_its_first_characters(text_workdir):
    def charlm(*args):
        return run_in_process(text_workdir, "--experiment=charlm", "--config=configs/tiny_charlm.yml", "--verbose=0",
                              *args)
    assert charlm().returncode == 0
    assert charlm("--config.data.limit=4000").returncode == 0
    steps = query(text_workdir / "results" / "resultTable.db",
                  "SELECT run_id, MAX(step) FROM Logs WHERE split='val' AND label='loss' GROUP BY run_id")
    # 16-character windows in batches of 16: 4000 // 16 - 2 = 248 windows make 16 steps a pass, two passes; the
    # whole 16,500 training characters make 65 steps a pass.
    assert steps == [(1, 2 * 65), (2, 2 * 16)], steps


@pytest.fixture
def own_loader_workdir(table_workdir, monkeypatch):
    """table_workdir with the tabular recipe on the waves tensors, its config with dropout and a workers key."""

    monkeypatch.setitem(data.registry.DATASETS, "waves", "helpers:regression_in_code")
    config = tiny_tabular_config(table_workdir / "table.csv", **{"data.name": "waves", "model.dropout": 0.2})
    config["data"]["workers"] = 0
    (table_workdir / "configs" / "tiny_tabular.yml").write_text(yaml.safe_dump(config))
    return table_workdir


def own(folder, *args):
    return run_in_process(folder, "--experiment=own", "--config=configs/tiny_tabular.yml", "--verbose=0", *args)


@pytest.mark.fault("kills")
@pytest.mark.parametrize("workers, stop", [(0, "mid-epoch"), pytest.param(0, "after an epoch", marks=pytest.mark.slow),
                                           pytest.param(2, "mid-epoch", marks=pytest.mark.slow),
                                           pytest.param(2, "after an epoch", marks=pytest.mark.slow)])
def test_your_own_stateful_dataloader_resumes_exactly(own_loader_workdir, tmp_path, monkeypatch, workers, stop):
    import main
    from own_loader import own_loader, stateful_loader

    def register():
        monkeypatch.setitem(main.experiments, "own", own_loader(stateful_loader))
        monkeypatch.setitem(data.registry.DATASETS, "waves", "helpers:regression_in_code")
    register()
    args = (f"--config.data.workers={workers}",)
    assert own(own_loader_workdir, *args).returncode == 0
    reference = recorded_numbers(own_loader_workdir / "results" / "resultTable.db", 1)
    table = tmp_path / "stopped" / "resultTable.db"
    if stop == "mid-epoch":
        signal_at_step(monkeypatch, 8 + 3, signal.SIGTERM)  # 8 steps a pass: 3 steps into the second epoch
    else:
        interrupt_after_first_epoch(monkeypatch)
    stopped = run_in_process(own_loader_workdir, "--experiment=own", "--config=configs/tiny_tabular.yml",
                             "--verbose=0", *args, table=table)
    said = "in epoch 2 after step 11 (3 of its 8 steps done)" if stop == "mid-epoch" else "after epoch 1 (step 8)"
    assert stopped.returncode in (130, 143) and f"continues {said}" in stopped.stderr, stopped.stderr
    monkeypatch.undo()
    register()
    resumed = run_in_process(own_loader_workdir, "--resume=1", table=table)
    assert resumed.returncode == 0, resumed.stderr
    assert recorded_numbers(table, 1) == reference  # every point and result, bit for bit (dropout included)


def test_a_plain_dataloader_is_refused_before_an_epoch_is_spent(own_loader_workdir, monkeypatch):
    import main
    from own_loader import own_loader, plain_loader, seeded_stateful_loader

    monkeypatch.setitem(main.experiments, "own", own_loader(plain_loader))
    refused = own(own_loader_workdir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert ("error: the training batches are a torch.utils.data.DataLoader, which keeps no state of its draws"
            in refused.stderr and "torchdata.stateful_dataloader.StatefulDataLoader" in refused.stderr)
    assert query(own_loader_workdir / "results" / "resultTable.db",
                 "SELECT COUNT(*) FROM Logs WHERE run_id=1") == [(0,)]  # refused before any epoch was spent
    monkeypatch.setitem(main.experiments, "own2", own_loader(seeded_stateful_loader))
    refused = run_in_process(own_loader_workdir, "--experiment=own2", "--config=configs/tiny_tabular.yml")
    assert refused.returncode == 2 and "StatefulDataLoader with a generator= and num_workers=0" in refused.stderr
