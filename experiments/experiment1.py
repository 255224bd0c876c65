"""experiment1: the baseline. A small CNN trained on MNIST; the lab book is experiments/experiment1.md."""
import time


def experiment1(config, run, device, watch="accuracy", verbose=1, world=None):
    """Train the CNN on `device`, keep the epoch with the best validation `watch` metric, record its test accuracy.

    `world` is set under torchrun: the model is wrapped for data parallelism and only rank 0 writes checkpoints.
    """
    # Heavy imports live here, not at the top, so that a refused launch (duplicate, bad flag) answers without torch.
    from data.mnist import make_loaders
    from models.cnn import make_model
    from training.loop import evaluate, train_epoch
    from training.optim import make_optimizer, make_scheduler
    from utils.checkpoint import load_checkpoint, load_training_state, save_checkpoint, save_training_state
    from utils.device import autocast_dtype, set_threads
    from utils.distributed import World
    from utils.seed import seed_everything

    world = world or World()
    training = config["training"]
    threads = set_threads(training["threads"], processes_per_machine=world.local_size)
    autocast = autocast_dtype(training["autocast"], device)
    seed_everything(config["seed"], deterministic=training["deterministic"])
    train, val, test = make_loaders(config, device, seed=config["seed"], world=world)
    model = world.wrap(make_model(config, device), device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
    run.log_hparams({
        "learning_rate": training["learning_rate"], "weight_decay": training["weight_decay"],
        "batch_size": config["data"]["batch_size"], "num_epochs": training["num_epochs"],
        "dropout": config["model"]["dropout"], "optimizer": training["optimizer"], "schedule": training["schedule"],
        "label_smoothing": training["label_smoothing"], "augment_shift": config["data"]["augment_shift"],
        "channels": config["model"]["channels"], "seed": config["seed"], "watch": watch, "threads": threads,
        "autocast": str(autocast).replace("torch.", "") if autocast else "off", "world_size": world.size,
    })
    if verbose >= 2:
        print(f"run {run.id}: {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
              f"{train.num_samples} train / {val.num_samples} validation / {test.num_samples} test images, "
              f"checkpoints in {run.folder}")

    best_path, last_path = run.folder / "best.pt", run.folder / "last.pt"
    best_value, best_epoch, done_epochs = None, None, 0
    if run.resumed:  # continue a failed run from its last finished epoch, exactly as if it had never stopped
        if last_path.exists():
            state = load_training_state(last_path, model, optimizer, scheduler, train.generator, device)
            best_value, best_epoch, done_epochs = state["best_value"], state["best_epoch"], state["epoch"]
        run.discard_logs_after(step=done_epochs * len(train))
        if verbose >= 1:
            print(f"run {run.id}: resuming after epoch {done_epochs}")

    for epoch in range(done_epochs + 1, training["num_epochs"] + 1):
        def log_step(step, loss, epoch=epoch):
            run.log_scalar("train/step_loss", loss, step=step, epoch=epoch)
            if verbose >= 3:
                print(f"  step {step}: loss {loss:.4f}")

        started = time.perf_counter()
        train_metrics = train_epoch(
            model, train, optimizer, scheduler, label_smoothing=training["label_smoothing"],
            first_step=(epoch - 1) * len(train), log_every=config["logging"]["log_every"], log_step=log_step,
            progress=f"epoch {epoch}/{training['num_epochs']}" if verbose >= 1 else None, autocast=autocast,
            world=world)
        epoch_time = time.perf_counter() - started
        val_metrics = evaluate(model, val, autocast=autocast, world=world)
        # Timings are the only values that differ between identical runs; their names say so ("time", "throughput").
        train_metrics.update(epoch_time=epoch_time, throughput=train.num_samples / epoch_time)
        for split, metrics in (("train", train_metrics), ("val", val_metrics)):
            for name, value in metrics.items():
                run.log_scalar(f"{split}/{name}", value, step=epoch * len(train), epoch=epoch)

        value = val_metrics[watch]
        improved = best_value is None or (value > best_value if watch == "accuracy" else value < best_value)
        if improved:
            best_value, best_epoch = value, epoch
        if world.is_main:
            if improved:
                save_checkpoint(best_path, model, epoch=epoch, watch=watch, value=value)
            save_training_state(last_path, model, optimizer, scheduler, train.generator,
                                epoch=epoch, best_value=best_value, best_epoch=best_epoch)
        run.flush()  # what an epoch logged survives even a SIGKILL
        if verbose >= 1:
            print(f"epoch {epoch}/{training['num_epochs']}: train loss {train_metrics['loss']:.4f} "
                  f"acc {train_metrics['accuracy']:.4f} | val loss {val_metrics['loss']:.4f} "
                  f"acc {val_metrics['accuracy']:.4f} | {epoch_time:.1f}s{' *' if improved else ''}", flush=True)

    if world.distributed:
        weights = world.check_same_weights(model)  # every rank must end with the same bytes
        if verbose >= 1:
            print(f"final weights identical on all {world.size} ranks (sha256 {weights[:16]})")
    world.barrier()  # rank 0 has written the best checkpoint
    load_checkpoint(best_path, model, device)  # the test set sees only the model that validation picked
    test_metrics = evaluate(model, test, autocast=autocast, world=world)
    results = {"test_accuracy": test_metrics["accuracy"], "test_loss": test_metrics["loss"],
               "best_epoch": best_epoch, f"best_val_{watch}": best_value}
    run.finish(results)
    return results
