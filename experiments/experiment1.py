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


def build_model(config: dict, data, device):
    """The CNN of `config` for the images `data` (a DataInfo) describes, untrained: what the experiment trains, and
    what a recorded run's weights are loaded into."""
    from models.cnn import make_model

    return make_model(config, data, device)


def describe_data(config: dict):
    """The DataInfo of the images `config` names: their shape, classes and normalisation."""
    from data.registry import describe_data

    return describe_data(config)


def evaluate_model(config: dict, model, data, device) -> dict:
    """The test metrics of a trained `model` on the test split of the images `config` names, normalised as they
    were for it (`data`, its run's DataInfo)."""
    from data.loaders import make_loaders
    from training.loop import evaluate
    from training.recipe import make_step_recipe
    from training.tasks import Classification

    _, _, test, _ = make_loaders(config, device, seed=config["seed"], trained_on=data)
    return evaluate(model, test, Classification(), autocast=make_step_recipe(config, device).autocast)


@declare(metrics={"loss": "lower", "accuracy": "higher"}, select="accuracy", check_config=check_config,
         data_fingerprint=data_fingerprint, flags=("verbose",), model=build_model, describe_data=describe_data,
         evaluate=evaluate_model)
def experiment1(config, run, device, world, verbose=1):
    """Train the CNN, keep the epoch with the best validation accuracy (or --watch's metric), return its test results.

    The seed and the CPU threads are set before this is called; `world` says which torchrun process this is.
    """
    # Heavy imports live here, not at the top, so that a refused launch (duplicate, bad flag) answers without torch.
    from data.loaders import make_loaders
    from training.loop import confusion_matrix, evaluate, train_epoch
    from training.optim import make_optimizer, make_scheduler
    from training.recipe import make_step_recipe
    from training.tasks import Classification
    from utils.epochs import Epochs
    from utils.plots import confusion_image

    training = config["training"]
    train, val, test, info = make_loaders(config, device, seed=config["seed"], world=world,
                                          cache_dir=run.folder.parent)
    recipe = make_step_recipe(config, device)  # precision, clipping, accumulation, compile
    model = recipe.compiled(world.wrap(build_model(config, info, device), device))
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

    best = epochs.best_model()
    test_metrics = evaluate(best, test, task, autocast=recipe.autocast, world=world)
    confusion = confusion_matrix(best, test, info.num_classes, autocast=recipe.autocast, world=world)
    run.log_image("confusion matrix", confusion_image(confusion, info.classes))  # deepboard's Images tab
    return epochs.finish(test=test_metrics)
