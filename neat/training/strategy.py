"""How a training run is spread over processes: one process, DDP or FSDP behind one interface
(as OpenRLHF's `strategy`), so the `Trainer` never branches on it.

A strategy wraps the model for the forward/backward passes, splits each micro-batch across the
processes, says when gradients are synchronised, sums metrics over the processes, clips and steps,
and gathers / places the full training state for checkpoints and for the saved policy. The process
group itself (joining it, sharding, gathering) is `neat.distributed`'s.

- `SingleProcess`: the model as it is; every collective is the identity.
- `DataParallel` (`train.parallel: ddp`): the model replicated under DistributedDataParallel; the
  gradients are averaged after the last micro-batch of a step (`no_sync` before it).
- `FullyShardedDataParallel` (`train.parallel: fsdp`): weights, gradients and optimizer state
  sharded (FSDP2); the full state exists only while a checkpoint or the policy is gathered.
"""

from __future__ import annotations

import contextlib

import torch

from neat.training.checkpoint import trainable_state


class SingleProcess:
    """One process: the model as it is, the collectives the identity."""

    name = "single"
    rank, world_size, is_main = 0, 1, True
    checkpoint_info: dict = {}  # what a checkpoint records of the layout its state was saved in

    def wrap(self, model):
        """The model the forward and backward passes run through (the raw one stays usable for
        sampling and saving); build the optimizer afterwards."""
        self.model = self.forward_model = model
        return model

    def shard(self, groups: list) -> tuple[list, bool]:
        """This process's prompts of a micro-batch, and whether it has none (a phantom: it still runs
        one prompt, with weight 0, to take part in the collectives)."""
        return groups, False

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        pass

    def main_says(self, flag: bool) -> bool:
        """The main process's `flag`, on every process (a file check must not race with the main's writes)."""
        return flag

    def gradient_sync(self, last: bool):
        """Around one micro-batch's forward and backward: gradients are synchronised over the
        processes only after the `last` micro-batch of the optimizer step."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, parameters: list, max_norm: float) -> torch.Tensor:
        """Clip the gradients; returns their total norm (over every process)."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def optimizer_step(self, optimizer, scheduler) -> None:
        optimizer.step()
        scheduler.step()

    def full_policy(self, rebuild):
        """Collective: the policy with full weights on the main process (None on the others).
        `rebuild()` makes a fresh unsharded policy, for strategies that hold only a shard."""
        return self.model if self.is_main else None

    def training_state(self, optimizer) -> tuple[dict, dict] | None:
        """Collective: (full trainable weights, full optimizer state) on the main process, None on the others."""
        return (trainable_state(self.model), optimizer.state_dict()) if self.is_main else None

    def load_training_state(self, optimizer, weights: dict, optimizer_state: dict) -> None:
        """Every process places the full state read from a checkpoint."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(optimizer_state)


class DataParallel(SingleProcess):
    """Several processes, the model replicated (DDP); each takes a shard of every micro-batch."""

    name = "ddp"

    def __init__(self, group):
        self.group = group
        self.rank, self.world_size, self.is_main = group.rank, group.world_size, group.is_main

    def wrap(self, model):
        from neat.distributed import wrap_ddp

        self.model, self.forward_model = model, wrap_ddp(model, self.group)
        return self.forward_model

    def shard(self, groups: list) -> tuple[list, bool]:
        mine = self.group.shard(groups)
        return (mine, False) if mine else (groups[:1], True)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.group.all_sum(tensor)

    def barrier(self) -> None:
        self.group.barrier()

    def main_says(self, flag: bool) -> bool:
        return bool(self.all_sum(torch.tensor([float(flag and self.is_main)], dtype=torch.float64))[0] > 0)

    def gradient_sync(self, last: bool):
        return contextlib.nullcontext() if last else self.forward_model.no_sync()


class FullyShardedDataParallel(DataParallel):
    """Several processes, weights, gradients and optimizer state sharded (FSDP2)."""

    name = "fsdp"
    checkpoint_info = {"layout": "fsdp"}

    def wrap(self, model):
        from neat.distributed import shard_fsdp

        # named before sharding, which replaces the parameters with DTensors
        self.trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
        self.model = self.forward_model = shard_fsdp(model, self.group)
        return model

    def gradient_sync(self, last: bool):
        self.forward_model.set_requires_gradient_sync(last)  # reduce-scatter only after the last micro-batch
        return contextlib.nullcontext()

    def clip_grad_norm(self, parameters: list, max_norm: float) -> torch.Tensor:
        norm = super().clip_grad_norm(parameters, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor, already reduced

    def full_policy(self, rebuild):
        from neat.distributed import gather_full_state

        weights, _ = gather_full_state(self.model)
        if not self.is_main:
            return None
        copy = rebuild()
        copy.load_state_dict(weights, strict=True)
        return copy

    def training_state(self, optimizer) -> tuple[dict, dict] | None:
        from neat.distributed import gather_full_state

        weights, optim = gather_full_state(self.model, optimizer)
        if not self.is_main:
            return None
        return {k: v for k, v in weights.items() if k in self.trainable_names}, optim

    def load_training_state(self, optimizer, weights: dict, optimizer_state: dict) -> None:
        from neat.distributed import load_full_state

        load_full_state(self.model, weights, optimizer, optimizer_state)


def strategy_for(model, parallel: str) -> SingleProcess:
    """Join the process group the launcher set up (`accelerate launch` / `torchrun`) and pick the
    strategy: `SingleProcess` without one, else `train.parallel`'s (ddp or fsdp)."""
    from neat.distributed import init_from_env

    group = init_from_env(next(model.parameters()).device)
    if group is None:
        return SingleProcess()
    return FullyShardedDataParallel(group) if parallel == "fsdp" else DataParallel(group)
