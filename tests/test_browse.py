"""Looking at results: the analysis notebook, executed headless, and the deepboard GUI in a real server and browser."""
import contextlib
import html
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers import (REPO, copy_template, make_mnist_folder, query, require, run_main, run_tiny, tiny_charlm_config,
                     tiny_config, tiny_in_process, wait_for, write_text_corpus)

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as root in a closed network: no sandbox, no background connections, a fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def table_with_runs(tmp_path_factory):
    """A run table made by two groups of two seeds each, which differ by their learning rate (runs 1-2 and 3-4),
    recorded by a copy of the template with an uncommitted file, so that each run has a commit and a diff."""
    root = tmp_path_factory.mktemp("browse")
    code = copy_template(root / "code")
    (code / "notes_untracked.py").write_text("UNTRACKED_MARKER = 1\n")
    workdir = root / "work"
    (workdir / "configs").mkdir(parents=True)
    data = make_mnist_folder(root / "data")
    (workdir / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config(data)))
    assert run_tiny(workdir, "--seeds=2", main=code / "main.py").returncode == 0
    assert run_tiny(workdir, "--seeds=2", "--config.training.learning_rate=0.02", main=code / "main.py").returncode == 0
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    return workdir / "results" / "resultTable.db", commit


def executed_notebook(table, monkeypatch, named_as=None):
    """(every output of notebooks/analysis.ipynb executed headless on `table` (RESULT_TABLE=`named_as`, by default its
    absolute path), what its figures and rankings drew: the curves' points, the chosen RUNS and each experiment's ranked
    validation column)."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RESULT_TABLE", named_as or str(table))
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    # One more cell, after the notebook's own: which points its curve figures were drawn from.
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import json\n"
        "print('PLOTTED', json.dumps({'groups': sorted([int(r), t, int(e), float(v)] for r, t, e, v in "
        "curves[['run_id', 'tag', 'epoch', 'value']].itertuples(index=False)), "
        "'runs': sorted([int(r), t, int(e), float(v)] for r, t, e, v in "
        "run_curves[['run_id', 'tag', 'epoch', 'value']].itertuples(index=False)), 'RUNS': [int(r) for r in RUNS], "
        "'ranked': {e: [float(v) for v in t.iloc[:, 3]] for e, t in tables.items()}}))"))
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()  # raises on any cell error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    return outputs, json.loads(text.split("PLOTTED ", 1)[1].splitlines()[0])


def test_the_analysis_notebook_runs_top_to_bottom_and_plots_every_runs_points(table_with_runs, monkeypatch):
    table, _ = table_with_runs
    outputs, plotted = executed_notebook(table, monkeypatch)
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 5  # two rankings, the chosen runs' curves, the best run's mistakes and confusion matrix
    text = "".join(output.get("text", "") for output in outputs)
    assert f"run table: {table}" in text and "4 runs, 4 finished" in text and "2 groups" in text
    # The best run, loaded as a model: exactly as many test images wrong as its recorded test accuracy says.
    best, wrong, total = (int(number) for number in re.search(
        r"experiment1, run (\d+): (\d+) of (\d+) test images wrong", text).groups())
    [(accuracy,)] = query(table, "SELECT value FROM Results WHERE run_id=? AND metric='test_accuracy'", best)
    assert best == plotted["RUNS"][0] and wrong == round((1 - accuracy) * total) and total == 200
    assert "no evaluation: python main.py --evaluate=RUNID scores a run on other data" in text
    tables = "".join(output["data"].get("text/html", "") for output in outputs if "data" in output)
    assert "learning_rate" in tables and "test_accuracy" in tables and "0.02" in tables
    assert "training.learning_rate=0.02" in tables and "paired t" in tables  # the groups' comparison

    # The figures' frames hold every epoch's train and validation points of the runs they show, as recorded.
    recorded = {(run_id, f"{split}/{label}", epoch): value for run_id, split, label, epoch, value in query(
        table, "SELECT run_id, split, label, epoch, value FROM Logs WHERE label IN ('loss', 'accuracy')")}
    runs = plotted["RUNS"]
    assert len(runs) == 3  # the three best runs of four
    drawn = {"train/loss", "train/accuracy", "val/loss", "val/accuracy"}  # what the chosen runs' figure draws
    shown = {(run_id, tag, epoch): value for run_id, tag, epoch, value in plotted["runs"] if tag in drawn}
    assert shown == {key: value for key, value in recorded.items() if key[0] in runs}
    assert {tag for _, tag, _ in shown} == drawn
    assert {epoch for _, _, epoch in shown} == {1, 2}
    group_points = {(run_id, tag, epoch): value for run_id, tag, epoch, value in plotted["groups"]
                    if tag.startswith("val/")}
    assert {run_id for run_id, _, _ in group_points} == {1, 2, 3, 4}  # both groups, both seeds each
    assert all(recorded[key] == value for key, value in group_points.items()) and len(group_points) == 16


@pytest.fixture(scope="module")
def charlm_tables(tmp_path_factory, table_with_runs):
    """(a table of charlm runs only, a table holding experiment1's and charlm's): charlm's two groups of two seeds
    each differ by their learning rate, the second's far too small to learn."""
    root = tmp_path_factory.mktemp("charlm-browse")
    (root / "configs").mkdir()
    (root / "configs" / "tiny_charlm.yml").write_text(yaml.safe_dump(tiny_charlm_config(write_text_corpus(root))))
    mixed = root / "mixed" / "resultTable.db"
    mixed.parent.mkdir()
    shutil.copy(table_with_runs[0], mixed)
    for table in (root / "only" / "resultTable.db", mixed):
        for extra in ((), ("--config.training.learning_rate=0.00001",)):
            done = run_main(root, "--experiment=charlm", "--config=configs/tiny_charlm.yml", "--verbose=0",
                            "--seeds=2", *extra, table=table)
            assert done.returncode == 0, done.stderr
    return root / "only" / "resultTable.db", mixed


