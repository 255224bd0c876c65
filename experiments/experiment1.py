"""experiment1: the baseline. A small CNN trained on MNIST (or the dataset data.name selects); the lab book is
experiments/experiment1.md."""
from experiments import declare


def data_fingerprint(config: dict, cache_path) -> str:
    """What the data is, for the run's identity: the same files give the same run wherever they lie."""
    from data.registry import data_fingerprint

    return data_fingerprint(config, cache_path)


def check_config(config: dict, world_size: int = 1):
    """Refuse, before the run is registered, any value its pieces would refuse later: a mistake leaves no row."""
    import data.loaders, models.cnn, training.optim, training.recipe, utils.config, utils.epochs  # noqa: E401

    utils.config.require(config, "logging.log_every", int, low=1)
    utils.config.require(config, "training.label_smoothing", float, low=0, high=1)
    info = data.loaders.check_config(config, world_size)
    smallest_batch = data.loaders.smallest_training_batch(config, info, world_size)
    training.recipe.check_config(config, smallest_batch)
    models.cnn.check_config(config, info, smallest_batch // (config["training"].get("accumulate") or 1))
    training.optim.check_config(config, steps_per_epoch=data.loaders.steps_per_epoch(config, info))
    utils.epochs.check_config(config)


@declare(metrics={"loss": "lower", "accuracy": "higher"}, select="accuracy", check_config=check_config,
         data_fingerprint=data_fingerprint, flags=("verbose",))
def experiment1(config, run, device, world, verbose=1):
    """Train the CNN, keep the epoch with the best validation accuracy (or --watch's metric), return its test results.

    The seed and the CPU threads are set before this is called; `world` says which torchrun process this is.
    """
    # Heavy imports live here, not at the top, so that a refused launch (duplicate, bad flag) answers without torch.
    from data.loaders import make_loaders
    from models.cnn import make_model
    from training.loop import evaluate, train_epoch
    from training.optim import make_optimizer, make_scheduler
    from training.recipe import make_step_recipe
    from training.tasks import Classification
    from utils.epochs import Epochs

    training = config["training"]
    train, val, test, info = make_loaders(config, device, seed=config["seed"], world=world,
                                          cache_dir=run.folder.parent)
    recipe = make_step_recipe(config, device)  # precision, clipping, accumulation, compile
    model = recipe.compiled(world.wrap(make_model(config, info, device), device))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
    task = Classification(label_smoothing=training["label_smoothing"])
    # Resume points, checkpoints, the order of writes and the final reload, the same for every experiment.
    epochs = Epochs(run, model, optimizer, scheduler, train, world=world, verbose=verbose, scaler=recipe.scaler,
                    patience=training.get("patience"), checkpoint_every=training.get("checkpoint_every"))
    if verbose >= 2:
        print(f"run {run.id}: {sum(p.numel() for p in model.parameters()):,} parameters on {device} in "
              f"{recipe.precision}, {train.num_samples} train / {val.num_samples} validation / {test.num_samples} "
              f"test images of {info.channels}x{info.height}x{info.width}, {info.num_classes} classes")

    for epoch in epochs.remaining(training["num_epochs"]):
        train_metrics = train_epoch(model, train, optimizer, scheduler, task, recipe, epochs.hooks(epoch),
                                    log_every=config["logging"]["log_every"], world=world)
        val_metrics = evaluate(model, val, task, autocast=recipe.autocast, world=world)
        epochs.end(epoch, step=epoch * len(train), train=train_metrics, val=val_metrics)

    test_metrics = evaluate(epochs.best_model(), test, task, autocast=recipe.autocast, world=world)
    return epochs.finish(test=test_metrics)
