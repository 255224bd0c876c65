"""Data files on disk, without torch: their content's fingerprint (cached), downloads (md5-checked) and archives
extracted so that nothing lands outside their folder."""
import gzip
import hashlib
import json
import os
import socket
import tarfile
from pathlib import Path, PurePosixPath

from utils.errors import UserError

DOWNLOAD_TIMEOUT_S = 30  # a server silent this long (to connect, or between two reads) is given up


def content_hash(path):
    """The sha256 of a file's content (decompressed for .gz): the same however it is compressed."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    digest = hashlib.sha256()
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read data file {path} ({type(e).__name__}: {e}); delete or replace it") from None
    return digest.hexdigest()


def fingerprint(files, cache_path=None):
    """The sha256 of the named files' content: `files` is {name: path}, the names in the order they are hashed.

    With `cache_path`, a file's hash is kept there by path, size, modification and change time, so a launch that finds
    the same files again (a refused duplicate) pays a few milliseconds instead of reading them. The change time is
    the kernel's own (no copy, `touch -r` or `rsync -t` restores it), so an edit that keeps the size and restores the
    modification time is hashed again.
    """
    cache = read_cache(cache_path)
    digest = hashlib.sha256()
    changed = False
    for name, path in files.items():
        path = Path(path).resolve()
        key = f"{path}:{stat_key(path.stat())}"
        if key not in cache:
            cache[key] = content_hash(path)
            changed = True
        digest.update(f"{name}:{cache[key]}\n".encode())
    if changed:
        write_cache(cache_path, cache)
    return digest.hexdigest()


def stat_key(stat):
    """What says that a file is unchanged since it was hashed: its size, modification and change time, inode."""
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def content_fingerprint(contents):
    """What `fingerprint` gives for files holding `contents` ({name: bytes}, not compressed): the identity of bytes
    already read, so that a run is known by what it trains on even if the file is replaced after."""
    return hashlib.sha256("".join(f"{name}:{hashlib.sha256(content).hexdigest()}\n"
                                  for name, content in contents.items()).encode()).hexdigest()


class ReadOnce:
    """Files a launch trains on, read once: their fingerprint is taken from the very bytes kept for training, so a
    file replaced a moment after the fingerprint is not what the run trains on. Each fingerprint reads afresh."""

    def __init__(self, name, what):
        self.name, self.what = name, what  # the name `fingerprint` hashes it under; what the file should be
        self._kept = {}  # path -> (its bytes, their fingerprint)

    def fingerprint(self, path):
        self._kept[path] = self._read(path)
        return self._kept[path][1]

    def read(self, path):
        """(the bytes of the file at `path`, their fingerprint): those the launch fingerprinted, else read now."""
        if path not in self._kept:
            self._kept[path] = self._read(path)
        return self._kept[path]

    def _read(self, path):
        try:
            content = Path(path).read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__}); replace it with "
                            f"{self.what}") from None
        return content, content_fingerprint({self.name: content})


def read_cache(cache_path):
    try:
        return json.loads(Path(cache_path).read_text(encoding="utf-8")) if cache_path is not None else {}
    except (OSError, ValueError):
        return {}


def write_cache(cache_path, cache):
    """Keep `cache` for the next launch, in a folder that exists already (a refused launch creates none); a folder
    that cannot be written only costs the next launch the time to hash again."""
    if cache_path is None or not Path(cache_path).parent.is_dir():
        return
    cache_path = Path(cache_path)
    tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cache, indent=0), encoding="utf-8")
        tmp.replace(cache_path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: nothing was written


def download(folder, filename, urls, md5, missing_message):
    """Path of `filename` downloaded into `folder` from the first of `urls` that works (md5-checked), or a UserError
    built by `missing_message(reason)`."""
    from torchvision.datasets.utils import download_url  # only here: reading local files needs no torchvision

    refuse_what_is_in_the_way(folder / filename)
    created = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(missing_message(f"and the folder cannot be written ({e.strerror})")) from None
    errors = []
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's download_url takes no timeout of its own
    try:
        for url in urls:
            try:
                download_url(url, root=str(folder), filename=filename, md5=md5)
                return folder / filename
            except Exception as e:  # any network failure: try the next address, then explain
                errors.append(f"{type(e).__name__}: {str(e)[:80]}" if str(e) else type(e).__name__)
                (folder / filename).unlink(missing_ok=True)
    finally:
        socket.setdefaulttimeout(previous)
    for parent in created:  # deepest first: a failed download leaves no empty folders behind
        try:
            parent.rmdir()
        except OSError:
            break
    raise UserError(missing_message(f"and the download failed ({', '.join(dict.fromkeys(errors))}; offline?)"))


def refuse_what_is_in_the_way(path):
    """Refuse, in one line, to download over something at `path` that is not a readable file (a link to nowhere or to
    a device, a FIFO, a folder): it is the user's, and only what the template wrote may ever be removed."""
    if not os.path.lexists(path):
        return
    kind = ("a link to nothing (its data on a disk not mounted?)" if path.is_symlink() and not path.exists() else
            "a folder" if path.is_dir() else "a FIFO" if path.is_fifo() else
            "a device" if path.is_char_device() or path.is_block_device() else "not a regular file")
    raise UserError(f"{path} is {kind}, where the data file should be; the template neither downloads over it nor "
                    f"deletes it: put the file there (or mount its disk), or remove it yourself")


def extract_tar(archive, folder):
    """Extract `archive` into `folder`, refusing it whole if any member would land outside (`../x`, `/x`, a link)."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts or member.issym() or member.islnk():
                    raise UserError(f"archive {archive} holds {member.name!r}, which would land outside {folder}; "
                                    f"nothing was extracted: replace the archive with the original")
            tar.extractall(folder, members=members, filter="data")  # the standard library's own guard as well
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot extract {archive} ({type(e).__name__}: {e}); delete it so it is downloaded "
                        f"again") from None
