"""How batches are drawn: the plans every loader follows, whatever the number of ranks or where a run resumes."""
import torch

from data.plans import EpochPlan, GeneratorDraws, SeededDraws
from utils.distributed import World


def passes(plan, count):
    return [[(index.tolist(), dy.tolist(), dx.tolist()) for index, dy, dx in plan.batches()] for _ in range(count)]


def test_the_ranks_shares_together_are_the_single_process_batch():
    single = passes(EpochPlan(49, 8, SeededDraws(3), shift=2), 2)
    ranks = [passes(EpochPlan(49, 8, SeededDraws(3), shift=2, world=World(rank, 2)), 2) for rank in range(2)]
    for epoch in range(2):
        assert len(single[epoch]) == 7 and len(ranks[0][epoch]) == len(ranks[1][epoch]) == 6  # 1 sample: no share
        for batch in range(6):
            samples = list(zip(*single[epoch][batch]))
            assert samples[0::2] == list(zip(*ranks[0][epoch][batch]))
            assert samples[1::2] == list(zip(*ranks[1][epoch][batch]))


def test_a_sample_sees_what_the_seed_the_pass_and_its_index_say_and_a_restored_state_continues_exactly():
    plans = SeededDraws(7)
    first, second = passes(EpochPlan(30, 4, plans, shift=2), 2)
    assert first != second  # every pass draws anew
    restored = SeededDraws(7)
    restored.set_state(torch.tensor([1]))
    assert passes(EpochPlan(30, 4, restored, shift=2), 1)[0] == second
    by_sample = {}
    for index, dy, dx in (sample for batch in second for sample in zip(*batch)):
        by_sample[index] = (dy, dx)
    assert sorted(by_sample) == list(range(30))
    for batch_size in (3, 30):  # another batching of the same pass: each sample keeps its shift
        other = SeededDraws(7)
        other.set_state(torch.tensor([1]))
        assert all(by_sample[i] == (dy, dx) for batch in passes(EpochPlan(30, batch_size, other, shift=2), 1)[0]
                   for i, dy, dx in zip(*batch))


def test_generator_plans_draw_what_the_built_in_datasets_always_drew():
    """The order of draws of every run recorded before plans existed: the permutation, then per batch dy and dx."""
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(20, generator=generator)
    expected = []
    for start in range(0, 20, 8):
        size = min(8, 20 - start)
        dy, dx = (torch.randint(0, 5, (size,), generator=generator) for _ in "yx")
        expected.append((order[start:start + size].tolist(), dy.tolist(), dx.tolist()))
    plans = GeneratorDraws(5)
    assert passes(EpochPlan(20, 8, plans, shift=2), 1)[0] == expected
    assert torch.equal(plans.get_state(), generator.get_state())
