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
    models.transformer.check_config(config)
    training.optim.check_config(config, steps_per_epoch=data.windows.steps_per_epoch(config, info))
    utils.epochs.check_config(config)


@declare(metrics={"loss": "lower", "bpc": "lower"}, select="loss", check_config=check_config,
         data_fingerprint=data_fingerprint, flags=("verbose",), config="configs/charlm.yml")
def charlm(config, run, device, world, verbose=1):
    """Train the transformer, keep the epoch with the lowest validation loss, return its test results; a text it
    writes is recorded at each epoch ("samples") and, from the best model, at the end ("sample")."""
    from data.windows import IGNORED, make_text_loaders
    from models.transformer import generate, make_model
    from training.loop import evaluate, train_epoch
    from training.optim import make_optimizer, make_scheduler
    from training.recipe import make_step_recipe
    from training.tasks import NextToken
    from utils.distributed import unwrap
    from utils.epochs import Epochs

    training, logging = config["training"], config["logging"]
    train, val, test, info = make_text_loaders(config, device, seed=config["seed"], world=world)
    recipe = make_step_recipe(config, device)  # precision, clipping, accumulation, compile
    model = recipe.compiled(world.wrap(make_model(config, info, device), device))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
    task = NextToken(ignore_index=IGNORED)
    epochs = Epochs(run, model, optimizer, scheduler, train, world=world, verbose=verbose, scaler=recipe.scaler,
                    patience=training.get("patience"), checkpoint_every=training.get("checkpoint_every"))
    prompt = [info.vocab.index("\n")] if "\n" in info.vocab else [0]

    def sample(length):  # from the seed alone: the same weights always write the same text
        return info.decode(generate(unwrap(model), prompt, length, seed=config["seed"]))

    if verbose >= 2:
        print(f"run {run.id}: {sum(p.numel() for p in model.parameters()):,} parameters on {device} in "
              f"{recipe.precision}, {info.num_train:,} train / {info.num_val:,} validation / {info.num_test:,} test "
              f"characters, {info.vocab_size} distinct")

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
