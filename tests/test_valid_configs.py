"""Values that pass every check train: generated configs of both shipped experiments, from the edges of what each key
takes (a batch of one, a one-pixel map, a learning rate that diverges, a window of one character, fp16, accumulated
micro-batches, resume points every step), run the real experiment for an epoch through main.py in process. Each ends
finished and recorded, or refused in one line before anything is recorded; never a traceback from inside the
training. (The slow tier's share: each example trains.)
"""
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers import make_mnist_folder, query, run_in_process, tiny_charlm_config, tiny_config, write_text_corpus

EXAMPLES = 40  # generated configs per experiment

learning_rates = st.one_of(st.floats(1e-6, 0.1), st.sampled_from([0.0, 1.0, 50.0]))  # 50: diverges
fractions = st.floats(0, 1)
shared_training = {
    "training.optimizer": st.sampled_from(["sgd", "adamw"]),
    "training.learning_rate": learning_rates,
    "training.weight_decay": st.one_of(st.just(0.0), st.floats(0, 2)),
    "training.schedule": st.sampled_from(["onecycle", "constant"]),
    "training.warmup_fraction": fractions,
    "training.threads": st.integers(0, 3),
    # The knobs of long runs (compiling aside: tens of seconds an example)
    "training.precision": st.sampled_from(["auto", "bf16", "fp16", "off"]),
    "training.grad_clip": st.one_of(st.none(), st.floats(1e-6, 10)),
    "training.accumulate": st.integers(1, 8),
    "training.weight_decay_scope": st.sampled_from(["all", "matrices"]),
    "training.fused": st.booleans(),
    "training.patience": st.integers(1, 3),
    "training.checkpoint_every": st.integers(1, 50),
    "logging.log_every": st.integers(1, 200),
    "seed": st.integers(0, 2**31 - 1),
}
cnn_keys = {
    **shared_training,
    "data.val_size": st.integers(0, 500),
    "data.batch_size": st.integers(1, 400),
    "data.eval_batch_size": st.integers(1, 500),
    "data.augment_shift": st.integers(0, 30),
    "model.channels": st.lists(st.integers(1, 12), min_size=0, max_size=5),
    "model.kernel_size": st.integers(1, 31),
    "model.hidden": st.integers(1, 64),
    "model.dropout": fractions,
    "model.channels_last": st.booleans(),
    "model.pool_first": st.booleans(),
    "training.momentum": fractions,
    "training.label_smoothing": fractions,
}
charlm_keys = {
    **shared_training,
    "data.val_size": st.integers(1, 2000),
    "data.block_size": st.integers(1, 48),
    "data.batch_size": st.integers(1, 48),
    "data.eval_batch_size": st.integers(1, 200),
    "model.n_layer": st.integers(1, 3),
    "model.n_head": st.integers(1, 4),
    "model.n_embd": st.one_of(st.integers(1, 24), st.sampled_from([12, 24])),  # 12, 24: every head count divides
    "model.dropout": fractions,
    "training.beta2": fractions,
    "logging.sample_length": st.integers(0, 60),
}


def configs(keys, base):
    """A copy of `base` with a few of `keys` set to generated values."""
    @st.composite
    def draw_config(draw):
        config = yaml.safe_load(yaml.safe_dump(base))
        for key in draw(st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=6, unique=True)):
            *sections, name = key.split(".")
            place = config
            for section in sections:
                place = place[section]
            place[name] = draw(keys[key])
        return config
    return draw_config()


def trains_or_refuses(folder, config):
    """'trained' or 'refused': the config finished as debug run -1 with its results recorded, or was refused in
    one line with nothing recorded; anything else fails the test."""
    (folder / "configs" / "gen.yml").write_text(yaml.safe_dump(config))
    db = folder / "results" / "resultTable.db"
    before = query(db, "SELECT run_id, status FROM Experiments") if db.exists() else []
    done = run_in_process(folder, f"--experiment={folder.name}", "--config=configs/gen.yml", "--verbose=0", "--debug")
    assert "Traceback" not in done.stderr, (config, done.stderr)
    if done.returncode == 2:
        assert len(done.stderr.strip().splitlines()) == 1, (config, done.stderr)
        assert query(db, "SELECT run_id, status FROM Experiments") == before if db.exists() else True, config
        return "refused"
    assert done.returncode == 0, (config, done.returncode, done.stderr)
    assert query(db, "SELECT status FROM Experiments WHERE run_id=-1") == [("finished",)], config
    assert query(db, "SELECT COUNT(*) FROM Results WHERE run_id=-1 AND is_hparam=0")[0][0] >= 2, config
    return "trained"


SETTINGS = dict(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


def trained_share(folder, base, keys):
    """How many generated configs trained and how many were refused."""
    outcomes = []

    @settings(**SETTINGS)
    @given(config=configs(keys, base))
    def each(config):
        outcomes.append(trains_or_refuses(folder, config))

    each()
    return outcomes.count("trained"), outcomes.count("refused")


@pytest.mark.fault("valid configs")
@pytest.mark.slow
def test_generated_valid_cnn_configs_train_an_epoch_or_are_refused_before_the_run(tmp_path):
    folder = tmp_path / "experiment1"
    (folder / "configs").mkdir(parents=True)
    data = make_mnist_folder(tmp_path / "data", n_train=600, n_test=60)
    trained, refused = trained_share(folder, tiny_config(data, **{"training.num_epochs": 1}), cnn_keys)
    print(f"{trained} trained, {refused} refused")
    assert trained >= EXAMPLES // 2, (trained, refused)  # mostly values that pass: the training is what is tried


@pytest.mark.fault("valid configs")
@pytest.mark.slow
def test_generated_valid_charlm_configs_train_an_epoch_or_are_refused_before_the_run(tmp_path):
    folder = tmp_path / "charlm"
    (folder / "configs").mkdir(parents=True)
    text = write_text_corpus(tmp_path / "text", characters=6000)
    base = tiny_charlm_config(text, **{"training.num_epochs": 1, "data.val_size": 600, "training.warmup_fraction": 0.3})
    base["training"]["momentum"] = 0.9  # for sgd, which charlm's own config does not choose
    trained, refused = trained_share(folder, base, charlm_keys)
    print(f"{trained} trained, {refused} refused")
    assert trained >= EXAMPLES // 2, (trained, refused)
