"""main.py's front door: every refusal is one clear line on stderr, exit code 2, no traceback, nothing written."""
import pytest

from helpers import assert_refused, run_in_process, run_main, tiny_in_process


@pytest.mark.parametrize("args, fragments", [
    (["--wath=loss"], ["unknown flag --wath", "did you mean --watch?"]),
    (["--watch=precision"], ["invalid choice: 'precision'"]),
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


def test_an_unknown_experiment_is_refused_listing_the_registered_ones(workdir):
    result = run_in_process(workdir, "--experiment=experiment", "--config=configs/tiny.yml")
    assert_refused(result, "unknown experiment 'experiment'", "did you mean experiment1?", "registered: experiment1")
    assert not (workdir / "results").exists()


def test_missing_required_flags_and_config_files_are_refused(workdir):
    assert_refused(run_in_process(workdir, "--config=configs/tiny.yml"), "--experiment")
    assert_refused(run_in_process(workdir, "--experiment=experiment1", "--config=configs/none.yml"),
                   "config file configs/none.yml not found")
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
