"""A recorded run is a model you can use: load_run, --evaluate, --sample and --export, and what each refuses."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, assert_refused, env_recording_in, interrupt_after_first_epoch, make_image_folder,
                     make_mnist_folder, query, run_in_process, run_main, signal_at_step, tiny_in_process, write_table,
                     write_text_corpus)
import main
from utils.errors import UserError


def other_data(tiny, tmp_path):
    """Data of the same shape as the tiny config's, with other content: (the override that points at it)."""
    if tiny.experiment == "charlm":
        return f"--config.data.path={write_text_corpus(tmp_path / 'other-text', seed=7)}"
    if tiny.experiment == "tabular":
        return f"--config.data.path={write_table(tmp_path / 'other-table.csv', seed=7)}"
    return f"--config.data.path={make_mnist_folder(tmp_path / 'other-images', n_train=640, n_test=150)}"


def results_of(db, run_id):
    return dict(query(db, "SELECT metric, value FROM Results WHERE run_id=? AND is_hparam=0", run_id))


def python(folder, code, table):
    """The output of `code` run by a Python process in the checkout, recording in `table`."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env_recording_in(folder, table))
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_run_is_evaluated_exported_sampled_and_loaded_again_through_real_processes(tiny, tmp_path):
    folder = tiny.folder
    db = folder / "results" / "resultTable.db"
    assert run_in_process(folder, *tiny.args).returncode == 0
    trained = results_of(db, 1)
    test = {name: value for name, value in trained.items() if name.startswith("test_")}

    # --evaluate on the run's own data gives its test results exactly, recorded as a row of its own...
    done = run_main(folder, "--evaluate=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"run 2: the evaluation of run 1 ({tiny.experiment}, epoch "
                                  f"{trained['best_epoch']}) on data ")
    assert results_of(db, 2) == test and results_of(db, 1) == trained  # the run's own rows are untouched
    assert query(db, "SELECT E.status, E.tag, E.cli, L.evaluates FROM Experiments E JOIN TemplateLaunch L "
                     "USING (run_id) WHERE run_id=2") == [("finished", "evaluates run 1", "evaluates=1", 1)]
    # ...once: the same evaluation again is refused, a debug one runs, other data is another evaluation.
    assert_refused(run_main(folder, "--evaluate=1"), "run 1 was evaluated on this data already: run 2")
    assert run_main(folder, "--evaluate=1", "--debug").returncode == 0
    other = run_main(folder, "--evaluate=1", other_data(tiny, tmp_path))
    assert other.returncode == 0, other.stderr
    assert results_of(db, 3).keys() == test.keys() and results_of(db, 3) != test
    assert_refused(run_main(folder, "--evaluate=1", "--config.training.learning_rate=0.5"),
                   "only data keys may change", "drop --config.training.learning_rate")
    # An evaluation is shown with the run it scored, never as a run of a group.
    compared = run_main(folder, "--compare")
    assert f"{tiny.experiment} (reference): 1 run (1), seeds 0" in compared.stdout
    assert "  run 2 evaluated run 1 on data " in compared.stdout and "  run 3 evaluated run 1" in compared.stdout
    assert "skipped: an evaluation of run 1, it trained nothing" in run_main(folder, "--verify", "2").stdout
    assert_refused(run_main(folder, "--reproduce=2"), "run 2 is an evaluation of run 1")

    # --export writes what a colleague needs; load_run of the export and of the run give the same model.
    export = tmp_path / "export"
    exported = run_main(folder, "--export=1", f"--to={export}")
    assert exported.returncode == 0, exported.stderr
    assert sorted(path.name for path in export.iterdir()) == sorted(
        ["model.safetensors", "config.yml", "data.json", "run.json", "README.md"])
    from safetensors import safe_open

    with safe_open(str(export / "model.safetensors"), framework="pt") as weights:  # the library reads it
        best = torch.load(folder / "results" / "1" / "best.pt", weights_only=True)["model"]
        assert set(weights.keys()) <= set(best) and all(torch.equal(weights.get_tensor(k), best[k])
                                                        for k in weights.keys())
    card = (export / "README.md").read_text()
    assert f"# {tiny.experiment}, run 1" in card and "load_run(" in card and "| test_" in card
    assert run_main(folder, "--export=1", f"--to={export}").stdout.startswith(f"{export} already holds this export")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_refused(run_main(folder, "--export=1", f"--to={tmp_path / 'busy'}"), "holds something other")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    scored = python(folder, f"""
import json
import torch
from main import experiments, load_run
for source in (1, {str(export)!r}):
    run = load_run(source)
    metrics = experiments[run.experiment].evaluate(run.config, run.model, run.data, torch.device("cpu"))
    print(json.dumps({{"test_" + name: value for name, value in metrics.items()}}))
