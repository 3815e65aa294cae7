"""torch.distributed set-up for torchrun: one process per GPU (nccl) or per CPU worker (gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of the trainable gradients across ranks. Only prompts, keys and the head train, so
        this is a small all-reduce; it keeps the method's own forward (no DDP wrapper needed)."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes in the environment; one process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(), device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return DistContext(rank, dist.get_world_size()), device