@pytest.mark.fault("run tables")
def test_the_notebook_reads_the_table_main_py_reads_and_leaves_damaged_runs_out_with_a_note(table_with_runs,
                                                                                          monkeypatch, tmp_path):
    home = tmp_path / "home"
    table = home / "tables" / "resultTable.db"
    table.parent.mkdir(parents=True)
    shutil.copy(table_with_runs[0], table)
    query(table, "UPDATE Results SET value='abc' WHERE run_id=2 AND metric='test_accuracy'")
    query(table, "UPDATE Logs SET value=x'00ff' WHERE run_id=3 AND split='val' AND label='loss'")
    query(table, "UPDATE Experiments SET comment='lr $\\frac{1$ try' WHERE run_id=1")  # TeX that cannot be drawn
    monkeypatch.setenv("HOME", str(home))
    outputs, plotted = executed_notebook(table, monkeypatch, named_as="~/tables/resultTable.db")
    text = "".join(output.get("text", "") for output in outputs)
    assert f"run table: {table}" in text
    assert "note: run 2 left out: damaged (a result that is not a number)" in text
    assert "note: run 2 left out: no config, record or results that can be read" in text
    assert "note: run 3 left out: damaged (a point that is not a number)" in text
    assert "3 runs, 3 finished" in text and 2 not in plotted["RUNS"]
    assert {run_id for run_id, *_ in plotted["groups"]} == {1, 4}  # each group's best: run 3's points left out


