"""A run table you can trust: failed, interrupted, killed, resumed and concurrent runs, through real processes."""
import re
import signal
import subprocess
import sys

import pytest
import yaml

from helpers import (MAIN, assert_refused, env_recording_in, logged_epochs, make_mnist_folder, private_mounts_work,
                     query, recorded_numbers, require, run_main, run_tiny, table_note, tiny_config, tiny_in_process,
                     wait_for)

pytestmark = pytest.mark.slow
TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")


@pytest.fixture(scope="module")
def slow_root(tmp_path_factory):
    """Enough synthetic images that an epoch lasts long enough to be interrupted in the middle of a run."""
    return make_mnist_folder(tmp_path_factory.mktemp("slow-data"), n_train=2400, n_test=200)


def write_slow_config(folder, slow_root):
    (folder / "configs").mkdir()
    config = tiny_config(slow_root, **{"training.num_epochs": 4, "data.batch_size": 32})
    (folder / "configs" / "tiny.yml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def slow_workdir(tmp_path, slow_root):
    return write_slow_config(tmp_path, slow_root)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, slow_root):
    """The points and results of the slow config run once, never interrupted: what every resumed run must equal."""
    folder = write_slow_config(tmp_path_factory.mktemp("uninterrupted"), slow_root)
    assert tiny_in_process(folder).returncode == 0
    return recorded_numbers(folder / "results" / "resultTable.db", 1)


def stop_after_first_epoch(spawn, workdir, sig, *args):
    """Start a run, send `sig` once it has logged its first epoch; returns the finished Popen and its stderr."""
    db = workdir / "results" / "resultTable.db"
    process = spawn(workdir, *TINY, *args)
    wait_for(lambda: logged_epochs(db, 1) >= 1 or process.poll() is not None, what="the first epoch")
    assert process.poll() is None, process.communicate()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process, stderr


# How each signal ends a run: exit code, what the run says on stderr, the status it leaves in the table.
STOPS = {
    "SIGTERM": (143, "terminated: run 1 is marked failed, with all it logged; it continues AT with "
                     "python main.py --resume=1", "failed"),
    "SIGINT": (130, "interrupted: run 1 is marked failed, with all it logged; it continues AT with "
                    "python main.py --resume=1", "failed"),
    # No handler runs: the run stays "running" until a launch sees its process gone and marks it failed.
    "SIGKILL": (-signal.SIGKILL, "", "running"),
}


