"""Commands around the runs: --new-experiment, --list and --print-config; none of them touches the run table."""
import signal
import subprocess
import sys

import pytest
import yaml

from helpers import (assert_refused, logged_epochs, make_mnist_folder, query, recorded_numbers, run_in_process,
                     run_main, tiny_config, tiny_in_process, wait_for)


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and ".git" not in path.parts}


@pytest.mark.slow
def test_new_experiment_creates_code_lab_book_and_registry_line_and_runs(code_copy, workdir, spawn):
    registered = [line.split()[0] for line in run_main(code_copy, "--list", main=code_copy / "main.py")
                  .stdout.split("datasets")[0].splitlines()[1:]]
    done = run_main(code_copy, "--new-experiment=wider_net", main=code_copy / "main.py")
    assert done.returncode == 0, done.stderr
    assert "wrote experiments/wider_net.py" in done.stdout and "wrote experiments/wider_net.md" in done.stdout
    code = (code_copy / "experiments" / "wider_net.py").read_text()
    assert "def wider_net(config, run, device" in code and code.count("experiment1") == 1  # "copied from experiment1"
    assert (code_copy / "experiments" / "wider_net.md").read_text().startswith("# wider_net: ")
    main = (code_copy / "main.py").read_text()
    assert "from experiments.wider_net import wider_net\n" in main
    entries = ", ".join(f'"{name}": {name}' for name in [*registered, "wider_net"])
    assert f"experiments = {{{entries}}}" in main
    assert done.stdout.splitlines()[-1] == (
        "edit experiments/wider_net.py and configs/wider_net.yml, then: python main.py --experiment=wider_net "
        "--config=configs/wider_net.yml; test it with: python -m pytest tests/test_wider_net.py")

    listed = run_main(code_copy, "--list", main=code_copy / "main.py")
    assert listed.returncode == 0
    experiments = listed.stdout.split("datasets")[0].splitlines()
    assert [line.split()[0] for line in experiments] == ["experiments:", *registered, "wider_net"]
    assert "wider_net: one line that says what this experiment tries" in listed.stdout

    # Short, and with no resume or checkpoint code of its own...
    assert len(code.splitlines()) < 100
    assert not any(word in code for word in ("last.pt", "best.pt", "resumed", "load_checkpoint", "flush"))

    # ...yet it runs, reproduces, sweeps, runs under torchrun and resumes like experiment1.
    def wider_net(*args, cwd=workdir):
        return run_main(cwd, "--experiment=wider_net", "--config=configs/tiny.yml", "--verbose=0", *args,
                        main=code_copy / "main.py")

    db = workdir / "results" / "resultTable.db"
    assert wider_net().returncode == 0
    reproduced = run_main(workdir, "--reproduce=1", main=code_copy / "main.py")
    assert reproduced.returncode == 0 and "run 1 reproduced" in reproduced.stdout, reproduced.stderr
    assert wider_net("--sweep", "--config.seed=1,2").returncode == 0
    torchrun = spawn.run(workdir, command=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc_per_node=2", str(code_copy / "main.py"), "--experiment=wider_net",
                                           "--config=configs/tiny.yml", "--verbose=0"])
    assert torchrun.returncode == 0, torchrun.stderr
    assert query(db, "SELECT run_id, experiment, status, cli FROM Experiments WHERE run_id > 0 ORDER BY run_id") == [
        (1, "wider_net", "finished", ""), (2, "wider_net", "finished", ""), (3, "wider_net", "finished", ""),
        (4, "wider_net", "finished", "world_size=2")]

    slow = make_mnist_folder(workdir / "slow-data", n_train=2400, n_test=200)
    config = tiny_config(slow, **{"training.num_epochs": 3, "data.batch_size": 32})
    (workdir / "configs" / "tiny.yml").write_text(yaml.safe_dump(config))
    process = spawn(workdir, "--experiment=wider_net", "--config=configs/tiny.yml", main=code_copy / "main.py")
    wait_for(lambda: logged_epochs(db, 5) >= 1 or process.poll() is not None, what="the first epoch")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    resumed = run_main(workdir, "--resume=5", main=code_copy / "main.py")
    assert resumed.returncode == 0 and "run 5: resuming " in resumed.stdout, resumed.stderr
    assert wider_net("--comment=uninterrupted").returncode == 0
    assert recorded_numbers(db, 5) == recorded_numbers(db, 6)

    # A run of it is a model again: scored, exported, loaded.
    evaluated = run_main(workdir, "--evaluate=6", main=code_copy / "main.py")
    assert evaluated.returncode == 0 and "run 7: the evaluation of run 6 (wider_net, " in evaluated.stdout
    results = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=6 AND metric LIKE 'test_%'"))
    assert dict(query(db, "SELECT metric, value FROM Results WHERE run_id=7 AND is_hparam=0")) == results
    exported = run_main(workdir, "--export=6", f"--to={workdir / 'export'}", main=code_copy / "main.py")
    assert exported.returncode == 0, exported.stderr
    loaded = subprocess.run([sys.executable, "-c", "from main import load_run; print(load_run("
                             f"{str(workdir / 'export')!r}).experiment)"], cwd=code_copy, capture_output=True,
                            text=True, timeout=120)
    assert loaded.stdout.strip() == "wider_net", loaded.stderr


