"""The datasets a run can train on, by name (`data.name`), and what every dataset tells the rest of the template.

A dataset is one object with a one-line `summary` (for --list) and three methods:

    fingerprint(cfg, cache_path) -> str    the sha256 of its content, for the run's identity (no torch needed)
    describe(cfg, cache_dir) -> DataInfo   shape, classes, normalisation and sizes, read cheaply (headers, a scan)
    load(cfg, cache_dir, world) -> Arrays | Files   the images: tensors to hold in memory, or files to stream

A text corpus (data/text.py) has the same three, describing a TextInfo and loading Tokens.

`cfg` is the config's `data` section; `cache_dir` is the run table's folder, where a dataset may keep what it
measured or decoded once. A dataset of your own in code needs only a function that returns `Arrays` (images) or
`Tensors` (any examples: data/tensors.py);
register it below as "name": "data.my_module:my_function" (see docs/data.md: a dataset of your own in code).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data.tensors import TensorInfo, Tensors, with_tensor_info
from data.text import TextInfo
from utils.config import require
from utils.errors import UserError

if TYPE_CHECKING:  # for the hints only: nothing here imports torch until data is loaded
    from torch import Tensor

DATASETS = {
    "mnist": "data.idx:MNIST",
    "fashion_mnist": "data.idx:FASHION_MNIST",
    "kmnist": "data.idx:KMNIST",
    "cifar10": "data.cifar:CIFAR10",
    "folder": "data.folder:FOLDER",
    "shakespeare_char": "data.text:SHAKESPEARE_CHAR",
    "csv": "data.table:CSV",
}
DEFAULT = "mnist"  # what a config without data.name (every run recorded before datasets could be chosen) trained on
_IN_CODE: dict = {}  # (name, function) -> its InCode wrapper: see find_dataset


@dataclass(frozen=True)
class DataInfo:
    """What the network and the loaders need to know of a dataset."""
    channels: int
    height: int
    width: int
    classes: tuple  # class names; their number is the network's number of outputs
    mean: tuple  # per channel, of pixel values scaled to [0, 1]
    std: tuple
    num_train: int  # images in the training split (the validation images are taken from it)
    num_test: int

    @property
    def num_classes(self):
        return len(self.classes)


# The kinds of data description, as description_json names them.
_DESCRIPTIONS = {"images": DataInfo, "text": TextInfo, "tensors": TensorInfo}


@dataclass
class Arrays:
    """A dataset held in memory: uint8 images [N, C, H, W] (or [N, H, W] for grey) and int64 labels [N]."""
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple
    mean: tuple | None = None  # per channel in [0, 1]; None: measured on the training images
    std: tuple | None = None
    info: DataInfo | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Files:
    """A dataset streamed from image files: paths and labels per split, decoded to `mode` ('L' or 'RGB') and, where
    `size` is set, resized to it (height, width)."""
    train: tuple  # ((path, label), ...)
    test: tuple
    mode: str
    size: tuple | None
    info: DataInfo


def description_json(info) -> str:
    """A data description (DataInfo, TextInfo) as JSON text: what a run records of its data, so that its model can be
    built again where the data is not (an export)."""
    kind = next(name for name, kind in _DESCRIPTIONS.items() if isinstance(info, kind))
    return json.dumps({"kind": kind, **dataclasses.asdict(info)}, sort_keys=True)


def description_from_json(text: str):
    """The data description (DataInfo, TextInfo) that description_json wrote as `text`."""
    values = json.loads(text)
    kind = _DESCRIPTIONS[values.pop("kind")]
    return kind(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})


def check_fits(info, trained):
    """Refuse data described by `info` that a model trained on data described by `trained` cannot take: images of
    another shape or number of classes, a text with characters outside its vocabulary."""
    kinds = {type(info), type(trained)}
    if len(kinds) > 1:
        raise UserError(f"the data is not of the kind the model was trained on ({_KIND_WORDS[type(info)]} for a model "
                        f"of {_KIND_WORDS[type(trained)]})")
    if isinstance(trained, TensorInfo):
        from data.tensors import check_fits as check_tensors_fit

        return check_tensors_fit(info, trained)
    if isinstance(trained, TextInfo) or isinstance(info, TextInfo):
        if not (isinstance(trained, TextInfo) and isinstance(info, TextInfo)):
            raise UserError("the data is not of the kind the model was trained on (a text for a language model, "
                            "images for an image model)")
        missing = sorted(set(info.vocab) - set(trained.vocab))
        if missing:
            raise UserError(f"the text holds {len(missing)} character(s) the model's vocabulary lacks: "
                            f"{''.join(missing)[:40]!r}; give it a text of the characters it was trained on")
        return
    shape, wanted = (info.channels, info.height, info.width), (trained.channels, trained.height, trained.width)
    if shape != wanted or info.num_classes != trained.num_classes:
        raise UserError(f"the data is {'x'.join(map(str, shape))} images of {info.num_classes} classes; the model was "
                        f"trained on {'x'.join(map(str, wanted))} images of {trained.num_classes} classes: give it "
                        f"data of that shape (data.image_size resizes a folder's images)")


_KIND_WORDS = {DataInfo: "images", TextInfo: "a text", TensorInfo: "tensors"}


def dataset_name(cfg):
    return cfg.get("name") or DEFAULT


def find_dataset(name):
    """The dataset registered as `name`, or a UserError naming the close ones."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown data.name {name!r}{hint}; datasets: {', '.join(DATASETS)} "
                        f"(register your own in data/registry.py)")
    module, attribute = DATASETS[name].split(":")
    dataset = getattr(importlib.import_module(module), attribute)
    if hasattr(dataset, "describe"):
        return dataset
    # One wrapper per function, so that a launch loads a dataset in code once for its fingerprint, checks and run.
    return _IN_CODE.setdefault((name, dataset), InCode(name, dataset))


