"""Datasets by name: the built-in ones switched with one override, a dataset in code, and the identity of every run
recorded before datasets could be chosen."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import yaml

import data.registry
from data.cifar import read_batch
from helpers import (REPO, assert_refused, make_cifar_folder, make_mnist_folder, query, run_in_process, run_main,
                     tiny_config, tiny_in_process, write_cifar_batch)
from utils.errors import UserError


def hparams(db, run_id):
    return dict(query(db, "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=1", run_id))


@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST"),
                                          pytest.param("kmnist", "KMNIST", marks=pytest.mark.slow)])
def test_an_idx_dataset_is_one_override_away(workdir, mnist_root, tmp_path, name, folder):
    other = make_mnist_folder(tmp_path / "other", n_train=400, folder=folder)
    done = tiny_in_process(workdir, f"--config.data.name={name}", f"--config.data.path={other}")
    assert done.returncode == 0, done.stderr
    db = workdir / "results" / "resultTable.db"
    assert hparams(db, 1)["data.name"] == name
    # Its files missing, offline: one line naming the dataset's folder and its files; nothing recorded.
    assert_refused(tiny_in_process(workdir, f"--config.data.name={name}"),
                   f"files missing in {mnist_root / folder / 'raw'}", "t10k-labels-idx1-ubyte")
    assert query(db, "SELECT run_id FROM Experiments") == [(1,)]


def test_cifar10_trains_on_its_python_batches_with_a_network_for_32px_colour(workdir, tmp_path):
    root = make_cifar_folder(tmp_path / "cifar")
    done = tiny_in_process(workdir, "--config.data.name=cifar10", f"--config.data.path={root}", "--verbose=2")
    assert done.returncode == 0, done.stderr
    assert "372 train / 128 validation / 200 test images of 3x32x32, 10 classes" in done.stdout
    assert hparams(workdir / "results" / "resultTable.db", 1)["data.name"] == "cifar10"


def test_cifar10_is_extracted_from_its_archive_and_the_same_data_either_way(workdir, tmp_path):
    extracted = make_cifar_folder(tmp_path / "extracted")
    archived = tmp_path / "archived"
    archived.mkdir()
    with tarfile.open(archived / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(extracted / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert tiny_in_process(workdir, "--config.data.name=cifar10", f"--config.data.path={archived}").returncode == 0
    assert sorted(p.name for p in (archived / "cifar-10-batches-py").iterdir())[:2] == ["data_batch_1", "data_batch_2"]
    assert_refused(tiny_in_process(workdir, "--config.data.name=cifar10", f"--config.data.path={extracted}"),
                   "run 1")  # the same content: the same run


@pytest.mark.fault("data files")
@pytest.mark.parametrize("member", ["../escaped", "/tmp/absolute-escape", "cifar-10-batches-py/../../escaped"])
def test_an_archive_member_that_would_land_outside_is_refused_and_nothing_is_extracted(workdir, tmp_path, member):
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in ("cifar-10-batches-py/readme", member):
            entry = tarfile.TarInfo(name)  # as a crafted archive names it: tarfile.add would strip a leading /
            entry.size = 1
            tar.addfile(entry, io.BytesIO(b"x"))
    assert_refused(tiny_in_process(workdir, "--config.data.name=cifar10", f"--config.data.path={root}"),
                   repr(member), "would land outside", "nothing was extracted")
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/absolute-escape")
    assert not (workdir / "results").exists()


@pytest.mark.fault("data files")
def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(workdir, tmp_path):
    root = make_cifar_folder(tmp_path / "cifar")
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Planted(), b"labels": []}, f)
    with pytest.raises(UserError, match="posix.system|os.system"):
        read_batch(root / "cifar-10-batches-py" / "data_batch_3")
    result = tiny_in_process(workdir, "--config.data.name=cifar10", f"--config.data.path={root}")
    assert result.returncode == 2 and "cannot read CIFAR-10 batch" in result.stderr, result.stderr
    assert not marker.exists()


def test_a_cifar_batch_reads_back_what_was_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "batch", images, [1, 2, 3, 4, 5, 6, 7])
    rows, labels = read_batch(tmp_path / "batch")
    assert np.array_equal(rows.reshape(7, 3, 32, 32), images) and labels.tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_a_misspelt_dataset_is_refused_with_a_suggestion_before_anything_is_recorded(workdir):
    assert_refused(tiny_in_process(workdir, "--config.data.name=fashion_mnsit"),
                   "unknown data.name 'fashion_mnsit' (did you mean fashion_mnist?)", "register your own")
    assert not (workdir / "results").exists()


def test_runs_recorded_before_datasets_could_be_chosen_keep_their_identity(workdir, mnist_root):
    """A config of before (no data.name, workers, memory limit or image size) and today's are the same run."""
    before = tiny_config(mnist_root)
    for key in ("name", "workers", "memory_limit_mb", "image_size"):
        del before["data"][key]
    (workdir / "configs" / "before.yml").write_text(yaml.safe_dump(before))
    assert run_in_process(workdir, "--experiment=experiment1", "--config=configs/before.yml",
                          "--verbose=0").returncode == 0
    assert_refused(tiny_in_process(workdir), "run 1")
    assert_refused(tiny_in_process(workdir, "--config.data.name=mnist", "--config.data.workers=0"), "run 1")
    db = workdir / "results" / "resultTable.db"
    assert "name: mnist" in (REPO / "configs" / "config.yml").read_text()
    assert tiny_in_process(workdir, "--config.data.name=kmnist").returncode == 2  # other data, not a duplicate
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(1,)]


def test_a_dataset_in_code_registers_under_a_name_and_trains(workdir, monkeypatch):
    monkeypatch.setitem(data.registry.DATASETS, "noise", "helpers:noise_dataset")
    listed = run_in_process(workdir, "--list").stdout
    assert "noise                noise: two classes of random images" in listed
    done = tiny_in_process(workdir, "--config.data.name=noise", "--config.data.val_size=50", "--verbose=2",
                           "--config.data.batch_size=64")
    assert done.returncode == 0, done.stderr
    assert "150 train / 50 validation / 100 test images of 1x16x16, 2 classes" in done.stdout
    assert_refused(tiny_in_process(workdir, "--config.data.name=noise", "--config.data.val_size=50",
                                   "--config.data.batch_size=64"), "run 1")
    assert_refused(tiny_in_process(workdir, "--config.data.name=noise", "--config.data.val_size=200"),
                   "data.val_size must be between 1 and 199")


@pytest.mark.slow
def test_the_shipped_cifar10_variant_trains_its_wider_network_on_cifar_batches(tmp_path):
    root = make_cifar_folder(tmp_path / "cifar")
    done = run_main(tmp_path, "--experiment=experiment1", f"--config={REPO / 'configs' / 'cifar10.yml'}",
                    f"--config.data.path={root}", "--config.data.download=false", "--config.data.val_size=100",
                    "--config.training.num_epochs=1", "--verbose=2")
    assert done.returncode == 0, done.stderr
    assert "400 train / 100 validation / 200 test images of 3x32x32, 10 classes" in done.stdout
    hparams_of_run = hparams(tmp_path / "results" / "resultTable.db", 1)
    assert hparams_of_run["data.name"] == "cifar10" and hparams_of_run["model.channels"] == "[64, 128]"
