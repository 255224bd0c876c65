"""What re-creating a run needs to know: the code that ran it and the environment it ran in."""
import platform
import shlex
import socket
import subprocess
import sys

UNTRACKED_FILE_LIMIT = 1_000_000  # bytes; a larger untracked file is named in the diff, not copied into it
PACKAGES = ("torchvision", "deepboard", "numpy")  # torch is recorded with its build tag


def git_commit(code_dir):
    """The commit checked out in `code_dir`, or None outside a git repository."""
    return _git(code_dir, "rev-parse", "HEAD")


def git_diff(code_dir):
    """Every uncommitted change in `code_dir`: `git diff HEAD`, then each untracked (not ignored) file as an addition.

    None outside a git repository; deepboard's own diff misses the untracked files, which are often the new code.
    """
    tracked = _git(code_dir, "diff", "HEAD")
    if tracked is None:
        return None
    parts = [tracked] if tracked else []
    untracked = _git(code_dir, "ls-files", "--others", "--exclude-standard", "-z", strip=False) or ""
    for name in filter(None, untracked.split("\0")):
        path = code_dir / name
        if path.is_file() and path.stat().st_size > UNTRACKED_FILE_LIMIT:
            parts.append(f"untracked file {name}: {path.stat().st_size} bytes, too large to record")
            continue
        # --no-index exits with 1 when the files differ, which they always do here
        added = _git(code_dir, "diff", "--no-index", "--", "/dev/null", name, ok_codes=(0, 1))
        if added:
            parts.append(added)
    return "\n".join(parts)


def command_line(argv):
    """`argv` as one shell-quoted line, as the user could paste it again."""
    return " ".join(shlex.quote(arg) for arg in argv)


def environment(device, threads):
    """Versions, device, threads and host of this process, as text-friendly values."""
    import torch  # the caller has imported it already, to pick `device`

    if device.type in ("cuda", "xpu"):
        device_name = getattr(torch, device.type).get_device_name(device)
    elif device.type == "mps":
        device_name = f"Apple MPS ({platform.machine()})"
    else:
        device_name = _cpu_name()
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        # The build tag (+cpu, +cu130) matters: CPU-only and CUDA builds of one version run different kernels.
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_type": device.type,
        "device_name": device_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": threads,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package):
    from importlib import metadata  # only when a run starts: a refused launch stays fast

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(code_dir, *args, ok_codes=(0,), strip=True):
    try:
        done = subprocess.run(["git", "-C", str(code_dir), *args], capture_output=True, timeout=60,
                              encoding="utf-8", errors="backslashreplace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode not in ok_codes:
        return None
    return done.stdout.strip() if strip else done.stdout
