"""Shared fixtures: tiny Fashion-MNIST-format data and a tiny ViT config for end-to-end runs."""

import gzip
import struct

import numpy as np
import pytest
import torch


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(data)


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose bright band position depends on the class, plus noise: learnable but not trivial."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, y in enumerate(labels):
        images[i, 2 * y : 2 * y + 5, :] += 150
    return images.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory):
    """A Fashion-MNIST-format folder: 40 training and 8 test images per class, 10 classes."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 40), ("t10k", 8)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", class_images(labels, rng))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


TINY_MODEL = [  # a random ViT far smaller than the demo's bundled backbone
    "model.backbone=vit_tiny_patch16_224", "model.pretrained=false",
    "model.backbone_args={img_size: 28, patch_size: 7, depth: 3, embed_dim: 32, num_heads: 2}",
    "model.prompt_len=2", "model.pool_size=4", "model.split_block=1", "model.top_k=2",
]


def tiny_run_overrides(root, progress: bool = False) -> list[str]:
    """Overrides that turn the demo preset into a seconds-long run on the tiny data under ``root``."""
    return [
        f"data.root={root}", "data.imbalance_ratio=10", "data.max_per_class=40",
        *TINY_MODEL,
        "phase1.epochs=2", "phase1.batch_size=16", "phase1.lr=0.5",
        "phase2.epochs=1", "phase2.batch_size=16", "phase2.lr=0.5",
        "eval_batch_size=32", f"progress={str(progress).lower()}",
    ]


@pytest.fixture
def tiny_overrides(tiny_fmnist):
    return tiny_run_overrides(tiny_fmnist)


@pytest.fixture(scope="module")
def one_thread():
    """Tensors in some tests are tiny: one thread is fastest, and on a busy 2-core machine two threads
    are 50x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
