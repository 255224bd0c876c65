"""Test helpers: small synthetic datasets in each format the template reads (IDX files, CIFAR batches, image
folders, a play-like text), tiny configs, and the real `main.py`, in process or not."""
import contextlib
import gzip
import io
import os
import pickle
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.registry import Arrays
from utils.stopping import stop_on_signals

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "main.py"


def write_idx(path, array, gz):
    """Write `array` (uint8) as an IDX file, gzipped if `gz`."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_digits(n, seed):
    """(images [n, 28, 28], labels [n]): each class is a bright 6x6 square at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, label in enumerate(labels):
        row, col = 3 + 8 * (label // 4), 3 + 7 * (label % 4)
        images[i, row:row + 6, col:col + 6] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist_folder(root, n_train=640, n_test=200, gz=True, folder="MNIST"):
    """`root`/`folder`/raw holding the four files; returns `root` (what data.path points at)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    train_x, train_y = synthetic_digits(n_train, seed=1)
    test_x, test_y = synthetic_digits(n_test, seed=2)
    suffix = ".gz" if gz else ""
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", train_x, gz)
    write_idx(raw / f"train-labels-idx1-ubyte{suffix}", train_y, gz)
    write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", test_x, gz)
    write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", test_y, gz)
    return root


def colour_digits(n, seed, size=32):
    """(uint8 images [n, 3, size, size], labels [n]): the synthetic digits, each class also of its own colour."""
    grey, labels = synthetic_digits(n, seed)
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    images[:, :, 2:30, 2:30] = grey[:, None]
    images[:, 0] = np.where(images[:, 0] > 200, 25 * labels[:, None, None], images[:, 0])
    return images, labels


def write_cifar_batch(path, images, labels):
    """A CIFAR-10 python batch: a pickled dict of bytes keys, the images as uint8 rows of 3072 values."""
    batch = {b"batch_label": b"synthetic", b"labels": [int(label) for label in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [b"x.png"] * len(images)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_cifar_folder(root, n_train=500, n_test=200):
    """`root`/cifar-10-batches-py with five training batches and a test batch; returns `root`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = colour_digits(n_train, seed=1)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        write_cifar_batch(folder / f"data_batch_{i}", train_x[part], train_y[part])
    test_x, test_y = colour_digits(n_test, seed=2)
    write_cifar_batch(folder / "test_batch", test_x, test_y)
    return root


def make_image_folder(root, n_train=320, n_test=100, colour=False, sizes=(28,), formats=("png", "jpg")):
    """`root`/train/CLASS/*.png|jpg and `root`/test/CLASS/...: the synthetic digits as files, classes named by digit,
    files alternating between `formats` and `sizes`; returns `root`."""
    from PIL import Image

    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = colour_digits(n, seed) if colour else synthetic_digits(n, seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(image.transpose(1, 2, 0) if colour else image)
            side = sizes[i % len(sizes)]
            if picture.size != (side, side):
                picture = picture.resize((side, side))
            picture.save(folder / f"{i:05d}.{formats[i % len(formats)]}")
    return root


def noise_dataset(cfg):
    """noise: two classes of random images, the second brighter (a dataset in code, registered by a test)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (300,), generator=generator)
    images = (torch.rand(300, 1, 16, 16, generator=generator) * 120 + labels[:, None, None, None] * 100).byte()
    return Arrays(images[:200], labels[:200], images[200:], labels[200:], classes=("dark", "bright"))


def write_table(path, rows=300, seed=0):
    """A CSV table at `path`: three inputs and a target y = 3a - 2b + c/2 + noise (c also a second target, z), a
    regression a few epochs learn. Returns `path`."""
    generator = random.Random(seed)
    lines = ["a,b,c,y,z"]
    for _ in range(rows):
        a, b, c = (round(generator.uniform(-1, 1), 4) for _ in range(3))
        lines.append(f"{a},{b},{c},{3 * a - 2 * b + c / 2 + generator.gauss(0, 0.1):.5f},{c * 2:.4f}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def regression_in_code(cfg):
    """waves: float inputs [N, 2, 8] and two float targets per example, from code."""
    import torch

    from data.tensors import Tensors

    generator = torch.Generator().manual_seed(cfg["split_seed"])
    inputs = torch.randn(400, 2, 8, generator=generator)
    targets = torch.stack([inputs[:, 0].sum(1), inputs[:, 1].mean(1)], dim=1)
    return Tensors(inputs[:300], targets[:300], inputs[300:], targets[300:])


WORDS = ("the king my lord good sir thou art not what she will be come hence now o fair love and death to of in "
         "me thee it is a here speak").split()
SPEAKERS = ("KING HENRY", "MIRANDA", "First Citizen", "ROMEO")


def write_text_corpus(root, characters=20000, seed=0, folder="tinyshakespeare"):
    """<root>/<folder>/input.txt: a play-like text of about `characters` characters (speakers, lines, blank lines),
    the layout of Tiny Shakespeare in small. Returns `root`."""
    generator = random.Random(seed)
    lines = []
    while sum(map(len, lines)) < characters:
        speech = [" ".join(generator.choice(WORDS) for _ in range(generator.randint(3, 9))).capitalize() +
                  generator.choice(",.;!?") for _ in range(generator.randint(1, 4))]
        lines.append(f"{generator.choice(SPEAKERS)}:\n" + "\n".join(speech) + "\n\n")
    path = Path(root) / folder / "input.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines)[:characters])
    return Path(root)


# What makes each kind of data's config run in seconds on the data the tests write (tiny_data).
SHRUNK = {
    "images": {"data": dict(download=False, val_size=128, batch_size=128, eval_batch_size=100),
               "model": dict(channels=[4, 8], hidden=16),
               "training": dict(num_epochs=2, learning_rate=0.015, warmup_fraction=0.5), "logging": dict(log_every=2)},
    "text": {"data": dict(download=False, val_size=1500, block_size=16, batch_size=16, eval_batch_size=64),
             "model": dict(n_layer=1, n_head=2, n_embd=16), "training": dict(num_epochs=2, learning_rate=0.01),
             "logging": dict(log_every=5, sample_length=40)},
    "table": {"data": dict(target="y", test_size=50, val_size=50, batch_size=32), "model": dict(hidden=[16]),
              "training": dict(num_epochs=8, learning_rate=0.02), "logging": dict(log_every=2)},
}


def tiny_data(kind, root):
    """Data of `kind` ("images", "text", "table") written under `root`, small enough for a run of seconds: what
    data.path points at (the folder of MNIST-format files, of tinyshakespeare/input.txt, or the CSV file)."""
    if kind == "images":
        return make_mnist_folder(Path(root))
    if kind == "text":
        return write_text_corpus(root)
    return write_table(Path(root) / "table.csv")


def tiny_version(config, kind, data_path, **changes):
    """`config` (a shipped experiment's, or yours) scaled down to seconds on `data_path` (tiny_data's); `changes` maps
    'a.b' keys to values."""
    config["data"]["path"] = str(data_path)
    for section, values in SHRUNK[kind].items():
        config[section].update({key: value for key, value in values.items() if key in config[section] or
                                section == "data"})
    for key, value in changes.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def tiny_config(data_path, **changes):
    """The real configs/config.yml scaled down to seconds on synthetic data; `changes` maps 'a.b' keys to values."""
    return tiny_version(yaml.safe_load((REPO / "configs" / "config.yml").read_text()), "images", data_path, **changes)


def tiny_charlm_config(data_path, **changes):
    """The real configs/charlm.yml scaled down to seconds on the text write_text_corpus writes."""
    return tiny_version(yaml.safe_load((REPO / "configs" / "charlm.yml").read_text()), "text", data_path, **changes)


def tiny_tabular_config(table, **changes):
    """The real configs/tabular.yml scaled down to seconds on the table write_table writes."""
    return tiny_version(yaml.safe_load((REPO / "configs" / "tabular.yml").read_text()), "table", table, **changes)


def table_of(folder):
    """The run table a test keeps in `folder`: the helpers point RESULT_TABLE there, never at this checkout's."""
    return Path(folder) / "results" / "resultTable.db"


def table_note(table):
    """The line a launch prints first (on stderr) once it records in `table`, a table other than the checkout's."""
    return f"recording in {table} (RESULT_TABLE), not in this checkout's results/"


def env_recording_in(folder, table=None):
    """The environment of a main.py that records in `table` (by default `folder`'s results/)."""
    return {**os.environ, "RESULT_TABLE": str(table or table_of(folder))}


def run_main(cwd, *args, timeout=300, main=MAIN, table=None):
    """Run the real main.py (or the copy `main`) in `cwd`, recording in `table` (by default `cwd`'s results/);
    returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(main), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env_recording_in(cwd, table))


def run_tiny(cwd, *args, main=MAIN):
    return run_main(cwd, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", *args, main=main)


def run_in_process(cwd, *args, table=None):
    """main.py's command line run inside this test process, in `cwd`, recording in `table` (by default `cwd`'s
    results/): a CompletedProcess, as run_main gives.

    The fast tier's way to drive the real front door: the same code path as `python main.py ...` minus the
    interpreter's start and torch's import.
    """
    import main

    out, err = io.StringIO(), io.StringIO()
    previous = (os.getcwd(), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
                os.environ.get("RESULT_TABLE"))
    try:
        os.chdir(cwd)
        os.environ["RESULT_TABLE"] = str(table or table_of(cwd))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.cli(list(args))
    finally:
        os.chdir(previous[0])
        stop_on_signals()  # forgets a stop the run received, before the test's own handlers come back
        signal.signal(signal.SIGTERM, previous[1])
        signal.signal(signal.SIGINT, previous[2])
        if previous[3] is None:
            os.environ.pop("RESULT_TABLE", None)
        else:
            os.environ["RESULT_TABLE"] = previous[3]
    return subprocess.CompletedProcess(["main.py", *args], code, out.getvalue(), err.getvalue())


def tiny_in_process(cwd, *args):
    return run_in_process(cwd, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", *args)


def query(db_path, sql, *params):
    """All rows of one SQL query on the run table."""
    with sqlite3.connect(db_path) as db:
        return db.execute(sql, params).fetchall()


def assert_refused(result, *fragments):
    """A user mistake: exit code 2, one line on stderr containing each fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def wait_for(condition, timeout=120, what="condition"):
    """Poll `condition()` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def query_while_created(db_path, sql, *params):
    """Rows of `sql` on a table another process may still be creating: none before its file and tables exist."""
    if not Path(db_path).exists():
        return []
    try:
        return query(db_path, sql, *params)
    except sqlite3.OperationalError:
        return []


def logged_epochs(db_path, run_id):
    """How many epochs of run `run_id` have their validation loss in the table (0 before the table exists)."""
    rows = query_while_created(db_path, "SELECT COUNT(*) FROM Logs WHERE run_id=? AND split='val' AND label='loss'",
                               run_id)
    return rows[0][0] if rows else 0


def recorded_numbers(db_path, run_id):
    """(curves, results) of a run, leaving out timings (names containing 'time' or 'throughput')."""
    timing = ("time", "throughput")
    curves = [row for row in query(db_path, "SELECT split, label, epoch, step, value FROM Logs WHERE run_id=? "
                                            "ORDER BY split, label, step", run_id)
              if not any(word in row[1] for word in timing)]
    results = query(db_path, "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0 ORDER BY metric", run_id)
    return curves, results


def require(available, reason):
    """Skip a test whose tool this machine lacks, saying why; where CI is set, fail it: CI never skips silently."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing tool fails the test instead of skipping it)")
    pytest.skip(reason)


