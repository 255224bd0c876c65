"""charlm, the character-level language model shipped beside experiment1, and what every experiment declares.

The fast tests drive main.py in process on a small play-like text; the slow ones hold charlm to the promises
experiment1 keeps, through real processes."""
import dataclasses
import functools
import http.server
import json
import math
import re
import signal
import sqlite3
import sys
import threading

import pytest
import torch
import yaml

import main
from data.text import SHAKESPEARE_CHAR
from data.windows import IGNORED, covering_windows, evaluation_windows, make_text_loaders, training_windows
from experiments import Experiment, check_registry, declare
from models.transformer import make_model
from training.loop import evaluate
from training.tasks import NextToken
from utils.checkpoint import load_checkpoint
from helpers import (MAIN, REPO, assert_refused, interrupt_after_first_epoch, logged_epochs, query, query_while_created,
                     recorded_numbers, run_in_process, run_main, tiny_charlm_config, tiny_config, wait_for,
                     write_text_corpus)
from utils.errors import UserError

TINY = ("--experiment=charlm", "--config=configs/tiny_charlm.yml", "--verbose=0")


def charlm_in_process(cwd, *args):
    return run_in_process(cwd, *TINY, *args)


def results_of(db, run_id):
    return dict(query(db, "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", run_id))


def texts_of(db, run_id):
    """The texts the experiment wrote (the template's own, such as the environment, left out)."""
    return query(db, "SELECT tag, epoch, step, fragment FROM Fragments WHERE run_id=? AND tag IN ('sample', 'samples') "
                     "ORDER BY tag, epoch", run_id)


def test_a_charlm_run_records_loss_and_bpc_its_measures_its_samples_and_refuses_its_duplicate(text_workdir):
    db = text_workdir / "results" / "resultTable.db"
    done = charlm_in_process(text_workdir)
    assert done.returncode == 0, done.stderr
    results = results_of(db, 1)
    assert set(results) >= {"test_loss", "test_bpc", "best_epoch", "best_val_loss"}
    assert results["test_bpc"] == pytest.approx(results["test_loss"] / math.log(2))
    assert results["test_loss"] < math.log(40)  # better than guessing among the text's few dozen characters
    val = query(db, "SELECT label, epoch, value FROM Logs WHERE run_id=1 AND split='val' ORDER BY label, epoch")
    assert [(label, epoch) for label, epoch, _ in val] == [("bpc", 1), ("bpc", 2), ("loss", 1), ("loss", 2)]
    best = min((value, epoch) for label, epoch, value in val if label == "loss")
    assert (results["best_val_loss"], results["best_epoch"]) == best
    [(measures,)] = query(db, "SELECT measures FROM TemplateLaunch WHERE run_id=1")
    assert json.loads(measures) == {"better": {"loss": "lower", "bpc": "lower"}, "select": "loss"}

    texts = texts_of(db, 1)
    assert [(tag, epoch) for tag, epoch, _, _ in texts] == [("sample", 0), ("samples", 1), ("samples", 2)]
    assert len(texts[0][3]) == 40 and len(texts[1][3]) == 10
    # The duplicate is refused, as experiment1's is.
    assert_refused(charlm_in_process(text_workdir), "run 1", "--debug")


