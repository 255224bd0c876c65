"""--search: Optuna proposes over the overrides' ranges and choices, every trial is a recorded run ranked by its
validation metric, the same command continues the study (in the journal beside the table, or a real PostgreSQL
server the test starts), workers share it, and a malformed space is refused before anything is recorded."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import assert_refused, query, require, run_in_process, tiny_in_process

SPACE = ("--config.training.learning_rate=log:1e-3..1e-1", "--config.model.dropout=0.0,0.2")


def proposals(output):
    return re.findall(r"^\[trial (\d+)\] (training\.\S+ model\.\S+)$", output, flags=re.M)


def test_a_study_records_every_trial_as_a_run_ranks_by_validation_and_continues(workdir, tmp_path):
    db = workdir / "results" / "resultTable.db"
    first = tiny_in_process(workdir, "--search=3", *SPACE)
    assert first.returncode == 0, first.stderr
    proposed = proposals(first.stdout)
    assert [number for number, _ in proposed] == ["0", "1", "2"]
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE status='finished'") == [(3,)]
    assert "top 3 of 3 complete trials by best_val_accuracy (validation):" in first.stdout
    assert "held-out test_accuracy of the best trial (for reporting the choice, not for making it)" in first.stdout
    assert "--seeds=5" in first.stdout and "python main.py --compare" in first.stdout
    # Each run says which study and trial it was (beside its identity, not part of it).
    texts = query(db, "SELECT fragment FROM Fragments WHERE tag='search' ORDER BY run_id")
    assert [json.loads(text)["trial"] for (text,) in texts] == [0, 1, 2]
    assert (workdir / "results" / "search.journal").exists()

    again = tiny_in_process(workdir, "--search=3", *SPACE)  # complete: nothing more to run
    assert again.returncode == 0 and proposals(again.stdout) == [] and "3 of 3 trials complete" in again.stdout
    more = tiny_in_process(workdir, "--search=5", *SPACE)
    assert [number for number, _ in proposals(more.stdout)] == ["3", "4"]
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(5,)]

    # On an empty table, the same command proposes the same trials in the same order.
    other = tmp_path / "other"
    (other / "configs").mkdir(parents=True)
    (other / "configs" / "tiny.yml").write_text((workdir / "configs" / "tiny.yml").read_text())
    assert proposals(tiny_in_process(other, "--search=3", *SPACE).stdout) == proposed


@pytest.mark.slow  # eight trainings in process: the full suite's share
def test_with_seeds_a_trial_is_a_group_whose_mean_is_its_value_and_finished_runs_are_reused(workdir):
    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir, "--search=2", *SPACE).returncode == 0
    grouped = tiny_in_process(workdir, "--search=2", "--seeds=2", *SPACE)
    assert grouped.returncode == 0, grouped.stderr
    assert grouped.stdout.count("already finished with this config: its value is reused") == 2
    assert re.search(r"trial \d: best_val_accuracy [0-9.]+ \(95% CI", grouped.stdout)
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(4,)]  # 2 trials x 2 seeds, seed 0 of each reused
    runs = re.findall(r"^\[trial \d\] best_val_accuracy ([0-9.]+) \(runs (\d+), (\d+)\)$", grouped.stdout, re.M)
    for value, *run_ids in runs:
        values = [query(db, "SELECT value FROM Results WHERE run_id=? AND metric='best_val_accuracy'", int(r))[0][0]
                  for r in run_ids]
        assert abs(float(value) - sum(values) / 2) < 1e-4


def test_a_space_file_adds_ranges_and_choices(workdir):
    (workdir / "space.yml").write_text("training.learning_rate: log:1e-3..1e-1\nmodel.dropout: [0.0, 0.2]\n")
    done = tiny_in_process(workdir, "--search=2", "--search-space=space.yml")
    assert done.returncode == 0, done.stderr
    assert len(proposals(done.stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (("--search=2", "--config.training.learning_rate=log:0..1"), "must lie above 0"),
    (("--search=2", "--config.training.learning_rate=0.1..0.01"), "is empty"),
    (("--search=2", "--config.training.learning_rate=0.1..x"), "cannot read '0.1..x' as a range"),
    (("--search=2", "--config.training.optimizer=0..1"), "holds a string ('adamw'), which has no range"),
    (("--search=2", "--config.training.num_epochs=1..2.5"), "its range needs integer ends"),
    (("--search=2", "--config.model.dropout=0.0,zero"), "'model.dropout' expects a number"),
    (("--search=2", "--config.training.learning_rate=0.01"), "--search needs a space"),
    (("--search=0", *SPACE), "N >= 1 trials"),
    (("--search=2", "--config.model.dropout=0.0..0.3", "--config.model.dropout=0.1,0.2"), "is given twice"),
    (("--search=2", "--config.model.kernel_size=3..20"), "shrink the 28x28 images to nothing"),
    (("--search=2", "--search-space=nowhere.yml", *SPACE), "cannot read the search space nowhere.yml"),
    (("--search=2", "--sweep", *SPACE), "do different things"),
    (("--search=2", "--debug", *SPACE), "drop --debug"),
    (("--search-space=x.yml",), "--search-space only applies to --search"),
])
def test_a_malformed_space_is_refused_in_one_line_with_nothing_recorded(workdir, args, message):
    assert_refused(tiny_in_process(workdir, *args), message)
    assert not (workdir / "results").exists()


@pytest.mark.slow  # a study of 12 trials
def test_pruning_stops_trials_that_cannot_learn_keeps_their_points_and_never_resumes_them(workdir):
    db = workdir / "results" / "resultTable.db"
    done = tiny_in_process(workdir, "--search=12", "--prune", "--config.training.learning_rate=log:1e-2..100",
                           "--config.model.dropout=0.0,0.3")
    assert done.returncode == 0, done.stderr
    pruned = [int(run_id) for run_id in
              re.findall(r"run (\d+) pruned: its validation was worse than the median", done.stdout)]
    assert pruned, done.stdout
    assert re.search(r"complete trials by best_val_accuracy \(validation\); \d+ pruned:", done.stdout)
    for run_id in pruned:
        assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L ON L.run_id=E.run_id "
                         "WHERE E.run_id=?", run_id) == [("failed", "pruned")]
        kept = query(db, "SELECT COUNT(*) FROM Logs WHERE run_id=? AND split='val' AND label='accuracy'", run_id)
        assert kept[0][0] >= 1  # every epoch it ran is kept
        assert query(db, "SELECT COUNT(*) FROM Results WHERE run_id=? AND metric='test_accuracy'", run_id) == [(0,)]
        assert_refused(run_in_process(workdir, f"--resume={run_id}"), "was pruned by a search")
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(12,)]  # pruned trials count towards N
    compared = run_in_process(workdir, "--compare")
    assert "pruned by a search: stopped early without results, not compared" in compared.stderr
    assert all(str(run_id) in compared.stderr.split("pruned by")[0] for run_id in pruned)
    from utils.runtable.readers import runs_frame
    assert set(runs_frame(db).loc[pruned, "status"]) == {"pruned"}
    again = tiny_in_process(workdir, "--search=12", "--prune", "--config.training.learning_rate=log:1e-2..100",
                            "--config.model.dropout=0.0,0.3")
    assert "12 of 12 trials complete" in again.stdout and query(db, "SELECT COUNT(*) FROM Experiments") == [(12,)]


def study_trials(folder):
    """[(number, state name, params)] of every trial in the folder's one study."""
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "results" / "search.journal")))
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return [(t.number, t.state.name, tuple(sorted(t.params.items()))) for t in study.trials]


