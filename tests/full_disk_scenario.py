"""Fill the disk under results/ at chosen moments of real runs, and report what main.py did (a test helper).

    python tests/full_disk_scenario.py WORKDIR OUT

WORKDIR holds configs/tiny.yml and configs/slow.yml, and its results/ must be a small filesystem of its own (the test
mounts a tmpfs there in a private mount namespace). Copies of the run table at each step and a report.json are
written to OUT, which lies outside that filesystem.
"""
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

MAIN = Path(__file__).resolve().parent.parent / "main.py"
TINY = ["--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0"]
SLOW = ["--experiment=experiment1", "--config=configs/slow.yml", "--verbose=0"]
SEARCH = ["--config.training.learning_rate=log:1e-3..1e-1"]


def main_py(*args):
    done = subprocess.run([sys.executable, str(MAIN), *args], capture_output=True, text=True, timeout=600)
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def free_bytes(results):
    stat = os.statvfs(results)
    return stat.f_bavail * stat.f_frsize


def fill(results, leave):
    """Grow results/filler until about `leave` bytes are free (0: until the filesystem refuses another byte)."""
    fd = os.open(results / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        if leave:
            os.posix_fallocate(fd, os.lseek(fd, 0, os.SEEK_END), max(0, free_bytes(results) - leave))
            return
        for size in (1 << 20, 4096, 512, 1):  # big blocks, then smaller ones into whatever is left
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def snapshot(results, out, name):
    """Copy the table (through SQLite, so a half-written state would show) and list what results/ holds."""
    target = out / f"{name}.db"
    source = sqlite3.connect(f"{(results / 'resultTable.db').as_uri()}?mode=ro", uri=True)
    with sqlite3.connect(target) as copy:
        source.backup(copy)
    source.close()
    return sorted(str(path.relative_to(results)) for path in results.rglob("*") if path.name != "filler")


def logged_epochs(results, run_id):
    try:
        with sqlite3.connect(f"{(results / 'resultTable.db').as_uri()}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM Logs WHERE run_id=? AND split='val' AND label='accuracy'",
                              (run_id,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def scenario(workdir, out):
    os.chdir(workdir)
    results = workdir / "results"
    os.environ["RESULT_TABLE"] = str(results / "resultTable.db")  # the small filesystem, for every run started here
    report = {"size": free_bytes(results)}

    report["before"] = main_py(*TINY, "--comment=before")
    report["before_files"] = snapshot(results, out, "before")

    # A checkpoint that does not fit: a wide hidden layer makes best.pt about 1 MiB, and 512 KiB are left.
    fill(results, 512 * 1024)
    report["checkpoint"] = main_py(*TINY, "--config.model.hidden=2048")
    report["checkpoint_files"] = snapshot(results, out, "checkpoint")

    # A launch while the disk is still full.
    fill(results, 0)
    report["full"] = main_py(*TINY, "--config.seed=5")
    report["full_files"] = snapshot(results, out, "full")

    # Space again: the stopped run resumes, and the same config runs uninterrupted beside it.
    (results / "filler").unlink()
    report["resume"] = main_py("--resume=2", "--verbose=0")
    report["reference"] = main_py(*TINY, "--config.model.hidden=2048", "--comment=reference")
    report["after_files"] = snapshot(results, out, "after")

    # The disk fills in the middle of a run's second epoch, so full that not even its failed status can be written.
    process = subprocess.Popen([sys.executable, str(MAIN), *SLOW], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while logged_epochs(results, 4) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    fill(results, 0)
    stdout, stderr = process.communicate(timeout=300)
    report["midrun"] = {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}
    report["midrun_files"] = snapshot(results, out, "midrun")
    (results / "filler").unlink()
    report["relaunch"] = main_py(*SLOW)
    report["relaunch_files"] = snapshot(results, out, "relaunch")

    # A search while the disk is full: Optuna's journal writer meets it, then the study continues with space again.
    report["search"] = main_py(*TINY, "--search=2", *SEARCH)
    fill(results, 0)
    report["search_full"] = main_py(*TINY, "--search=4", *SEARCH)
    report["search_full_journal"] = (results / "search.journal").read_bytes().decode(errors="replace")
    report["search_full_files"] = snapshot(results, out, "search_full")
    (results / "filler").unlink()
    report["search_after"] = main_py(*TINY, "--search=4", *SEARCH)
    report["search_after_files"] = snapshot(results, out, "search_after")
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    scenario(Path(sys.argv[1]), Path(sys.argv[2]))