def copy_template(destination):
    """A copy of the template at `destination` in a git repository of its own, so a test can change its code and
    see that recorded; returns the copy's folder."""
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(".git", "results", "__pycache__",
                                                                     ".pytest_cache"))
    _git(destination, "init", "-q")
    _git(destination, "add", "-A")
    _git(destination, "commit", "-qm", "template")
    return destination


def git_commit_all(folder, message):
    """Commit every change of the template copy at `folder`; returns the new commit's hash."""
    _git(folder, "commit", "-qam", message)
    return _git(folder, "rev-parse", "HEAD")


def _git(folder, *args):
    """The output of one git command in `folder`, committing as a test user."""
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(folder),
                           *args], capture_output=True, text=True, check=True).stdout.strip()


def private_mounts_work(tmp_path):
    """Whether this process may mount in a private mount namespace (root, unshare): tried, not assumed."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return False
    target = tmp_path / "mount-probe"
    target.mkdir(exist_ok=True)
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {target} && touch {target}/inside && "
                            f"test -e {target}/inside"], capture_output=True, timeout=60)
    mounted_here = (target / "inside").exists()  # a private mount never shows outside its namespace
    target.rmdir() if not mounted_here else None
    return probe.returncode == 0 and not mounted_here


def signal_at_step(monkeypatch, step, signum=signal.SIGTERM):
    """Make the next in-process run receive a real stop signal as its `step`-th training step begins (counted from
    the start of this process's training), as a cluster's SIGTERM or a Ctrl-C lands in the middle of a step."""
    import training.loop

    signal_at_call(monkeypatch, training.loop, "_step", step, signum)


def signal_at_call(monkeypatch, module, name, call, signum):
    """Make `module`.`name` receive a real stop signal as its `call`-th call begins (then behave as before)."""
    original, calls = getattr(module, name), []

    def calling(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            monkeypatch.setattr(module, name, original)
            signal.raise_signal(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, calling)


def interrupt_after_first_epoch(monkeypatch):
    """Make the next in-process run stop as Ctrl-C would, right after its first epoch's checkpoints."""
    from utils.epochs import Epochs

    end = Epochs.end

    def end_then_stop(self, epoch, **metrics):
        end(self, epoch, **metrics)
        monkeypatch.setattr(Epochs, "end", end)
        raise KeyboardInterrupt

    monkeypatch.setattr(Epochs, "end", end_then_stop)


def unprefixed(output):
    """The lines of a sweep's output without the name of the --workers process in front ([w1] ...)."""
    return [re.sub(r"^\[w\d+\] ", "", line) for line in output.splitlines()]


def add_foreign_runs(db_path, folder):
    """Write three runs into the table at `db_path` with deepboard's own API, as another script would: a finished one
    (results, curves, a config file that is not YAML), a failed one and one left running. Returns their run IDs."""
    from deepboard.resultTable import ResultTable

    table = ResultTable(str(db_path))
    ids = []
    for number, status in enumerate(("finished", "failed", "running")):
        config = Path(folder) / f"foreign{number}.cfg"
        config.write_text("lr = 0.1 ; not: [yaml" if number == 0 else f"lr: 0.{number}\n")
        writer = table.new_run("someone_elses_script", config, cli={"lr": 0.1 * (number + 1)}, comment="foreign")
        for step in range(3):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step=step, epoch=step)
        if status == "finished":
            writer.write_result(accuracy=0.5, test_accuracy=0.25)
        elif status == "failed":
            writer.set_status("failed")
        ids.append(writer.run_id)
    return ids
