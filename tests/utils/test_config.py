"""Loading the YAML baseline and merging typed --config.* overrides onto it."""
import copy

import pytest

from utils.config import apply_overrides, dump_config, load_config, parse_override
from utils.errors import UserError

BASE = {"seed": 0, "data": {"path": "../data", "batch_size": 256},
        "training": {"learning_rate": 0.1, "num_epochs": 4, "deterministic": True, "max_steps": None},
        "model": {"channels": [32, 64], "dropout": 0.1}}


def merged(*args):
    return apply_overrides(BASE, [parse_override(a) for a in args])


def test_values_are_typed_as_yaml_reads_them():
    config = merged("--config.training.num_epochs=5", "--config.training.learning_rate=1e-4",
                    "--config.training.deterministic=false", "--config.model.channels=[8,16,32]",
                    "--config.training.max_steps=100", "--config.data.path=007")
    assert config["training"] == {"learning_rate": 1e-4, "num_epochs": 5, "deterministic": False, "max_steps": 100}
    assert config["model"]["channels"] == [8, 16, 32]
    assert config["data"]["path"] == "007"  # a string key keeps the text as typed


def test_an_integer_for_a_float_key_becomes_a_float_and_null_fits_a_null_key():
    assert merged("--config.training.learning_rate=1")["training"]["learning_rate"] == 1.0
    assert isinstance(merged("--config.training.learning_rate=1")["training"]["learning_rate"], float)
    assert merged("--config.training.max_steps=null")["training"]["max_steps"] is None


def test_overrides_leave_the_loaded_config_untouched():
    before = copy.deepcopy(BASE)
    config = merged("--config.seed=3", "--config.training.num_epochs=9", "--config.model.channels=[4,8]")
    assert config["training"]["num_epochs"] == 9 and config["model"]["channels"] == [4, 8]
    assert BASE == before  # the nested sections too: a shallow copy would have changed BASE["training"]
    config["model"]["channels"].append(16)
    assert BASE["model"]["channels"] == [32, 64]


@pytest.mark.parametrize("arg, message", [
    ("--config.training.num_epoch=5", "did you mean 'training.num_epochs'"),
    ("--config.training.num_epochs=abc", "'training.num_epochs' expects an integer"),
    ("--config.training.num_epochs=2.5", "expects an integer"),
    ("--config.training.num_epochs=true", "expects an integer"),
    ("--config.training.deterministic=1", "expects true/false"),
    ("--config.training.learning_rate=fast", "expects a number"),
    ("--config.model.channels=32", "expects a list"),
    ("--config.model.channels=[a,b]", "(elements: an integer)"),
    ("--config.training=1", "is a section"),
    ("--config.training.num_epochs", "has no value"),
    ("--config.=3", "names no key"),
])
def test_bad_overrides_are_refused_with_a_message_that_says_what_to_do(arg, message):
    with pytest.raises(UserError, match=None) as error:
        merged(arg)
    assert message in str(error.value)


def test_loading_refuses_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yml")
    (tmp_path / "bad.yml").write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yml")
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(tmp_path / "list.yml")


def test_exponent_floats_in_the_yaml_file_are_floats(tmp_path):
    (tmp_path / "c.yml").write_text("training:\n  learning_rate: 1e-3\n  weight_decay: 5.0e-4\n")
    assert load_config(tmp_path / "c.yml")["training"] == {"learning_rate": 1e-3, "weight_decay": 5e-4}


def test_the_canonical_dump_ignores_key_order_at_every_level():
    def reversed_keys(value):
        if isinstance(value, dict):
            return {key: reversed_keys(value[key]) for key in reversed(list(value))}
        return value

    reordered = reversed_keys(BASE)
    assert list(reordered["training"]) != list(BASE["training"])  # nested keys in another order
    assert dump_config(reordered) == dump_config(BASE)
    assert dump_config(merged("--config.training.num_epochs=9")) != dump_config(BASE)