def test_the_text_is_split_as_nanogpt_splits_it_and_every_held_out_character_is_scored_once(text_workdir):
    config = yaml.safe_load((text_workdir / "configs" / "tiny_charlm.yml").read_text())
    text = (SHAKESPEARE_CHAR.find_file(config["data"])).read_text()
    train, val, test, info = make_text_loaders(config, torch.device("cpu"), seed=0)
    vocab = sorted(set(text))
    assert list(info.vocab) == vocab
    first = int(len(text) * 0.9)
    assert (info.num_train, info.num_val, info.num_test) == (first - 1500, 1500, len(text) - first)
    assert info.decode(test.tokens.tolist()) == text[first:]
    assert info.decode(val.tokens.tolist()) == text[first - 1500:first]
    scored = [target for _, targets in test for row in targets.tolist() for target in row if target != -100]
    assert info.decode(scored) == text[first + 1:]  # each character but the first, once, in order
    # The loss is the mean over exactly those characters, the masked overlap of the last window left out.
    model = make_model(config, info, torch.device("cpu"))
    starts, first_scored = covering_windows(info.num_test, 16)
    losses = []
    with torch.no_grad():
        for start, skip in zip(starts, first_scored):
            window = test.tokens[start:start + 17]
            logits = model(window[None, :-1])[0]
            losses += torch.nn.functional.cross_entropy(logits, window[1:], reduction="none")[skip:].tolist()
    assert len(losses) == info.num_test - 1
    assert evaluate(model, test, NextToken(ignore_index=IGNORED))["loss"] == pytest.approx(sum(losses) / len(losses))
    for length, block in [(17, 16), (33, 16), (100, 7), (8, 7)]:
        starts, first_scored = covering_windows(length, block)
        covered = sorted(start + position + 1 for start, skip in zip(starts, first_scored)
                         for position in range(skip, block))
        assert covered == list(range(1, length))

    # Training windows: within the split, an order and offsets from the seed alone, the same on each pass's replay.
    windows = [inputs for inputs, _ in training_windows(train.tokens, 16, 16, seed=3)]
    again = [inputs for inputs, _ in training_windows(train.tokens, 16, 16, seed=3)]
    other = [inputs for inputs, _ in training_windows(train.tokens, 16, 16, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(windows, again)) and not torch.equal(windows[0], other[0])
    assert sum(len(batch) for batch in windows) == info.num_train // 16 - 2
    windows = sum(len(inputs) for inputs, _ in evaluation_windows(val.tokens, 16, 64))
    assert windows == len(covering_windows(1500, 16)[0])


def test_a_missing_text_a_short_one_and_an_image_config_are_refused_in_one_line(text_workdir, tmp_path, mnist_root):
    assert_refused(charlm_in_process(text_workdir, f"--config.data.path={tmp_path / 'nowhere'}"),
                   "tinyshakespeare/input.txt", "data.download is false")
    short = write_text_corpus(tmp_path / "short", characters=300)
    assert_refused(charlm_in_process(text_workdir, f"--config.data.path={short}", "--config.data.val_size=50"),
                   "data.block_size 16")
    assert_refused(charlm_in_process(text_workdir, "--config.data.name=mnist", f"--config.data.path={mnist_root}"),
                   "not a text corpus")
    assert_refused(charlm_in_process(text_workdir, "--config.model.n_head=3"), "n_head")
    assert not (text_workdir / "results" / "resultTable.db").exists() or query(
        text_workdir / "results" / "resultTable.db", "SELECT COUNT(*) FROM Experiments") == [(0,)]


@pytest.mark.fault("valid configs")
def test_a_text_of_every_unicode_character_is_refused_by_the_memory_its_logits_take_before_a_row(text_workdir,
                                                                                               tmp_path):
    corpus = tmp_path / "unicode" / "tinyshakespeare" / "input.txt"
    corpus.parent.mkdir(parents=True)
    characters = [chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF]  # surrogates are no text
    corpus.write_text("".join(characters), encoding="utf-8")
    refused = charlm_in_process(text_workdir, f"--config.data.path={corpus.parent.parent}",
                                "--config.data.batch_size=512", "--config.data.block_size=256")
    assert_refused(refused, f"logits over {len(characters):,} characters a batch", "make it smaller")
    assert not (text_workdir / "results" / "resultTable.db").exists()


def test_watch_takes_any_declared_metric_and_the_experiments_own_choice_holds_without_it(text_workdir, mnist_root):
    db = text_workdir / "results" / "resultTable.db"
    assert charlm_in_process(text_workdir).returncode == 0
    assert_refused(charlm_in_process(text_workdir, "--watch=loss"), "run 1")  # its own choice: the same run
    assert charlm_in_process(text_workdir, "--watch=bpc").returncode == 0
    assert json.loads(query(db, "SELECT measures FROM TemplateLaunch WHERE run_id=2")[0][0])["select"] == "bpc"
    assert "best_val_bpc" in results_of(db, 2)
    assert_refused(charlm_in_process(text_workdir, "--watch=accuracy"),
                   "--watch=accuracy is not a metric this experiment declares", "loss", "bpc")
    # experiment1 declares its own metrics: accuracy and loss, not charlm's.
    (text_workdir / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_config(mnist_root)))
    assert_refused(run_in_process(text_workdir, "--experiment=experiment1", "--config=configs/tiny.yml",
                                  "--watch=bpc"), "--watch=bpc", "declares loss, accuracy")


