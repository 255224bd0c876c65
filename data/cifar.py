"""CIFAR-10 from the python batches torchvision downloads (`<data.path>/cifar-10-batches-py/`): 32x32 RGB, 10 classes.

Batches already there are read as they are (a read-only folder works). Missing ones come from the archive
`cifar-10-python.tar.gz` in `data.path`, downloaded (md5-checked) when it is missing too and `data.download` is true,
and extracted so that nothing can land outside the folder. The batches are pickles: they are read by an unpickler
that builds NumPy arrays and plain values only, so a planted file cannot run code.
"""
import pickle
from pathlib import Path

from data.files import download, extract_tar, fingerprint
from data.registry import Arrays, DataInfo
from utils.errors import UserError

FOLDER = "cifar-10-batches-py"
ARCHIVE, ARCHIVE_MD5 = "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
TRAIN = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
         "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
         "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb"}
TEST = {"test_batch": "40351d587109b95175f43aff81a1287e"}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGES_PER_BATCH = 10000


class Cifar10:
    summary = f"CIFAR-10: 32x32 RGB, 10 classes (python batches in DATA/{FOLDER})"

    def find_files(self, cfg):
        """{batch name: path} of the six batches, extracting (and first downloading) the archive if any is missing."""
        root = Path(cfg["path"]).expanduser()
        folder = root / FOLDER
        files = {name: folder / name for name in (*TRAIN, *TEST)}
        if all(path.is_file() for path in files.values()):
            return files
        archive = root / ARCHIVE
        if not archive.is_file():
            if not cfg["download"]:
                raise UserError(_missing_message(root, "and data.download is false"))
            download(root, ARCHIVE, URLS, ARCHIVE_MD5, lambda reason: _missing_message(root, reason))
        extract_tar(archive, root)
        missing = [name for name, path in files.items() if not path.is_file()]
        if missing:
            raise UserError(f"{archive} holds no {FOLDER}/{missing[0]}; it is not the CIFAR-10 python archive")
        return files

    def fingerprint(self, cfg, cache_path=None):
        return fingerprint(self.find_files(cfg), cache_path)

    def describe(self, cfg, cache_dir=None):
        self.find_files(cfg)
        return DataInfo(3, 32, 32, CLASSES, MEAN, STD, len(TRAIN) * IMAGES_PER_BATCH, IMAGES_PER_BATCH)

    def load(self, cfg, cache_dir=None, world=None):
        import numpy as np
        import torch

        files = self.find_files(cfg)
        splits = {}
        for split, names in (("train", TRAIN), ("test", TEST)):
            batches = [read_batch(files[name]) for name in names]
            images = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
            labels = np.concatenate([b[1] for b in batches]).astype(np.int64)
            splits[split] = torch.from_numpy(images), torch.from_numpy(labels)
        info = DataInfo(3, 32, 32, CLASSES, MEAN, STD, len(splits["train"][1]), len(splits["test"][1]))
        return Arrays(*splits["train"], *splits["test"], CLASSES, MEAN, STD, info)


def read_batch(path):
    """(uint8 images [N, 3072], labels [N]) of one CIFAR batch file, read without running anything it holds."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, OSError, EOFError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read CIFAR-10 batch {path} ({type(e).__name__}: {e}); delete the folder "
                        f"{Path(path).parent} so that it is extracted again") from None
    if images.ndim != 2 or images.shape[1] != 3072 or len(labels) != len(images):
        raise UserError(f"{path} is not a CIFAR-10 batch (images of shape {images.shape}); delete the folder "
                        f"{Path(path).parent} so that it is extracted again")
    return images, labels


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and Python's plain types, and refuses every other global."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to load {module}.{name}, which a data batch never needs")


def _missing_message(root, reason):
    return (f"CIFAR-10 files missing in {root / FOLDER} {reason}; put the extracted batches there "
            f"({', '.join((*TRAIN, *TEST))}) or {ARCHIVE} in {root}, or set --config.data.path to the folder "
            f"that holds them")


CIFAR10 = Cifar10()
