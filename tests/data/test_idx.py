"""The IDX datasets (MNIST, Fashion-MNIST, KMNIST): gzipped or not, read-only folders, a clear error when files are
missing, and the in-memory batches they are served in."""
import numpy as np
import pytest
import torch

from data.idx import MNIST, read_header, read_idx
from data.decoding import shifted
from data.loaders import Batches, split_train_val
from data.plans import EpochPlan, GeneratorDraws
from helpers import assert_refused, make_mnist_folder, synthetic_digits, tiny_in_process, write_idx
from utils.errors import UserError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_gzipped_or_not(tmp_path, gz):
    root = make_mnist_folder(tmp_path, n_train=30, n_test=10, gz=gz)
    arrays = MNIST.load({"path": root, "download": False})
    train_x, train_y, test_x, test_y = arrays.train_images[:, 0], arrays.train_labels, arrays.test_images[:, 0], \
        arrays.test_labels
    expected_x, expected_y = synthetic_digits(30, seed=1)
    assert train_x.dtype == torch.uint8 and train_x.shape == (30, 28, 28)
    assert torch.equal(train_x, torch.from_numpy(expected_x)) and train_y.tolist() == expected_y.tolist()
    assert test_x.shape == (10, 28, 28) and test_y.dtype == torch.int64


def test_nothing_is_written_beside_the_raw_files(tmp_path):
    root = make_mnist_folder(tmp_path, n_train=30, n_test=10)
    before = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    MNIST.load({"path": root, "download": False})
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == before
    assert sorted(p.name for p in (root / "MNIST").iterdir()) == ["raw"]


def test_missing_files_name_the_folder_and_the_four_files(tmp_path):
    with pytest.raises(UserError) as error:
        MNIST.load({"path": tmp_path, "download": False})
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message


@pytest.mark.fault("data files")
def test_a_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "bad-idx"
    write_idx(path, np.zeros((4, 28, 28)), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="not a uint8 IDX file"):
        read_idx(path)


def test_the_validation_split_depends_only_on_its_seed():
    train_a, val_a = split_train_val(100, 10, split_seed=0)
    train_b, val_b = split_train_val(100, 10, split_seed=0)
    assert torch.equal(val_a, val_b) and len(train_a) == 90
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert not torch.equal(split_train_val(100, 10, split_seed=1)[1], val_a)


def test_batches_cover_every_sample_once_per_pass_in_a_seeded_order():
    images = torch.arange(10, dtype=torch.uint8).repeat_interleave(784).view(10, 1, 28, 28)
    labels = torch.arange(10)

    def batches(plans):
        return Batches(images, labels, EpochPlan(10, 4, plans), (0.5,), (0.5,))
    def order(seed):
        return torch.cat([y for _, y in batches(GeneratorDraws(seed))])
    assert sorted(order(0).tolist()) == list(range(10))
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert len(batches(None)) == 3 and torch.equal(torch.cat([y for _, y in batches(None)]), labels)


def test_shifts_move_images_by_at_most_the_given_pixels_and_pad_with_background():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    offsets = torch.Generator().manual_seed(0)
    dy, dx = (torch.randint(0, 5, (50,), generator=offsets) for _ in "yx")
    moved = shifted(image.repeat(50, 1, 1, 1), dy, dx, 2, [-7.0])
    positions = {tuple((s[0] == 1.0).nonzero()[0].tolist()) for s in moved}
    assert len(positions) > 5
    assert all(abs(r - 10) <= 2 and abs(c - 10) <= 2 for r, c in positions)
    assert (moved == -7.0).any() and set(moved.unique().tolist()) <= {-7.0, 0.0, 1.0}


def test_a_run_without_data_is_refused_before_it_is_registered(workdir, tmp_path):
    result = tiny_in_process(workdir, f"--config.data.path={tmp_path / 'empty'}")
    assert_refused(result, "MNIST files missing", "t10k-labels-idx1-ubyte", "data.download is false")
    assert not (workdir / "results").exists()


def test_the_header_gives_the_training_set_size_and_an_impossible_split_is_refused_before_registering(workdir,
                                                                                                    mnist_root):
    assert read_header(mnist_root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz") == (640,)
    assert_refused(tiny_in_process(workdir, "--config.data.val_size=640"), "data.val_size must be between 1 and 639")
    assert_refused(tiny_in_process(workdir, "--config.model.kernel_size=13"),
                   "shrink the 28x28 images to nothing")
    assert_refused(tiny_in_process(workdir, "--config.training.precision=fp8"), "training.precision must be")
    assert_refused(tiny_in_process(workdir, "--config.training.autocast=bf16"),
                   "'training.autocast' is now 'training.precision'")
    assert_refused(tiny_in_process(workdir, "--config.training.optimizer=adam"), "training.optimizer must be")
    assert not (workdir / "results").exists()


@pytest.mark.fault("data files")
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_a_data_file_cut_short_is_one_line_before_anything_is_recorded(workdir, mnist_root, tmp_path, name):
    import shutil

    data = tmp_path / "cut"
    shutil.copytree(mnist_root, data)
    path = data / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    assert_refused(tiny_in_process(workdir, f"--config.data.path={data}"), "cannot read data file", name,
                   "delete or replace it")
    assert not (workdir / "results" / "resultTable.db").exists()


@pytest.mark.fault("data files")
def test_a_download_that_fails_offline_is_one_line_and_leaves_no_empty_folder(workdir, tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils

    def offline(url, root, filename=None, md5=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    target = tmp_path / "fresh" / "data"
    assert_refused(tiny_in_process(workdir, f"--config.data.path={target}", "--config.data.download=true"),
                   "MNIST files missing", "the download failed (URLError")
    assert not (tmp_path / "fresh").exists() and not (workdir / "results" / "resultTable.db").exists()


@pytest.mark.fault("data files")
@pytest.mark.parametrize("kind", ["dangling link", "link to a device", "fifo", "folder"])
def test_a_data_file_that_is_not_a_file_is_never_deleted_by_a_download(workdir, tmp_path, kind):
    """data.download: true with something of the user's where a file should be: one line, and it is still there."""
    import os

    root = make_mnist_folder(tmp_path / "mine")
    target = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    target.unlink()
    if kind == "dangling link":
        target.symlink_to(tmp_path / "unmounted" / "train-labels-idx1-ubyte.gz")
    elif kind == "link to a device":
        target.symlink_to("/dev/null")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    done = tiny_in_process(workdir, f"--config.data.path={root}", "--config.data.download=true")
    assert_refused(done, str(target), "the template neither downloads over it nor deletes it")
    assert os.path.lexists(target)  # the user's, as it was