@pytest.mark.fault("kills")
@pytest.mark.parametrize("name", STOPS)
def test_a_signal_after_the_first_epoch_keeps_every_point_and_resume_gives_exactly_the_uninterrupted_run(
        slow_workdir, spawn, uninterrupted, name):
    db = slow_workdir / "results" / "resultTable.db"
    code, message, status = STOPS[name]
    process, stderr = stop_after_first_epoch(spawn, slow_workdir, getattr(signal, name))
    assert process.returncode == code
    # Where it records, then one line (no traceback) that says where, in its second epoch, the run continues.
    # (A signal that lands while epoch 1's end is being written, its points in the table and its checkpoint not yet,
    # keeps the end of its training pass: "in epoch 1 at its validation".)
    at = (r"(in epoch 2 after step \d+ \(\d+ of its 71 steps done\)|in epoch ([12]) at its validation \(after step "
          r"(71|142)\)|after epoch [12] \(step \d+\))")
    assert re.fullmatch(re.escape("\n".join(filter(None, [table_note(db), message]))).replace("AT", at),
                        stderr.strip()), stderr
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [(status,)]
    kept, _ = recorded_numbers(db, 1)
    assert logged_epochs(db, 1) >= 1 and any(label == "step_loss" for _, label, *_ in kept)
    assert set(kept) <= set(uninterrupted[0])  # each point it kept is the uninterrupted run's

    resumed = run_main(slow_workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert query(db, "SELECT status FROM Experiments") == [("finished",)]  # run 1 itself, no new run
    assert recorded_numbers(db, 1) == uninterrupted  # every point and result, bit for bit (timings aside)
    curves, _ = recorded_numbers(db, 1)
    assert len(curves) == len({(split, label, step) for split, label, _, step, _ in curves})  # no point twice


@pytest.mark.fault("launches at once")
def test_a_second_debug_run_is_refused_while_the_first_runs_and_replaces_it_once_it_is_killed(
        slow_workdir, spawn, uninterrupted):
    db = slow_workdir / "results" / "resultTable.db"
    first = spawn(slow_workdir, *TINY, "--debug")
    wait_for(lambda: logged_epochs(db, -1) >= 1 or first.poll() is not None, what="the first debug run's epoch")
    assert first.poll() is None, first.communicate()
    assert_refused(tiny_in_process(slow_workdir, "--debug"), "debug run -1 is in progress")
    assert first.poll() is None  # the two overlapped: the first was still running after the refusal
    first.kill()
    first.communicate()
    assert query(db, "SELECT run_id, status FROM Experiments") == [(-1, "running")]

    replacing = tiny_in_process(slow_workdir, "--debug")
    assert replacing.returncode == 0, replacing.stderr
    assert query(db, "SELECT run_id, status FROM Experiments") == [(-1, "finished")]
    assert recorded_numbers(db, -1) == uninterrupted  # one run's points, none of the killed run's beside them


def test_a_bug_in_experiment_code_shows_its_traceback_and_fails_the_run_keeping_what_it_logged(workdir, code_copy):
    db = workdir / "results" / "resultTable.db"
    loop = code_copy / "experiments" / "experiment1.py"
    loop.write_text(loop.read_text().replace(
        "        val_metrics = evaluate(",
        "        assert epoch < 2, 'a bug in epoch 2'\n        val_metrics = evaluate("))
    crashed = run_tiny(workdir, main=code_copy / "main.py")
    assert crashed.returncode == 1
    assert "Traceback" in crashed.stderr and "a bug in epoch 2" in crashed.stderr
    assert query(db, "SELECT status FROM Experiments") == [("failed",)]
    # Every scalar logged before the crash is kept: the whole first epoch and epoch 2's step losses.
    assert logged_epochs(db, 1) == 1
    assert query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=1 AND label='step_loss' AND epoch=2")[0][0] > 0
    # The failed config is not blocked: the retry is recorded anew and the failed attempt is kept, hidden.
    assert run_tiny(workdir, main=code_copy / "main.py").returncode == 1
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "failed", 1), (2, "failed", 0)]


@pytest.mark.fault("launches at once")
def test_identical_launches_at_once_run_exactly_once(workdir, spawn):
    processes = [spawn(workdir, *TINY) for _ in range(3)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in outcomes) == [0, 2, 2], outcomes
    assert all("already has this config" in err for code, err in outcomes if code == 2)
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status FROM Experiments") == [(1, "finished")]


@pytest.mark.fault("launches at once")
def test_six_different_launches_at_once_are_all_recorded(workdir, spawn):
    # One thread each: six runs share two cores, as a sweep's workers would.
    processes = [spawn(workdir, *TINY, f"--config.seed={seed}", "--config.training.threads=1") for seed in range(6)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    assert [code for code, _ in outcomes] == [0] * 6, outcomes
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT COUNT(*), SUM(status='finished') FROM Experiments") == [(6, 6)]
    assert query(db, "SELECT COUNT(DISTINCT run_id) FROM Logs WHERE label='accuracy' AND split='val'") == [(6,)]


@pytest.mark.fault("run tables")
def test_a_read_only_results_folder_is_refused_before_training_and_left_alone(workdir, tmp_path):
    require(private_mounts_work(tmp_path), "a read-only folder for root needs a read-only bind mount in a private "
            "mount namespace (root and unshare): tried here, and it does not work")
    assert run_tiny(workdir, "--comment=first").returncode == 0
    results = workdir / "results"
    before = {path.name: path.read_bytes() for path in results.iterdir() if path.is_file()}
    # The same launch as a user would make it, in a mount namespace where results/ is read-only.
    command = " ".join([sys.executable, str(MAIN), "--experiment=experiment1", "--config=configs/tiny.yml"])
    script = f"mount --bind {results} {results} && mount -o remount,bind,ro {results} && exec {command}"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=workdir,
                          capture_output=True, text=True, timeout=300, env=env_recording_in(workdir))
    assert_refused(done, f"cannot write in {results}", "nothing was changed")
    assert {path.name: path.read_bytes() for path in results.iterdir() if path.is_file()} == before


