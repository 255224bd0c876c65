"""MNIST from its four IDX files (see data/idx.py), held as tensors on the device and served in seeded batches."""
import math

import numpy as np
import torch

from data.idx import find_files, raw_folder, read_header, read_idx
from utils.errors import UserError

MEAN, STD = 0.1307, 0.3081  # of the MNIST training images, the usual normalisation


def load_mnist(data_path, download=True):
    """(train images, train labels, test images, test labels) as uint8 / int64 tensors on the CPU."""
    files = find_files(data_path, download)
    arrays = {name: read_idx(path) for name, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"MNIST {split} files in {raw_folder(data_path)} do not match: "
                            f"{images.shape[0]} images of shape {images.shape[1:]}, {labels.shape[0]} labels")
    return (torch.from_numpy(arrays["train_images"].copy()), torch.from_numpy(arrays["train_labels"].astype(np.int64)),
            torch.from_numpy(arrays["test_images"].copy()), torch.from_numpy(arrays["test_labels"].astype(np.int64)))


def check_config(config, world_size=1):
    """Refuse a validation split the training set cannot give (reading only the files' headers), and a batch that
    the torchrun processes cannot share evenly."""
    cfg = config["data"]
    _check_batch_size(cfg["batch_size"], world_size)
    files = find_files(cfg["path"], cfg["download"])
    num_train = read_header(files["train_labels"])[0]
    _check_val_size(cfg["val_size"], num_train)


def _check_batch_size(batch_size, world_size):
    if batch_size % world_size:
        raise UserError(f"data.batch_size {batch_size} is the global batch: it must divide evenly among "
                        f"{world_size} torchrun processes (make it a multiple of {world_size})")


def split_train_val(num_train, val_size, split_seed):
    """(train indices, validation indices): a split of the training set fixed by `split_seed` alone."""
    _check_val_size(val_size, num_train)
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:], order[:val_size]


class Batches:
    """Batches of (normalised images, labels) drawn from tensors already on the device.

    With `shuffle`, every pass draws a new permutation from `generator`; with `shift` > 0, each image is moved by a
    random number of pixels (up to `shift`) in each direction, on the device, also drawn from `generator`.
    With `world` (several processes under torchrun), each batch is drawn whole on every rank, from the same generator,
    and each rank keeps its share of it (every `world.size`-th sample from its rank on): the ranks' shards differ, and
    together they make exactly the batch a single process would have seen.
    """

    def __init__(self, images, labels, batch_size, shuffle=False, shift=0, generator=None, channels_last=False,
                 world=None):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.shift = batch_size, shuffle, shift
        self.generator = generator
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.rank, self.world_size = (world.rank, world.size) if world is not None else (0, 1)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_samples(self):
        """Samples in one pass, over all ranks together."""
        return len(self.labels)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator).to(self.images.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                images, labels = self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            else:
                index = order[start:start + self.batch_size]
                images, labels = self.images[index], self.labels[index]
            images = normalise(images)
            if self.shift:
                images = random_shift(images, self.shift, self.generator)
            if self.world_size > 1:
                if self.shuffle and len(labels) < self.world_size:
                    break  # a last batch too small to give every rank a sample: no rank trains on it
                images, labels = images[self.rank::self.world_size], labels[self.rank::self.world_size]
            yield images.contiguous(memory_format=self.memory_format), labels


def normalise(images):
    """uint8 images [B, 28, 28] -> float [B, 1, 28, 28] with the MNIST mean and std."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def random_shift(images, shift, generator):
    """Each image moved by its own random offset in [-shift, shift] pixels per axis, padding with background."""
    b, _, h, w = images.shape
    background = -MEAN / STD
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift), value=background)
    # Offsets come from the CPU generator so that runs are identical whatever the device.
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def make_loaders(config, device, seed, world=None):
    """(train, validation, test) Batches for `config['data']`, the data held on `device`, shuffled from `seed`.

    With `world` (torchrun), each rank gets its shard of every batch; `data.batch_size` stays the global batch size.
    """
    cfg = config["data"]
    train_images, train_labels, test_images, test_labels = load_mnist(cfg["path"], cfg["download"])
    train_index, val_index = split_train_val(len(train_labels), cfg["val_size"], cfg["split_seed"])
    generator = torch.Generator().manual_seed(seed)
    channels_last = config["model"].get("channels_last", False)

    def on_device(images, labels):
        return images.to(device), labels.to(device)

    _check_batch_size(cfg["batch_size"], world.size if world is not None else 1)
    train = Batches(*on_device(train_images[train_index], train_labels[train_index]), cfg["batch_size"],
                    shuffle=True, shift=cfg["augment_shift"], generator=generator, channels_last=channels_last,
                    world=world)
    val = Batches(*on_device(train_images[val_index], train_labels[val_index]), cfg["eval_batch_size"],
                  channels_last=channels_last, world=world)
    test = Batches(*on_device(test_images, test_labels), cfg["eval_batch_size"], channels_last=channels_last,
                   world=world)
    return train, val, test


def _check_val_size(val_size, num_train):
    if not 0 < val_size < num_train:
        raise UserError(f"data.val_size must be between 1 and {num_train - 1} (the training set size - 1), "
                        f"got {val_size}")