def data_fingerprint(config, cache_path=None):
    """The fingerprint of the data `config['data']` selects: the same content gives the same run wherever it lies."""
    cfg = data_section(config)
    return find_dataset(dataset_name(cfg)).fingerprint(cfg, cache_path)


def describe_data(config, cache_dir=None):
    """The DataInfo of the data `config['data']` selects."""
    cfg = data_section(config)
    return find_dataset(dataset_name(cfg)).describe(cfg, cache_dir)


def data_section(config):
    """config['data'], after refusing a section without the keys every dataset reads."""
    require(config, "data.name", str, optional=True)
    require(config, "data.path", str)
    require(config, "data.download", bool)
    return config["data"]


class InCode:
    """A dataset written as a function of `cfg` that returns Arrays (images) or Tensors (any examples): loaded once
    per process, fingerprinted by the bytes of its tensors."""

    def __init__(self, name, function):
        self.name, self.function, self._loaded = name, function, {}
        self.summary = (function.__doc__ or f"{name}: a dataset in code").strip().splitlines()[0]

    def load(self, cfg, cache_dir=None, world=None):
        key = repr(sorted(cfg.items()))
        if key not in self._loaded:
            data = self.function(cfg)
            if isinstance(data, Arrays):
                self._loaded[key] = with_info(data)
            elif isinstance(data, Tensors):
                self._loaded[key] = with_tensor_info(data, self.name)
            else:
                raise UserError(f"dataset {self.name!r} returned {type(data).__name__}; its function must return "
                                f"data.registry.Arrays (images) or data.tensors.Tensors (any examples)")
        return self._loaded[key]

    def describe(self, cfg, cache_dir=None):
        return self.load(cfg).info

    def fingerprint(self, cfg, cache_path=None):
        data = self.load(cfg)
        digest = hashlib.sha256()
        described: tuple
        if isinstance(data, Arrays):
            tensors = (data.train_images, data.train_labels, data.test_images, data.test_labels)
            described = (tuple(data.classes), data.mean, data.std)
        else:  # the description too: the same numbers as classes or as values are other data
            tensors = (data.train_inputs, data.train_targets, data.test_inputs, data.test_targets)
            described = ("tensors", data.info)
        for tensor in tensors:  # their dtypes follow from the description: float inputs, float or int64 targets
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        digest.update(repr(described).encode())
        return digest.hexdigest()


def with_info(arrays):
    """`arrays` with images as [N, C, H, W], checked, and its DataInfo filled in (mean and std measured if unset)."""
    import torch

    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if images.dtype != torch.uint8 or images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{split} images must be uint8 [N, C, H, W] (or [N, H, W]) with N labels; got "
                            f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)} labels")
        if images.ndim == 3:
            setattr(arrays, f"{split}_images", images.unsqueeze(1))
        setattr(arrays, f"{split}_labels", labels.long())
    _, channels, height, width = arrays.train_images.shape
    if arrays.test_images.shape[1:] != arrays.train_images.shape[1:]:
        raise UserError(f"train images are {tuple(arrays.train_images.shape[1:])}, test images "
                        f"{tuple(arrays.test_images.shape[1:])}: they must have one shape")
    if arrays.mean is None or arrays.std is None:
        pixels = arrays.train_images.double().div(255).transpose(0, 1).reshape(channels, -1)
        arrays.mean, arrays.std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    arrays.info = DataInfo(channels, height, width, tuple(arrays.classes), tuple(arrays.mean), tuple(arrays.std),
                           len(arrays.train_labels), len(arrays.test_labels))
    return arrays
