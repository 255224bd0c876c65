"""What an experiment declares it measures: directions, a metric without one, and the order everything prints in."""
import pytest

from utils.errors import UserError
from utils.measures import Measures


VAE = Measures({"loss": "lower", "kl": None, "recon": "lower"}, "loss")


def test_a_metric_without_a_direction_is_reported_but_never_selected():
    assert VAE.check("experiment vae") is VAE
    assert VAE.direction_of("test_kl") is None and VAE.direction_of("test_recon") == "lower"
    assert VAE.directed == ["loss", "recon"]
    with pytest.raises(UserError, match="--watch=kl is not a metric this experiment declares with a direction"):
        VAE.selecting("kl")
    with pytest.raises(UserError, match="selects by 'kl', which it declares without a direction"):
        Measures({"loss": "lower", "kl": None}, "kl").check("experiment vae")
    with pytest.raises(UserError, match="'up'"):
        Measures({"loss": "up"}, "loss").check("experiment vae")


def test_results_and_curves_are_ordered_as_the_metrics_are_declared():
    names = {"best_epoch", "test_recon", "test_loss", "best_val_loss", "val/kl", "train/step_loss", "test_kl",
             "train/epoch_time"}
    assert VAE.ordered(names) == ["best_val_loss", "test_loss", "train/step_loss", "test_kl", "val/kl",
                                  "test_recon", "best_epoch", "train/epoch_time"]


def test_the_declared_order_survives_the_record():
    assert list(Measures.from_json(VAE.to_json()).better) == ["loss", "kl", "recon"]


def test_a_nan_epoch_never_stays_the_best_one():
    nan = float("nan")
    assert VAE.improves(nan, None)  # the first epoch is the best so far, whatever it is...
    assert VAE.improves(0.9, nan)  # ...and any number beats a diverged one
    assert not VAE.improves(nan, 0.9)
    assert Measures({"accuracy": "higher"}, "accuracy").improves(0.1, nan)
