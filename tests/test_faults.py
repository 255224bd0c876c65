"""Faults that must not lose a point: reading that could write, a kill at any instant, a run on another host, a
results folder on a network filesystem."""
import json
import socket
import subprocess
import sys
import time

import pytest
import yaml

from helpers import (REPO, assert_refused, env_recording_in, interrupt_after_first_epoch, make_mnist_folder,
                     private_mounts_work, query, recorded_numbers, require, run_in_process, run_main, tiny_config,
                     tiny_in_process)
from utils.runtable.schema import filesystem_type, network_filesystem_warning

KILL_AT = REPO / "tests" / "kill_at.py"
TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")


def table_rows(db):
    """Every status, point, result and hparam of the table: what nothing that reads may change."""
    return (query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id"),
            query(db, "SELECT run_id, epoch, step, split, label, value FROM Logs ORDER BY id_"),
            query(db, "SELECT run_id, metric, value, is_hparam FROM Results ORDER BY id_"))


@pytest.mark.fault("readers")
@pytest.mark.slow
def test_a_script_that_reads_every_run_and_then_crashes_changes_nothing(workdir):
    assert tiny_in_process(workdir, "--seeds=2").returncode == 0
    assert tiny_in_process(workdir, "--comment=crashed", "--config.model.hidden=8").returncode == 0
    db = workdir / "results" / "resultTable.db"
    query(db, "UPDATE Experiments SET status='failed' WHERE run_id=3")
    before = table_rows(db)
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from modes.compare import comparison, grouped_runs
from utils.runtable.readers import curves_frame, finished_runs, read_run, runs_frame
db = {str(db)!r}
runs = runs_frame(db, show_hidden=True)
curves = curves_frame(db, list(runs.index))
for run_id in runs.index:
    read_run(db, int(run_id))
comparison(db, grouped_runs(db)[0])
print(len(runs), len(curves))
runs["a column that is not there"]  # a typo: the script dies with a KeyError
"""
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 1 and "KeyError" in crashed.stderr and crashed.stdout.startswith("3 ")
    assert table_rows(db) == before

    # deepboard's own reader builds a writer that hooks sys.excepthook (its GUI does so on every click): the table's
    # trigger keeps finished runs finished even then.
    script = f"""
from deepboard.resultTable import ResultTable
table = ResultTable({str(db)!r})
for run_id in (1, 2, 3):
    table.load_run(run_id)
raise KeyError("a crash after reading")
"""
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 1 and "KeyError" in crashed.stderr
    assert table_rows(db) == before

    # The template's own commands that read runs: --compare and --verify.
    assert run_main(workdir, "--compare").returncode == 0
    assert run_main(workdir, "--verify").returncode == 0
    assert table_rows(db) == before


INSTANTS = ("mid-epoch-flush", "points-written", "best-written", "mid-checkpoint", "epoch-closed", "before-results")


@pytest.mark.fault("kills")
@pytest.mark.slow
def test_a_kill_at_any_instant_of_a_run_resumes_to_exactly_the_uninterrupted_run(tmp_path, tiny):
    assert run_in_process(tiny.folder, *tiny.args).returncode == 0
    reference = recorded_numbers(tiny.folder / "results" / "resultTable.db", 1)
    for instant in INSTANTS:
        folder = tmp_path / "killed" / instant
        folder.mkdir(parents=True)
        (folder / "configs").symlink_to(tiny.folder / "configs")
        killed = subprocess.run([sys.executable, str(KILL_AT), instant, *tiny.args], cwd=folder, capture_output=True,
                                text=True, timeout=300, env=env_recording_in(folder))
        assert killed.returncode == -9, (instant, killed.stderr)
        db = folder / "results" / "resultTable.db"
        assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [("running",)]
        resumed = run_in_process(folder, "--resume=1", "--verbose=0")  # the kill was real; resuming needs no process
        assert resumed.returncode == 0, (instant, resumed.stderr)
        assert recorded_numbers(db, 1) == reference, instant  # every point once, every result, bit for bit
        assert not list((folder / "results" / "1").glob("*.tmp")), instant


def interrupted_run(workdir, monkeypatch):
    """Record run 1 as a run stopped by Ctrl-C after its first epoch; returns the table's path."""
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir).returncode == 130
    return workdir / "results" / "resultTable.db"


