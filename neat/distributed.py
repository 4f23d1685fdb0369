"""Several training processes (DDP) under `accelerate launch` / `torchrun`.

The launchers set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_from_env`` joins the process group (gloo on CPU, nccl on CUDA) and returns a `Group`, or
None in a single process. The trainer keeps its global batch: each micro-batch of
``train.batch_size`` prompts is split across the processes (prompt i goes to process
``i % world_size``), and the losses are normalised by global counts (see `neat.train.step_loss`),
so a run on W processes takes the same optimizer steps as a single process, up to float rounding.

    accelerate launch --multi_gpu --num_processes 2 -m neat.cli train      # CPU: gloo, GPU: nccl
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Group:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (float64 on CPU for gloo; moved to the device for nccl)."""
        backend = dist.get_backend()
        t = tensor.to(self.device) if backend == "nccl" else tensor.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def barrier(self) -> None:
        dist.barrier()

    def shard(self, items: list) -> list:
        return items[self.rank :: self.world_size]


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(device: torch.device | None = None) -> Group | None:
    """Join the process group the launcher set up; None when there is a single process."""
    if world_size_from_env() <= 1 and not (dist.is_available() and dist.is_initialized()):
        return None
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=60))
    if dist.get_world_size() <= 1:
        return None
    return Group(dist.get_rank(), dist.get_world_size(), device or torch.device("cpu"))


def wrap_ddp(model, group: Group):
    """`model` under DistributedDataParallel (the raw model stays usable for generation/saving)."""
    kwargs = {}
    if group.device.type == "cuda":
        kwargs["device_ids"] = [group.device.index if group.device.index is not None else torch.cuda.current_device()]
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)
