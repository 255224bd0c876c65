"""--sweep: the product of comma-separated values, each combination a run; any number of identical commands (or
--workers=N) share one sweep to the end."""
import dataclasses
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

import main
from helpers import (assert_refused, logged_epochs, make_mnist_folder, query, recorded_numbers, run_main, tiny_config,
                     tiny_in_process, unprefixed, wait_for)
from modes.sweep import sweep_combinations
from utils.config import sweep_values

SWEEP = ("--sweep", "--config.training.learning_rate=0.05,0.02", "--config.model.channels=[4,8],[8,8]")
TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")


def test_values_split_at_top_level_commas_only():
    assert sweep_values("0.1,0.01") == ["0.1", "0.01"]
    assert sweep_values("[16,32],[32,64]") == ["[16,32]", "[32,64]"]
    assert sweep_values("{a: 1, b: 2},x") == ["{a: 1, b: 2}", "x"]
    assert sweep_values("plain") == ["plain"]
    assert sweep_combinations([("a", "1,2"), ("b", "x,y")]) == [
        [("a", "1"), ("b", "x")], [("a", "1"), ("b", "y")], [("a", "2"), ("b", "x")], [("a", "2"), ("b", "y")]]


def test_a_sweep_runs_the_product_and_a_second_launch_skips_what_finished(workdir):
    done = tiny_in_process(workdir, *SWEEP)
    assert done.returncode == 0, done.stderr
    lines = unprefixed(done.stdout)
    assert not any(line.startswith(f"[{socket.gethostname()}:") for line in done.stdout.splitlines())  # one worker
    assert "sweep: 4 combinations of training.learning_rate, model.channels" in lines
    db = workdir / "results" / "resultTable.db"
    configs = [yaml.safe_load(text) for (text,) in query(db, "SELECT file_content FROM ConfigFile ORDER BY run_id")]
    assert [(c["training"]["learning_rate"], c["model"]["channels"]) for c in configs] == [
        (0.05, [4, 8]), (0.05, [8, 8]), (0.02, [4, 8]), (0.02, [8, 8])]
    commands = [command for (command,) in query(db, "SELECT command FROM Experiments ORDER BY run_id")]
    assert "--sweep" not in commands[1] and "--config.model.channels=[8,8]" in commands[1]  # each run's own command
    table = lines[-5:]
    assert table[0].split()[:3] == ["combination", "run", "status"] and "test_accuracy" in table[0]
    assert [line.split()[2:4] for line in table[1:]] == [["1", "finished"], ["2", "finished"], ["3", "finished"],
                                                          ["4", "finished"]]

    again = tiny_in_process(workdir, *SWEEP)  # after the sweep, the same command prints its table again
    assert again.returncode == 0
    assert again.stdout.count("skipped, finished as run") == 4 and unprefixed(again.stdout)[-5:] == table
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(4,)]


def test_without_sweep_a_comma_is_never_split(workdir):
    assert_refused(tiny_in_process(workdir, "--config.training.learning_rate=0.05,0.02"), "expects a number",
                   "add --sweep")
    assert_refused(tiny_in_process(workdir, "--sweep", "--debug", "--config.seed=1,2"), "drop --debug")
    assert_refused(tiny_in_process(workdir, "--sweep", "--config.seed=1,x"), "'seed' expects an integer")
    assert_refused(tiny_in_process(workdir, "--workers=2"), "--workers only applies to --sweep, --seeds or --search")
    assert not (workdir / "results").exists()  # every value is checked before the first run


def test_a_sweep_refuses_a_mistake_every_combination_would_repeat_before_the_first_run(workdir, tmp_path):
    stopped = tiny_in_process(workdir, "--sweep", "--config.seed=1,2", f"--config.data.path={tmp_path / 'nothing'}")
    assert_refused(stopped, "MNIST files missing")
    assert not (workdir / "results").exists()
    assert_refused(tiny_in_process(workdir, "--sweep", "--config.seed=1,2", "--config.data.val_size=128,640"),
                   "data.val_size must be between 1 and 639")
    assert not (workdir / "results").exists()


