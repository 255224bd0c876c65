"""--search: Optuna proposes over the overrides' ranges and choices, every trial is a recorded run ranked by its
validation metric, the same command continues the study, and a malformed space is refused before anything is
recorded."""
import json
import re

import pytest

from helpers import assert_refused, query, tiny_in_process

SPACE = ("--config.training.learning_rate=log:1e-3..1e-1", "--config.model.dropout=0.0,0.2")


def proposals(output):
    return re.findall(r"^\[trial (\d+)\] (training\.\S+ model\.\S+)$", output, flags=re.M)


def test_a_study_records_every_trial_as_a_run_ranks_by_validation_and_continues(workdir, tmp_path):
    db = workdir / "results" / "resultTable.db"
    first = tiny_in_process(workdir, "--search=3", *SPACE)
    assert first.returncode == 0, first.stderr
    proposed = proposals(first.stdout)
    assert [number for number, _ in proposed] == ["0", "1", "2"]
    assert query(db, "SELECT COUNT(*) FROM Experiments WHERE status='finished'") == [(3,)]
    assert "top 3 of 3 trials by best_val_accuracy (validation):" in first.stdout
    assert "held-out test accuracy of the best trial (for reporting the choice, not for making it)" in first.stdout
    assert "--seeds=5" in first.stdout and "python main.py --compare" in first.stdout
    # Each run says which study and trial it was (beside its identity, not part of it).
    texts = query(db, "SELECT fragment FROM Fragments WHERE tag='search' ORDER BY run_id")
    assert [json.loads(text)["trial"] for (text,) in texts] == [0, 1, 2]
    assert (workdir / "results" / "search.journal").exists()

    again = tiny_in_process(workdir, "--search=3", *SPACE)  # complete: nothing more to run
    assert again.returncode == 0 and proposals(again.stdout) == [] and "3 of 3 trials complete" in again.stdout
    more = tiny_in_process(workdir, "--search=5", *SPACE)
    assert [number for number, _ in proposals(more.stdout)] == ["3", "4"]
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(5,)]

    # On an empty table, the same command proposes the same trials in the same order.
    other = tmp_path / "other"
    (other / "configs").mkdir(parents=True)
    (other / "configs" / "tiny.yml").write_text((workdir / "configs" / "tiny.yml").read_text())
    assert proposals(tiny_in_process(other, "--search=3", *SPACE).stdout) == proposed


def test_with_seeds_a_trial_is_a_group_whose_mean_is_its_value_and_finished_runs_are_reused(workdir):
    db = workdir / "results" / "resultTable.db"
    assert tiny_in_process(workdir, "--search=2", *SPACE).returncode == 0
    grouped = tiny_in_process(workdir, "--search=2", "--seeds=2", *SPACE)
    assert grouped.returncode == 0, grouped.stderr
    assert grouped.stdout.count("already finished with this config: its value is reused") == 2
    assert re.search(r"trial \d: best_val_accuracy [0-9.]+ \(95% CI", grouped.stdout)
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(4,)]  # 2 trials x 2 seeds, seed 0 of each reused
    runs = re.findall(r"^\[trial \d\] best_val_accuracy ([0-9.]+) \(runs (\d+), (\d+)\)$", grouped.stdout, re.M)
    for value, *run_ids in runs:
        values = [query(db, "SELECT value FROM Results WHERE run_id=? AND metric='best_val_accuracy'", int(r))[0][0]
                  for r in run_ids]
        assert abs(float(value) - sum(values) / 2) < 1e-4


def test_a_space_file_adds_ranges_and_choices(workdir):
    (workdir / "space.yml").write_text("training.learning_rate: log:1e-3..1e-1\nmodel.dropout: [0.0, 0.2]\n")
    done = tiny_in_process(workdir, "--search=2", "--search-space=space.yml")
    assert done.returncode == 0, done.stderr
    assert len(proposals(done.stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (("--search=2", "--config.training.learning_rate=log:0..1"), "must lie above 0"),
    (("--search=2", "--config.training.learning_rate=0.1..0.01"), "is empty"),
    (("--search=2", "--config.training.learning_rate=0.1..x"), "cannot read '0.1..x' as a range"),
    (("--search=2", "--config.training.optimizer=0..1"), "holds a string ('adamw'), which has no range"),
    (("--search=2", "--config.training.num_epochs=1..2.5"), "its range needs integer ends"),
    (("--search=2", "--config.model.dropout=0.0,zero"), "'model.dropout' expects a number"),
    (("--search=2", "--config.training.learning_rate=0.01"), "--search needs a space"),
    (("--search=0", *SPACE), "N >= 1 trials"),
    (("--search=2", "--config.model.dropout=0.0..0.3", "--config.model.dropout=0.1,0.2"), "is given twice"),
    (("--search=2", "--config.model.kernel_size=3..20"), "shrink the 28x28 images to nothing"),
    (("--search=2", "--search-space=nowhere.yml", *SPACE), "cannot read the search space nowhere.yml"),
    (("--search=2", "--sweep", *SPACE), "do different things"),
    (("--search=2", "--debug", *SPACE), "drop --debug"),
    (("--search-space=x.yml",), "--search-space only applies to --search"),
])
def test_a_malformed_space_is_refused_in_one_line_with_nothing_recorded(workdir, args, message):
    assert_refused(tiny_in_process(workdir, *args), message)
    assert not (workdir / "results").exists()
