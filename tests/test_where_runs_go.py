"""Where runs are recorded: the checkout's own table wherever main.py is started from, another only by RESULT_TABLE
(said on the first line), and commands that only read the table touch nothing else."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers import (REPO, assert_refused, interrupt_after_first_epoch, make_mnist_folder, query, recorded_numbers,
                     run_in_process, table_note, tiny_config)

TINY = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0")


def without_table_choice():
    """This environment as a user's shell has it: no RESULT_TABLE."""
    return {name: value for name, value in os.environ.items() if name != "RESULT_TABLE"}


@pytest.mark.slow
def test_a_launch_from_another_folder_records_in_the_checkouts_table_and_reads_its_data(code_copy, tmp_path):
    make_mnist_folder(code_copy / "data")  # the checkout's data/, where the default data.path points
    (code_copy / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config("data")))
    jobs = tmp_path / "jobs"  # a job script's folder, outside the checkout
    jobs.mkdir()
    main = [sys.executable, str(code_copy / "main.py"), "--experiment=experiment1", "--verbose=0"]

    def launch(*args, env=None):
        return subprocess.run([*main, *args], cwd=jobs, capture_output=True, text=True, timeout=300,
                              env=env or without_table_choice())

    done = launch("--config=configs/tiny.yml")  # not there from jobs/: the checkout's file
    assert done.returncode == 0 and done.stderr == "", done.stderr
    table = code_copy / "results" / "resultTable.db"
    assert query(table, "SELECT run_id, status FROM Experiments") == [(1, "finished")]
    assert list(jobs.iterdir()) == []
    # The same run by the config's absolute path is refused: both launches see one table.
    assert_refused(launch(f"--config={code_copy / 'configs' / 'tiny.yml'}"), "run 1")

    # RESULT_TABLE chooses another table, said first; a data path typed here is relative to here.
    shutil.copytree(code_copy / "data" / "MNIST", jobs / "mine" / "MNIST")
    scratch = tmp_path / "scratch" / "resultTable.db"
    elsewhere = launch("--config=configs/tiny.yml", "--config.data.path=mine",
                       env={**without_table_choice(), "RESULT_TABLE": str(scratch)})
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert elsewhere.stderr.splitlines()[0] == table_note(scratch)
    [(config_text,)] = query(scratch, "SELECT file_content FROM ConfigFile")
    assert yaml.safe_load(config_text)["data"]["path"] == str(jobs / "mine")
    assert (scratch.parent / "1").is_dir()
    assert query(table, "SELECT COUNT(*) FROM Experiments") == [(1,)]
    # Typed on the command line, "data" is jobs/data, not the checkout's: it is not there.
    assert_refused(launch("--config=configs/tiny.yml", "--config.data.path=data", "--config.seed=5"),
                   f"MNIST files missing in {jobs / 'data' / 'MNIST' / 'raw'}")


def test_a_result_table_that_names_a_folder_is_refused(tmp_path):
    assert_refused(run_in_process(tmp_path, "--compare", table=tmp_path), f"RESULT_TABLE={tmp_path} names a folder",
                   f"RESULT_TABLE={tmp_path / 'resultTable.db'}")


READ_ONLY = [
    ("--list",),
    ("--config=configs/config.yml", "--print-config", "--config.data.download=true"),
    ("--compare",),
    ("--compare", "--format=json"),
    ("--compare", "--experiment=experiment1", "--config=configs/config.yml", "--config.data.download=true"),
    ("--compare", "--experiment=experiment1", "--config=configs/config.yml", "--config.data.path=fresh",
     "--config.data.download=true", "--format=markdown"),
    ("--verify",),
    ("--verify", "3"),
]


def test_commands_that_only_read_create_nothing_read_no_data_and_download_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    downloads = []
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", lambda *args, **kwargs: downloads.append(args))
    empty = tmp_path / "empty"
    empty.mkdir()
    table = tmp_path / "no table yet" / "resultTable.db"
    checkout_data = sorted(path.name for path in (REPO / "data").iterdir())
    for args in READ_ONLY:
        done = run_in_process(empty, *args, table=table)
        assert done.returncode in (0, 2) and "Traceback" not in done.stderr, (args, done.stderr)
        if done.returncode == 2:
            assert_refused(done, "there is no run table at")
    assert list(empty.iterdir()) == [] and not table.parent.exists() and downloads == []
    assert sorted(path.name for path in (REPO / "data").iterdir()) == checkout_data



@pytest.mark.fault("run tables")
def test_two_tables_in_one_folder_keep_their_runs_files_apart(workdir, monkeypatch):
    own, other = workdir / "results" / "resultTable.db", workdir / "results" / "other.db"
    interrupt_after_first_epoch(monkeypatch)
    stopped = run_in_process(workdir, *TINY, table=other)
    assert stopped.returncode != 0 and query(other, "SELECT status FROM Experiments") == [("failed",)]
    # Run 1 of the folder's other table, finished, with the same config: its checkpoints are its own.
    assert run_in_process(workdir, *TINY, table=own).returncode == 0
    assert run_in_process(workdir, *TINY, "--debug", table=own).returncode == 0
    assert run_in_process(workdir, *TINY, "--debug", table=other).returncode == 0
    resumed = run_in_process(workdir, "--resume=1", table=other)
    assert resumed.returncode == 0, resumed.stderr
    assert recorded_numbers(other, 1) == recorded_numbers(own, 1)  # as if it had never stopped
    for files in (workdir / "results", workdir / "results" / "other_files"):
        assert {"best.pt", "last.pt"} <= {path.name for path in (files / "1").iterdir()}
        assert (files / "debug" / "last.pt").exists()