@pytest.mark.fault("dead hosts")
def test_a_run_on_another_host_blocks_its_config_until_its_heartbeat_is_older_than_the_lease(workdir, monkeypatch):
    db = interrupted_run(workdir, monkeypatch)
    # Run 1 as a cluster node would leave it: still "running" there, its last heartbeat a minute ago.
    query(db, "UPDATE Experiments SET status='running' WHERE run_id=1")
    query(db, "UPDATE TemplateLaunch SET host='node-17.cluster', pid=4242, heartbeat=? WHERE run_id=1",
          time.time() - 60)
    assert_refused(tiny_in_process(workdir), "run 1 (experiment1, running on node-17.cluster (pid 4242))")
    monkeypatch.setenv("RUNTABLE_LEASE_S", "30")  # the node has been silent for 60 s: it is dead
    done = tiny_in_process(workdir)
    assert done.returncode == 0, done.stderr
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "failed", 1), (2, "finished", 0)]


def test_a_running_run_beats_its_heartbeat(workdir, monkeypatch):
    monkeypatch.setenv("RUNTABLE_HEARTBEAT_S", "0.05")
    beats = []
    from utils.epochs import Epochs

    end = Epochs.end

    def end_and_look(self, epoch, **metrics):
        end(self, epoch, **metrics)
        time.sleep(0.3)
        beats.append(query(workdir / "results" / "resultTable.db",
                           "SELECT heartbeat FROM TemplateLaunch WHERE run_id=1")[0][0])

    monkeypatch.setattr(Epochs, "end", end_and_look)
    assert tiny_in_process(workdir).returncode == 0
    assert len(beats) == 2 and beats[0] < beats[1] and time.time() - beats[1] < 5


@pytest.mark.fault("dead hosts")
def test_a_dead_process_of_this_host_is_seen_at_once_whatever_its_heartbeat(workdir, monkeypatch):
    db = interrupted_run(workdir, monkeypatch)
    query(db, "UPDATE Experiments SET status='running' WHERE run_id=1")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    query(db, "UPDATE TemplateLaunch SET host=?, pid=?, heartbeat=? WHERE run_id=1", socket.gethostname(),
          int(gone.stdout), time.time())
    assert tiny_in_process(workdir).returncode == 0
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "failed", 1), (2, "finished", 0)]


@pytest.mark.fault("readers")
def test_a_finished_run_stays_finished_whoever_writes(workdir):
    assert tiny_in_process(workdir).returncode == 0
    db = workdir / "results" / "resultTable.db"
    query(db, "UPDATE Experiments SET status='failed' WHERE run_id=1")  # what deepboard's writers would do
    assert query(db, "SELECT status FROM Experiments") == [("finished",)]


def test_a_results_folder_on_a_network_filesystem_is_named_in_a_warning(tmp_path, workdir, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"overlay / overlay rw 0 0\nserver:/export {workdir} nfs4 rw,relatime 0 0\n"
                      f"tmpfs {workdir}/results/other tmpfs rw 0 0\n")
    assert filesystem_type(workdir / "results", mounts) == "nfs4"
    assert filesystem_type(REPO, mounts) == "overlay"
    (workdir / "results" / "other").mkdir(parents=True)  # a mount point exists
    assert filesystem_type(workdir / "results" / "other" / "x", mounts) == "tmpfs"
    warning = network_filesystem_warning(workdir / "results", mounts)
    assert warning.startswith(f"warning: {workdir / 'results'} lies on a network filesystem (nfs4)")
    assert network_filesystem_warning(REPO, mounts) is None

    # Through a launch: the warning is printed once, and the run goes on.
    import utils.runtable.registry as registry
    monkeypatch.setattr(registry, "network_filesystem_warning", lambda path: network_filesystem_warning(
        workdir / "results", mounts))
    done = tiny_in_process(workdir, "--seeds=2")
    assert done.returncode == 0 and done.stderr.count("lies on a network filesystem (nfs4)") == 1
    assert query(workdir / "results" / "resultTable.db", "SELECT COUNT(*) FROM Experiments") == [(2,)]


