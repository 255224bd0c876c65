"""Fixtures shared by the tests; the helpers they use live in helpers.py."""
import shutil
import subprocess

import pytest
import yaml

from helpers import REPO, make_mnist_folder, tiny_config


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
    code = tmp_path / "code"
    shutil.copytree(REPO, code, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", ".pytest_cache"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(code)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "template"], check=True)
    return code
