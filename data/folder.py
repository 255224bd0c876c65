"""Your own images: a folder in torchvision's ImageFolder layout, `DIR/train/CLASS/*.png` and `DIR/test/CLASS/...`.

Classes are the sub-folders' names (sorted); images are grey when every one is, else RGB; they must have one size, or
are resized to `data.image_size`. The first launch scans the folder once: each file's sha256 (the run's identity is
the folder's content, wherever it lies), its size and colour, and its pixel sums (the normalisation), and refuses
what the folder gets wrong before the run is registered. The scan is cached beside the run table by each file's path,
size and modification time, so a later launch only lists the folder.

A folder whose decoded images fit in `data.memory_limit_mb` is decoded once into a tensor file in
`results/data_cache/` and served from memory; a larger one is streamed by `data.workers` worker processes. Both
paths give the same batches, bit for bit (data/loaders.py).
"""
import hashlib
import io
import os
import sys
from pathlib import Path
from stat import S_ISREG

from data.files import read_cache, stat_key, write_cache
from data.registry import Arrays, DataInfo, Files
from utils.cores import capped_workers
from utils.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGE_SHARE = 16  # one image may take at most this share of data.memory_limit_mb decoded...
MIN_IMAGE_BUDGET_MB = 64  # ...and at least this much whatever the limit (a streamed folder may set it to 0)
# How _measure reads an image, kept in the scan caches: a cache measured another way is measured again. 2: 16-bit
# images are scaled to 8 bits (1, unmarked, clipped them, so their sums were wrong).
MEASURED = 2
SPLITS = ("train", "test")


class ImageFolder:
    summary = "your images: DATA/train/CLASS/*.png|jpg|... and DATA/test/CLASS/..., in memory or streamed"

    def __init__(self):
        # (folder, listing digest) -> (scan, files measured here or None): a launch fingerprints, checks and loads
        # in one process, listing the folder each time but scanning it once
        self._scans = {}

    def fingerprint(self, cfg, cache_path=None):
        return self.scan(cfg, Path(cache_path).parent if cache_path is not None else None)["fingerprint"]

    def describe(self, cfg, cache_dir=None):
        return _info(cfg, self.scan(cfg, cache_dir))

    def files(self, cfg, cache_dir=None):
        """The folder as Files: (path, label) of every image per split, in a fixed order, and how to decode them."""
        return self._files(cfg, *self._read(cfg, cache_dir))

    def load(self, cfg, cache_dir=None, world=None):
        """Arrays decoded once and cached under `cache_dir`/data_cache when they fit in `data.memory_limit_mb`,
        else the Files to stream."""
        scan, groups = self._read(cfg, cache_dir)  # one listing of the folder for all that follows
        files = self._files(cfg, scan, groups)
        if streams(cfg, files.info):
            return files
        return decoded_arrays(files, scan["fingerprint"], cache_dir, capped_workers(cfg.get("workers") or 0),
                              world)

    @staticmethod
    def _files(cfg, scan, groups):
        root = Path(cfg["path"]).expanduser()
        labels = {name: index for index, name in enumerate(scan["classes"])}
        entries: dict[str, list] = {split: [] for split in SPLITS}
        for prefix, images in groups:
            split, label, _ = prefix.split("/")
            entries[split] += [(str(root / prefix / name), labels[label]) for name, _ in images]
        size = image_size(cfg, scan) if cfg.get("image_size") else None
        return Files(tuple(entries["train"]), tuple(entries["test"]), "L" if scan["grey"] else "RGB", size,
                     _info(cfg, scan))

    def scan(self, cfg, cache_dir=None):
        """What the folder holds (see the module docstring); a UserError for anything a run could not train on."""
        return self._read(cfg, cache_dir)[0]

    def _read(self, cfg, cache_dir):
        """(the scan, the listing's groups) of the folder `cfg` names."""
        root = Path(cfg["path"]).expanduser()
        listing, groups = _listing(root)
        where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
        cache_path = Path(cache_dir) / f"data_folder_{where}.json" if cache_dir is not None else None
        def current(cached):
            return cached.get("listing") == listing and cached.get("measured") == MEASURED

        if (where, listing) not in self._scans:
            cached = read_cache(cache_path)
            if current(cached):
                self._scans[where, listing] = cached["scan"], None
            else:
                known = read_cache(_files_cache(cache_path))
                known = known["files"] if known.get("measured") == MEASURED else {}
                self._scans[where, listing] = _scan(root, groups, known, image_budget(cfg))
        scan, files = self._scans[where, listing]
        if files is not None and not current(read_cache(cache_path)):  # scanned here, not kept yet
            write_cache(_files_cache(cache_path), {"measured": MEASURED, "files": files})
            write_cache(cache_path, {"listing": listing, "scan": scan, "measured": MEASURED})
        return self._check(scan, cfg, root), groups

    @staticmethod
    def _check(scan, cfg, root):
        if scan["bad"]:
            relative, error = scan["bad"]
            raise UserError(f"cannot decode {root / relative} ({error}); delete or replace it")
        image_size(cfg, scan)
        return scan


