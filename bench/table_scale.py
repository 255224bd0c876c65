"""How the run table's readers scale: a table of 1,000 and then 10,000 runs, and what a user waits for on it.

    python bench/table_scale.py --data=/path/to/folder/holding/MNIST [--sizes=1000,10000]

It first records one real run of the default config for one epoch (so the rows are what the template writes), then
fills a table with copies of it: each copy a run of its own identity (its own learning rate, five seeds each, so
that runs form groups of five), about 170 logged points, every config key as an hparam, its results, environment
and side-table row. At each size it measures, each in a fresh process: a refused duplicate launch, `--compare`,
the analysis notebook top to bottom (kernel start included), and deepboard's main page (the server's first answer).
"""
import argparse
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchmark import recording_in  # noqa: E402  (the repository root must be on the path first)
from main import IDENTITY  # noqa: E402
from utils.config import dump_config, load_config_text  # noqa: E402
from utils.runtable.identity import RunIdentity  # noqa: E402
from utils.runtable.readers import same_diff_as  # noqa: E402
from utils.runtable.registry import DIFF_INLINE_LIMIT  # noqa: E402
from utils.runtable.run import show_columns_that_differ  # noqa: E402

SEEDS_PER_GROUP = 5


EPOCHS = 6  # the default config's: a copy holds the first epoch's points six times over, as a full run would


def record_template_run(folder, data):
    """Record one real run (1 epoch of the default config) in `folder`; returns the table's path."""
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--experiment=experiment1",
                           f"--config={REPO / 'configs' / 'config.yml'}", f"--config.data.path={data}",
                           "--config.data.download=false", "--config.training.num_epochs=1", "--verbose=0"],
                          cwd=folder, capture_output=True, text=True, env=recording_in(folder))
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return folder / "results" / "resultTable.db"


def grow(db, runs):
    """Add copies of run 1 to the table until it holds `runs` runs."""
    connection = sqlite3.connect(db)
    (present,) = connection.execute("SELECT COUNT(*) FROM Experiments").fetchone()
    template = {table: connection.execute(f"SELECT * FROM {table} WHERE run_id=1").fetchall()
                for table in ("Experiments", "ConfigFile", "TemplateLaunch", "Results", "Logs", "Fragments")}
    columns = {table: [row[1] for row in connection.execute(f"PRAGMA table_info({table})")] for table in template}
    logs, step, epoch = template["Logs"], columns["Logs"].index("step"), columns["Logs"].index("epoch")
    steps = max(row[step] for row in logs)
    template["Logs"] = [tuple(value + (steps * e if i == step else e if i == epoch else 0) if i in (step, epoch)
                              else value for i, value in enumerate(row)) for e in range(EPOCHS) for row in logs]
    config = load_config_text(template["ConfigFile"][0][1])
    data = template["TemplateLaunch"][0][columns["TemplateLaunch"].index("data_fingerprint")]
    diff_hash = template["TemplateLaunch"][0][columns["TemplateLaunch"].index("diff_hash")]
    rows = {table: [] for table in template}
    random_values = random.Random(present)
    for run_id in range(present + 1, runs + 1):
        config["seed"] = run_id % SEEDS_PER_GROUP
        config["training"]["learning_rate"] = round(0.1 + 1e-5 * (run_id // SEEDS_PER_GROUP), 6)
        identity = RunIdentity("experiment1", dump_config(config), {}, "", IDENTITY.where_keys, data)
        for table, template_rows in template.items():
            for row in template_rows:
                row = dict(zip(columns[table], row))
                row["run_id"] = run_id
                if "id_" in row:
                    row["id_"] = None
                if table == "Experiments":
                    row["config_hash"] = identity.config_hash
                    if row["diff"] and len(row["diff"]) > DIFF_INLINE_LIMIT:  # as registration stores it
                        row["diff"] = same_diff_as(1, diff_hash)
                elif table == "ConfigFile":
                    row["file_content"] = identity.config_text
                elif table == "TemplateLaunch":
                    row["group_hash"] = identity.group_hash
                elif table == "Results" and row["metric"] == "seed":
                    row["value"] = config["seed"]
                elif table == "Results" and row["metric"] == "training.learning_rate":
                    row["value"] = config["training"]["learning_rate"]
                elif table == "Results" and not row["is_hparam"]:
                    row["value"] = row["value"] + random_values.gauss(0, 1e-3) * (row["metric"] != "best_epoch")
                elif table == "Logs":
                    row["value"] = row["value"] * (1 + random_values.gauss(0, 1e-3))
                rows[table].append(row)
    with connection:
        for table, new in rows.items():
            if new:
                names = list(new[0])
                connection.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                                       f"({', '.join('?' * len(names))})", [list(row.values()) for row in new])
        # The columns a run shows in deepboard once runs differ in them, as Run.log_hparams does.
        hparams = [(run_id, row["metric"], row["value"], 1) for row in rows["Results"] if row["is_hparam"]
                   and row["run_id"] == runs]
        show_columns_that_differ(connection, runs, hparams)
    connection.close()
    return config


def timed(command, cwd, env=None, expect=0):
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env or recording_in(cwd))
    wall = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{command} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def refused_duplicate(folder, db):
    """Seconds a launch of run 2's very config takes to be refused."""
    config = sqlite3.connect(db).execute("SELECT file_content FROM ConfigFile WHERE run_id=2").fetchone()[0]
    (folder / "run2.yml").write_text(config)
    timed([sys.executable, str(REPO / "main.py"), "--experiment=experiment1", "--config=run2.yml"], folder,
          expect=2)  # the first one warms the file cache and writes the data fingerprint cache
    return timed([sys.executable, str(REPO / "main.py"), "--experiment=experiment1", "--config=run2.yml"], folder,
                 expect=2)


