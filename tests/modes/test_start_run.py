"""start_run: the one way every mode starts a run, called from Python as a notebook would."""
import shlex

import pytest

from helpers import assert_refused, query, table_of, tiny_in_process
from main import make_project
from modes.launch import RunDescription
from modes.run import claim_shared_run, start_run
from utils.config import load_config
from utils.errors import UserError


def test_a_run_started_from_python_is_the_run_its_command_starts(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("RESULT_TABLE", str(table_of(workdir)))
    config = load_config("configs/tiny.yml")
    config["training"]["learning_rate"] = 0.02
    description = RunDescription("experiment1", config, flags={"verbose": 0}, seed=3)

    outcome = start_run(make_project(), description, config_path="configs/tiny.yml")
    assert (outcome.state, outcome.ran, outcome.run_id, outcome.code) == ("finished", True, 1, 0)
    assert 0 < outcome.results["test_accuracy"] <= 1
    db = workdir / "results" / "resultTable.db"
    [(command, text)] = query(db, "SELECT command, file_content FROM Experiments E JOIN ConfigFile C "
                                  "ON C.run_id = E.run_id")
    assert "seed: 3" in text and "learning_rate: 0.02" in text

    # The command recorded with it is the command line of the same run: the front door refuses it as a duplicate.
    args = shlex.split(command)[1:]
    assert args[:2] == ["--experiment=experiment1", "--config=configs/tiny.yml"]
    assert_refused(tiny_in_process(workdir, *args[2:]), "run 1")
    with pytest.raises(UserError, match="run 1"):
        start_run(make_project(), description, config_path="configs/tiny.yml")

    # Shared, as --seeds, --sweep and --search start runs: the finished run's results, nothing trained again.
    again = claim_shared_run(make_project(), description, config_path="configs/tiny.yml")
    assert (again.state, again.ran, again.run_id, again.results) == ("finished", False, 1, outcome.results)
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(1,)]


def test_a_description_with_a_flag_main_does_not_declare_is_refused(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("RESULT_TABLE", str(table_of(workdir)))
    description = RunDescription("experiment1", load_config("configs/tiny.yml"), flags={"mixup": 0.2})
    with pytest.raises(UserError, match="'mixup' is not an experiment flag"):
        start_run(make_project(), description)
    assert not (workdir / "results" / "resultTable.db").exists()
