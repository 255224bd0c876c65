"""Every refusal of main.py: one clear line on stderr, exit code 2, no traceback, nothing written under results/."""
import pytest

from helpers import assert_refused, run_main, run_tiny


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
])
def test_bad_flags_and_overrides_are_refused(workdir, args, fragments):
    assert_refused(run_tiny(workdir, *args), *fragments)
    assert not (workdir / "results").exists()


def test_an_unknown_experiment_is_refused_listing_the_registered_ones(workdir):
    result = run_main(workdir, "--experiment=experiment", "--config=configs/tiny.yml")
    assert_refused(result, "unknown experiment 'experiment'", "did you mean experiment1?", "registered: experiment1")
    assert not (workdir / "results").exists()


def test_missing_required_flags_and_config_files_are_refused(workdir):
    assert_refused(run_main(workdir, "--config=configs/tiny.yml"), "--experiment")
    assert_refused(run_main(workdir, "--experiment=experiment1", "--config=configs/none.yml"),
                   "config file configs/none.yml not found")
    assert not (workdir / "results").exists()


def test_help_lists_the_flags(workdir):
    result = run_main(workdir, "--help")
    assert result.returncode == 0
    for flag in ("--experiment", "--config", "--debug", "--comment", "--watch", "--cpu", "--verbose"):
        assert flag in result.stdout