def _info(cfg, scan):
    """The DataInfo of a scanned folder: the network's input shape, the classes, the normalisation, the sizes."""
    height, width = image_size(cfg, scan)
    pixels = scan["pixels"]
    mean = [s / pixels / 255 for s in scan["sums"]]
    std = [max((q / pixels / 255**2 - m * m), 0.0) ** 0.5 or 1.0 for q, m in zip(scan["sumsq"], mean)]
    return DataInfo(1 if scan["grey"] else 3, height, width, tuple(scan["classes"]), tuple(mean), tuple(std),
                    scan["counts"]["train"], scan["counts"]["test"])


def streams(cfg, info):
    """Whether the folder is streamed from disk: its decoded images do not fit in `data.memory_limit_mb`."""
    decoded = (info.num_train + info.num_test) * info.channels * info.height * info.width
    return decoded > cfg.get("memory_limit_mb", 4096) * 2**20


def image_size(cfg, scan):
    """(height, width) the network sees: `data.image_size` (a side, or [height, width]), or the images' one size."""
    wanted = cfg.get("image_size")
    if wanted is not None:
        size = (wanted, wanted) if isinstance(wanted, int) and not isinstance(wanted, bool) else wanted
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise UserError(f"data.image_size is a side in pixels or [height, width], got {wanted!r}")
        return tuple(size)
    if len(scan["sizes"]) > 1:
        (first, example), (second, other) = list(scan["sizes"].items())[:2]
        raise UserError(f"images of different sizes in {cfg['path']}: {first} ({example}) and {second} ({other}); "
                        f"set --config.data.image_size=SIDE to resize them all")
    width, height = (int(s) for s in next(iter(scan["sizes"])).split("x"))
    return height, width


