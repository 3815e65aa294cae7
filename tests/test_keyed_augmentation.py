"""Augmentation keyed by the sample: the transformed training images of an epoch do not depend on the number of
loader processes or ranks (data.num_workers, torchrun), so a resumed run with workers is exact too."""

import subprocess

import pytest
import torch

from lpt.config import load_config
from lpt.data import build_datasets, build_train_stream, build_transform, with_transform
from lpt.data.samplers import KeyedAugmentation, sample_key
from tests.test_resume import command, comparable, kill_at_a_random_step_and_resume

pytestmark = pytest.mark.usefixtures("one_thread")


def augmented_train_set(root):
    cfg = load_config("demo", [f"data.root={root}", "data.imbalance_ratio=10", "data.max_per_class=40",
                               "data.train_aug=rrc_flip"])
    train = build_datasets(cfg.data).train
    return with_transform(train, build_transform(cfg.data, train=True, normalize=False))


def epochs_of(stream, epochs=2):
    """Every batch of the first ``epochs`` epochs, per stream, in order."""
    out = []
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        out += [{k: (x.clone(), y.clone()) for k, (x, y) in step.items()} for step in stream]
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for step_a, step_b in zip(a, b):
        assert step_a.keys() == step_b.keys()
        for k in step_a:
            assert torch.equal(step_a[k][0], step_b[k][0]) and torch.equal(step_a[k][1], step_b[k][1])


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # 3 on 2 cores, as asked
def test_augmentation_does_not_depend_on_the_number_of_loader_processes(tiny_fmnist):
    data = augmented_train_set(tiny_fmnist)
    runs = [epochs_of(build_train_stream(data, "dual", 16, 4, workers, seed=3)) for workers in (0, 1, 3)]
    assert_same(runs[0], runs[1])
    assert_same(runs[0], runs[2])
    unkeyed = epochs_of(build_train_stream(data, "dual", 16, 4, 0, seed=3, keyed=False))
    assert not torch.equal(unkeyed[0]["instance"][0], runs[0][0]["instance"][0])  # the images are augmented


def test_two_ranks_together_see_what_one_process_sees(tiny_fmnist):
    data = augmented_train_set(tiny_fmnist)
    single = epochs_of(build_train_stream(data, "dual", 16, 4, 0, seed=3, rank=0, world_size=1))
    ranks = [epochs_of(build_train_stream(data, "dual", 8, 4, 0, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    for step, (one, two) in enumerate(zip(ranks[0], ranks[1])):
        for k in single[step]:  # rank r holds the global positions r, r + 2, ...: interleave them
            x = torch.stack([one[k][0], two[k][0]], dim=1).flatten(0, 1)
            y = torch.stack([one[k][1], two[k][1]], dim=1).flatten(0, 1)
            assert torch.equal(x, single[step][k][0]) and torch.equal(y, single[step][k][1])


def test_sample_keys_differ_by_every_part_and_repeat_exactly():
    keys = {sample_key(0, 0, 0, 0), sample_key(1, 0, 0, 0), sample_key(0, 1, 0, 0), sample_key(0, 0, 1, 0),
            sample_key(0, 0, 0, 1)}
    assert len(keys) == 5 and sample_key(7, 2, 1, 99) == sample_key(7, 2, 1, 99)
    assert all(0 <= k < 2**63 for k in keys)


WORKERS = ["data.num_workers=2", "data.train_aug=crop_flip"]  # random crops and flips from 2 loader processes


@pytest.fixture(scope="module")
def uninterrupted_with_workers(tiny_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_workers") / "full"
    subprocess.run(command(tiny_fmnist, out) + WORKERS, check=True, capture_output=True, text=True)
    return comparable(out)


def test_sigkill_with_loader_processes_then_resume_gives_the_uninterrupted_run(tiny_fmnist, tmp_path,
                                                                              uninterrupted_with_workers):
    out = tmp_path / "killed"
    reached = kill_at_a_random_step_and_resume(command(tiny_fmnist, out) + WORKERS, out)
    assert comparable(out) == uninterrupted_with_workers, f"killed at {reached}"


def test_a_key_draws_what_torch_manual_seed_of_it_draws_and_leaves_the_callers_generator():
    class Draw:
        targets = [0]

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.rand(3), torch.randint(0, 1000, (2,))

    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    keyed = KeyedAugmentation(Draw())[(0, 12345, 0.0)]
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(12345)
    plain = Draw()[0]
    assert torch.equal(keyed[0], plain[0]) and torch.equal(keyed[1], plain[1])
