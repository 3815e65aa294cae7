"""LIFT+'s minimalist data augmentation (data.train_aug=mda): its schedule of the minimum crop scale against the
published functions by hand, its square crops, and its keying by the sample and the epoch."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lpt.config import load_config
from lpt.data import build_datasets, build_train_stream, build_transform, with_transform
from lpt.data.transforms import MinimalistRandomResizedCrop

pytestmark = pytest.mark.usefixtures("one_thread")

# t = epoch / (epochs - 1) at epochs 0, 2, 4 of 5: 0, 0.5, 1. s(0.5): convex 1 - sqrt(0.75), concave sqrt(0.75).
HAND = {"min": [0.08, 0.08, 0.08], "max": [1.0, 1.0, 1.0], "linear": [0.08, 0.08 + 0.92 * 0.5, 1.0],
        "convex": [0.08, 0.08 + 0.92 * (1 - math.sqrt(0.75)), 1.0],
        "concave": [0.08, 0.08 + 0.92 * math.sqrt(0.75), 1.0]}


@pytest.mark.parametrize("schedule", sorted(HAND))
def test_minimum_scale_follows_the_published_schedule(schedule):
    crop = MinimalistRandomResizedCrop(32, schedule)
    got = []
    for epoch in (0, 2, 4):
        crop.set_progress(epoch / 4)
        got.append(crop.min_scale())
    assert got == pytest.approx(HAND[schedule], rel=1e-9)


def published_box(height, width, min_scale):
    """LIFT+'s get_params (utils/transforms.py:52-76) on torch's generator: area, then top, then left."""
    area = height * width
    cap = min(height, width) ** 2 / area
    target = area * torch.empty(1).uniform_(min(min_scale, cap), min(1.0, cap)).item()
    side = int(round(math.sqrt(target)))
    return torch.randint(0, height - side + 1, (1,)).item(), torch.randint(0, width - side + 1, (1,)).item(), side


def test_crop_box_is_the_published_square_draw_and_the_largest_square_at_the_end():
    crop = MinimalistRandomResizedCrop(32, "convex")
    crop.set_progress(0.5)
    for seed in range(50):
        torch.manual_seed(seed)
        ours = crop.box(300, 400)
        torch.manual_seed(seed)
        assert ours == published_box(300, 400, HAND["convex"][1])
        top, left, side = ours
        assert 0 <= top <= 300 - side and 0 <= left <= 400 - side
        assert side ** 2 >= HAND["convex"][1] * 300 * 400 - 2 * side  # the area at least s_min's (rounding)
    crop.set_progress(1.0)
    assert {crop.box(300, 400)[2] for _ in range(20)} == {300}  # s_min = 1: the largest square, anywhere
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    assert crop(photo).size == (32, 32)


def mda_train_set(root, schedule):
    cfg = load_config("demo", [f"data.root={root}", "data.imbalance_ratio=10", "data.max_per_class=40",
                               "data.train_aug=mda", f"data.mda_func={schedule}"])
    train = build_datasets(cfg.data).train
    return cfg, with_transform(train, build_transform(cfg.data, train=True, normalize=False))


def instance_epochs(stream, epochs):
    out = []
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        out.append(torch.cat([step["instance"][0] for step in stream]))
    return out


def test_train_stream_crops_follow_the_epoch_in_every_loader_process(tiny_fmnist):
    """Linear schedule over 3 epochs: epoch 2 has s_min = 1, so every crop is the whole (square) image, which is
    what the evaluation transform gives; epoch 0 crops at random; 0 or 2 loader processes see the same."""
    cfg, data = mda_train_set(tiny_fmnist, "linear")
    runs = [instance_epochs(build_train_stream(data, "instance", 16, 4, workers, seed=3, epochs=3), 3)
            for workers in (0, 2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    stream = build_train_stream(data, "instance", 16, 4, 0, seed=3, epochs=3)
    whole = with_transform(data, build_transform(cfg.data, train=False, normalize=False))
    uncropped = []
    for epoch in (0, 2):
        stream.set_epoch(epoch)
        order = [i for i, _, _ in stream.loaders["instance"].sampler][:len(runs[0][epoch])]
        uncropped.append(torch.equal(runs[0][epoch], torch.stack([whole[i][0] for i in order])))
    assert uncropped == [False, True]
