"""This process's place among torchrun workers, for every multi-process run (pretraining,
sharded extraction and prediction): one way to join the process group and leave it."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .backbone import resolve_device


@dataclass
class Ranks:
    """RANK / WORLD_SIZE / LOCAL_RANK of this process; ``owned`` when :meth:`join` created
    the process group (and :meth:`close` destroys it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def join(cls, device, timeout: Optional[datetime.timedelta] = None) -> "Ranks":
        """Join the process group torchrun describes (a single process needs none): NCCL on
        CUDA, gloo otherwise; ``timeout`` None keeps torch's default."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", rank))
        cuda = resolve_device(str(device)).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo",
                                **({"timeout": timeout} if timeout is not None else {}))
        return cls(rank, world, local, True)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
