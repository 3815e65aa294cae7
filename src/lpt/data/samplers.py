"""Samplers for instance-balanced and class-balanced batches, and the dual-sampling train stream.

LPT phase 2 (Dong et al., ICLR 2023) takes, every iteration, one class-balanced batch (the
class-aware sampler of the published LPT/PaCo code: pick a class uniformly, then
``samples_per_class`` of its images) and one instance-balanced batch (a plain shuffle).

Every sampler builds one global sequence from ``(seed, epoch)`` alone, identical on every rank,
and rank ``r`` of ``w`` takes positions ``r, r + w, r + 2w, ...``: shards never overlap and
their union is the single-process sequence. Call ``set_epoch`` before each epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from lpt.config import ConfigError
from lpt.utils import ignore_stop_signals

SAMPLING = ("dual", "instance", "balanced")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): the given values, else torch.distributed's when initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    return rank, world_size


class _ShardedSampler(Sampler[int]):
    """A global sequence of ``total`` indices per epoch, sharded by position across ranks."""

    def __init__(self, total: int, seed: int, rank: int | None, world_size: int | None):
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.total = math.ceil(total / self.world_size) * self.world_size  # every rank gets as many
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.key_salt: int | None = None  # set: yield (index, augmentation key, progress) (keyed_augmentation)
        self.epochs = 1  # the phase's epochs: the progress of epoch e is e / (epochs - 1) (data.train_aug=mda)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch whose sequence the next iteration yields, leaving out this rank's first
        ``skip`` indices (a run resumed mid-epoch)."""
        self.epoch = epoch
        self.skip = skip

    def global_order(self) -> list[int]:
        """The whole epoch's sequence, of length ``total``, identical on every rank."""
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        indices = self.global_order()[self.rank::self.world_size][self.skip:]
        if self.key_salt is None:
            return iter(indices)
        positions = range(self.rank + self.skip * self.world_size, self.total, self.world_size)
        progress = self.epoch / (self.epochs - 1) if self.epochs > 1 else 0.0
        return ((index, sample_key(self.seed, self.epoch, self.key_salt, p), progress)
                for index, p in zip(indices, positions))

    def __len__(self) -> int:
        return self.total // self.world_size


class InstanceSampler(_ShardedSampler):
    """Every image once per epoch in a seeded random order (torch.randperm seeded with seed + epoch).

    The permutation is extended by wrapping around to ``num_samples`` (default ``num_items``)
    rounded up to a multiple of world_size, as torch's DistributedSampler pads.

    Args:
        num_items: dataset size N.
        seed: seed of the permutation; epoch ``e`` uses ``seed + e``.
        rank, world_size: this process's shard; default from torch.distributed, else 0 and 1.
        num_samples: length of the global sequence before rounding; wraps past N if larger.
    """

    def __init__(self, num_items: int, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 *, num_samples: int | None = None):
        if num_items < 1:
            raise ValueError(f"InstanceSampler needs at least one item, got {num_items}")
        super().__init__(num_items if num_samples is None else num_samples, seed, rank, world_size)
        self.num_items = num_items

    def global_order(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.num_items, generator=gen)
        return perm.repeat(math.ceil(self.total / self.num_items))[: self.total].tolist()