@pytest.mark.fault("killed workers")
@pytest.mark.slow
def test_workers_share_one_study_and_a_killed_worker_leaves_the_rest_to_the_others(tmp_path, spawn):
    import yaml

    from helpers import logged_epochs, make_mnist_folder, query_while_created, tiny_config, wait_for

    data = make_mnist_folder(tmp_path / "data", n_train=2400, n_test=200)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(
        tiny_config(data, **{"training.num_epochs": 3, "data.batch_size": 32, "training.threads": 1})))
    command = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", "--search=6", *SPACE)
    db = tmp_path / "results" / "resultTable.db"
    first = spawn(tmp_path, *command)
    second = spawn(tmp_path, *command)
    # Once both work on a trial, kill the first in the middle of its run.
    wait_for(lambda: len(query_while_created(db, "SELECT run_id FROM Experiments WHERE status='running'")) >= 2,
             what="two trials running")
    running = [run_id for (run_id,) in query(db, "SELECT run_id FROM Experiments WHERE status='running'")]
    wait_for(lambda: any(logged_epochs(db, run_id) >= 1 for run_id in running), what="an epoch")
    first.kill()
    first.communicate()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, out + err
    trials = study_trials(tmp_path)
    complete = [params for _, state, params in trials if state == "COMPLETE"]
    assert len(complete) == 6 and len(set(complete)) == 6  # exactly N, each proposed once
    assert [state for _, state, _ in trials].count("FAIL") == 1  # the killed worker's trial
    statuses = dict(query(db, "SELECT status, COUNT(*) FROM Experiments GROUP BY status"))
    assert statuses["finished"] == 6 and statuses.get("failed", 0) + statuses.get("running", 0) == 1


