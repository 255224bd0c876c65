"""--seeds and --compare end to end on tiny runs: groups of seeds, intervals, tests against a reference, formats."""
import json

import pytest

from helpers import (assert_refused, interrupt_after_first_epoch, query, run_in_process, run_main,
                     tiny_in_process, unprefixed)


@pytest.mark.slow  # seven trainings in process: the full suite's share
def test_seeds_record_one_run_each_and_the_same_command_completes_an_interrupted_study(workdir, monkeypatch):
    done = tiny_in_process(workdir, "--seeds=2")
    assert done.returncode == 0, done.stderr
    assert unprefixed(done.stdout)[0] == "seeds: 2 runs, seeds 0, 1"
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT metric, value FROM Results WHERE is_hparam=1 AND metric='seed' ORDER BY run_id") == [
        ("seed", 0), ("seed", 1)]
    interrupt_after_first_epoch(monkeypatch)  # Ctrl-C in the third seed's run stops the study
    assert tiny_in_process(workdir, "--seeds=3").returncode == 130
    again = tiny_in_process(workdir, "--seeds=4")
    assert again.returncode == 0
    assert again.stdout.count("skipped, finished as run") == 2 and "[3/4] seed=2: run 3, resumed" in again.stdout
    assert query(db, "SELECT run_id, status, hidden FROM Experiments ORDER BY run_id") == [
        (1, "finished", 0), (2, "finished", 0), (3, "finished", 0), (4, "finished", 0)]
    explicit = tiny_in_process(workdir, "--seeds=0,7", "--config.training.learning_rate=0.01")
    assert "seeds: 2 runs, seeds 0, 7" in explicit.stdout
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(6,)]


def test_seeds_refuse_what_makes_no_sense(workdir):
    assert_refused(tiny_in_process(workdir, "--seeds=x"), "--seeds takes a number of seeds")
    assert_refused(tiny_in_process(workdir, "--seeds=0"), "--seeds takes a number of seeds")
    assert_refused(tiny_in_process(workdir, "--seeds=2", "--debug"), "--seeds records every run")
    assert_refused(tiny_in_process(workdir, "--seeds=2", "--sweep", "--config.seed=1,2"), "drop the --config.seed")
    assert_refused(tiny_in_process(workdir, "--seeds=2", "--reproduce=1"), "--reproduce and --seeds")
    assert not (workdir / "results").exists()


def test_compare_groups_seeds_and_tests_each_group_against_the_reference(workdir):
    assert tiny_in_process(workdir, "--seeds=3").returncode == 0
    assert tiny_in_process(workdir, "--seeds=3", "--config.training.learning_rate=0.01").returncode == 0
    assert tiny_in_process(workdir, "--config.training.learning_rate=0.02").returncode == 0  # a group of one

    listed = run_in_process(workdir, "--compare", "--format=json")
    assert listed.returncode == 0, listed.stderr
    assert "note:" not in listed.stderr  # each group is compared with its own config file (tiny.yml) as it is
    groups = json.loads(listed.stdout)
    assert [group["runs"] for group in groups] == [[1, 2, 3], [4, 5, 6], [7]]
    reference, faster, single = groups
    assert reference["seeds"] == [0, 1, 2] and reference["config"] == {} and "vs_reference" not in reference
    assert faster["config"] == {"training.learning_rate": 0.01}
    accuracy = faster["metrics"]["test_accuracy"]
    assert accuracy["n"] == 3 and accuracy["ci95"][0] < accuracy["mean"] < accuracy["ci95"][1]
    versus = faster["vs_reference"]["test_accuracy"]
    assert versus["test"] == "paired t" and set(versus) == {"diff", "ci95", "p_value", "test", "n", "no_test"}
    assert versus["diff"] == pytest.approx(accuracy["mean"] - reference["metrics"]["test_accuracy"]["mean"])
    assert single["metrics"]["test_accuracy"]["ci95"] is None and single["vs_reference"]["test_accuracy"] is None

    table = run_in_process(workdir, "--compare").stdout
    assert "experiment1 (reference): 3 runs (1, 2, 3), seeds 0, 1, 2" in table
    assert "experiment1 training.learning_rate=0.01: 3 runs (4, 5, 6), seeds 0, 1, 2" in table
    assert "no interval (1 run)" in table and ("test_accuracy: too few runs to test a difference: this group has 1 "
                                               "(run 7) and each group needs 2; add seeds with python ") in table
    # the command recorded with run 7 (in process, its first word is the test runner's), with seeds added
    assert ("--experiment=experiment1 --config=configs/tiny.yml --verbose=0 --config.training.learning_rate=0.02 "
            "--seeds=3") in table and single["needs_seeds"]["runs"] == [7]
    sentences = [line.strip() for line in table.splitlines() if line.strip().startswith("test_accuracy: ")]
    assert any(word in sentences[0] for word in ("better by", "worse by", "no detectable difference with 3 seeds"))
    assert "paired t over 3 seeds" in sentences[0]

    markdown = run_in_process(workdir, "--compare", "4", "--format=markdown").stdout
    assert markdown.startswith("### experiment1 (reference)") and "| test_accuracy | 3 |" in markdown
    assert "### experiment1 training.learning_rate=0.01" in markdown and "run 7" not in markdown

    against = json.loads(run_in_process(workdir, "--compare", "--against=4", "--format=json").stdout)
    assert [group["runs"] for group in against] == [[4, 5, 6], [1, 2, 3], [7]]
    by_config = json.loads(run_in_process(workdir, "--compare", "--experiment=experiment1", "--config=configs/tiny.yml",
                                          "--config.training.learning_rate=0.01", "--format=json").stdout)
    assert [group["runs"] for group in by_config] == [[1, 2, 3], [4, 5, 6]]
    # A command that only reads the table needs no data: the filter's group is found without the data's fingerprint.
    gone = workdir / "no data here"
    offline = run_in_process(workdir, "--compare", "--experiment=experiment1", "--config=configs/tiny.yml",
                             f"--config.data.path={gone}", "--config.data.download=true", "--format=json")
    assert offline.returncode == 0, offline.stderr
    assert [group["runs"] for group in json.loads(offline.stdout)] == [[1, 2, 3]] and not gone.exists()


