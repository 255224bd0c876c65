"""Commands around the runs: --new-experiment, --list and --print-config; none of them touches the run table."""
import pytest
import yaml

from helpers import assert_refused, query, run_main, run_tiny


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and ".git" not in path.parts}


def test_new_experiment_creates_code_lab_book_and_registry_line_and_runs(code_copy, workdir):
    done = run_main(code_copy, "--new-experiment=wider_net", main=code_copy / "main.py")
    assert done.returncode == 0, done.stderr
    assert "wrote experiments/wider_net.py" in done.stdout and "wrote experiments/wider_net.md" in done.stdout
    code = (code_copy / "experiments" / "wider_net.py").read_text()
    assert "def wider_net(config, run, device" in code and code.count("experiment1") == 1  # "copied from experiment1"
    assert (code_copy / "experiments" / "wider_net.md").read_text().startswith("# wider_net: ")
    main = (code_copy / "main.py").read_text()
    assert "from experiments.wider_net import wider_net\n" in main
    assert 'experiments = {"experiment1": experiment1, "wider_net": wider_net}' in main

    listed = run_main(code_copy, "--list", main=code_copy / "main.py")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["experiment1", "wider_net"]
    assert "wider_net: one line that says what this experiment tries" in listed.stdout

    ran = run_main(workdir, "--experiment=wider_net", "--config=configs/tiny.yml", "--verbose=0",
                   main=code_copy / "main.py")
    assert ran.returncode == 0, ran.stderr
    assert query(workdir / "results" / "resultTable.db", "SELECT experiment, status FROM Experiments") == [
        ("wider_net", "finished")]


@pytest.mark.parametrize("name, message", [
    ("experiment1", "exists already"),
    ("TEMPLATE", "exists already"),
    ("2nd_try", "cannot name an experiment"),
    ("my-exp", "cannot name an experiment"),
    ("class", "cannot name an experiment"),
])
def test_new_experiment_refuses_taken_or_invalid_names_and_changes_nothing(code_copy, name, message):
    before = snapshot(code_copy)
    assert_refused(run_main(code_copy, f"--new-experiment={name}", main=code_copy / "main.py"), message)
    assert snapshot(code_copy) == before


def test_new_experiment_refuses_a_lab_book_or_file_left_behind(code_copy):
    (code_copy / "experiments" / "draft.md").write_text("# draft\n")
    before = snapshot(code_copy)
    assert_refused(run_main(code_copy, "--new-experiment=draft", main=code_copy / "main.py"),
                   "experiments/draft.md")
    assert snapshot(code_copy) == before


def test_print_config_and_list_leave_the_run_table_alone(workdir):
    printed = run_main(workdir, "--config=configs/tiny.yml", "--print-config", "--config.training.num_epochs=9")
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["training"]["num_epochs"] == 9 and config["model"]["channels"] == [4, 8]
    assert run_main(workdir, "--list").stdout.startswith("experiment1")
    assert_refused(run_main(workdir, "--config=configs/tiny.yml", "--print-config", "--config.training.x=1"),
                   "unknown config key")
    assert not (workdir / "results").exists()
    assert run_tiny(workdir).returncode == 0  # and a real run afterwards is run 1
    assert query(workdir / "results" / "resultTable.db", "SELECT run_id FROM Experiments") == [(1,)]