@pytest.mark.parametrize("name, message", [
    ("experiment1", "exists already"),
    ("TEMPLATE", "exists already"),
    ("2nd_try", "cannot name an experiment"),
    ("my-exp", "cannot name an experiment"),
    ("class", "cannot name an experiment"),
    ("os", "a name main.py already uses"),
    ("UserError", "a name main.py already uses"),
    ("make_parser", "a name main.py already uses"),
])
def test_new_experiment_refuses_taken_or_invalid_names_and_changes_nothing(code_copy, name, message):
    before = snapshot(code_copy)
    assert_refused(run_main(code_copy, f"--new-experiment={name}", main=code_copy / "main.py"), message)
    assert snapshot(code_copy) == before


def test_new_experiment_from_tabular_writes_its_own_config_lab_book_and_test(code_copy):
    done = run_main(code_copy, "--new-experiment=vae_like", "--from=tabular", main=code_copy / "main.py")
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines()[:-1]] == [
        "experiments/vae_like.py", "configs/vae_like.yml", "experiments/vae_like.md", "tests/test_vae_like.py",
        "main.py"]
    code = (code_copy / "experiments" / "vae_like.py").read_text()
    assert code.startswith('"""vae_like: one line that says what this experiment tries (started from tabular);\n')
    assert 'config="configs/vae_like.yml"' in code and "tabular" not in code.split("\n", 2)[2]
    config = yaml.safe_load((code_copy / "configs" / "vae_like.yml").read_text())
    assert config == yaml.safe_load((code_copy / "configs" / "tabular.yml").read_text())  # its keys, none of the CNN's
    assert "| best_val_mse | test_mse | test_mae | test_r2 |" in (code_copy / "experiments" / "vae_like.md").read_text()
    assert "--config=configs/vae_like.yml" in (code_copy / "experiments" / "vae_like.md").read_text()
    assert 'tiny_data("table", folder / "data")' in (code_copy / "tests" / "test_vae_like.py").read_text()


@pytest.mark.slow
def test_the_test_a_new_experiment_gets_passes_as_written(code_copy):
    assert run_main(code_copy, "--new-experiment=mine", "--from=tabular", main=code_copy / "main.py").returncode == 0
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mine.py"],
                          cwd=code_copy, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]


def test_new_experiment_refuses_a_lab_book_or_file_left_behind(code_copy):
    (code_copy / "experiments" / "draft.md").write_text("# draft\n")
    before = snapshot(code_copy)
    assert_refused(run_main(code_copy, "--new-experiment=draft", main=code_copy / "main.py"),
                   "experiments/draft.md")
    (code_copy / "configs" / "sketch.yml").write_text("seed: 1\n")
    before = snapshot(code_copy)
    assert_refused(run_main(code_copy, "--new-experiment=sketch", main=code_copy / "main.py"), "configs/sketch.yml")
    assert snapshot(code_copy) == before


def test_print_config_and_list_leave_the_run_table_alone(workdir):
    printed = run_in_process(workdir, "--config=configs/tiny.yml", "--print-config", "--config.training.num_epochs=9")
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["training"]["num_epochs"] == 9 and config["model"]["channels"] == [4, 8]
    listed = run_in_process(workdir, "--list").stdout
    assert "\n  experiment1 " in listed and "\n  fashion_mnist " in listed and "\n  folder " in listed
    assert_refused(run_in_process(workdir, "--config=configs/tiny.yml", "--print-config", "--config.training.x=1"),
                   "unknown config key")
    assert not (workdir / "results").exists()
    assert tiny_in_process(workdir).returncode == 0  # and a real run afterwards is run 1
    assert query(workdir / "results" / "resultTable.db", "SELECT run_id FROM Experiments") == [(1,)]

    # With a run table there, both leave every byte of it (and of everything beside it) as it was.
    before = {path: path.read_bytes() for path in (workdir / "results").rglob("*") if path.is_file()}
    assert run_in_process(workdir, "--list").returncode == 0
    assert run_in_process(workdir, "--config=configs/tiny.yml", "--print-config").returncode == 0
    assert run_in_process(workdir, "--experiment=experiment1", "--config=configs/tiny.yml",
                          "--print-config").returncode == 0
    assert {path: path.read_bytes() for path in (workdir / "results").rglob("*") if path.is_file()} == before


@pytest.mark.slow
def test_the_templates_own_tests_still_pass_once_a_user_registers_an_experiment(code_copy):
    assert run_main(code_copy, "--new-experiment=mine", "--from=charlm", main=code_copy / "main.py").returncode == 0
    assert '"mine": mine' in (code_copy / "main.py").read_text()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                           "tests/test_docs.py", "tests/test_main.py", "tests/modes/test_scaffold.py",
                           "tests/test_charlm.py", "tests/test_mine.py"], cwd=code_copy, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
