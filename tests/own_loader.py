"""An experiment whose training batches are its own DataLoader (what a user writes): registered by the tests that
hold its promise, never by main.py."""
from experiments import declare
from experiments.tabular import check_config, data_fingerprint
from helpers import regression_in_code


def plain_loader(dataset, batch_size, seed, workers):
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       generator=torch.Generator().manual_seed(seed))


def stateful_loader(dataset, batch_size, seed, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def seeded_stateful_loader(dataset, batch_size, seed, workers):
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                              generator=torch.Generator().manual_seed(seed))


def own_loader(make_loader):
    """The tabular recipe with `make_loader(dataset, batch_size, seed, workers)` as its training batches; the MLP has
    dropout, so a resume must restore every random state as well as the loader's."""
    @declare(metrics={"mse": "lower", "mae": "lower", "r2": "higher"}, select="mse", check_config=check_config,
             data_fingerprint=data_fingerprint)
    def experiment(config, run, device, world):
        import torch

        from data.examples import make_example_loaders
        from models.mlp import make_model
        from training.loop import evaluate, train_epoch
        from training.optim import make_optimizer, make_scheduler
        from training.recipe import make_step_recipe
        from training.tasks import Regression
        from utils.epochs import Epochs

        _, val, test, info = make_example_loaders(config, device, seed=config["seed"])
        data = regression_in_code(config["data"])
        dataset = torch.utils.data.TensorDataset(data.train_inputs[:250], data.train_targets[:250])
        train = make_loader(dataset, config["data"]["batch_size"], config["seed"], config["data"].get("workers") or 0)
        recipe = make_step_recipe(config, device)
        model = make_model(config, info, device)
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
        epochs = Epochs(run, model, optimizer, scheduler, train, world=world, verbose=0)
        for epoch in epochs.remaining(config["training"]["num_epochs"]):
            train_metrics = train_epoch(model, train, optimizer, scheduler, Regression(), recipe, epochs.hooks(epoch),
                                        log_every=config["logging"]["log_every"], world=world)
            epochs.end(epoch, step=epoch * len(train), train=train_metrics,
                       val=evaluate(model, val, Regression(), world=world))
        return epochs.finish(test=evaluate(epochs.best_model(), test, Regression(), world=world))
    return experiment