class _Cycle:
    """Endless walk through items, reshuffled at the start of every pass (RandomCycleIter of the LPT code)."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator):
        self.items, self.rng = items, rng
        self.order, self.pos = items, len(items)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == len(self.items):
                self.order, self.pos = self.rng.permutation(self.items), 0
            n = min(k - len(out), len(self.items) - self.pos)
            out.extend(self.order[self.pos:self.pos + n].tolist())
            self.pos += n
        return out


class ClassBalancedSampler(_ShardedSampler):
    """Class-aware sampling: a uniformly cycled class, then ``samples_per_class`` of its images.

    Classes are visited in a shuffled order, reshuffled after each full pass, so over any whole
    number of passes every class with images is picked equally often; classes without images
    are never picked. Each class's images are cycled the same way.

    Args:
        targets: label of every image.
        samples_per_class: consecutive images taken from each picked class.
        num_samples: length of the global sequence (default len(targets)), rounded up to a
            multiple of world_size.
        seed: with the epoch, seeds the numpy Generator that does all shuffles.
        rank, world_size: this process's shard; default from torch.distributed, else 0 and 1.
    """

    def __init__(self, targets: Sequence[int], samples_per_class: int = 4, num_samples: int | None = None,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None):
        labels = np.asarray(targets, dtype=np.int64)
        if labels.size == 0 or samples_per_class < 1:
            raise ValueError(f"ClassBalancedSampler needs images and samples_per_class >= 1, got {labels.size} "
                             f"images and {samples_per_class}")
        super().__init__(len(labels) if num_samples is None else num_samples, seed, rank, world_size)
        self.samples_per_class = samples_per_class
        self.class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def global_order(self) -> list[int]:
        rng = np.random.default_rng([self.seed % 2**64, self.epoch])
        classes = _Cycle(np.arange(len(self.class_indices)), rng)
        images = [_Cycle(idx, rng) for idx in self.class_indices]
        order: list[int] = []
        while len(order) < self.total:
            order.extend(images[classes.take(1)[0]].take(self.samples_per_class))
        return order[: self.total]


# ----------------------------------------------------------------------------- train stream


def sample_key(seed: int, epoch: int, stream: int, position: int) -> int:
    """The seed of one sample's augmentation: a function of the run's seed, the epoch, the stream and the
    sample's position in the epoch's global sequence only, so neither loader processes, ranks nor a resume
    point change what an image gets."""
    return int(np.random.SeedSequence([seed % 2**64, epoch, stream, position]).generate_state(1, np.uint64)[0] >> 1)


class KeyedAugmentation(Dataset):
    """``dataset[index]`` with torch's CPU generator seeded by the sampler's key for that sample, the caller's
    generator state left as it was (torchvision's random transforms draw from torch's CPU generator), and the
    phase's progress (epoch / (epochs - 1)) told to the transforms that follow a schedule over the epochs
    (``set_progress``: MDA's crop), so that they too depend on nothing but the sample's place in the run.

    Only the CPU generator is seeded: ``torch.manual_seed`` would also reseed every CUDA generator (clobbering the
    training process's with ``num_workers=0``; fork_rng restores the CPU one only), and where CUDA is not yet
    initialised (loader processes, CPU runs) it records a stack trace per call, about 0.3-1 ms a sample.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        steps = getattr(getattr(dataset, "transform", None), "transforms", ())
        self.scheduled = [t for t in steps if hasattr(t, "set_progress")]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, float]):
        index, key, progress = item
        for transform in self.scheduled:
            transform.set_progress(progress)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(key)
            return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and random from the worker's torch seed; stop signals are the main
    process's (:func:`lpt.utils.ignore_stop_signals`)."""
    ignore_stop_signals()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class TrainStream:
    """One epoch of training steps, each a dict of batches keyed by stream.

    A step is ``{"balanced": (images, labels), "instance": (images, labels)}`` for dual sampling,
    and holds only the one key of ``balanced`` or ``instance`` sampling; images are
    [batch_size, 3, S, S], labels int64 [batch_size].

    Args:
        loaders: DataLoader per key, each giving at least ``iterations`` batches per epoch.
        iterations: steps per epoch.
    """

    def __init__(self, loaders: dict[str, DataLoader], iterations: int):
        self.loaders, self.iterations = loaders, iterations
        self.start_step = 0
        self.finish: Callable[[torch.Tensor], torch.Tensor] | None = None  # on the device, e.g. BatchNormalize

    def __len__(self) -> int:
        return self.iterations

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Reseed every sampler for ``epoch``; the next iteration starts at step ``start_step`` and
        yields exactly what an iteration from step 0 would have yielded from there on."""
        for loader in self.loaders.values():
            loader.sampler.set_epoch(epoch, skip=start_step * loader.batch_size)
        self.start_step = start_step

    def __iter__(self) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        iters = {key: iter(loader) for key, loader in self.loaders.items()}
        for _ in range(self.start_step, self.iterations):
            yield {key: next(it) for key, it in iters.items()}


def _loader(dataset: Dataset, sampler: _ShardedSampler, batch_size: int, num_workers: int, pin_memory: bool,
            seed: int, collate: Callable | None) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        collate_fn=collate,
        drop_last=len(sampler) >= batch_size, persistent_workers=num_workers > 0, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),  # base seed of the workers' augmentation
    )


def build_train_stream(dataset: Dataset, sampling: str, batch_size: int, samples_per_class: int, num_workers: int,
                       seed: int, rank: int | None = None, world_size: int | None = None,
                       pin_memory: bool = False, keyed: bool = True, collate: Callable | None = None,
                       epochs: int = 1) -> TrainStream:
    """The training batches of one rank for ``dual``, ``instance`` or ``balanced`` sampling.

    An epoch has ``ceil(N / (batch_size * world_size))`` steps in every mode. Each stream's
    sequence is padded by wrapping so that every step gets a full batch of ``batch_size`` per
    rank; only when N < batch_size * world_size is the single instance batch smaller.

    Args:
        dataset: training dataset with a ``targets`` list of labels; N = len(dataset).
        sampling: ``dual`` (keys balanced and instance), ``instance`` or ``balanced``.
        batch_size: images per batch, per stream and per rank.
        samples_per_class: images per picked class in the balanced stream.
        num_workers: DataLoader worker processes per stream (persistent when > 0).
        seed: seed of the samplers (with the epoch) and of the workers.
        rank, world_size: this process's shard; default from torch.distributed, else 0 and 1.
        pin_memory: DataLoader pin_memory.
        keyed: seed each sample's random transform from (seed, epoch, stream, position) (:func:`sample_key`):
            augmentation independent of loader processes, ranks and resume point.
        collate: the DataLoaders' ``collate_fn``; None: PyTorch's default (``data.decode=gpu`` keeps JPEG bytes).
        epochs: the phase's epochs, over which a keyed transform's schedule runs (``data.train_aug=mda``).
    """
    if sampling not in SAMPLING:
        raise ConfigError(f"sampling is {sampling!r}; expected one of {', '.join(SAMPLING)}")
    if len(dataset) == 0 or batch_size < 1:
        raise ConfigError(f"training needs images and batch_size >= 1; got {len(dataset)} images, "
                          f"batch_size {batch_size}")
    rank, world_size = resolve_rank(rank, world_size)
    global_batch = batch_size * world_size
    iterations = math.ceil(len(dataset) / global_batch)
    samplers: dict[str, _ShardedSampler] = {}
    if sampling in ("dual", "balanced"):
        samplers["balanced"] = ClassBalancedSampler(dataset.targets, samples_per_class, iterations * global_batch,
                                                    seed, rank, world_size)
    if sampling in ("dual", "instance"):
        num_samples = iterations * global_batch if len(dataset) >= global_batch else len(dataset)
        samplers["instance"] = InstanceSampler(len(dataset), seed, rank, world_size, num_samples=num_samples)
    if keyed:
        dataset = KeyedAugmentation(dataset)
    loaders = {}
    for i, (key, sampler) in enumerate(samplers.items()):  # i: the stream, in its seed and its samples' keys
        sampler.key_salt = i if keyed else None
        sampler.epochs = epochs
        loaders[key] = _loader(dataset, sampler, batch_size, num_workers, pin_memory, _stream_seed(seed, rank, i),
                               collate)
    return TrainStream(loaders, iterations)


def _stream_seed(seed: int, rank: int, stream: int) -> int:
    """A distinct worker base seed per (seed, rank, stream)."""
    return int(np.random.SeedSequence([seed % 2**64, rank, stream]).generate_state(1)[0])