@pytest.mark.fault("searches")
def test_a_combination_whose_code_crashes_is_retried_once_then_reported_failed(workdir, monkeypatch):
    attempts = []

    def experiment1(config, run, device, world, verbose=1):
        attempts.append(config["seed"])
        if config["seed"] == 2:
            raise RuntimeError("a bug that only seed 2 meets")
        return main.experiment1(config, run, device, world, verbose=verbose)

    monkeypatch.setitem(main.experiments, "experiment1", dataclasses.replace(main.experiment1, function=experiment1))
    done = tiny_in_process(workdir, "--sweep", "--config.seed=1,2,3")
    assert done.returncode == 1
    assert done.stderr.count("RuntimeError: a bug that only seed 2 meets") == 2  # its traceback, each time
    assert attempts == [1, 2, 3, 2]
    table = unprefixed(done.stdout)[-4:]
    assert [line.split()[:3] for line in table[1:]] == [["seed=1", "1", "finished"], ["seed=2", "4", "failed"],
                                                        ["seed=3", "3", "finished"]]
    again = tiny_in_process(workdir, "--sweep", "--config.seed=1,2,3")  # the same code: no third attempt
    assert again.returncode == 1 and attempts == [1, 2, 3, 2]
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "failed", 1), (3, "finished", 0), (4, "failed", 0)]


@pytest.fixture
def slow_sweep(tmp_path):
    """A folder whose configs/tiny.yml trains long enough (3 epochs of 2,400 images) to be stopped in a run."""
    folder = tmp_path / "slow"
    data = make_mnist_folder(folder / "data", n_train=2400, n_test=200)
    (folder / "configs").mkdir()
    config = tiny_config(data, **{"training.num_epochs": 3, "data.batch_size": 32})
    (folder / "configs" / "tiny.yml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.slow
def test_a_stopped_sweep_resumes_where_it_was(slow_sweep, spawn):
    db = slow_sweep / "results" / "resultTable.db"
    sweep = [*TINY, "--sweep", "--config.seed=1,2,3"]
    process = spawn(slow_sweep, *sweep)
    wait_for(lambda: logged_epochs(db, 2) >= 1 or process.poll() is not None, what="the second combination")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, out + err
    assert "the same command resumes it" in err
    assert query(db, "SELECT run_id, status FROM Experiments ORDER BY run_id") == [(1, "finished"), (2, "failed")]

    again = run_main(slow_sweep, *sweep)
    assert again.returncode == 0, again.stderr
    lines = unprefixed(again.stdout)
    assert "[1/3] seed=1: skipped, finished as run 1" in lines and "[2/3] seed=2: run 2, resumed" in lines
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "finished", 0), (3, "finished", 0)]
    assert [line.split()[:3] for line in lines[-3:]] == [
        ["seed=1", "1", "finished"], ["seed=2", "2", "finished"], ["seed=3", "3", "finished"]]


@pytest.mark.slow
def test_three_workers_started_at_once_run_each_of_six_combinations_once(workdir, spawn):
    sweep = [*TINY, "--sweep", "--config.seed=1,2,3,4,5,6"]
    workers = [spawn(workdir, *sweep) for _ in range(3)]
    outcomes = [(worker.wait(timeout=300), *worker.communicate()) for worker in workers]
    assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT COUNT(*), SUM(status='finished'), COUNT(DISTINCT config_hash) FROM Experiments") == [
        (6, 6, 6)]
    tables = [out for _, out, _ in outcomes if "combination  run  status" in out]
    assert len(tables) == 1  # the worker that ended last prints the whole sweep's table, once
    assert sum(line.startswith("seed=") for line in tables[0].splitlines()) == 6  # one worker each: no prefix
    started = [line for _, out, _ in outcomes for line in unprefixed(out) if ": run " in line]
    assert len(started) == 6  # each combination was started by exactly one worker


@pytest.mark.fault("killed workers")
@pytest.mark.slow
def test_when_a_worker_is_killed_the_survivor_resumes_its_combination_and_ends_the_sweep(slow_sweep, spawn):
    db = slow_sweep / "results" / "resultTable.db"
    sweep = [*TINY, "--sweep", "--config.seed=1,2,3"]
    first = spawn(slow_sweep, *sweep)
    wait_for(lambda: logged_epochs(db, 1) >= 1 or first.poll() is not None, what="the first worker's run")
    second = spawn(slow_sweep, *sweep)  # claims another combination while the first is in one

    def running_run(worker):
        rows = query(db, "SELECT E.run_id FROM Experiments E JOIN TemplateLaunch L ON L.run_id = E.run_id "
                         "WHERE E.status='running' AND L.pid=?", worker.pid)
        return rows[0][0] if rows else None

    wait_for(lambda: (running_run(first) and logged_epochs(db, running_run(second) or 0) >= 1)
             or first.poll() is not None or second.poll() is not None, what="both workers in a run")
    killed_run = running_run(first)
    first.kill()  # SIGKILL in the middle of its combination
    assert killed_run is not None and second.poll() is None
    first.wait()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, out + err
    assert f": run {killed_run}, resumed" in out  # the survivor took it over; no one ran the command again
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "finished", 0), (3, "finished", 0)]
    curves, _ = recorded_numbers(db, 1)
    assert len(curves) == len({(split, label, step) for split, label, _, step, _ in curves})  # every point once