def chattr_works(tmp_path):
    """Whether this filesystem and user can make a file immutable (chattr +i: ext4, xfs, btrfs, as root): tried."""
    probe = tmp_path / "chattr-probe"
    probe.write_text("")
    works = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return works


@pytest.mark.fault("run tables")
@pytest.mark.parametrize("immutable", ["the table", "its folder"])
def test_an_immutable_table_or_results_folder_is_one_line_and_left_alone(workdir, tmp_path, immutable):
    require(chattr_works(tmp_path), "needs chattr +i on the folder of the tests' files (ext4 and root)")
    assert run_tiny(workdir).returncode == 0
    results = workdir / "results"
    before = (results / "resultTable.db").read_bytes()
    target = results / "resultTable.db" if immutable == "the table" else results
    subprocess.run(["chattr", "+i", str(target)], check=True)
    try:
        done = run_tiny(workdir, "--config.seed=1")
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    assert_refused(done, f"cannot write to the run table {results / 'resultTable.db'}", "chattr -i",
                   "nothing was changed")
    assert (results / "resultTable.db").read_bytes() == before
    assert run_tiny(workdir, "--config.seed=1").returncode == 0  # mutable again: it runs


@pytest.mark.fault("full disk")
def test_a_file_size_limit_stops_the_run_in_one_line_and_it_resumes_once_raised(workdir):
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, resource.RLIM_INFINITY))  # `ulimit -f 512`

    wide = ("--config.model.hidden=1000",)  # checkpoints of 1.5 MiB and more, a table of less than 512 KiB
    done = subprocess.run([sys.executable, str(MAIN), *TINY, *wide], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env=env_recording_in(workdir), preexec_fn=limited)
    assert done.returncode == 2 and done.stderr.splitlines()[0] == table_note(workdir / "results" / "resultTable.db")
    assert_refused(subprocess.CompletedProcess([], 2, "", done.stderr.split("\n", 1)[1]),
                   "writing best.pt in results/1 passed this process's file size limit of 512.0 KiB (ulimit -f)",
                   "nothing written before was lost; raise the limit (ulimit -f unlimited), then continue run 1 with "
                   "python main.py --resume=1")
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT status, failure FROM Experiments JOIN TemplateLaunch USING (run_id)") == [
        ("failed", "disk full")]
    assert not [path for path in (workdir / "results" / "1").iterdir() if path.name.endswith(".tmp")]
    assert run_main(workdir, "--resume=1").returncode == 0
    reference = workdir / "reference" / "resultTable.db"
    assert run_main(workdir, *TINY, *wide, table=reference).returncode == 0
    assert recorded_numbers(db, 1) == recorded_numbers(reference, 1)


@pytest.mark.fault("full disk")
def test_a_disk_without_free_inodes_is_one_line_and_a_launch_with_inodes_again_runs(workdir, tmp_path):
    require(private_mounts_work(tmp_path), "a disk with few inodes needs a tmpfs in a private mount namespace (root "
            "and unshare): tried here, and it does not work")
    results = workdir / "results"
    results.mkdir()
    launch = f"{sys.executable} {MAIN} {' '.join(TINY)}"
    script = (f"mount -t tmpfs -o size=16m,nr_inodes=40 tmpfs {results} && {launch} && "
              f"i=0; while touch {results}/filler$i 2>/dev/null; do i=$((i+1)); done; "
              f"{launch} --config.seed=1 2>{tmp_path}/full.err; echo $? > {tmp_path}/full.rc; "
              f"rm {results}/filler*; {launch} --config.seed=1 && cp {results}/resultTable.db {tmp_path}/after.db")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=workdir,
                          capture_output=True, text=True, timeout=600, env=env_recording_in(workdir))
    assert done.returncode == 0, done.stderr
    full = subprocess.CompletedProcess([], int((tmp_path / "full.rc").read_text()), "",
                                       (tmp_path / "full.err").read_text())
    assert_refused(full, "the disk holding results has no free inodes (df -i)", "nothing written before was lost")
    assert query(tmp_path / "after.db", "SELECT run_id, status FROM Experiments ORDER BY run_id") == [
        (1, "finished"), (2, "finished")]


