"""A run's identity is what it computed: where-keys and null keys left out, the data's content in, flags a user adds,
variant configs, and tables recorded before these rules."""
import contextlib
import dataclasses
import hashlib
import os
import shutil

import pytest
import torch
import yaml

import main
from helpers import (REPO, assert_refused, interrupt_after_first_epoch, make_mnist_folder, query, recorded_numbers,
                     run_in_process, table_of, tiny_data, tiny_in_process, tiny_version)
from utils.config import load_config
from utils.errors import UserError
from utils.runtable.readers import runs_frame


@pytest.fixture
def db(workdir):
    assert tiny_in_process(workdir).returncode == 0
    return workdir / "results" / "resultTable.db"


def edit_tiny(workdir, change):
    tiny = workdir / "configs" / "tiny.yml"
    config = yaml.safe_load(tiny.read_text())
    change(config)
    tiny.write_text(yaml.safe_dump(config))


def test_the_same_data_in_another_folder_is_the_same_run_and_other_data_is_another(workdir, db, mnist_root, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(mnist_root, moved)
    assert_refused(tiny_in_process(workdir, f"--config.data.path={moved}"), "run 1")
    assert_refused(tiny_in_process(workdir, "--config.data.download=true"), "run 1")  # how, not what

    # Unzipped, the content is the same: still the same run.
    for path in (moved / "MNIST" / "raw").glob("*.gz"):
        import gzip
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    assert_refused(tiny_in_process(workdir, f"--config.data.path={moved}"), "run 1")

    other = make_mnist_folder(tmp_path / "other", n_train=700)  # another training set
    done = tiny_in_process(workdir, f"--config.data.path={other}")
    assert done.returncode == 0, done.stderr
    fingerprints = query(db, "SELECT run_id, data_fingerprint FROM TemplateLaunch ORDER BY run_id")
    assert fingerprints[0][1] != fingerprints[1][1] and len(fingerprints[0][1]) == 64


def test_a_key_set_to_null_is_not_set_and_a_yaml_gaining_a_key_warns_once(workdir, db):
    edit_tiny(workdir, lambda config: config["training"].update(mixup=None))
    assert_refused(tiny_in_process(workdir), "run 1")  # a feature added as null keeps every identity
    done = tiny_in_process(workdir, "--config.training.mixup=0.2")  # null takes any type; a value is a new run
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    hparams = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=2 AND is_hparam=1"))
    assert hparams["training.mixup"] == 0.2

    edit_tiny(workdir, lambda config: config["model"].update(width_multiplier=1))
    first = tiny_in_process(workdir)
    assert first.returncode == 0
    assert first.stderr.count("warning: configs/tiny.yml sets model.width_multiplier, which no recorded run of "
                              "experiment1 has") == 1
    second = tiny_in_process(workdir, "--config.seed=5")
    assert second.returncode == 0 and "warning" not in second.stderr  # once: run 3 has the key now


def test_a_flag_added_to_main_reaches_the_experiment_and_counts_only_away_from_its_default(workdir, db, monkeypatch):
    from modes.flags import Flag, Role

    received = []

    def experiment1(config, run, device, world, verbose=1, mixup=0.0):
        received.append(mixup)
        return main.experiment1(config, run, device, world, verbose=verbose)

    # experiment1's declaration (its check_config and data_fingerprint apply), taking the new flag too
    monkeypatch.setattr(main, "EXPERIMENT_FLAGS", (*main.EXPERIMENT_FLAGS, Flag(
        "--mixup", "mixup's alpha (0: none)", Role.IDENTITY, options=dict(type=float, default=0.0))))
    monkeypatch.setitem(main.experiments, "experiment1",
                        dataclasses.replace(main.experiment1, function=experiment1, flags=("verbose", "mixup")))

    assert_refused(tiny_in_process(workdir), "run 1")  # adding a flag with a default keeps every identity
    assert tiny_in_process(workdir, "--mixup=0.2").returncode == 0
    assert received == [0.2]
    assert query(db, "SELECT run_id, cli FROM Experiments ORDER BY run_id") == [(1, ""), (2, "mixup=0.2")]
    assert dict(query(db, "SELECT metric, value FROM Results WHERE run_id=2 AND is_hparam=1"))["mixup"] == 0.2

    monkeypatch.setitem(main.experiments, "experiment1", main.experiment1)  # an experiment without the parameter
    assert_refused(tiny_in_process(workdir, "--mixup=0.3"), "experiment experiment1 does not take --mixup",
                   "add 'mixup' to the flags of its @declare(...)")


def test_a_variant_holds_only_its_changes_and_means_the_same_as_the_full_file(workdir, db):
    configs = workdir / "configs"
    (configs / "variant.yml").write_text("extends: tiny.yml\ntraining:\n  num_epochs: 1\n")
    full = yaml.safe_load((configs / "tiny.yml").read_text())
    full["training"]["num_epochs"] = 1
    (configs / "full.yml").write_text(yaml.safe_dump(full))
    assert load_config(configs / "variant.yml") == full

    assert run_in_process(workdir, "--experiment=experiment1", "--config=configs/variant.yml",
                          "--verbose=0").returncode == 0
    assert_refused(run_in_process(workdir, "--experiment=experiment1", "--config=configs/full.yml"), "run 2")
    printed = run_in_process(workdir, "--config=configs/variant.yml", "--print-config", "--config.model.hidden=8")
    assert yaml.safe_load(printed.stdout) == {**full, "model": {**full["model"], "hidden": 8}}
    assert "extends" not in printed.stdout

    (configs / "chain.yml").write_text("extends: variant.yml\nseed: 4\n")
    assert load_config(configs / "chain.yml") == {**full, "seed": 4}
    assert_refused(run_in_process(workdir, "--config=configs/chain.yml", "--print-config", "--config.model.hiden=8"),
                   "unknown config key 'model.hiden'")
    (configs / "a.yml").write_text("extends: b.yml\n")
    (configs / "b.yml").write_text("extends: a.yml\n")
    with pytest.raises(UserError, match="extend each other in a loop"):
        load_config(configs / "a.yml")
    (configs / "orphan.yml").write_text("extends: gone.yml\n")
    assert_refused(run_in_process(workdir, "--config=configs/orphan.yml", "--print-config"),
                   "extends", "gone.yml, which does not exist")

    # A variant in a sub-folder of configs/ extends the configs above it; nothing outside configs/ is pulled in.
    (configs / "variants").mkdir()
    (configs / "variants" / "deeper.yml").write_text("extends: ../variant.yml\n")
    assert load_config(configs / "variants" / "deeper.yml") == full
    (workdir / "secret.yml").write_text("token: 1234\n")
    for target in ("../secret.yml", "/etc/passwd", str(workdir / "secret.yml"), "notes.txt"):
        (configs / "thief.yml").write_text(f"extends: {target}\n")
        (configs / "notes.txt").write_text("training: {}\n")
        assert_refused(run_in_process(workdir, "--config=configs/thief.yml", "--print-config"),
                       "is not a .yml or .yaml file in", "a config extends another config of the same project")
    # The checkout's own configs may be extended from anywhere: a variant of the baseline kept elsewhere.
    (workdir / "mine.yml").write_text(f"extends: {REPO / 'configs' / 'config.yml'}\nseed: 7\n")
    assert load_config(workdir / "mine.yml")["seed"] == 7


def test_the_shipped_fast_config_is_a_variant_of_the_baseline():
    fast = load_config(REPO / "configs" / "fast.yml")
    base = load_config(REPO / "configs" / "config.yml")
    assert "extends: config.yml" in (REPO / "configs" / "fast.yml").read_text()
    assert fast.keys() == base.keys() and fast != base


def test_resume_and_reproduce_take_the_data_from_where_it_lies_now(workdir, mnist_root, tmp_path, monkeypatch):
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir).returncode == 130
    moved = tmp_path / "moved"
    shutil.copytree(mnist_root, moved)
    other = make_mnist_folder(tmp_path / "other", n_train=700)

    assert_refused(run_in_process(workdir, "--resume=1", f"--config.data.path={other}"),
                   "not the data run 1 was trained on")
    assert_refused(run_in_process(workdir, "--resume=1", "--config.seed=3"), "drop --config.seed")
    resumed = run_in_process(workdir, "--resume=1", f"--config.data.path={moved}", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    reproduced = run_in_process(workdir, "--reproduce=1", f"--config.data.path={moved}", "--verbose=0")
    assert reproduced.returncode == 0 and "run 1 reproduced" in reproduced.stdout, reproduced.stdout
    assert "warning" not in reproduced.stderr
    differs = run_in_process(workdir, "--reproduce=1", f"--config.data.path={other}", "--verbose=0")
    assert differs.returncode == 1 and "the data is not what run 1 was trained on" in differs.stderr


def test_a_table_recorded_before_these_rules_still_lists_reproduces_and_resumes(workdir, db, monkeypatch):
    interrupt_after_first_epoch(monkeypatch)
    assert tiny_in_process(workdir, "--config.seed=2").returncode == 130
    # What an older template wrote: the hash of the whole config text, no data fingerprint, no key list.
    for run_id, text in query(db, "SELECT run_id, file_content FROM ConfigFile"):
        query(db, "UPDATE Experiments SET config_hash=? WHERE run_id=?", hashlib.sha256(text.encode()).hexdigest(),
              run_id)
    for column in ("data_fingerprint", "config_keys"):
        query(db, f"ALTER TABLE TemplateLaunch DROP COLUMN {column}")
    for checkpoint in (workdir / "results" / "2").glob("*.pt"):  # nor did its checkpoints say whose they were
        state = torch.load(checkpoint, weights_only=True)
        del state["owner"]
        torch.save(state, checkpoint)

    assert list(runs_frame(db).index) == [1, 2]
    reproduced = run_in_process(workdir, "--reproduce=1", "--verbose=0")
    assert reproduced.returncode == 0 and "run 1 reproduced" in reproduced.stdout, reproduced.stdout + reproduced.stderr
    assert run_in_process(workdir, "--resume=2", "--verbose=0").returncode == 0
    # Its runs were hashed another way: the same command is a new run now (the README says so).
    again = tiny_in_process(workdir)
    assert again.returncode == 0, again.stderr
    assert query(db, "SELECT run_id, status FROM Experiments WHERE run_id > 0 ORDER BY run_id") == [
        (1, "finished"), (2, "finished"), (3, "finished")]
    assert_refused(tiny_in_process(workdir), "run 3")


def test_cpu_is_part_of_the_identity_and_the_config_files_name_and_place_are_not(workdir, db):
    # The same YAML under another name, in another folder, and named by an absolute path: the same run.
    (workdir / "elsewhere").mkdir()
    shutil.copy(workdir / "configs" / "tiny.yml", workdir / "elsewhere" / "renamed.yml")
    for path in ("elsewhere/renamed.yml", str(workdir / "configs" / "tiny.yml")):
        assert_refused(run_in_process(workdir, "--experiment=experiment1", f"--config={path}", "--verbose=0"),
                       "already has this config")
    # --cpu may change the numbers (another device's kernels): another run, and so is its next launch refused.
    assert tiny_in_process(workdir, "--cpu").returncode == 0
    assert query(db, "SELECT run_id, cli FROM Experiments ORDER BY run_id") == [(1, ""), (2, "cpu=True")]
    assert_refused(tiny_in_process(workdir, "--cpu"), "already has this config", "run 2")


def own_data(kind, folder):
    """(data.path of fresh data of `kind` written under `folder`, the file in it that an edit changes)."""
    if kind == "images":
        root = make_mnist_folder(folder, gz=False)
        return root, root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path = tiny_data(kind, folder)
    return path, path / "tinyshakespeare" / "input.txt" if kind == "text" else path


def edited_in_place(path):
    """Change one byte in the middle of `path` into another of its kind (a letter, a digit, a pixel), keeping its
    size: the content changes, the format stays valid."""
    content = bytearray(path.read_bytes())
    for index in range(len(content) // 2, len(content)):
        for kind in (b"0123456789", b"abcdefghijklmnopqrstuvwxyz"):
            if content[index] in kind:
                content[index] = kind[(kind.index(content[index]) + 1) % len(kind)]
                path.write_bytes(bytes(content))
                return
    content[-1] ^= 0xFF  # an image's last pixel
    path.write_bytes(bytes(content))


KINDS = {"experiment1": "images", "charlm": "text", "tabular": "table"}


@contextlib.contextmanager
def replaced_once_fingerprinted(monkeypatch, dataset, changed):
    """Within it, `changed` is edited right after `dataset` (a class) takes its fingerprint: another process replacing
    the file in the same instant."""
    fingerprint = dataset.fingerprint

    def fingerprint_then_replaced(self, cfg, cache_path=None):
        found = fingerprint(self, cfg, cache_path)
        edited_in_place(changed)
        return found

    monkeypatch.setattr(dataset, "fingerprint", fingerprint_then_replaced)
    try:
        yield
    finally:
        monkeypatch.setattr(dataset, "fingerprint", fingerprint)


@pytest.mark.fault("data identity")
def test_a_same_size_edit_with_its_modification_time_restored_is_other_data(tiny, tmp_path):
    data, changed = own_data(KINDS[tiny.experiment], tmp_path / "mine")
    launch = (*tiny.args, f"--config.data.path={data}")
    assert run_in_process(tiny.folder, *launch).returncode == 0
    assert_refused(run_in_process(tiny.folder, *launch), "run 1")  # the file's hash is cached now
    before = changed.stat()
    edited_in_place(changed)  # as `cp -p`, `rsync -t` or `touch -r` leave it: same size, same modification time
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert changed.stat().st_size == before.st_size and changed.stat().st_mtime_ns == before.st_mtime_ns
    again = run_in_process(tiny.folder, *launch)
    assert again.returncode == 0, again.stderr  # other data: a new run, not a duplicate of run 1
    [(first,), (second,)] = query(table_of(tiny.folder), "SELECT data_fingerprint FROM TemplateLaunch ORDER BY run_id")
    assert first != second


@pytest.mark.fault("data identity")
@pytest.mark.parametrize("kind", ["text", "table"])
def test_a_file_replaced_while_a_run_starts_is_not_what_it_records_having_trained_on(kind, tmp_path, monkeypatch):
    from data.table import CsvTable
    from data.text import TextCorpus

    experiment = {"text": "charlm", "table": "tabular"}[kind]
    folder = tmp_path / "work"
    (folder / "configs").mkdir(parents=True)
    data, changed = own_data(kind, tmp_path / "mine")
    (folder / "configs" / "tiny.yml").write_text(yaml.safe_dump(tiny_version(
        yaml.safe_load((REPO / "configs" / f"{experiment}.yml").read_text()), kind, data)))
    launch = (f"--experiment={experiment}", "--config=configs/tiny.yml", "--verbose=0")
    original = changed.read_bytes()

    with replaced_once_fingerprinted(monkeypatch, TextCorpus if kind == "text" else CsvTable, changed):
        assert run_in_process(folder, *launch).returncode == 0
    edited = changed.read_bytes()
    changed.write_bytes(original)
    clean = run_in_process(folder, *launch, table=tmp_path / "clean" / "resultTable.db")
    assert clean.returncode == 0, clean.stderr
    # It trained on what it hashed: the clean run's numbers, under the clean run's data fingerprint.
    table = table_of(folder)
    assert recorded_numbers(table, 1) == recorded_numbers(tmp_path / "clean" / "resultTable.db", 1)
    assert query(table, "SELECT data_fingerprint FROM TemplateLaunch") == query(
        tmp_path / "clean" / "resultTable.db", "SELECT data_fingerprint FROM TemplateLaunch")
    assert_refused(run_in_process(folder, *launch), "run 1")  # the original: the run that trained on it
    changed.write_bytes(edited)  # what replaced it: other data, a new run
    assert run_in_process(folder, *launch).returncode == 0


@pytest.mark.fault("data identity")
def test_idx_files_replaced_while_a_run_starts_stop_it_before_it_trains_and_a_launch_again_runs(workdir, tmp_path,
                                                                                              monkeypatch):
    from data.idx import IdxDataset

    data, changed = own_data("images", tmp_path / "mine")
    launch = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", f"--config.data.path={data}")
    with replaced_once_fingerprinted(monkeypatch, IdxDataset, changed):
        stopped = run_in_process(workdir, *launch)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr
    assert f"the MNIST files in {changed.parent} changed while this run started" in stopped.stderr
    table = table_of(workdir)
    assert query(table, "SELECT status FROM Experiments") == [("failed",)]
    assert query(table, "SELECT COUNT(*) FROM Logs") == [(0,)]  # not a step on data other than its identity's
    again = run_in_process(workdir, *launch)  # the files as they are now: their own identity, a run
    assert again.returncode == 0, again.stderr
    [(_, first), (_, second)] = query(table, "SELECT run_id, data_fingerprint FROM TemplateLaunch ORDER BY run_id")
    assert first != second
