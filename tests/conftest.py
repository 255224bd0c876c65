"""Fixtures shared by the tests; the helpers they use live in helpers.py."""
import pytest
import yaml

from helpers import make_mnist_folder, tiny_config


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def workdir(tmp_path, mnist_root):
    """A fresh working folder holding configs/tiny.yml, the project's own config shrunk for tests."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config(mnist_root)))
    return tmp_path