@pytest.mark.slow
def test_workers_option_runs_one_study_in_several_processes(workdir, spawn):
    done = spawn.run(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", "--search=4",
                     "--workers=2", *SPACE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "workers: 2 processes" in done.stdout and "[w1] " in done.stdout and "[w2] " in done.stdout
    assert [state for _, state, _ in study_trials(workdir)] == ["COMPLETE"] * 4
    assert query(workdir / "results" / "resultTable.db", "SELECT COUNT(*) FROM Experiments") == [(4,)]


@pytest.fixture
def postgres():
    """The URL of a fresh PostgreSQL server on a free local port, stopped when the test ends."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    require(bool(bins), "needs Debian's postgresql (apt-get install postgresql); .ci/run installs it")
    binaries = bins[-1]
    folder = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's folders: the server's user must reach it
    user = []
    if os.geteuid() == 0:  # the server refuses to run as root: as Debian's postgres user
        shutil.chown(folder, "postgres")
        user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"

    def pg(tool, *args):
        subprocess.run([*user, str(binaries / tool), *args], check=True, capture_output=True, timeout=120)

    pg("initdb", "-D", str(data), "--auth=trust", "-U", "postgres")
    pg("pg_ctl", "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
       f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "studies")
        yield f"postgresql://postgres@127.0.0.1:{port}/studies"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_study_in_postgresql_is_recorded_continued_and_extended(workdir, postgres):
    db = workdir / "results" / "resultTable.db"
    first = tiny_in_process(workdir, "--search=3", f"--search-storage={postgres}", *SPACE)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [number for number, _ in proposals(first.stdout)] == ["0", "1", "2"]
    assert not (workdir / "results" / "search.journal").exists()  # the study lives in the server
    again = tiny_in_process(workdir, "--search=3", f"--search-storage={postgres}", *SPACE)
    assert "3 of 3 trials complete" in again.stdout and proposals(again.stdout) == []
    more = tiny_in_process(workdir, "--search=4", f"--search-storage={postgres}", *SPACE)
    assert [number for number, _ in proposals(more.stdout)] == ["3"]
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE status='finished'") == [(4,)]


def test_a_storage_that_is_not_postgresql_or_cannot_be_reached_is_refused(workdir):
    assert_refused(tiny_in_process(workdir, "--search=2", "--search-storage=sqlite:///x.db", *SPACE),
                   "--search-storage takes a PostgreSQL URL")
    assert_refused(tiny_in_process(workdir, "--search=2", "--search-storage=postgresql://nobody@127.0.0.1:9/x",
                                   *SPACE), "cannot open the study storage postgresql://nobody@127.0.0.1:9/x")
    assert_refused(tiny_in_process(workdir, "--search-storage=postgresql://a@b/c"),
                   "--search-storage only applies to --search")
    assert not (workdir / "results").exists()


@pytest.mark.fault("searches")
@pytest.mark.slow
def test_a_study_of_code_that_crashes_retries_each_trial_once_and_ends(workdir, monkeypatch):
    import dataclasses

    import main

    def crashing(config, run, device, world, **flags):
        raise RuntimeError("a bug in the experiment")

    db = workdir / "results" / "resultTable.db"
    real = main.experiments["experiment1"]
    monkeypatch.setitem(main.experiments, "experiment1", dataclasses.replace(real, function=crashing))
    done = tiny_in_process(workdir, "--search=5", *SPACE)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: trials 0, 1 crashed one after another (tracebacks above); fix the code, then the same command "
        "continues the study")
    assert done.stderr.count("RuntimeError: a bug in the experiment") == 4  # each trial's run, and its one retry
    assert done.stdout.count("crashed (its traceback is above): trying it once more") == 2
    assert query(db, "SELECT COUNT(*), SUM(status='failed') FROM Experiments") == [(4, 4)]

    # One crashed trial alone ends a study of one: crashed trials count towards N.
    alone = tiny_in_process(workdir, "--search=1", "--config.training.learning_rate=log:1e-3..1e-1")
    assert alone.returncode == 1 and "no trial completed" in alone.stdout

    # With the code fixed, the same command continues the study: the crashed trials stay counted, never retried.
    monkeypatch.setitem(main.experiments, "experiment1", real)
    fixed = tiny_in_process(workdir, "--search=5", *SPACE)
    assert fixed.returncode == 0, fixed.stderr
    assert "2 of 5 trials complete" in fixed.stdout.splitlines()[0]
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE status='finished'") == [(3,)]


@pytest.mark.fault("searches")
@pytest.mark.slow
def test_a_journal_cut_short_is_continued_from_its_whole_records_and_a_garbled_one_is_refused(workdir):
    from modes.search import read_studies

    db, journal = workdir / "results" / "resultTable.db", workdir / "results" / "search.journal"
    assert tiny_in_process(workdir, "--search=3", *SPACE).returncode == 0
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    journal.write_bytes(whole[:len(whole) - len(last) // 2 - 1])  # a kill half-way through the last record
    again = tiny_in_process(workdir, "--search=3", *SPACE)
    assert again.returncode == 0, again.stderr
    assert "was not a whole record" in again.stderr and (journal.parent / "search.journal.damaged").exists()
    assert "its runs finished but the study had not heard of it; their value is told" in again.stdout
    assert "marked failed" not in again.stdout  # no finished trial is failed by the rerun
    assert query(db, "SELECT COUNT(*), SUM(status='finished') FROM Experiments") == [(3, 3)]
    [study] = read_studies(db).values()
    assert sorted(trial.state.name for trial in study.trials) == ["COMPLETE"] * 3

    # A garbled record with others after it: cutting there would lose them, so the search says what to do.
    lines = journal.read_bytes().splitlines(keepends=True)
    garbled = b"".join([*lines[:2], b'{"op_code": 4, "not json\n', *lines[2:]])
    journal.write_bytes(garbled)
    assert_refused(tiny_in_process(workdir, "--search=3", *SPACE), f"{journal} has a damaged record at line 3",
                   "move it away")
    assert journal.read_bytes() == garbled
    assert len(read_studies(db)) <= 1 and journal.read_bytes() == garbled  # reading changes nothing


@pytest.mark.fault("full disk")
def test_a_full_disk_while_the_journal_is_written_stops_the_search_in_one_line(workdir, monkeypatch):
    import errno

    import optuna

    def full(self, logs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(optuna.storages.journal.JournalFileBackend, "append_logs", full)
    assert_refused(tiny_in_process(workdir, "--search=2", *SPACE), "is full", "the search journal")


@pytest.mark.fault("searches")
@pytest.mark.slow
def test_a_journal_copied_from_another_table_is_not_read_as_this_tables_runs(workdir):
    from modes.search import read_studies

    other, db = workdir / "elsewhere" / "resultTable.db", workdir / "results" / "resultTable.db"
    tiny = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")
    assert run_in_process(workdir, *tiny, "--search=2", *SPACE, table=other).returncode == 0
    db.parent.mkdir(exist_ok=True)
    shutil.copy(other.parent / "search.journal", db.parent / "search.journal")
    refusal = "is not this table's: its trial 0 names run 1, which"
    assert_refused(tiny_in_process(workdir, "--search=2", *SPACE), refusal, "does not hold", "move it away")

    # Runs 1 and 2 here are other runs than the ones the journal's trials name: still not this table's.
    assert tiny_in_process(workdir, "--comment=mine").returncode == 0
    assert tiny_in_process(workdir, "--comment=mine too").returncode == 0
    before = query(db, "SELECT run_id, status, comment FROM Experiments")
    assert_refused(tiny_in_process(workdir, "--search=2", *SPACE), refusal, "move it away")
    assert query(db, "SELECT run_id, status, comment FROM Experiments") == before
    assert read_studies(db) == {}  # the notebook does not show them as this table's
    [study] = read_studies(other).values()  # beside its own table, it is read as before
    assert sorted(trial.user_attrs["runs"] for trial in study.trials) == [[1], [2]]