@pytest.mark.parametrize("entry, message", [
    (lambda config, run, device, world: None, "not a declared experiment"),
    (functools.partial(main.experiment1.function), "not a declared experiment"),
    (dataclasses.replace(main.charlm, measures=dataclasses.replace(main.charlm.measures, select="accuracy")),
     "'accuracy'"),
    (dataclasses.replace(main.charlm, measures=dataclasses.replace(
        main.charlm.measures, better={"loss": "smaller", "bpc": "lower"})), "'smaller'"),
    (dataclasses.replace(main.charlm, data_fingerprint=None), "declares no data_fingerprint"),
    (dataclasses.replace(main.charlm, check_config="check_config"), "not a function"),
])
def test_a_wrong_declaration_or_an_undeclared_entry_is_refused_at_start_up(text_workdir, monkeypatch, entry,
                                                                           message):
    monkeypatch.setitem(main.experiments, "mine", entry)
    assert_refused(run_in_process(text_workdir, "--list"), "mine", message)
    with pytest.raises(UserError, match="mine"):
        check_registry({"mine": entry})


def test_declare_keeps_the_function_its_name_and_what_it_declares():
    def mine(config, run, device, world):
        """My experiment."""
        return {"answer": 42}

    experiment = declare(metrics={"mse": "lower"}, select="mse", check_config=lambda config, world_size: None,
                         data_fingerprint=None, reads_no_data=True)(mine)
    assert isinstance(experiment, Experiment) and experiment.__name__ == "mine"
    assert experiment.__doc__ == "My experiment."
    assert experiment({}, None, None, None) == {"answer": 42}
    check_registry({"mine": experiment})
    assert experiment.measures.selected_result == "best_val_mse"
    assert main.charlm.config == "configs/charlm.yml" and main.experiment1.config == "configs/config.yml"


@pytest.mark.slow
def test_compare_judges_lower_loss_better_from_the_recorded_direction(text_workdir):
    assert charlm_in_process(text_workdir, "--seeds=2").returncode == 0
    assert charlm_in_process(text_workdir, "--seeds=2", "--config.training.learning_rate=0.0001").returncode == 0
    compared = run_in_process(text_workdir, "--compare", "--format=json")
    assert compared.returncode == 0, compared.stderr
    reference, slow = json.loads(compared.stdout)
    assert slow["config"] == {"training.learning_rate": 0.0001}
    assert slow["vs_reference"]["test_loss"]["diff"] > 0  # a hundredth of the learning rate: a higher loss...
    table = run_in_process(text_workdir, "--compare").stdout
    sentence = next(line.strip() for line in table.splitlines() if line.strip().startswith("test_loss: "))
    assert sentence.startswith("test_loss: worse by"), table  # ...which is worse, since lower is better
    assert next(line.strip() for line in table.splitlines()
                if line.strip().startswith("test_bpc: ")).startswith("test_bpc: worse by")


