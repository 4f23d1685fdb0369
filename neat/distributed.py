"""The process group of several training processes under `accelerate launch` / `torchrun`.

The launchers set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_from_env`` joins the process group (gloo on CPU, nccl on CUDA) and returns a `Group`, or
None in a single process. The trainer uses these helpers through its strategy
(`neat.training.strategy`), and keeps its global batch: each micro-batch of ``train.batch_size``
prompts is split across the processes (prompt i goes to process ``i % world_size``), and the
losses are normalised by global counts (see `neat.training.objective.step_loss`), so a run on W
processes takes the same optimizer steps as a single process, up to float rounding.

``train.parallel: fsdp`` shards the weights, gradients and optimizer state instead of replicating
them (PyTorch FSDP2 `fully_shard`: one unit per transformer block, then the root, which holds the
embeddings and a tied LM head). Each process then holds 1/W of the training state; a full copy
exists only while a checkpoint or the policy is gathered on the main process.

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


def base_model(model):
    """The transformers model under a PEFT / DDP wrapper."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    get_base_model = getattr(model, "get_base_model", None)  # peft.PeftModel
    return get_base_model() if callable(get_base_model) else model


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The repeated blocks (decoder layers) transformers declares unsplittable: FSDP's shard units."""
    names = set(getattr(base_model(model), "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_fsdp(model, group: Group):
    """Shard `model` in place across the group with FSDP2 (`fully_shard`); returns it.

    Mixed frozen / trainable parameters (LoRA) in one unit are fine under FSDP2. Build the optimizer
    afterwards: sharding replaces the parameters with DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from neat.errors import NeatError

    blocks = transformer_blocks(model)
    if not blocks:
        raise NeatError(f"train.parallel: fsdp: {type(base_model(model)).__name__} declares no transformer "
                        "block class (_no_split_modules) to shard by; use train.parallel: ddp")
    with torch.no_grad():  # every process starts from the main process's weights, as under DDP
        for tensor in list(model.parameters()) + list(model.buffers()):
            moved = tensor.data.to(group.device)
            dist.broadcast(moved, src=0)
            tensor.data.copy_(moved)
    mesh = init_device_mesh(group.device.type, (group.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_fsdp(model) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed support
        return False
    return isinstance(model, FSDPModule)


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """Collective: full (unsharded) model and optimizer state dicts on CPU, on the main process only
    (empty on the others). Optimizer state is keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    optim = (get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
             if optimizer is not None else None)
    return weights, optim


def load_full_state(model, weights: dict, optimizer=None, optim_state: dict | None = None) -> None:
    """Every process passes the full state read from disk; each keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_full_options(strict=False))
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=_full_options())


def wrap_ddp(model, group: Group):
    """`model` under DistributedDataParallel (the raw model stays usable for generation/saving)."""
    kwargs = {}
    if group.device.type == "cuda":
        kwargs["device_ids"] = [group.device.index if group.device.index is not None else torch.cuda.current_device()]
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)
