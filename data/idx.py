"""MNIST's four IDX files on disk, without torch: finding (or downloading) them, their headers, their fingerprint.

Files are read from `<data.path>/MNIST/raw`, gzipped or not; nothing is ever extracted or written there, so the folder
may be read-only. Missing files are downloaded (md5-checked) only when `data.download` is true.
"""
import gzip
import hashlib
import json
import math
import os
import struct
from pathlib import Path

from utils.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MD5 = {  # of the .gz files as published; the same ones torchvision checks
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def raw_folder(data_path):
    return Path(data_path).expanduser() / "MNIST" / "raw"


def find_files(data_path, download):
    """{name: path} of the four MNIST files under `data_path`, downloading the missing ones if `download`."""
    folder = raw_folder(data_path)
    found, missing = {}, []
    for name, stem in FILES.items():
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            missing.append(name)
        found[name] = path
    if missing and download:
        for name in missing:
            found[name] = _download(folder, f"{FILES[name]}.gz")
    elif missing:
        raise UserError(_missing_message(folder, "and data.download is false"))
    return found


def read_header(path):
    """The shape an IDX file declares, read from its first bytes (gzipped or not), checked against its type."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
    except (OSError, EOFError, struct.error) as e:
        raise UserError(f"cannot read MNIST file {path}: {e}; delete it so it is downloaded again") from None
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file; replace it with the original MNIST file")
    return shape


def read_idx(path):
    """The array stored in one IDX file (gzipped or not), validated against its header."""
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    shape = read_header(path)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read MNIST file {path}: {e}; delete it so it is downloaded again") from None
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(shape))
    if data.size != math.prod(shape):
        raise UserError(f"{path} is not a uint8 IDX file of shape {shape}; replace it with the original MNIST file")
    return data.reshape(shape)


def mnist_fingerprint(config, cache_path=None):
    """The fingerprint of the MNIST files `config['data']` points at (missing ones downloaded where allowed)."""
    return fingerprint(find_files(config["data"]["path"], config["data"]["download"]), cache_path)


def fingerprint(files, cache_path=None):
    """The sha256 of the four files' content (decompressed), the same wherever they lie and however compressed.

    Hashing 55 MB takes about 0.4 s; with `cache_path`, a file's hash is kept there by path, size and modification
    time, so a launch that finds the same files again (a refused duplicate) pays a few milliseconds.
    """
    cache = _read_cache(cache_path)
    digest = hashlib.sha256()
    changed = False
    for name in FILES:
        path = Path(files[name]).resolve()
        stat = path.stat()
        key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in cache:
            opener = gzip.open if path.suffix == ".gz" else open
            file_digest = hashlib.sha256()
            with opener(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    file_digest.update(block)
            cache[key] = file_digest.hexdigest()
            changed = True
        digest.update(f"{name}:{cache[key]}\n".encode())
    if changed and cache_path is not None:
        _write_cache(cache_path, cache)
    return digest.hexdigest()


def _read_cache(cache_path):
    try:
        return json.loads(Path(cache_path).read_text()) if cache_path is not None else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache_path, cache):
    """Keep the hashes for the next launch, in a folder that exists already (a refused launch creates none); a
    folder that cannot be written only costs the next launch 0.4 s."""
    cache_path = Path(cache_path)
    if not cache_path.parent.is_dir():
        return
    tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cache, indent=0))
        tmp.replace(cache_path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: nothing was written


def _missing_message(folder, reason):
    names = ", ".join(f"{stem}[.gz]" for stem in FILES.values())
    return (f"MNIST files missing in {folder} {reason}; put the four files there ({names}) "
            f"or set --config.data.path to the folder that holds MNIST/raw")


def _download(folder, filename):
    """Path of `filename` downloaded into `folder` (md5-checked), or a UserError naming what is needed."""
    from torchvision.datasets import MNIST  # only here: reading local files needs no torchvision
    from torchvision.datasets.utils import download_url

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(_missing_message(folder, f"and the folder cannot be written ({e.strerror})")) from None
    errors = []
    for mirror in MNIST.mirrors:
        try:
            download_url(f"{mirror}{filename}", root=str(folder), filename=filename, md5=MD5[filename])
            return folder / filename
        except Exception as e:  # any network failure: try the next mirror, then explain
            errors.append(f"{type(e).__name__}")
            (folder / filename).unlink(missing_ok=True)
    raise UserError(_missing_message(folder, f"and the download failed ({', '.join(errors)}; offline?)"))