@pytest.mark.slow
def test_the_baseline_config_is_the_default_reference(workdir, code_copy):
    # A template whose baseline (configs/config.yml) is the tiny config, so that its runs take seconds.
    (code_copy / "configs" / "config.yml").write_text((workdir / "configs" / "tiny.yml").read_text())
    launch = ["--experiment=experiment1", f"--config={code_copy / 'configs' / 'config.yml'}", "--verbose=0"]
    main = code_copy / "main.py"
    assert run_main(workdir, *launch, "--seeds=2", "--config.model.hidden=8", main=main).returncode == 0
    assert run_main(workdir, *launch, "--seeds=2", main=main).returncode == 0
    compared = run_main(workdir, "--compare", "--format=json", main=main)
    assert compared.returncode == 0 and "note" not in compared.stderr, compared.stderr
    groups = json.loads(compared.stdout)
    assert [(group["runs"], group["reference"]) for group in groups] == [([3, 4], True), ([1, 2], False)]
    assert groups[1]["config"] == {"model.hidden": 8}
    assert_refused(run_main(workdir, "--compare", "9", main=main), "run 9 is not a finished, visible run")
    assert_refused(run_main(workdir, "--format=json", main=main), "--format only applies to --compare")


def test_a_group_is_compared_with_its_own_config_file_not_another(workdir):
    (workdir / "configs" / "variant.yml").write_text("extends: tiny.yml\ntraining:\n  num_epochs: 1\n")
    variant = ("--experiment=experiment1", "--config=configs/variant.yml", "--verbose=0")
    assert run_in_process(workdir, *variant, "--seeds=2").returncode == 0
    assert run_in_process(workdir, *variant, "--seeds=2", "--config.training.learning_rate=0.02").returncode == 0
    assert tiny_in_process(workdir).returncode == 0  # another file: its own reference, never variant's
    groups = json.loads(run_in_process(workdir, "--compare", "--format=json").stdout)
    assert [(group["runs"], group["reference"]) for group in groups] == [([1, 2], True), ([5], True), ([3, 4], False)]
    assert groups[2]["config"] == {"training.learning_rate": 0.02}


def test_what_compare_prints_of_a_table_never_reaches_the_terminal_as_escape_sequences(workdir):
    hostile = "\x1b]0;owned\x07\x1b[2J"  # a terminal title and a clear screen, in a comment
    assert tiny_in_process(workdir, f"--comment=try {hostile}").returncode == 0
    compared = run_in_process(workdir, "--compare")
    assert compared.returncode == 0, compared.stderr
    assert "\x1b" not in compared.stdout and "\\x1b]0;owned\\x07\\x1b[2J" in compared.stdout


@pytest.mark.slow
@pytest.mark.fault("run tables")
@pytest.mark.parametrize("damage, what", [
    ("UPDATE TemplateLaunch SET flags='{not json' WHERE run_id=2", "its flags cannot be read"),
    ("UPDATE TemplateLaunch SET measures='[1, 2' WHERE run_id=2", "its measures cannot be read"),
    ("UPDATE TemplateLaunch SET group_hash=NULL WHERE run_id=2; "
     "UPDATE ConfigFile SET file_content='a: [unclosed' WHERE run_id=2", "its config cannot be read"),
    ("UPDATE Results SET value='abc' WHERE run_id=2 AND metric='test_accuracy'",
     "its test_accuracy is 'abc', not a number"),
    ("UPDATE Logs SET value=x'00ff' WHERE run_id=2 AND label='loss' AND split='val'",
     "its val/loss at step 4 is 2 bytes, not a number")])
def test_one_damaged_run_is_named_and_the_rest_of_the_table_compares_verifies_and_reproduces(workdir, damage, what):
    assert tiny_in_process(workdir).returncode == 0
    assert tiny_in_process(workdir, "--config.seed=1").returncode == 0
    assert tiny_in_process(workdir, "--config.seed=2").returncode == 0
    table = workdir / "results" / "resultTable.db"
    for statement in damage.split("; "):
        query(table, statement)
    compared = run_in_process(workdir, "--compare")
    assert compared.returncode == 0 and "Traceback" not in compared.stderr, compared.stderr
    if "Logs" in damage:  # its results still read: --compare counts it, the points it does not read
        assert "3 runs (1, 2, 3)" in compared.stdout
    else:
        assert "note: run 2 left out: no config, record or results that can be read" in compared.stderr
        assert "2 runs (1, 3)" in compared.stdout
    verified = run_in_process(workdir, "--verify")
    assert verified.returncode == 0 and "Traceback" not in verified.stderr, verified.stderr
    assert f"run 2: skipped: run 2 in {table} is damaged ({what}" in verified.stdout
    assert "all 2 replayed runs match their record (1 skipped)" in verified.stdout
    assert_refused(run_in_process(workdir, "--reproduce=2"), f"run 2 in {table} is damaged ({what}")
    assert run_in_process(workdir, "--reproduce=3").returncode == 0