@pytest.mark.fault("run tables")
def test_run_ids_past_sqlites_range_are_one_line(workdir):
    assert_refused(run_main(workdir, "--resume=9223372036854775808"), "is no run ID: a run table holds none past "
                   "9,223,372,036,854,775,807")
    assert_refused(run_main(workdir, "--verify", "1", "-99999999999999999999"), "is no run ID")
    assert run_tiny(workdir).returncode == 0
    db = workdir / "results" / "resultTable.db"
    for table in ("Experiments", "ConfigFile", "TemplateLaunch", "Results", "Logs", "Fragments"):
        query(db, f"UPDATE {table} SET run_id=9223372036854775807 WHERE run_id=1")
    assert_refused(run_tiny(workdir, "--config.seed=1"), "this run table has given out its last run ID "
                   "(9,223,372,036,854,775,807); record in a new table", "nothing was changed")
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(1,)]
    assert run_main(workdir, "--reproduce=9223372036854775807").returncode == 0  # the last run reads as any other


@pytest.mark.fault("run tables")
def test_a_read_only_checkout_refuses_a_run_and_a_new_experiment_in_one_line_and_is_left_alone(code_copy, workdir,
                                                                                               tmp_path):
    require(private_mounts_work(tmp_path), "a read-only checkout for root needs a read-only bind mount in a private "
            "mount namespace (root and unshare): tried here, and it does not work")
    before = sorted(path.relative_to(code_copy) for path in code_copy.rglob("*") if ".git" not in path.parts
                    and "__pycache__" not in path.parts)
    main = code_copy / "main.py"
    script = (f"mount --bind {code_copy} {code_copy} && mount -o remount,bind,ro {code_copy} && "
              f"{sys.executable} {main} {' '.join(TINY)} 2>{tmp_path}/run.err; echo $? >{tmp_path}/run.rc; "
              f"{sys.executable} {main} --new-experiment=mine 2>{tmp_path}/new.err; echo $? >{tmp_path}/new.rc")
    env = {name: value for name, value in env_recording_in(workdir).items() if name != "RESULT_TABLE"}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=workdir,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr

    def outcome(name):
        return subprocess.CompletedProcess([], int((tmp_path / f"{name}.rc").read_text()), "",
                                           (tmp_path / f"{name}.err").read_text())

    assert_refused(outcome("run"), f"cannot write in {code_copy / 'results'} (Read-only file system)")
    assert_refused(outcome("new"), f"cannot write the new experiment into {code_copy} (Read-only file system)",
                   "nothing was changed")
    assert sorted(path.relative_to(code_copy) for path in code_copy.rglob("*") if ".git" not in path.parts
                  and "__pycache__" not in path.parts) == before


def test_a_run_resumed_after_a_code_change_records_each_version_it_ran_with(workdir, code_copy):
    """Ctrl-C after epoch 1, the code edited (a bug fixed, say), --resume: the run says so and keeps, in its text
    'code', the commit and uncommitted changes of each segment, and --reproduce warns that it ran with two."""
    import json

    db = workdir / "results" / "resultTable.db"
    main = code_copy / "main.py"
    config = workdir / "configs" / "tiny.yml"
    config.write_text(config.read_text().replace("num_epochs: 2", "num_epochs: 3"))
    stopped = subprocess.run([sys.executable, str(code_copy / "tests" / "kill_at.py"), "epoch-closed", *TINY],
                             cwd=workdir, capture_output=True, text=True, timeout=300, env=env_recording_in(workdir))
    assert stopped.returncode == -9, stopped.stderr
    (code_copy / "experiments" / "experiment1.py").write_text(
        (code_copy / "experiments" / "experiment1.py").read_text() + "\n# the bug, fixed\n")
    resumed = run_main(workdir, "--resume=1", main=main)
    assert resumed.returncode == 0, resumed.stderr
    assert "note: run 1 resumes with other code than it last ran with (commit " in resumed.stderr
    [(text,)] = query(db, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='code'")
    segments = json.loads(text)
    assert len(segments) == 2 and segments[0]["resumed"] is None and segments[1]["resumed"]
    assert "the bug, fixed" in segments[1]["diff"] and "the bug, fixed" not in (segments[0]["diff"] or "")
    reproduced = run_main(workdir, "--reproduce=1", main=main)
    assert "warning: run 1 ran with 2 versions of the code (it was resumed with other code" in reproduced.stderr
