"""Fixtures shared by the tests; the helpers they use live in helpers.py."""
import os
import signal
import subprocess
import sys

import pytest
import yaml

from helpers import MAIN, copy_template, env_recording_in, make_mnist_folder, tiny_config

# A test names the table it records in (the helpers: its working folder's results/). One that forgets fails here,
# instead of writing into the checkout's own results/ (a user's real runs).
os.environ["RESULT_TABLE"] = "/dev/null/no-table-chosen-by-this-test/resultTable.db"


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def workdir(tmp_path, mnist_root):
    """A fresh working folder holding configs/tiny.yml, the project's own config shrunk for tests."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config(mnist_root)))
    return tmp_path


@pytest.fixture
def code_copy(tmp_path):
    """A copy of the template in its own git repository, so a test can change its code and see that recorded."""
    return copy_template(tmp_path / "code")


class Spawner:
    """Starts real processes for one test and kills every one still alive when the test ends, their children
    included (torchrun's ranks, --workers' workers): a failing test leaves nothing running."""

    def __init__(self):
        self.started = []

    def __call__(self, cwd, *args, command=None, main=MAIN, table=None):
        """Start `python main.py args` (or `command`) in `cwd` in a process group of its own, recording in `table`
        (by default `cwd`'s results/); returns the Popen."""
        process = subprocess.Popen(command or [sys.executable, str(main), *args], cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True,
                                   env=env_recording_in(cwd, table))
        self.started.append(process)
        return process

    def run(self, cwd, *args, command=None, main=MAIN, timeout=300, table=None):
        """Run it to the end; a CompletedProcess, as subprocess.run gives."""
        process = self(cwd, *args, command=command, main=main, table=table)
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