@pytest.mark.parametrize("which", ["charlm only", "both experiments"])
def test_the_notebook_ranks_each_experiment_by_validation_in_its_own_direction(charlm_tables, monkeypatch, which):
    table = charlm_tables[0] if which == "charlm only" else charlm_tables[1]
    outputs, plotted = executed_notebook(table, monkeypatch)
    text = "".join(output.get("text", "") for output in outputs)
    assert "charlm: 2 groups ranked by best_val_loss (lower is better)" in text
    assert plotted["ranked"]["charlm"] == sorted(plotted["ranked"]["charlm"])  # the lowest loss first
    tables = "".join(output["data"].get("text/html", "") for output in outputs if "data" in output)
    assert "best_val_loss (validation)" in tables and "test_loss (held out)" in tables
    losses = dict(query(table, "SELECT E.run_id, R.value FROM Experiments E JOIN Results R ON R.run_id=E.run_id "
                               "WHERE E.experiment='charlm' AND R.metric='best_val_loss'"))
    chosen = [run_id for run_id in plotted["RUNS"] if run_id in losses]
    assert chosen == sorted(losses, key=losses.get)[:3]
    assert {tag for run_id, tag, _, _ in plotted["runs"] if run_id in losses} >= {"val/loss", "val/bpc",
                                                                                "train/loss", "train/bpc"}
    # The best charlm run, loaded as a model, writes from the prompt.
    assert re.search(rf"charlm, run {chosen[0]}, from 'ROMEO:':\nROMEO:(.|\n){{300}}", text)  # 300 characters
    if which == "both experiments":
        assert "experiment1: 2 groups ranked by best_val_accuracy (higher is better)" in text
        ranked = plotted["ranked"]["experiment1"]
        assert ranked == sorted(ranked, reverse=True) and len(plotted["RUNS"]) == 6
    else:
        assert "experiment1" not in plotted["ranked"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(table, tmp_path):
    """The real `deepboard` server on `table`, on a free localhost port (its URL), always stopped afterwards."""
    port = free_port()
    log = open(tmp_path / "deepboard.log", "w", encoding="utf-8")
    # The deepboard of the interpreter running the tests, whatever is on PATH.
    command = [sys.executable, "-m", "deepboard.gui.entry", str(table), "--port", str(port)]
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


@pytest.fixture(scope="module")
def deepboard_server(table_with_runs, tmp_path_factory):
    with serving(table_with_runs[0], tmp_path_factory.mktemp("deepboard")) as url:
        yield url


def browser_dom(url, tmp_path):
    """The page at `url` as headless Chromium renders it (its DOM after the scripts it could load)."""
    require(CHROMIUM is not None, "needs Debian's chromium (apt-get install chromium); .ci/run installs it")
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True,
                          timeout=120).stdout


@pytest.mark.slow
def test_deepboard_listens_on_the_loopback_address_only(deepboard_server):
    port = int(deepboard_server.rsplit(":", 1)[1])
    # Linux's table of TCP sockets: local address and port in hex, state 0A is LISTEN.
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text(encoding="utf-8").splitlines()[1:]
                 if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")]
    listening += [line.split()[1] for line in (Path("/proc/net/tcp6").read_text(encoding="utf-8").splitlines()[1:]
                  if Path("/proc/net/tcp6").exists() else []) if line.split()[3] == "0A"
                  and line.split()[1].endswith(f":{port:04X}")]
    assert listening == [f"0100007F:{port:04X}"], listening  # 127.0.0.1, never 0.0.0.0 or ::


def _answers(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def test_deepboard_shows_the_runs_in_a_browser(deepboard_server, tmp_path):
    dom = browser_dom(deepboard_server + "/", tmp_path)
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    assert "Run ID" in dom
    assert dom.count("experiment1") >= 4  # one row per run
    for column in ("learning_rate", "test_accuracy"):
        assert column in dom
    screenshot = tmp_path / "deepboard.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *profile, "--window-size=1400,900", f"--screenshot={screenshot}",
                    deepboard_server + "/"], capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000


def test_deepboard_renders_a_runs_curves_config_and_provenance(deepboard_server, table_with_runs):
    _, commit = table_with_runs
    # What a click on a row fetches (the page's htmx comes from a CDN, so the request is made here directly).
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    browser.open(deepboard_server + "/").read()
    panel = browser.open(deepboard_server + "/click_row?run_id=3&fullscreen=false").read().decode()
    assert "step_loss" in panel and "accuracy" in panel and "epoch_time" in panel  # the curves' charts
    config = browser.open(deepboard_server + "/fillpanel?run_id=3&tab=config").read().decode()
    assert "learning_rate: 0.02" in config and "--config.training.learning_rate=0.02" in config
    text = browser.open(deepboard_server + "/fillpanel?run_id=3&tab=text").read().decode()
    assert "environment" in text and "torchvision" in text and "device_name" in text and "threads" in text
    info = browser.open(deepboard_server + "/fillpanel?run_id=3&tab=run_info").read().decode()
    assert commit in info  # the commit the run's code was at
    assert "notes_untracked.py" in info and "UNTRACKED_MARKER = 1" in info  # and its uncommitted changes


