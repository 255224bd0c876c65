"""main.py's front door: every refusal is one clear line on stderr, exit code 2, no traceback, nothing written."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

import main
from helpers import MAIN, assert_refused, env_recording_in, query, run_in_process, run_main, tiny_in_process
from utils.errors import Terminated


@pytest.mark.parametrize("args, fragments", [
    (["--wath=loss"], ["unknown flag --wath", "did you mean --watch?"]),
    (["--watch=precision"], ["--watch=precision is not a metric this experiment declares", "loss, accuracy"]),
    (["--verbose=7"], ["invalid choice: 7"]),
    (["--config.training.num_epochs=abc"], ["'training.num_epochs' expects an integer", "'abc'"]),
    (["--config.training.num_epoch=5"],
     ["unknown config key 'training.num_epoch'", "did you mean 'training.num_epochs'?"]),
    (["--config.training.num_epochs"], ["has no value", "--config.training.num_epochs=VALUE"]),
    (["--config.training.num_epochs", "5"], ["has no value"]),
    (["stray"], ["unexpected argument 'stray'"]),
    (["--resume=1"], ["--resume takes the run's recorded experiment, config and flags", "drop --experiment"]),
])
def test_bad_flags_and_overrides_are_refused(workdir, args, fragments):
    assert_refused(tiny_in_process(workdir, *args), *fragments)
    assert not (workdir / "results").exists()


def test_a_missing_key_is_refused_naming_the_experiments_own_baseline(tiny):
    config = yaml.safe_load((tiny.folder / tiny.config).read_text())
    del config["training"]["learning_rate"]
    (tiny.folder / "configs" / "short.yml").write_text(yaml.safe_dump(config))
    own = main.experiments[tiny.experiment].config
    result = run_in_process(tiny.folder, f"--experiment={tiny.experiment}", "--config=configs/short.yml")
    assert_refused(result, "the config has no 'training.learning_rate'", f"add it ({own}, {tiny.experiment}'s "
                   f"baseline, has every key it reads)")
    assert not (tiny.folder / "results" / "resultTable.db").exists() or not query(
        tiny.folder / "results" / "resultTable.db", "SELECT run_id FROM Experiments")


def test_an_unknown_experiment_is_refused_listing_the_registered_ones(workdir):
    result = run_in_process(workdir, "--experiment=experiment", "--config=configs/tiny.yml")
    assert_refused(result, "unknown experiment 'experiment'", "did you mean experiment1?", "registered: experiment1")
    assert not (workdir / "results").exists()


def test_missing_required_flags_and_config_files_are_refused(workdir):
    assert_refused(run_in_process(workdir, "--config=configs/tiny.yml"), "--experiment")
    missing = run_in_process(workdir, "--experiment=experiment1", "--config=configs/none.yml")
    assert_refused(missing, "config file configs/none.yml not found here nor in the checkout")
    example = missing.stderr.split("e.g. --config=")[1].strip()
    assert (workdir / example).is_file()  # the example names a file that exists from where the user stands
    # A relative path that exists only in the checkout (main.py started from elsewhere) is the checkout's file.
    printed = run_in_process(workdir, "--config=configs/fast.yml", "--print-config")
    assert printed.returncode == 0 and "num_epochs: 1" in printed.stdout
    assert_refused(run_in_process(workdir, "--print-config"), "--print-config needs --config=FILE")
    assert_refused(run_in_process(workdir, "--list", "--sweep"), "--list and --sweep do different things")
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_help_lists_the_flags_and_a_refusal_has_no_traceback_in_a_real_process(workdir):
    result = run_main(workdir, "--help")
    assert result.returncode == 0
    for flag in ("--experiment", "--config", "--debug", "--comment", "--watch", "--cpu", "--verbose", "--resume",
                 "--reproduce", "--sweep", "--list", "--print-config", "--new-experiment"):
        assert flag in result.stdout
    assert_refused(run_main(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--wath=loss"),
                   "unknown flag --wath")


@pytest.mark.slow
def test_a_refused_duplicate_loads_neither_torch_nor_deepboard(tiny):
    assert run_in_process(tiny.folder, *tiny.args).returncode == 0
    # -X importtime lists on stderr every module the real process imports, one line each.
    refused = subprocess.run([sys.executable, "-X", "importtime", str(MAIN), *tiny.args], cwd=tiny.folder,
                             capture_output=True, text=True, timeout=120, env=env_recording_in(tiny.folder))
    imported = {line.rsplit("|", 1)[1].strip() for line in refused.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "yaml" in imported and "sqlite3" in imported  # the list is real: what the refusal does need
    assert not {name for name in imported if name.split(".")[0] in ("torch", "deepboard", "torchvision", "numpy")}
    [refusal] = [line for line in refused.stderr.splitlines() if not line.startswith("import time:")]
    assert refused.returncode == 2 and "already has this config" in refusal


def test_a_value_the_experiment_cannot_use_is_refused_leaving_no_row_and_no_folder(workdir):
    assert tiny_in_process(workdir).returncode == 0
    for override, message in [
        ("--config.training.precision=fp8", "training.precision must be auto, bf16, fp16 or off, got 'fp8'"),
        ("--config.training.optimizer=lamb", "training.optimizer must be sgd or adamw, got 'lamb'"),
        ("--config.model.kernel_size=13", "shrink the 28x28 images to nothing"),
        ("--config.data.val_size=640", "data.val_size must be between 1 and 639"),
    ]:
        assert_refused(tiny_in_process(workdir, override), message)
    assert query(workdir / "results" / "resultTable.db", "SELECT run_id, status FROM Experiments") == [(1, "finished")]
    assert sorted(path.name for path in (workdir / "results").iterdir() if path.is_dir()) == ["1"]


def test_an_unknown_flag_named_like_a_config_key_suggests_its_override(workdir):
    assert_refused(tiny_in_process(workdir, "--epochs=3"), "did you mean --config.training.num_epochs=3?")
    assert_refused(tiny_in_process(workdir, "--learning-rate=0.1"), "did you mean --config.training.learning_rate=0.1?")
    assert_refused(tiny_in_process(workdir, "--wath=loss"), "did you mean --watch?")


@pytest.mark.fault("signals and pipes")
@pytest.mark.slow
def test_output_cut_short_by_a_closed_pipe_ends_quietly(tmp_path):
    read, write = os.pipe()
    os.close(read)  # as `python main.py --list | head -3` leaves it once head has its lines
    try:
        done = subprocess.run([sys.executable, str(MAIN), "--list"], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=env_recording_in(tmp_path))
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.fault("signals and pipes")
@pytest.mark.slow
def test_a_run_whose_output_pipe_closes_stops_resumable_with_a_failing_exit_code(workdir):
    """`python main.py ... | head -2`: the run stops after its step as after Ctrl-C, exits 141 (a `&&` chain stops),
    and --resume ends it exactly as an uninterrupted run."""
    read, write = os.pipe()
    launch = subprocess.Popen([sys.executable, str(MAIN), "--experiment=experiment1", "--config=configs/tiny.yml",
                               "--verbose=3"], cwd=workdir, stdout=write, stderr=subprocess.PIPE, text=True,
                              env=env_recording_in(workdir))
    os.close(write)
    with os.fdopen(read) as output:
        first_lines = [output.readline() for _ in range(2)]  # what `head -2` reads before it leaves
    _, stderr = launch.communicate(timeout=300)
    assert all(first_lines) and launch.returncode == 141, stderr
    assert "Traceback" not in stderr and "continues in epoch 1 after step" in stderr, stderr
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT E.status, L.failure FROM Experiments E JOIN TemplateLaunch L USING (run_id)") == [
        ("failed", "interrupted")]
    resumed = run_main(workdir, "--resume=1", "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr
    whole = run_main(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0",
                     table=workdir / "whole" / "resultTable.db")
    assert whole.returncode == 0, whole.stderr
    results = "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=0 ORDER BY metric"
    assert query(db, results) == query(workdir / "whole" / "resultTable.db", results)


@pytest.mark.fault("signals and pipes")
def test_a_signal_before_a_run_starts_exits_with_the_shells_code_and_records_nothing(workdir, monkeypatch):
    import modes.launch

    for error, code in ((Terminated, 143), (KeyboardInterrupt, 130)):
        def stopped(*args, error=error, **kwargs):
            raise error()

        monkeypatch.setattr(modes.launch.Launch, "__init__", stopped)
        done = tiny_in_process(workdir)
        assert done.returncode == code
        assert done.stderr.strip().splitlines()[-1] == "interrupted before a run started: nothing was recorded"
    assert not (workdir / "results").exists()


@pytest.mark.fault("signals and pipes")
@pytest.mark.slow  # real processes, stopped at moments spread over their start-up
@pytest.mark.parametrize("signum, code, what", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_a_signal_sent_again_and_again_during_start_up_ends_in_one_line_and_the_shells_code(workdir, spawn, signum,
                                                                                           code, what):
    for delay in (0.3, 0.6, 1.0, 1.6, 2.4, 3.5):  # loading the modules, parsing, torch's import, the first steps
        process = spawn(workdir, "--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0",
                        "--config.training.num_epochs=1000", f"--comment=stopped after {delay} s")  # far from its end
        time.sleep(delay)
        for _ in range(4):  # as a user keeps pressing Ctrl-C: to the whole process group, as a terminal sends it
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        _, stderr = process.communicate(timeout=120)
        lines = [line for line in stderr.strip().splitlines() if not line.startswith("recording in ")]
        assert process.returncode == code and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert len(lines) == 1 and (
            lines[0] == "interrupted before a run started: nothing was recorded" or re.fullmatch(
            rf"{what}: run \d+ is marked failed, with all it logged; it continues (from its start|in epoch \d+ after "
            rf"step \d+ \(\d+ of its 4 steps done\)|in epoch \d+ at its validation \(after step \d+\)|after epoch "
            rf"\d+ \(step \d+\)) with python main.py --resume=\d+", lines[0])), stderr
    db = workdir / "results" / "resultTable.db"
    if db.exists():  # a run that had started is failed, with a reason, never left running
        assert {status for (status,) in query(db, "SELECT status FROM Experiments")} <= {"failed"}


@pytest.mark.fault("signals and pipes")
def test_a_ctrl_c_while_the_first_run_creates_the_table_leaves_a_whole_table_and_the_next_launch_runs(workdir,
                                                                                                   monkeypatch):
    from deepboard.resultTable import ResultTable

    create = ResultTable.__init__

    def creating(self, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C, as deepboard begins to write the new table
        create(self, *args, **kwargs)

    monkeypatch.setattr(ResultTable, "__init__", creating)
    done = tiny_in_process(workdir)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "interrupted before a run started: nothing was recorded"
    monkeypatch.setattr(ResultTable, "__init__", create)
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT COUNT(*) FROM Experiments") == [(0,)]  # whole, and empty
    assert [path.name for path in (workdir / "results").iterdir() if "creating" in path.name] == []
    assert tiny_in_process(workdir).returncode == 0
    assert query(db, "SELECT run_id, status FROM Experiments") == [(1, "finished")]


@pytest.mark.fault("signals and pipes")
@pytest.mark.parametrize("library", ["swallows it", "turns it into its own error"])
def test_a_ctrl_c_that_a_library_swallows_or_turns_into_its_own_error_still_stops_the_run(workdir, monkeypatch,
                                                                                            library):
    import training.optim

    make_optimizer = training.optim.make_optimizer

    def a_library_that_catches_everything(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, landing in code that catches it, as torch's own import does
        except BaseException:
            if library != "swallows it":
                raise ValueError("too many values to unpack (expected 2)") from None
        return make_optimizer(*args, **kwargs)

    monkeypatch.setattr(training.optim, "make_optimizer", a_library_that_catches_everything)
    done = tiny_in_process(workdir)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("interrupted: run 1 is marked failed, with all it logged; it "
                                                    "continues from its start with python main.py --resume=1")
    assert query(workdir / "results" / "resultTable.db", "SELECT e.status, l.failure FROM Experiments e JOIN "
                 "TemplateLaunch l USING (run_id)") == [("failed", "interrupted")]  # resumable, not a crash


@pytest.mark.fault("signals and pipes")
def test_a_ctrl_c_while_torch_loads_is_held_until_it_has_loaded_and_nothing_is_recorded(workdir, monkeypatch):
    import experiments.experiment1

    loaded = []
    check_config = experiments.experiment1.experiment1.check_config

    def torch_loading(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        loaded.append(True)  # reached: the signal did not raise in the middle
        return check_config(*args, **kwargs)

    monkeypatch.setattr(experiments.experiment1.experiment1, "check_config", torch_loading)
    done = tiny_in_process(workdir)
    assert loaded and done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "interrupted before a run started: nothing was recorded"
    assert not (workdir / "results" / "resultTable.db").exists() or not query(
        workdir / "results" / "resultTable.db", "SELECT run_id FROM Experiments")


@pytest.mark.fault("valid configs")
def test_a_bare_off_in_a_yaml_file_is_answered_with_what_to_write(workdir):
    config = workdir / "configs" / "tiny.yml"
    config.write_text(config.read_text().replace("precision: auto", "precision: off"))
    assert_refused(tiny_in_process(workdir), 'write precision: "off" (quoted)')
    config.write_text(config.read_text().replace("precision: off", 'precision: "off"'))
    assert tiny_in_process(workdir).returncode == 0


@pytest.mark.fault("configs that pull in too much")
def test_a_config_that_would_pull_in_too_much_is_refused_before_anything_is_recorded(workdir):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
               f"*{prev}]" for prev, name in zip("abcdefgh", "bcdefghi")]  # 10**9 values in half a kilobyte
    (workdir / "configs" / "bomb.yml").write_text("\n".join(levels) + "\n")
    (workdir / "configs" / "self.yml").write_text("model: &m {inner: *m}\n")
    huge = workdir / "configs" / "huge.yml"
    huge.write_text("# padding\n" * 200_000)
    for name, message in (("bomb", "expands to more than 100,000 values"), ("self", "expands to more than"),
                          ("huge", "a config holds parameters")):
        assert_refused(run_in_process(workdir, "--experiment=experiment1", f"--config=configs/{name}.yml"), message)
    assert not (workdir / "results").exists()


@pytest.mark.fault("valid configs")
def test_a_last_batch_of_one_image_that_batchnorm_cannot_normalise_is_refused_and_a_neighbour_trains(workdir):
    # 512 training images; three blocks of kernel 3, pooled first: the last BatchNorm sees 1x1 maps.
    net = ("--config.model.channels=[4,8,8]", "--config.model.kernel_size=3", "--config.model.pool_first=true",
           "--config.training.num_epochs=1", "--config.training.schedule=constant")
    assert_refused(tiny_in_process(workdir, *net, "--config.data.batch_size=511"),
                   "data.batch_size 511 leaves a last training batch of one image", "BatchNorm")
    assert not (workdir / "results").exists()
    done = tiny_in_process(workdir, *net, "--config.data.batch_size=510")  # a last batch of two: it trains
    assert done.returncode == 0, done.stderr


@pytest.mark.fault("valid configs")
@pytest.mark.parametrize("override", ["--config.model.hidden=100000000000000000000",
                                      "--config.model.channels=[4,100000000000]"])
def test_a_network_too_large_for_this_machines_memory_is_refused_before_the_run_is_registered(workdir, override):
    assert_refused(tiny_in_process(workdir, override), "parameters: training takes", "GiB of memory",
                   "make it smaller")
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_files_are_utf_8_whatever_the_locale(workdir):
    """A config with a comment outside ASCII is the same run under an ASCII locale, and what --compare prints of it
    reaches a terminal that cannot show it as escapes, not as a crash."""
    config = workdir / "configs" / "tiny.yml"
    config.write_text("# Schrödinger's baseline, naïve café\n" + config.read_text(encoding="utf-8"), encoding="utf-8")
    args = ("--experiment=experiment1", "--config=configs/tiny.yml", "--verbose=0", "--comment=größer")
    ascii_locale = {**env_recording_in(workdir), "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    first = subprocess.run([sys.executable, str(MAIN), *args], cwd=workdir, capture_output=True, text=True,
                           timeout=300, env=env_recording_in(workdir))
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, str(MAIN), *args], cwd=workdir, capture_output=True, timeout=300,
                           env=ascii_locale)
    assert again.returncode == 2 and b"run 1 (experiment1, finished) already has this config" in again.stderr
    compared = subprocess.run([sys.executable, str(MAIN), "--compare"], cwd=workdir, capture_output=True,
                              timeout=300, env=ascii_locale)
    assert compared.returncode == 0 and b"Traceback" not in compared.stderr, compared.stderr
    assert b"gr\\xf6\\xdfer" in compared.stdout, compared.stdout  # the comment, escaped for an ASCII terminal
