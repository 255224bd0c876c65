"""Looking at results: the analysis notebook, executed headless, and the deepboard GUI in a real server and browser."""
import http.cookiejar
import os
import shutil
import signal
import socket
import subprocess
import urllib.request

import pytest

from helpers import REPO, run_tiny, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as root in a closed network: no sandbox, no background connections, a fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def table_with_runs(workdir):
    """A run table made by two groups of two seeds each, which differ by their learning rate (runs 1-2 and 3-4)."""
    assert run_tiny(workdir, "--seeds=2").returncode == 0
    assert run_tiny(workdir, "--seeds=2", "--config.training.learning_rate=0.02").returncode == 0
    return workdir / "results" / "resultTable.db"


def test_the_analysis_notebook_runs_top_to_bottom_and_draws_its_figures(table_with_runs, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RESULT_TABLE", str(table_with_runs))
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()  # raises on any cell error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 3
    text = "".join(output.get("text", "") for output in outputs)
    assert f"run table: {table_with_runs}" in text and "4 runs, 4 finished" in text and "2 groups" in text
    tables = "".join(output["data"].get("text/html", "") for output in outputs if "data" in output)
    assert "learning_rate" in tables and "test_accuracy" in tables and "0.02" in tables
    assert "training.learning_rate=0.02" in tables and "paired t" in tables  # the groups' comparison


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deepboard_server(table_with_runs, tmp_path):
    """The real `deepboard` server on a free localhost port, always stopped afterwards."""
    port = free_port()
    log = open(tmp_path / "deepboard.log", "w")
    command = [shutil.which("deepboard") or "deepboard", str(table_with_runs), "--port", str(port)]
    # Its own session, so that stopping it also stops the reloader's worker process.
    server = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "HOME": str(tmp_path)})  # it writes its theme files under ~
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url) or server.poll() is not None, timeout=90, what="the deepboard server")
        assert server.poll() is None, (tmp_path / "deepboard.log").read_text()
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _answers(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_deepboard_shows_the_runs_in_a_browser(deepboard_server, tmp_path):
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *profile, "--dump-dom", deepboard_server + "/"],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Run ID" in dom
    assert dom.count("experiment1") >= 4  # one row per run
    for column in ("learning_rate", "test_accuracy"):
        assert column in dom
    screenshot = tmp_path / "deepboard.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *profile, "--window-size=1400,900", f"--screenshot={screenshot}",
                    deepboard_server + "/"], capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000


def test_deepboard_renders_a_runs_curves_config_and_provenance(deepboard_server):
    # What a click on a row fetches (the page's htmx comes from a CDN, so the request is made here directly).
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    browser.open(deepboard_server + "/").read()
    panel = browser.open(deepboard_server + "/click_row?run_id=3&fullscreen=false").read().decode()
    assert "step_loss" in panel and "accuracy" in panel and "epoch_time" in panel  # the curves' charts
    config = browser.open(deepboard_server + "/fillpanel?run_id=3&tab=config").read().decode()
    assert "learning_rate: 0.02" in config and "--config.training.learning_rate=0.02" in config
    text = browser.open(deepboard_server + "/fillpanel?run_id=3&tab=text").read().decode()
    assert "environment" in text and "torchvision" in text and "device_name" in text