def test_deepboard_lists_charlm_runs_and_shows_the_sample_each_recorded(charlm_tables, tmp_path):
    table = charlm_tables[0]
    with serving(table, tmp_path) as url:
        dom = browser_dom(url + "/", tmp_path)
        assert "Run ID" in dom and dom.count("charlm") >= 4 and "test_loss" in dom
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        browser.open(url + "/").read()
        text = browser.open(url + "/fillpanel?run_id=1&tab=text").read().decode()
        [(sample,)] = query(table, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='sample'")
        assert "sample" in text and html.escape(max(sample.splitlines(), key=len)) in text
        panel = browser.open(url + "/click_row?run_id=1&fullscreen=false").read().decode()
        assert "loss" in panel and "bpc" in panel


def test_the_notebook_shows_a_search_study_with_optunas_plots_and_the_runs_of_its_trials(workdir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    searched = tiny_in_process(workdir, "--search=3", "--config.training.learning_rate=log:1e-3..1e-1",
                               "--config.model.dropout=0.0,0.2")
    assert searched.returncode == 0, searched.stderr
    monkeypatch.setenv("RESULT_TABLE", str(workdir / "results" / "resultTable.db"))
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "1 search studies" in text and "3 trials {'COMPLETE': 3}" in text
    search_cell = next(cell for cell in notebook.cells if "read_studies" in cell.source)
    figures = [output for output in search_cell.outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 2  # Optuna's optimisation history and parameter importances
    trials_table = "".join(output["data"].get("text/html", "") for output in search_cell.outputs if "data" in output)
    assert "training.learning_rate" in trials_table and "[1]" in trials_table and "[3]" in trials_table


@pytest.mark.fault("run tables")
def test_what_a_run_records_reaches_deepboards_pages_as_text_never_as_html(tmp_path):
    code = copy_template(tmp_path / "code")
    (code / "notes_untracked.py").write_text('PAGE = "<script>alert(\'diff\')</script>"\n')
    workdir = tmp_path / "work"
    (workdir / "configs").mkdir(parents=True)
    data = make_mnist_folder(tmp_path / "<img src=x onerror=alert(1)>")  # a folder name is a config string
    (workdir / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config(data)))
    comment = "<script>alert('comment')</script> & more"
    assert run_tiny(workdir, f"--comment={comment}", main=code / "main.py").returncode == 0
    table = workdir / "results" / "resultTable.db"
    with serving(table, tmp_path) as url:
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        browser.open(url + "/").read()
        pages = "".join(browser.open(f"{url}/fillpanel?run_id=1&tab={tab}").read().decode()
                        for tab in ("config", "run_info"))
    assert "<script>alert" not in pages and "<img src=x" not in pages
    assert "&lt;script&gt;alert('diff')&lt;/script&gt;" in pages  # the uncommitted file
    assert "&lt;img src=x" in pages  # the config's data.path
    assert "--comment=&lt;script&gt;alert(" in pages and "&amp; more" in pages  # the command line
    assert "&amp;amp;" not in pages  # escaped once: shown as typed
    # The template reads back what the run had: its config reproduces, its command is the one typed.
    reproduced = run_main(workdir, "--reproduce=1", main=code / "main.py")
    assert reproduced.returncode == 0 and "run 1 reproduced" in reproduced.stdout, reproduced.stderr
    compared = run_main(workdir, "--compare", "--format=json", main=code / "main.py")
    assert json.loads(compared.stdout)[0]["comment"] == comment
