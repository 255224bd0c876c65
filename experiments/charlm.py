"""charlm: a character-level language model. A small causal transformer models Tiny Shakespeare (or the corpus
data.name selects) character by character, judged by validation loss in nats per character; the lab book is
experiments/charlm.md."""
from experiments import declare


def data_fingerprint(config: dict, cache_path) -> str:
    """What the text is, for the run's identity: the same file anywhere is the same run, one changed character not."""
    from data.registry import data_fingerprint

    return data_fingerprint(config, cache_path)


def check_config(config: dict, world_size: int = 1):
    """Refuse, before the run is registered, any value its pieces would refuse later: a mistake leaves no row."""
    import data.windows, models.transformer, training.optim, training.recipe, utils.config, utils.epochs  # noqa: E401

    utils.config.require(config, "logging.log_every", int, low=1)
    utils.config.require(config, "logging.sample_length", int, low=0)
    info = data.windows.check_config(config, world_size)
    training.recipe.check_config(config, data.windows.smallest_training_batch(config, info, world_size))
    models.transformer.check_config(config, info.vocab_size)
    training.optim.check_config(config, steps_per_epoch=data.windows.steps_per_epoch(config, info))
    utils.epochs.check_config(config)


def build_model(config: dict, data, device):
    """The transformer of `config` for the characters `data` (a TextInfo) describes, untrained: what the experiment
    trains, and what a recorded run's weights are loaded into."""
    from models.transformer import make_model

    return make_model(config, data, device)


def describe_data(config: dict):
    """The TextInfo of the text `config` names: its vocabulary and the size of each split."""
    from data.registry import describe_data

    return describe_data(config)


def evaluate_model(config: dict, model, data, device) -> dict:
    """The test metrics of a trained `model` on the test split of the text `config` names, its characters numbered as
    they were for it (`data`, its run's TextInfo)."""
    from data.windows import IGNORED, make_text_loaders
    from training.loop import evaluate
    from training.recipe import make_step_recipe
    from training.tasks import NextToken

    _, _, test, _ = make_text_loaders(config, device, seed=config["seed"], trained_on=data)
    return evaluate(model, test, NextToken(ignore_index=IGNORED), autocast=make_step_recipe(config, device).autocast)


def sample_text(model, data, prompt: str, length: int, temperature: float, seed: int) -> str:
    """`length` characters `model` writes after `prompt` (characters of `data.vocab`; empty: the start of a line),
    sampled at `temperature` from `seed`: the same arguments, the same text."""
    from models.transformer import generate
    from utils.errors import UserError

    missing = sorted(set(prompt) - set(data.vocab))
    if missing:
        raise UserError(f"the prompt holds {len(missing)} character(s) outside the model's vocabulary: "
                        f"{''.join(missing)[:40]!r}; the text it was trained on has {''.join(data.vocab)[:80]!r}")
    prompt = prompt or ("\n" if "\n" in data.vocab else data.vocab[0])
    tokens = generate(model, [data.vocab.index(char) for char in prompt], length, seed=seed, temperature=temperature)
    return data.decode(tokens)


@declare(metrics={"loss": "lower", "bpc": "lower"}, select="loss", check_config=check_config,
         data_fingerprint=data_fingerprint, flags=("verbose",), config="configs/charlm.yml", model=build_model,
         describe_data=describe_data, evaluate=evaluate_model, sample=sample_text)
def charlm(config, run, device, world, verbose=1):
    """Train the transformer, keep the epoch with the lowest validation loss, return its test results; a text it
    writes is recorded at each epoch ("samples") and, from the best model, at the end ("sample")."""
    from data.windows import IGNORED, make_text_loaders, training_characters
    from training.loop import evaluate, train_epoch
    from training.optim import make_optimizer, make_scheduler
    from training.recipe import make_step_recipe
    from training.tasks import NextToken
    from utils.distributed import unwrap
    from utils.epochs import Epochs

    training, logging = config["training"], config["logging"]
    train, val, test, info = make_text_loaders(config, device, seed=config["seed"], world=world)
    recipe = make_step_recipe(config, device)  # precision, clipping, accumulation, compile
    model = recipe.compiled(world.wrap(build_model(config, info, device), device))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
    task = NextToken(ignore_index=IGNORED)
    epochs = Epochs(run, model, optimizer, scheduler, train, world=world, verbose=verbose, scaler=recipe.scaler,
                    patience=training.get("patience"), checkpoint_every=training.get("checkpoint_every"))
    def sample(length):  # from the seed alone: the same weights always write the same text
        return sample_text(unwrap(model), info, "", length, temperature=1.0, seed=config["seed"])

    if verbose >= 2:
        print(f"run {run.id}: {sum(p.numel() for p in model.parameters()):,} parameters on {device} in "
              f"{recipe.precision}, {training_characters(config, info):,} train / {info.num_val:,} validation / "
              f"{info.num_test:,} test characters, {info.vocab_size} distinct")

    for epoch in epochs.remaining(training["num_epochs"]):
        train_metrics = train_epoch(model, train, optimizer, scheduler, task, recipe, epochs.hooks(epoch),
                                    log_every=logging["log_every"], world=world)
        val_metrics = evaluate(model, val, task, autocast=recipe.autocast, world=world)
        if logging["sample_length"]:  # before the epoch ends: a resume to an earlier epoch discards it
            run.log_text("samples", sample(logging["sample_length"] // 4), step=epoch * len(train), epoch=epoch)
        epochs.end(epoch, step=epoch * len(train), train=train_metrics, val=val_metrics)

    test_metrics = evaluate(epochs.best_model(), test, task, autocast=recipe.autocast, world=world)
    if logging["sample_length"]:
        run.log_text("sample", sample(logging["sample_length"]))
    return epochs.finish(test=test_metrics)