def test_a_resumed_run_discards_the_texts_of_epochs_after_its_checkpoint(text_workdir, monkeypatch):
    db = text_workdir / "results" / "resultTable.db"
    config = text_workdir / "configs" / "tiny_charlm.yml"
    config.write_text(config.read_text().replace("num_epochs: 2", "num_epochs: 3"))
    interrupt_after_first_epoch(monkeypatch)
    assert charlm_in_process(text_workdir).returncode != 0
    # An epoch's text written after its checkpoint (as a crash between them leaves it) is discarded on resume.
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO Fragments (run_id, step, epoch, run_rep, fragment_type, tag, fragment) "
                           "VALUES (1, 999, 2, 0, 'RAW', 'samples', 'left by a crash')")
    resumed = run_in_process(text_workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert charlm_in_process(text_workdir, "--comment=uninterrupted").returncode == 0
    assert texts_of(db, 1) == texts_of(db, 2)
    assert recorded_numbers(db, 1) == recorded_numbers(db, 2)


def test_the_same_text_elsewhere_is_the_same_run_and_one_changed_character_is_another(text_workdir, text_root,
                                                                                     tmp_path):
    db = text_workdir / "results" / "resultTable.db"
    assert charlm_in_process(text_workdir).returncode == 0
    text = (text_root / "tinyshakespeare" / "input.txt").read_text()
    elsewhere = write_text_corpus(tmp_path / "elsewhere")
    (elsewhere / "tinyshakespeare" / "input.txt").write_text(text)
    assert_refused(charlm_in_process(text_workdir, f"--config.data.path={elsewhere}"), "run 1")
    changed = text[:5000] + ("x" if text[5000] != "x" else "y") + text[5001:]
    (elsewhere / "tinyshakespeare" / "input.txt").write_text(changed)
    assert charlm_in_process(text_workdir, f"--config.data.path={elsewhere}").returncode == 0
    assert query(db, "SELECT COUNT(DISTINCT data_fingerprint) FROM TemplateLaunch") == [(2,)]


@pytest.mark.slow
def test_a_search_minimises_validation_loss_prunes_and_reports_the_best_trials_held_out_loss(text_workdir):
    db = text_workdir / "results" / "resultTable.db"
    search = ("--search=12", "--prune", "--config.training.learning_rate=log:1e-3..30",
              "--config.model.n_embd=16,32", "--config.training.num_epochs=3")
    done = charlm_in_process(text_workdir, *search)
    assert done.returncode == 0, done.stderr
    assert "loss is minimised" in done.stdout.splitlines()[0]
    assert re.search(r"run \d+ pruned: its validation was worse than the median", done.stdout), done.stdout
    trials = {run_id: results_of(db, run_id).get("best_val_loss") for (run_id,) in query(
        db, "SELECT run_id FROM Experiments WHERE status='finished'")}
    trials = {run_id: value for run_id, value in trials.items() if value is not None}  # NaN: a run that diverged
    best = min(trials, key=trials.get)
    summary = done.stdout[done.stdout.index("complete trials by best_val_loss"):]
    assert (f"held-out test_loss of the best trial (for reporting the choice, not for making it): "
            f"{results_of(db, best)['test_loss']:.4f}") in summary, summary
    assert "test_accuracy" not in done.stdout


@pytest.mark.slow
def test_a_sweep_of_charlm_runs_the_product_and_tabulates_its_loss(text_workdir):
    done = charlm_in_process(text_workdir, "--sweep", "--config.training.learning_rate=0.01,0.003",
                             "--config.model.n_embd=16,32")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()[-5:]
    assert "test_loss" in header and "test_bpc" in header
    assert [row.split()[2:4] for row in rows] == [[str(i), "finished"] for i in range(1, 5)]


@pytest.mark.slow
def test_a_new_experiment_from_charlm_names_its_config_and_metrics_and_runs(code_copy, text_workdir):
    done = run_main(code_copy, "--new-experiment=bigram", "--from=charlm", main=code_copy / "main.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "edit experiments/bigram.py and configs/bigram.yml, then: python main.py --experiment=bigram "
        "--config=configs/bigram.yml; test it with: python -m pytest tests/test_bigram.py")
    lab_book = (code_copy / "experiments" / "bigram.md").read_text()
    assert "| best_val_loss | test_loss | test_bpc |" in lab_book and "accuracy" not in lab_book
    assert "--config=configs/bigram.yml" in lab_book
    code = (code_copy / "experiments" / "bigram.py").read_text()
    assert "def bigram(config, run, device" in code and 'select="loss"' in code
    assert 'config="configs/bigram.yml"' in code and "charlm" not in code.split("\n", 2)[2]
    assert (code_copy / "configs" / "bigram.yml").read_text().endswith((REPO / "configs" / "charlm.yml").read_text(
        ).split("\n\n", 1)[1])  # charlm's keys under a heading of its own
    ran = run_main(text_workdir, "--experiment=bigram", "--config=configs/tiny_charlm.yml", "--verbose=0",
                   main=code_copy / "main.py")
    assert ran.returncode == 0, ran.stderr
    assert "test_loss" in results_of(text_workdir / "results" / "resultTable.db", 1)


@pytest.fixture
def long_text_workdir(tmp_path):
    """A charlm config whose run lasts long enough (5 epochs of 300 steps) to be stopped in the middle of one, even
    on a machine so loaded that the test sees the second epoch late."""
    root = write_text_corpus(tmp_path / "long-text", characters=150000)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny_charlm.yml").write_text(yaml.safe_dump(tiny_charlm_config(
        root, **{"training.num_epochs": 5, "data.batch_size": 8, "data.block_size": 48})))
    return tmp_path


