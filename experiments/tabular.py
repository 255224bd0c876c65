"""tabular: the smallest experiment for data that is neither images nor text. An MLP predicts a table's target
column(s) from its other columns (data.name: csv), judged by the validation MSE; the lab book is
experiments/tabular.md."""
from experiments import declare


def data_fingerprint(config: dict, cache_path) -> str:
    """What the table is, for the run's identity: the same file anywhere is the same run, one changed value not."""
    from data.registry import data_fingerprint

    return data_fingerprint(config, cache_path)


def check_config(config: dict, world_size: int = 1) -> None:
    """Refuse, before the run is registered, any value its pieces would refuse later: a mistake leaves no row."""
    import data.examples, models.mlp, training.optim, training.recipe, utils.config, utils.epochs  # noqa: E401

    utils.config.require(config, "logging.log_every", int, low=1)
    info = data.examples.check_config(config, world_size)
    if not info.regression:
        from utils.errors import UserError

        raise UserError("tabular predicts values (float targets); this dataset's targets are classes")
    training.recipe.check_config(config, data.examples.smallest_training_batch(config, info, world_size))
    models.mlp.check_config(config)
    training.optim.check_config(config, steps_per_epoch=data.examples.steps_per_epoch(config, info))
    utils.epochs.check_config(config)


def build_model(config: dict, data, device):
    """The MLP of `config` for the examples `data` (a TensorInfo) describes, untrained."""
    from models.mlp import make_model

    return make_model(config, data, device)


def describe_data(config: dict):
    """The TensorInfo of the table `config` names: its columns, sizes and the standardisation of its inputs."""
    from data.registry import describe_data

    return describe_data(config)


def evaluate_model(config: dict, model, data, device) -> dict:
    """The test metrics of a trained `model` on the test rows of the table `config` names, standardised as they were
    for it (`data`, its run's TensorInfo)."""
    from data.examples import make_example_loaders
    from training.loop import evaluate
    from training.recipe import make_step_recipe
    from training.tasks import Regression

    _, _, test, _ = make_example_loaders(config, device, seed=config["seed"], trained_on=data)
    return evaluate(model, test, Regression(), autocast=make_step_recipe(config, device).autocast)


@declare(metrics={"mse": "lower", "mae": "lower", "r2": "higher"}, select="mse", check_config=check_config,
         data_fingerprint=data_fingerprint, flags=("verbose",), config="configs/tabular.yml", model=build_model,
         describe_data=describe_data, evaluate=evaluate_model)
def tabular(config, run, device, world, verbose=1):
    """Train the MLP, keep the epoch with the lowest validation MSE, return its test results."""
    from data.examples import make_example_loaders
    from training.loop import evaluate, train_epoch
    from training.optim import make_optimizer, make_scheduler
    from training.recipe import make_step_recipe
    from training.tasks import Regression
    from utils.epochs import Epochs

    training = config["training"]
    train, val, test, info = make_example_loaders(config, device, seed=config["seed"], world=world)
    recipe = make_step_recipe(config, device)  # precision, clipping, accumulation, compile
    model = recipe.compiled(world.wrap(build_model(config, info, device), device))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
    task = Regression()
    epochs = Epochs(run, model, optimizer, scheduler, train, world=world, verbose=verbose, scaler=recipe.scaler,
                    patience=training.get("patience"), checkpoint_every=training.get("checkpoint_every"))
    if verbose >= 2:
        print(f"run {run.id}: {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
              f"{train.num_samples} train / {val.num_samples} validation / {test.num_samples} test rows, "
              f"{len(info.inputs) if info.inputs else list(info.input_shape)} inputs -> "
              f"{', '.join(info.targets) or f'{info.output_size} values'}")

    for epoch in epochs.remaining(training["num_epochs"]):
        train_metrics = train_epoch(model, train, optimizer, scheduler, task, recipe, epochs.hooks(epoch),
                                    log_every=config["logging"]["log_every"], world=world)
        val_metrics = evaluate(model, val, task, autocast=recipe.autocast, world=world)
        epochs.end(epoch, step=epoch * len(train), train=train_metrics, val=val_metrics)

    test_metrics = evaluate(epochs.best_model(), test, task, autocast=recipe.autocast, world=world)
    return epochs.finish(test=test_metrics)
