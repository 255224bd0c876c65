"""The IDX datasets (MNIST, Fashion-MNIST, KMNIST): four IDX files each, found or downloaded, read without torch.

Files are read from `<data.path>/<FOLDER>/raw` (torchvision's layout), gzipped or not; nothing is ever extracted or
written there, so the folder may be read-only. Missing files are downloaded (md5-checked) only when `data.download`
is true.
"""
import gzip
import math
import struct
from pathlib import Path

from data.files import content_fingerprint, download, fingerprint, refuse_what_is_in_the_way
from data.registry import Arrays, DataInfo
from utils.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class IdxDataset:
    """One dataset in the four IDX files' format: 28x28 grey images, 10 classes."""

    def __init__(self, title, folder, mirrors, md5, classes, mean, std):
        self.title, self.folder, self.mirrors, self.md5 = title, folder, mirrors, md5  # md5 of each .gz file
        self.classes, self.mean, self.std = tuple(classes), (mean,), (std,)
        self.summary = f"{title}: 28x28 grey, {len(classes)} classes (IDX files in DATA/{folder}/raw)"
        # (the files' paths) -> the fingerprint this process took of them: load() checks that it reads those bytes
        self._fingerprinted = {}

    def raw_folder(self, data_path):
        return Path(data_path).expanduser() / self.folder / "raw"

    def find_files(self, data_path, download_missing):
        """{name: path} of the four files under `data_path`, downloading the missing ones if `download_missing`."""
        folder = self.raw_folder(data_path)
        found, missing = {}, []
        for name, stem in FILES.items():
            path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
            if path is None:
                refuse_what_is_in_the_way(folder / stem)
                missing.append(name)
            found[name] = path
        if missing and download_missing:
            for name in missing:
                filename = f"{FILES[name]}.gz"
                found[name] = download(folder, filename, [f"{mirror}{filename}" for mirror in self.mirrors],
                                       self.md5[filename], lambda reason: self._missing_message(folder, reason))
        elif missing:
            raise UserError(self._missing_message(folder, "and data.download is false"))
        return found

    def fingerprint(self, cfg, cache_path=None):
        """The sha256 of the four files' content (decompressed), the same wherever they lie and however compressed."""
        files = self.find_files(cfg["path"], cfg["download"])
        self._fingerprinted[tuple(files.values())] = fingerprint(files, cache_path)
        return self._fingerprinted[tuple(files.values())]

    def describe(self, cfg, cache_dir=None):
        """The DataInfo, from the files' headers alone."""
        files = self.find_files(cfg["path"], cfg["download"])
        num_train, num_test = read_header(files["train_labels"])[0], read_header(files["test_labels"])[0]
        _, height, width = read_header(files["train_images"])
        return DataInfo(1, height, width, self.classes, self.mean, self.std, num_train, num_test)

    def load(self, cfg, cache_dir=None, world=None):
        """The four files as Arrays: uint8 images [N, 1, 28, 28] and int64 labels, on the CPU."""
        import numpy as np
        import torch

        files = self.find_files(cfg["path"], cfg["download"])
        contents = {name: read_content(path) for name, path in files.items()}
        fingerprinted = self._fingerprinted.pop(tuple(files.values()), None)  # this launch's, checked once
        if fingerprinted is not None and content_fingerprint(contents) != fingerprinted:
            raise UserError(f"the {self.title} files in {files['train_images'].parent} changed while this run "
                            f"started (they are no longer the data its identity was taken from): it stopped before "
                            f"training; launch again to train on them as they are now")
        arrays = {name: read_idx(path, contents[name]) for name, path in files.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise UserError(f"{self.title} {split} files in {files[f'{split}_images'].parent} do not match: "
                                f"{images.shape[0]} images of shape {images.shape[1:]}, {labels.shape[0]} labels")
        tensors = {name: torch.from_numpy(array.astype(np.int64) if name.endswith("labels") else array.copy())
                   for name, array in arrays.items()}
        return Arrays(tensors["train_images"].unsqueeze(1), tensors["train_labels"],
                      tensors["test_images"].unsqueeze(1), tensors["test_labels"], self.classes, self.mean, self.std,
                      self.describe(cfg))

    def _missing_message(self, folder, reason):
        names = ", ".join(f"{stem}[.gz]" for stem in FILES.values())
        return (f"{self.title} files missing in {folder} {reason}; put the four files there ({names}) "
                f"or set --config.data.path to the folder that holds {self.folder}/raw")


MNIST = IdxDataset(
    "MNIST", "MNIST", ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
     "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
     "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    [str(digit) for digit in range(10)], mean=0.1307, std=0.3081)
FASHION_MNIST = IdxDataset(
    "Fashion-MNIST", "FashionMNIST", ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    mean=0.2860, std=0.3530)
KMNIST = IdxDataset(
    "KMNIST", "KMNIST", ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
    {"train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
     "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
     "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
     "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"},
    ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"], mean=0.1918, std=0.3483)


def read_header(path):
    """The shape an IDX file declares, read from its first bytes (gzipped or not), checked against its type."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            start = f.read(4)
            return header_of(path, start + f.read(4 * start[3]) if len(start) == 4 else start)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; delete it so it is downloaded again") from None


def header_of(path, raw):
    """The shape the IDX file at `path` declares in its first bytes `raw`, checked against its type."""
    try:
        zero, dtype_code, ndim = struct.unpack_from(">HBB", raw)
        shape = struct.unpack_from(f">{ndim}I", raw, 4)
    except struct.error as e:
        raise UserError(f"cannot read IDX file {path}: {e}; delete it so it is downloaded again") from None
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file; replace it with the original file")
    return shape


def read_content(path):
    """The bytes of one IDX file (decompressed when gzipped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; delete it so it is downloaded again") from None


def read_idx(path, raw=None):
    """The array stored in one IDX file (gzipped or not; `raw`: its bytes, read already), validated against its
    header."""
    import numpy as np

    raw = read_content(path) if raw is None else raw
    shape = header_of(path, raw)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(shape))
    if data.size != math.prod(shape):
        raise UserError(f"{path} is not a uint8 IDX file of shape {shape}; replace it with the original file")
    return data.reshape(shape)