def train_points(db, run_id):
    return query_while_created(db, "SELECT COUNT(*) FROM Logs WHERE run_id=? AND split='train' AND label='step_loss'",
                               run_id)


@pytest.mark.fault("kills")
@pytest.mark.slow
@pytest.mark.parametrize("signal_number, code, status", [(signal.SIGTERM, 143, "failed"),
                                                         (signal.SIGKILL, -9, "running")])
def test_stopped_mid_epoch_then_resumed_a_charlm_run_ends_exactly_as_the_uninterrupted_one(
        long_text_workdir, spawn, signal_number, code, status):
    db = long_text_workdir / "results" / "resultTable.db"
    process = spawn(long_text_workdir, *TINY)
    # Mid-epoch 2: after the first epoch's checkpoints and some of the second epoch's points.
    wait_for(lambda: process.poll() is not None or (logged_epochs(db, 1) >= 1 and
                                                   (train_points(db, 1) or [(0,)])[0][0] >= 70), what="epoch 2")
    assert process.poll() is None, process.communicate()
    process.send_signal(signal_number)
    assert process.wait(timeout=120) == code
    assert query(db, "SELECT status FROM Experiments WHERE run_id=1") == [(status,)]
    assert logged_epochs(db, 1) < 5
    resumed = run_main(long_text_workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    assert run_main(long_text_workdir, *TINY, "--comment=uninterrupted").returncode == 0
    assert recorded_numbers(db, 1) == recorded_numbers(db, 2)
    assert texts_of(db, 1) == texts_of(db, 2)


@pytest.mark.slow
def test_torchrun_with_two_processes_records_one_run_on_the_whole_text_with_identical_weights(text_workdir, spawn):
    db = text_workdir / "results" / "resultTable.db"
    done = spawn.run(text_workdir, command=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc_per_node=2", str(MAIN), *TINY[:2]])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("final weights identical on all 2 ranks") == 1
    assert query(db, "SELECT run_id, status, cli FROM Experiments") == [(1, "finished", "world_size=2")]
    # The recorded losses are over the whole splits, not one rank's half: one process scores the best checkpoint
    # the same.
    config = yaml.safe_load(query(db, "SELECT file_content FROM ConfigFile WHERE run_id=1")[0][0])
    _, val, test, info = make_text_loaders(config, torch.device("cpu"), seed=config["seed"])
    model = make_model(config, info, torch.device("cpu"))
    load_checkpoint(text_workdir / "results" / "1" / "best.pt", model, torch.device("cpu"))
    results = results_of(db, 1)
    task = NextToken(ignore_index=IGNORED)
    assert evaluate(model, test, task)["loss"] == pytest.approx(results["test_loss"], rel=1e-6)
    assert evaluate(model, val, task)["loss"] == pytest.approx(results["best_val_loss"], rel=1e-6)


@pytest.mark.slow
def test_a_missing_text_is_downloaded_md5_checked_and_offline_it_is_one_line(text_workdir, text_root, tmp_path,
                                                                             monkeypatch):
    import hashlib
    import urllib.error

    import torchvision.datasets.utils

    served = text_root / "tinyshakespeare" / "input.txt"
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # A real download, from a server on this machine.
    monkeypatch.setattr(SHAKESPEARE_CHAR, "urls", [f"http://127.0.0.1:{server.server_port}/input.txt"])
    monkeypatch.setattr(SHAKESPEARE_CHAR, "md5", "0" * 32)
    target = tmp_path / "fresh"
    refused = charlm_in_process(text_workdir, f"--config.data.path={target}", "--config.data.download=true")
    # torchvision's download bar comes first; the refusal is one line after it
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "input.txt missing" in last and "the download failed (RuntimeError: File not found or corrupted" in last
    assert not target.exists()  # a file that is not the one expected is not kept
    monkeypatch.setattr(SHAKESPEARE_CHAR, "md5", hashlib.md5(served.read_bytes()).hexdigest())
    done = charlm_in_process(text_workdir, f"--config.data.path={target}", "--config.data.download=true")
    assert done.returncode == 0, done.stderr
    assert (target / "tinyshakespeare" / "input.txt").read_bytes() == served.read_bytes()
    assert_refused(charlm_in_process(text_workdir), "run 1")  # the downloaded copy is the same text: the same run

    def offline(url, root, filename=None, md5=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    assert_refused(charlm_in_process(text_workdir, f"--config.data.path={tmp_path / 'other'}",
                                     "--config.data.download=true"), "the download failed (URLError", "offline?")
    assert not (tmp_path / "other").exists()
    server.shutdown()


@pytest.mark.fault("data files")
def test_a_download_from_a_server_that_never_answers_times_out_in_one_line(text_workdir, tmp_path, monkeypatch):
    import socket

    import data.files

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # connections are queued, never accepted nor answered
    monkeypatch.setattr(data.files, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(SHAKESPEARE_CHAR, "urls", [f"http://127.0.0.1:{silent.getsockname()[1]}/input.txt"])
    refused = charlm_in_process(text_workdir, f"--config.data.path={tmp_path / 'fresh'}",
                                "--config.data.download=true")
    silent.close()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "the download failed" in refused.stderr.strip().splitlines()[-1]
    assert "timed out" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "fresh").exists()


@pytest.mark.fault("searches")
def test_a_model_that_diverged_still_writes_its_sample_and_ends_its_run(text_workdir):
    db = text_workdir / "results" / "resultTable.db"
    done = charlm_in_process(text_workdir, "--config.training.learning_rate=1e6")  # its weights become NaN
    assert done.returncode == 0, done.stderr
    assert results_of(db, 1)["test_loss"] is None  # NaN, which the table stores as NULL
    [(sample,)] = query(db, "SELECT fragment FROM Fragments WHERE run_id=1 AND tag='sample'")
    assert len(sample) == 40


@pytest.mark.slow
def test_images_and_figures_reach_deepboard_and_a_resume_keeps_only_those_before_its_checkpoint(text_workdir,
                                                                                               monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from deepboard.resultTable import ResultTable
    from PIL import Image

    import utils.epochs

    def with_pictures(config, run, device, world, verbose=1):
        """charlm, with a picture of the whole run."""
        run.log_image("inputs", Image.new("L", (8, 8), color=128))
        return main.charlm.function(config, run, device, world, verbose=verbose)

    end = utils.epochs.Epochs.end

    def end_with_a_figure(self, epoch, **metrics):  # as an epoch loop logs a figure before its epoch ends
        figure, axes = plt.subplots()
        axes.plot([1, 2, epoch])
        self.run.log_figure("schedule", figure, step=epoch, epoch=epoch)
        plt.close(figure)
        end(self, epoch, **metrics)

    monkeypatch.setitem(main.experiments, "charlm", dataclasses.replace(main.charlm, function=with_pictures))
    monkeypatch.setattr(utils.epochs.Epochs, "end", end_with_a_figure)
    db = text_workdir / "results" / "resultTable.db"
    interrupt_after_first_epoch(monkeypatch)
    assert charlm_in_process(text_workdir).returncode == 130
    # A figure of epoch 2 written before a crash stopped it: the resume point (epoch 1) discards it.
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO Images (run_id, step, epoch, run_rep, img_type, tag, image) "
                           "VALUES (1, 2, 2, 0, 'PLOT', 'schedule', x'00')")
    resumed = run_in_process(text_workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    # Each epoch's figure once, the whole run's image once (replaced when the resumed run logged it again).
    rows = query(db, "SELECT img_type, tag, epoch FROM Images WHERE run_id=1 ORDER BY img_type, tag, epoch")
    assert rows == [("IMAGE", "inputs", 0), ("PLOT", "schedule", 1), ("PLOT", "schedule", 2)], rows
    writer = ResultTable(str(db)).load_run(1)
    [image] = writer.get_images(tag="inputs")  # deepboard decodes them: PIL images
    assert image["image"].size == (8, 8)
    figures = writer.get_figures(tag="schedule")
    assert [figure["epoch"] for figure in figures] == [1, 2]
    assert all(figure["image"].format == "PNG" for figure in figures)


@pytest.mark.fault("valid configs")
def test_a_transformer_too_large_for_this_machines_memory_is_refused_in_one_line(text_workdir):
    assert_refused(charlm_in_process(text_workdir, "--config.model.n_embd=10000000", "--config.model.n_head=1"),
                   "the transformer of model.n_layer 1 and model.n_embd 10000000 has", "make it smaller")
    assert not (text_workdir / "results").exists()
