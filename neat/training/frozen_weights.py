"""Low-precision copies of the frozen Linear weights, swapped in for autocast's training passes.

Autocast casts a float32 weight to bf16 in every forward and caches the cast only for leaves that
require grad, so with LoRA the frozen base weights of every projection are cast again in each forward
of each micro-batch, the anchor's reference pass included (10.6 % of an optimizer step of the embedded
default under the profiler, session 17). Casting them once gives autocast bf16 weights it uses as they
are: the same round-to-nearest-even values, hence the same losses and gradients bit for bit. The
float32 weights are swapped back after each step, so merging, saving and the generation copy see them.

Only `nn.Linear` weights that are frozen and float32 are cast; embeddings and the output head (the
tied head runs in float32 with autocast off, `neat.logprobs`) are left alone.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _embedding_weights(model: nn.Module) -> set[int]:
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(id(module.weight))
    return ids


class FrozenWeightCasts:
    """`with casts():` runs the block with the frozen float32 Linear weights of `model` in `dtype`."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        skip = _embedding_weights(model)
        self.swaps: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        seen: set[int] = set()
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (not isinstance(module, nn.Linear) or not isinstance(weight, nn.Parameter) or weight.requires_grad
                    or weight.dtype != torch.float32 or id(weight) in skip or id(weight) in seen):
                continue
            seen.add(id(weight))
            self.swaps.append((weight, weight.data, weight.data.to(dtype)))

    def __len__(self) -> int:
        return len(self.swaps)

    @contextlib.contextmanager
    def __call__(self):
        for weight, _, low in self.swaps:
            weight.data = low
        try:
            yield
        finally:
            for weight, full, _ in self.swaps:
                weight.data = full
