"""The optimizer factory: weight decay on weight matrices only, and implementations that keep or change the numbers."""
import copy

import pytest
import torch
import yaml

from helpers import REPO, query, tiny_in_process
from models.cnn import CNN
from models.transformer import CharTransformer
from training.optim import make_optimizer


def config_with(**training):
    config = yaml.safe_load((REPO / "configs" / "config.yml").read_text())
    config["training"].update(training)
    return config


def decayed(optimizer, model):
    """{parameter name: its weight decay} under `optimizer`."""
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    return {name: decay[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}


def test_with_the_matrices_scope_only_weight_matrices_decay():
    cnn = CNN(channels=(4, 8), hidden=16, pool_first=True)
    decay = decayed(make_optimizer(cnn, config_with(weight_decay_scope="matrices")), cnn)
    assert {name for name, value in decay.items() if value} == {
        "features.0.weight", "features.4.weight", "classifier.1.weight", "classifier.4.weight"}  # convs, linears
    assert set(decay.values()) == {5e-4, 0.0}

    model = CharTransformer(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)
    decay = decayed(make_optimizer(model, config_with(weight_decay_scope="matrices")), model)
    assert {name for name, value in decay.items() if value} == {
        "blocks.0.attention.qkv.weight", "blocks.0.attention.proj.weight", "blocks.0.mlp.0.weight",
        "blocks.0.mlp.2.weight"}
    assert decay["head.weight"] == decay["token_embedding.weight"] == 0.0  # tied to the embedding: an embedding
    assert all(value == 5e-4 for value in decayed(make_optimizer(model, config_with()), model).values())


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_the_multi_tensor_step_the_cpu_takes_gives_the_numbers_of_the_one_tensor_loop(optimizer, model):
    torch.manual_seed(0)
    built = (CNN(channels=(8, 16), hidden=32, pool_first=True) if model == "cnn"
             else CharTransformer(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32))
    config = config_with(optimizer=optimizer, weight_decay=0.1)
    trained = []
    for implementation in ("foreach", "loop"):
        copy_ = copy.deepcopy(built)
        step = make_optimizer(copy_, config)
        assert step.defaults["foreach"] is True  # what the factory takes on the CPU
        if implementation == "loop":
            for group in step.param_groups:
                group["foreach"] = False
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            if model == "cnn":
                inputs, targets = torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,),
                                                                                                generator=generator)
            else:
                inputs, targets = (torch.randint(0, 30, (4, 16), generator=generator) for _ in "xy")
            copy_.eval()  # no dropout draws: both see the same function
            loss = torch.nn.functional.cross_entropy(copy_(inputs).flatten(0, -2), targets.flatten())
            step.zero_grad()
            loss.backward()
            step.step()
        trained.append(torch.cat([p.detach().flatten() for p in copy_.parameters()]))
    assert torch.equal(*trained)


@pytest.mark.slow
def test_fused_kernels_are_a_run_of_their_own(workdir):
    assert tiny_in_process(workdir).returncode == 0
    fused = tiny_in_process(workdir, "--config.training.fused=true")
    assert fused.returncode == 0, fused.stderr
    db = workdir / "results" / "resultTable.db"
    assert query(db, "SELECT COUNT(DISTINCT config_hash) FROM Experiments") == [(2,)]