""", db)
    assert [json.loads(line) for line in scored.splitlines()] == [test, test]

    # --sample: the same arguments give the same text; an image classifier writes none.
    if tiny.experiment == "charlm":
        texts = [run_main(folder, "--sample=1", "--prompt=KING", "--length=80", "--seed=5").stdout for _ in "ab"]
        assert texts[0] == texts[1] and texts[0].startswith("KING") and len(texts[0]) == len("KING") + 80 + 1
        assert run_main(folder, "--sample=1", "--length=80", "--seed=6").stdout != texts[0]
        assert_refused(run_main(folder, "--sample=1", "--prompt=Königin"), "1 character(s) outside", "'ö'")
    else:
        assert_refused(run_main(folder, "--sample=1"), "declares no sampler")


def test_load_run_refuses_what_it_cannot_load_in_one_line(workdir, monkeypatch):
    db = workdir / "results" / "resultTable.db"
    with pytest.raises(UserError, match="there is no run table"):
        main.load_run(1, db)
    assert tiny_in_process(workdir).returncode == 0
    assert tiny_in_process(workdir, "--config.seed=5").returncode == 0
    assert main.load_run(1, workdir / "results").epoch == 2  # a results folder names its table

    # Another run's checkpoint in its folder.
    own = (workdir / "results" / "1" / "best.pt").read_bytes()
    shutil.copy(workdir / "results" / "2" / "best.pt", workdir / "results" / "1" / "best.pt")
    with pytest.raises(UserError, match="results/1/best.pt was written by another run"):
        main.load_run(1, db)
    (workdir / "results" / "1" / "best.pt").write_bytes(own)

    # A model whose code changed shape since the run.
    experiment = main.experiments["experiment1"]
    changed = experiment.model

    def wider(config, data, device):
        return changed({**config, "model": {**config["model"], "hidden": 32}}, data, device)

    monkeypatch.setattr(experiment, "model", wider)
    with pytest.raises(UserError, match="run 1's best.pt does not fit the model experiment1 builds now"):
        main.load_run(1, db)
    monkeypatch.setattr(experiment, "model", changed)

    # An experiment no longer registered.
    registry = main.experiments
    monkeypatch.setattr(main, "experiments", {"charlm": main.charlm})
    with pytest.raises(UserError, match="recorded by experiment 'experiment1', which main.py no longer registers"):
        main.load_run(1, db)
    monkeypatch.setattr(main, "experiments", registry)

    # A run that never finished an epoch.
    config = workdir / "configs" / "tiny.yml"
    config.write_text(config.read_text().replace("batch_size: 128", "batch_size: 32"))
    signal_at_step(monkeypatch, 3)
    assert tiny_in_process(workdir).returncode == 143
    with pytest.raises(UserError, match="run 3 has no best.pt in .*: it never finished an epoch, or resume it first"):
        main.load_run(3, db)
    assert main.load_run(3, db, last=True).epoch == 0  # its resume point, three steps in
    assert_refused(run_in_process(workdir, "--export=3", f"--to={workdir / 'out'}"), "run 3 has no best.pt")
    assert_refused(run_in_process(workdir, "--export=1"), "--export=1 needs --to=DIR")
    assert not (workdir / "out").exists()


def test_evaluating_data_the_model_cannot_take_is_refused_before_anything_is_recorded(workdir, tmp_path, text_root):
    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir).returncode == 0
    colour = make_image_folder(tmp_path / "colour", n_train=40, n_test=20, colour=True, sizes=(32,))
    before = query(db, "SELECT run_id FROM Experiments")
    assert_refused(run_in_process(workdir, "--evaluate=1", "--config.data.name=folder",
                                  f"--config.data.path={colour}"),
                   "the data is 3x32x32 images of 10 classes; the model was trained on 1x28x28 images of 10 classes")
    assert query(db, "SELECT run_id FROM Experiments") == before
    assert_refused(run_in_process(workdir, "--evaluate=7"), "there is no run 7")


def test_a_failed_runs_reason_is_its_tag_in_deepboard_and_a_resume_clears_it(workdir, monkeypatch):
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir).returncode == 130
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT status, tag FROM Experiments") == [("failed", "interrupted")]
    assert run_in_process(workdir, "--resume=1", "--verbose=0").returncode == 0
    assert query(db, "SELECT status, tag FROM Experiments") == [("finished", "")]
    # A run whose selected result is NaN finished, but diverged: so says its tag.
    diverged = tiny_in_process(workdir, "--config.training.learning_rate=1e30", "--config.training.schedule=constant",
                               "--watch=loss")
    assert diverged.returncode == 0, diverged.stderr
    assert query(db, "SELECT status, tag FROM Experiments WHERE run_id=2") == [("finished", "diverged")]


def test_experiment1_records_its_confusion_matrix_as_an_image(workdir):
    assert tiny_in_process(workdir).returncode == 0
    [(tag, kind, png)] = query(workdir / "results" / "resultTable.db", "SELECT tag, img_type, image FROM Images")
    assert (tag, kind) == ("confusion matrix", "IMAGE") and png.startswith(b"\x89PNG")
