"""Fixtures shared by the tests; the helpers they use live in helpers.py."""
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import (MAIN, copy_template, env_recording_in, make_mnist_folder, tiny_charlm_config, tiny_config,
                     tiny_tabular_config, write_table, write_text_corpus)

# A test names the table it records in (the helpers: its working folder's results/). One that forgets fails here,
# instead of writing into the checkout's own results/ (a user's real runs).
os.environ["RESULT_TABLE"] = "/dev/null/no-table-chosen-by-this-test/resultTable.db"


FAULT_CENSUS = "FAULT_CENSUS"  # a file to write {fault class: test cases} to when collecting (docs/faults.md)


def pytest_collection_modifyitems(config, items):
    """With FAULT_CENSUS set, write how many test cases each fault class (@pytest.mark.fault) has: the counts the
    reliability table of docs/faults.md states, computed by pytest's own collection."""
    target = os.environ.get(FAULT_CENSUS)
    if target:
        census = {}
        for item in items:
            for mark in item.iter_markers("fault"):
                census[mark.args[0]] = census.get(mark.args[0], 0) + 1
        Path(target).write_text(json.dumps(census, indent=1, sort_keys=True), encoding="utf-8")


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def workdir(tmp_path, mnist_root):
    """A fresh working folder holding configs/tiny.yml, the project's own config shrunk for tests."""
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config(mnist_root)))
    return tmp_path


@pytest.fixture(scope="session")
def text_root(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("text"))


@pytest.fixture
def text_workdir(tmp_path, text_root):
    """A fresh working folder holding configs/tiny_charlm.yml, charlm's config shrunk for tests."""
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "tiny_charlm.yml").write_text(yaml.safe_dump(tiny_charlm_config(text_root)))
    return tmp_path


@dataclass(frozen=True)
class Tiny:
    """One shipped experiment's tiny command in a working folder: what a promise test runs for each of them."""
    experiment: str
    folder: Path
    config: str  # relative to the folder

    @property
    def args(self):
        return (f"--experiment={self.experiment}", f"--config={self.config}", "--verbose=0")


@pytest.fixture
def table_workdir(tmp_path):
    """A fresh working folder with a CSV table and configs/tiny_tabular.yml, tabular's config shrunk for tests."""
    write_table(tmp_path / "table.csv")
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "tiny_tabular.yml").write_text(yaml.safe_dump(tiny_tabular_config(tmp_path / "table.csv")))
    return tmp_path


@pytest.fixture(params=["experiment1", "charlm", "tabular"])
def tiny(request, tmp_path):
    """Each shipped experiment in turn, with its tiny config in a fresh working folder: a test that takes this
    fixture holds a promise for the CNN, the language model and the table's MLP alike."""
    if request.param == "charlm":
        return Tiny("charlm", request.getfixturevalue("text_workdir"), "configs/tiny_charlm.yml")
    if request.param == "tabular":
        return Tiny("tabular", request.getfixturevalue("table_workdir"), "configs/tiny_tabular.yml")
    return Tiny("experiment1", request.getfixturevalue("workdir"), "configs/tiny.yml")


@pytest.fixture
def code_copy(tmp_path):
    """A copy of the template in its own git repository, so a test can change its code and see that recorded."""
    return copy_template(tmp_path / "code")


class Spawner:
    """Starts real processes for one test and kills every one still alive when the test ends, their children
    included (torchrun's ranks, --workers' workers): a failing test leaves nothing running."""

    def __init__(self):
        self.started = []

    def __call__(self, cwd, *args, command=None, main=MAIN, table=None, env=None):
        """Start `python main.py args` (or `command`) in `cwd` in a process group of its own, recording in `table`
        (by default `cwd`'s results/), with the variables of `env` added to the environment; returns the Popen."""
        process = subprocess.Popen(command or [sys.executable, str(main), *args], cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True,
                                   env={**env_recording_in(cwd, table), **(env or {})})
        self.started.append(process)
        return process

    def run(self, cwd, *args, command=None, main=MAIN, timeout=300, table=None, env=None):
        """Run it to the end; a CompletedProcess, as subprocess.run gives."""
        process = self(cwd, *args, command=command, main=main, table=table, env=env)
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def reap(self):
        for process in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader while a child is alive
            except (ProcessLookupError, PermissionError):
                pass
            process.communicate()


@pytest.fixture
def spawn():
    spawner = Spawner()
    yield spawner
    spawner.reap()