@pytest.fixture
def full_disk_report(workdir, tmp_path):
    """The report of tests/full_disk_scenario.py, run with results/ on a 16 MiB tmpfs of its own."""
    require(private_mounts_work(tmp_path), "filling a disk needs a tmpfs in a private mount namespace (root and "
            "unshare): tried here, and it does not work")
    slow = make_mnist_folder(tmp_path / "slow-data", n_train=2400, n_test=200)
    (workdir / "configs" / "slow.yml").write_text(yaml.safe_dump(
        tiny_config(slow, **{"training.num_epochs": 4, "data.batch_size": 32})))
    results, out = workdir / "results", tmp_path / "out"
    results.mkdir()
    out.mkdir()
    script = (f"mount -t tmpfs -o size=16m tmpfs {results} && "
              f"exec {sys.executable} {REPO / 'tests' / 'full_disk_scenario.py'} {workdir} {out}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "report.json").read_text()), out


def one_line(result):
    """The one line of a refusal or a stop, after the line that says the scenario records in a table of its own."""
    lines = [line for line in result["stderr"].strip().splitlines() if not line.startswith("recording in ")]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    return lines[0]


@pytest.mark.fault("full disk")
@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_loses_nothing(full_disk_report):
    report, out = full_disk_report

    def rows(name, run_id):
        db = out / f"{name}.db"
        return (query(db, "SELECT status FROM Experiments WHERE run_id=?", run_id),
                query(db, "SELECT epoch, step, split, label, value FROM Logs WHERE run_id=? ORDER BY id_", run_id),
                query(db, "SELECT metric, value FROM Results WHERE run_id=? ORDER BY id_", run_id))

    for name in ("before", "checkpoint", "full", "after", "midrun", "relaunch", "search_full", "search_after"):
        assert query(out / f"{name}.db", "PRAGMA integrity_check") == [("ok",)], name
        assert not [f for f in report[f"{name}_files"] if f.endswith((".tmp", "-journal"))], name
        assert rows(name, 1) == rows("before", 1), name  # a finished run is never touched
    assert report["before"]["returncode"] == 0

    # The checkpoint did not fit: one line naming the folder and what it needed; the epoch's points were kept.
    assert report["checkpoint"]["returncode"] == 2
    line = one_line(report["checkpoint"])
    assert line.startswith("error: the disk holding results/2 is full (") and "writing best.pt needed 1." in line
    assert line.endswith("nothing written before was lost; free some space, then continue run 2 with "
                         "python main.py --resume=2")
    status, points, _ = rows("checkpoint", 2)
    assert status == [("failed",)] and ("val", "accuracy") in {(split, label) for _, _, split, label, _ in points}

    # While the disk stays full, a launch says so in one line and changes nothing.
    assert report["full"]["returncode"] == 2
    assert one_line(report["full"]).startswith("error: the disk holding results is full (0 bytes free)")
    assert [rows("full", run_id) for run_id in (1, 2)] == [rows("checkpoint", run_id) for run_id in (1, 2)]
    assert query(out / "full.db", "SELECT COUNT(*) FROM Experiments") == [(2,)]

    # With space again the stopped run resumes to exactly what the same config gives uninterrupted.
    assert report["resume"]["returncode"] == 0 and report["reference"]["returncode"] == 0, report["resume"]
    assert recorded_numbers(out / "after.db", 2) == recorded_numbers(out / "after.db", 3)

    # Full in the middle of a run: not even "failed" could be written, so the run stays "running" with what it had
    # written; the next launch with space sees its process gone, marks it failed, and trains normally.
    assert report["midrun"]["returncode"] == 2 and "is full" in one_line(report["midrun"])
    status, points, _ = rows("midrun", 4)
    assert status == [("running",)] and sum(label == "accuracy" and split == "val"
                                            for _, _, split, label, _ in points) >= 1
    assert report["relaunch"]["returncode"] == 0, report["relaunch"]["stderr"]
    assert query(out / "relaunch.db", "SELECT run_id, status, hidden FROM Experiments WHERE run_id >= 4") == [
        (4, "failed", 1), (5, "finished", 0)]
    assert rows("relaunch", 4)[1] == points

    # A search on a full disk stops with one line, its journal still whole records; with space it continues.
    assert report["search"]["returncode"] == 0, report["search"]["stderr"]
    assert report["search_full"]["returncode"] == 2 and "is full" in one_line(report["search_full"])
    assert all(json.loads(line) for line in report["search_full_journal"].splitlines()[:-1])
    after = report["search_after"]
    assert after["returncode"] == 0, after["stderr"]
    assert "2 of 4 trials complete" in after["stdout"].splitlines()[0]
    assert query(out / "search_after.db", "SELECT COUNT(*), SUM(status='finished') FROM Experiments "
                 "WHERE run_id > 5") == [(4, 4)]


@pytest.mark.fault("dead hosts")
def test_a_process_that_wakes_after_its_run_was_resumed_elsewhere_writes_nothing_more(workdir, monkeypatch):
    """Fencing: a suspended job whose run another host resumed (its lease ran out) finds out at its next write."""
    import training.loop

    db = workdir / "results" / "resultTable.db"
    original, calls = training.loop._step, []

    def taken_over_at_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # meanwhile, node-2 resumed run 1: the row names its process now
            query(db, "UPDATE TemplateLaunch SET host='node-2', pid=4242, process_token='t' WHERE run_id=1")
        return original(*args, **kwargs)
    monkeypatch.setattr(training.loop, "_step", taken_over_at_step_6)
    taken = tiny_in_process(workdir)
    assert taken.returncode == 2 and "Traceback" not in taken.stderr
    assert taken.stderr.strip().splitlines()[-1] == (
        "error: run 1 was resumed by another process (node-2, pid 4242) while this one was held up: this process no "
        "longer owns it and stops without writing to it")
    assert query(db, "SELECT E.status, L.host, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id)") == [
        ("running", "node-2", None)]  # as its new owner has it
    assert query(db, "SELECT COUNT(*) FROM Results WHERE run_id=1 AND is_hparam=0") == [(0,)]
    # Epoch 1 (steps 1-4) was written before; nothing of epoch 2, in which the other process took the run over.
    assert query(db, "SELECT MAX(step), MAX(epoch) FROM Logs WHERE run_id=1") == [(4, 1)]


@pytest.mark.fault("dead hosts")
@pytest.mark.parametrize("host, pid, heartbeat", [
    ("this host", 0, None), ("this host", -1, None), ("this host", 2**40, None), ("this host", "abc", None),
    ("node-9", 4242, "yesterday")])
def test_a_damaged_running_row_blocks_nothing(workdir, monkeypatch, host, pid, heartbeat):
    """A "running" row no process could hold (pid 0 or -1, which would ask the group or every process; a pid past
    any the kernel gives; a text where the time belongs) is taken for gone: the next launch runs the config."""
    db = interrupted_run(workdir, monkeypatch)
    query(db, "UPDATE Experiments SET status='running' WHERE run_id=1")
    query(db, "UPDATE TemplateLaunch SET host=?, pid=?, heartbeat=? WHERE run_id=1",
          socket.gethostname() if host == "this host" else host, pid, heartbeat)
    again = tiny_in_process(workdir)
    assert again.returncode == 0, again.stderr
    statuses = [status for (status,) in query(db, "SELECT status FROM Experiments ORDER BY run_id")]
    assert statuses[-1] == "finished" and "running" not in statuses