@pytest.mark.fault("killed workers")
@pytest.mark.slow
def test_a_worker_killed_while_the_other_waits_for_its_run_never_hangs_the_workers(slow_sweep, spawn):
    """--workers=2: the second worker killed (SIGKILL) in its run while the first, done with its own, waits for it.
    The launcher collects whichever worker ends first, so the killed one is gone, not a zombie taken for alive: the
    survivor resumes its run and the sweep ends."""
    db = slow_sweep / "results" / "resultTable.db"
    parent = spawn(slow_sweep, *TINY, "--seeds=3", "--workers=2")
    wait_for(lambda: logged_epochs(db, 1) >= 1 and logged_epochs(db, 2) >= 1 or parent.poll() is not None,
             what="both workers' runs")
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text(encoding="utf-8")
    workers = sorted(int(pid) for pid in children.split())
    assert len(workers) == 2, workers
    second = workers[1]  # started last: the launcher used to wait for the first before it collected this one
    [(killed_run,)] = query(db, "SELECT run_id FROM TemplateLaunch WHERE pid=?", second)
    os.kill(second, signal.SIGKILL)
    out, err = parent.communicate(timeout=300)
    assert parent.returncode == 0, out + err
    assert f"run {killed_run}, resumed" in out, out
    assert query(db, "SELECT COUNT(*), SUM(status='finished') FROM Experiments") == [(3, 3)]


@pytest.mark.fault("killed workers")
@pytest.mark.slow
def test_workers_option_runs_the_sweep_and_ctrl_c_stops_every_worker(workdir, slow_sweep, spawn):
    done = run_main(workdir, *TINY, "--sweep", "--config.seed=1,2,3", "--workers=2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("workers: 2 processes")
    assert {line[:4] for line in done.stdout.splitlines()[1:]} == {"[w1]", "[w2]"}
    assert query(workdir / "results" / "resultTable.db", "SELECT COUNT(*), SUM(status='finished') "
                                                          "FROM Experiments") == [(3, 3)]

    db = slow_sweep / "results" / "resultTable.db"
    parent = spawn(slow_sweep, *TINY, "--sweep", "--config.seed=1,2,3", "--workers=2")
    wait_for(lambda: logged_epochs(db, 1) >= 1 and logged_epochs(db, 2) >= 1 or parent.poll() is not None,
             what="both workers' runs")
    pids = [pid for (pid,) in query(db, "SELECT pid FROM TemplateLaunch")]
    os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground process group
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, out + err
    assert "stopped all 2 workers" in err
    time.sleep(0.5)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]  # no process left
    assert query(db, "SELECT status FROM Experiments ORDER BY run_id") == [("failed",), ("failed",)]
    resumed = run_main(slow_sweep, *TINY, "--sweep", "--config.seed=1,2,3", "--workers=2")
    assert resumed.returncode == 0 and resumed.stdout.count(", resumed") == 2, resumed.stdout + resumed.stderr
    assert query(db, "SELECT COUNT(*), SUM(status='finished') FROM Experiments") == [(3, 3)]


def test_the_sweep_header_names_only_the_keys_that_vary(workdir, monkeypatch):
    from modes.launch import Launch, read_command_line
    from modes.sweep import sweep_header

    monkeypatch.chdir(workdir)
    parser = main.make_parser()
    args, overrides = read_command_line(parser, [*TINY, "--sweep", f"--config.data.path={workdir}",
                                                 "--config.training.learning_rate=0.05,0.02"])
    assert sweep_header(Launch(args, overrides, [], main.make_project())) == \
        "sweep: 2 combinations of training.learning_rate"