def compare(folder):
    return timed([sys.executable, str(REPO / "main.py"), "--compare"], folder)


def notebook(db):
    """Seconds nbclient takes to execute notebooks/analysis.ipynb on the table, kernel start included."""
    script = ("import nbformat, sys; from nbclient import NotebookClient; "
              f"nb = nbformat.read({str(REPO / 'notebooks' / 'analysis.ipynb')!r}, as_version=4); "
              f"NotebookClient(nb, timeout=600, kernel_name='python3', resources={{'metadata': {{'path': "
              f"{str(REPO / 'notebooks')!r}}}}}).execute()")
    return timed([sys.executable, "-c", script], REPO, env={**os.environ, "RESULT_TABLE": str(db)})


def deepboard_main_page(db, folder):
    """Seconds deepboard's server takes to answer its main page once it is up (its first, uncached answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "from deepboard.gui.entry import main; main()", str(db),
                               "--port", str(port)], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "HOME": str(folder)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:  # the server answers on a page that does not read the table before the main page is asked for
                urllib.request.urlopen(f"http://127.0.0.1:{port}/nonexistent", timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.2)
        started = time.perf_counter()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=900).read()
        return time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding MNIST/raw",
                        type=lambda path: str(Path(path).resolve()))  # the runs start in folders of their own
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-table-"))
    try:
        db = record_template_run(folder, args.data)
        print("| runs in the table | table size | refused duplicate | --compare | notebook, top to bottom | "
              "deepboard main page |")
        print("|---|---|---|---|---|---|")
        for size in (int(size) for size in args.sizes.split(",")):
            grow(db, size)
            row = [f"{size:,}", f"{db.stat().st_size / 2**20:.0f} MiB", f"{refused_duplicate(folder, db):.2f} s",
                   f"{compare(folder):.1f} s", f"{notebook(db):.1f} s", f"{deepboard_main_page(db, folder):.1f} s"]
            print("| " + " | ".join(row) + " |", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
