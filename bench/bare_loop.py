"""The same config trained by a bare loop: no run table, no checkpoints, no per-epoch validation, no provenance.

    python bench/bare_loop.py CONFIG DATA SEED [--cpu]

The yardstick of the template's own cost: the benchmark times this process and the template's main.py on the same
config and seed, from process start to the printed test accuracy (of the last epoch's model here; of the epoch
validation picked there).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(config_path, data, seed, force_cpu=False):
    from data.loaders import make_loaders
    from models.cnn import make_model
    from training.loop import evaluate, train_epoch
    from training.tasks import Classification
    from training.optim import make_optimizer, make_scheduler
    from training.recipe import make_step_recipe
    from utils.config import load_config, without_keys
    from utils.device import keep_freed_memory, pick_device, set_threads
    from utils.seed import seed_everything

    config = without_keys(load_config(config_path), set())  # a key set to null is not set, as in a run
    config["data"]["path"], config["seed"] = data, seed
    training = config["training"]
    keep_freed_memory()
    set_threads(training["threads"])
    seed_everything(seed, deterministic=training["deterministic"])
    device = pick_device(force_cpu)
    recipe = make_step_recipe(config, device)
    train, _, test, info = make_loaders(config, device, seed=seed)
    model = make_model(config, info, device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(train))
    for _ in range(training["num_epochs"]):
        train_epoch(model, train, optimizer, scheduler, Classification(label_smoothing=training["label_smoothing"]),
                    recipe)
    print(f"test_accuracy {evaluate(model, test, Classification(), autocast=recipe.autocast)['accuracy']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), force_cpu="--cpu" in sys.argv)