def _listing(root):
    """(sha256 of the listing, [(folder 'split/class/', [(name, stat) of each image])]), sorted; a UserError for a
    wrong layout. Listing is all a launch that finds the folder unchanged pays: about 10 microseconds a file."""
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; set --config.data.path to a folder holding "
                        f"train/CLASS/*.png and test/CLASS/*.png")
    digest, groups, classes = hashlib.sha256(), [], {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise UserError(f"data folder {root} has no {split}/ folder; it needs train/CLASS/*.png and "
                            f"test/CLASS/*.png (one sub-folder per class)")
        classes[split] = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if not classes[split]:
            raise UserError(f"{folder} holds no class folders; put each class's images in {folder}/CLASS/")
        for label in classes[split]:
            images = _images_in(folder / label)
            if not images:
                raise UserError(f"class folder {folder / label} holds no images ({', '.join(EXTENSIONS)})")
            prefix = f"{split}/{label}/"
            groups.append((prefix, images))
            digest.update("".join(f"{prefix}{name}:{stat_key(stat)}\n" for name, stat in images).encode())
    if classes["train"] != classes["test"]:
        only = sorted(set(classes["train"]) ^ set(classes["test"]))
        where = "train" if only[0] in classes["train"] else "test"
        raise UserError(f"train/ and test/ in {root} have different classes: {only[0]!r} is only in {where}/; "
                        f"both need the same class folders")
    return digest.hexdigest(), groups


def _images_in(folder):
    """[(name, stat)] of the image files in `folder`, sorted by name."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:  # names relative to the open folder: the kernel does not walk the whole path again for each file
        names = sorted(name for name in os.listdir(descriptor) if name.lower().endswith(EXTENSIONS))
        images = []
        for name in names:
            try:
                images.append((name, os.stat(name, dir_fd=descriptor)))
            except OSError as e:  # a dangling link, a link loop
                raise UserError(f"cannot read image file {folder / name} ({e.strerror or type(e).__name__}); "
                                f"remove or replace it") from None
    finally:
        os.close(descriptor)
    return [(name, stat) for name, stat in images if S_ISREG(stat.st_mode)]  # never a fifo, a device, a folder


def _files_cache(cache_path):
    return cache_path.with_suffix(".files.json") if cache_path is not None else None


def image_budget(cfg) -> int:
    """The most bytes one image may take decoded (4 a pixel, as PIL holds it): an image past it is refused before it
    is decoded, since a small compressed file can stand for gigabytes of pixels."""
    return max(cfg.get("memory_limit_mb", 4096) / IMAGE_SHARE, MIN_IMAGE_BUDGET_MB) * 2**20


def _scan(root, groups, known, budget):
    """(the folder's summary, {file key: what was measured}): every file not in `known` (by path, size and mtime)
    is hashed, decoded and measured, unless its pixels would take more than `budget` bytes."""
    digest = hashlib.sha256()
    files: dict = {}
    sizes: dict = {}
    classes: list = []
    counts = {split: 0 for split in SPLITS}
    sums, sumsq, pixels, grey, bad = None, None, 0, True, None
    for relative, stat in ((prefix + name, stat) for prefix, images in groups for name, stat in images):
        key = f"{relative}:{stat_key(stat)}"
        entry = known.get(key)
        if entry is None or (entry.get("too_large") and entry["width"] * entry["height"] * 4 <= budget):
            entry = _measure(root / relative, budget)
        files[key] = entry
        split, label, _ = relative.split("/", 2)
        counts[split] += 1
        if split == "train" and label not in classes:
            classes.append(label)
        digest.update(f"{relative}:{entry['sha256']}\n".encode())
        if "error" in entry:
            bad = bad or (relative, entry["error"])
            continue
        if entry["width"] * entry["height"] * 4 > budget:
            bad = bad or (relative, f"{entry['width']}x{entry['height']} pixels would take "
                                    f"{entry['width'] * entry['height'] * 4 / 2**20:,.0f} MiB decoded, more than the "
                                    f"{budget / 2**20:,.0f} MiB one image may take (a {IMAGE_SHARE}th of "
                                    f"data.memory_limit_mb, at least {MIN_IMAGE_BUDGET_MB} MiB); it was not decoded")
            continue
        sizes.setdefault(f"{entry['width']}x{entry['height']}", relative)
        grey = grey and entry["grey"]
        if split == "train":
            sums = _add(sums, entry["sums"])
            sumsq = _add(sumsq, entry["sumsq"])
            pixels += entry["width"] * entry["height"]
    if not grey and sums is not None and sumsq is not None and len(sums) == 1:
        sums, sumsq = sums * 3, sumsq * 3
    return {"fingerprint": digest.hexdigest(), "classes": classes, "counts": counts, "sizes": sizes, "grey": grey,
            "sums": sums or [0.0], "sumsq": sumsq or [0.0], "pixels": max(pixels, 1), "bad": bad}, files


def _add(total, values):
    """Per-channel sums, where a grey image counts in each of three colour channels."""
    if total is None:
        return list(values)
    if len(total) != len(values):
        total, values = (total * 3 if len(total) == 1 else total), (values * 3 if len(values) == 1 else values)
    return [a + b for a, b in zip(total, values)]


def _measure(path, budget):
    """{sha256, width, height, grey, sums, sumsq} of one image file, {sha256, width, height, too_large} if its pixels
    would take more than `budget` bytes, or {sha256, error} if it cannot be decoded."""
    import numpy as np
    from PIL import Image

    from data.decoding import GREY_MODES, eight_bit

    try:
        data = path.read_bytes()
    except OSError as e:  # a dangling link, a link loop, a special file
        raise UserError(f"cannot read image file {path} ({e.strerror or type(e).__name__}); remove or replace "
                        f"it") from None
    entry: dict = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height * 4 > budget:  # the header alone: nothing decoded yet
                return {**entry, "width": image.width, "height": image.height, "too_large": True}
            image = eight_bit(image)
            grey = image.mode in GREY_MODES
            pixels = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float64).reshape(
                image.height * image.width, -1)
            entry.update(width=image.width, height=image.height, grey=grey, sums=pixels.sum(0).tolist(),
                         sumsq=(pixels ** 2).sum(0).tolist())
    except Exception as e:  # PIL raises many kinds for a file it cannot read; each is a bad image
        entry["error"] = f"{type(e).__name__}: {e}"
    return entry


def decoded_arrays(files, fingerprint, cache_dir, workers, world):
    """Arrays of every image in `files`, decoded once and kept in a tensor file named by the folder's content."""
    import torch

    from data.decoding import decode_all

    def decoded():
        return {split: decode_all(getattr(files, split), files.mode, files.size, workers) for split in SPLITS}

    def write(path, tensors):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({**tensors, "sha256": _tensors_hash(tensors)}, tmp)
        tmp.replace(path)

    if cache_dir is None:
        tensors = decoded()
    else:
        name = f"folder-{fingerprint[:16]}-{files.mode}-{files.info.height}x{files.info.width}.pt"
        path = Path(cache_dir) / "data_cache" / name
        if (world is None or world.is_main) and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, decoded())
        if world is not None:
            world.barrier()  # rank 0 has written the cache
        tensors = _checked_cache(path, files)
        if tensors is None:  # edited, damaged or older than its checksum: decoded again, and kept
            print(f"note: {path} does not hold what it claims (edited, damaged or from an older template): the "
                  f"images are decoded again", file=sys.stderr)
            tensors = decoded()
            if world is None or world.is_main:
                write(path, tensors)
    info = files.info
    (train_images, train_labels), (test_images, test_labels) = tensors["train"], tensors["test"]
    return Arrays(train_images, train_labels, test_images, test_labels, info.classes, info.mean, info.std, info)


def _tensors_hash(tensors):
    """The sha256 of a decoded copy's images and labels, split by split."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for tensor in tensors[split]:
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _checked_cache(path, files):
    """The decoded copy at `path` if it is what it claims: its checksum, and every label as the folder says, in
    order; None otherwise (a copy edited by hand would train under the real folder's fingerprint)."""
    import torch

    try:
        tensors = torch.load(path, weights_only=True)
    except Exception:  # cut short, or not a tensor file at all: decode again
        return None
    if not isinstance(tensors, dict) or tensors.get("sha256") is None or any(split not in tensors for split in SPLITS):
        return None
    for split in SPLITS:
        if tensors[split][1].tolist() != [label for _, label in getattr(files, split)]:
            return None
    return tensors if _tensors_hash(tensors) == tensors["sha256"] else None


FOLDER = ImageFolder()
