"""oneDNN-packed Linear weights for CPU generation.

`F.linear` on CPU hands oneDNN a plain weight, which it reorders into its blocked layout on every call.
In a decode step of SmolLM2-135M (211 Linear calls at ~14 rows) that reorder costs about a third of the
time spent in the linears (a step: 41 -> 35 ms). `pack_linears` reorders each weight once
(`torch.ops.mkldnn._reorder_linear_weight`, the op inductor's CPU freezing uses) and points the layer's
forward at `torch.ops.mkldnn._linear_pointwise`, which runs the same oneDNN kernel on the blocked weight:
outputs are the same bits as `F.linear`'s.

Only for inference copies (`neat.generation.generation_copy`): the packed tensor has no autograd, and the
copy's parameters must be packed again after they are written (`pack_linears` does both). The packed
weights sit beside the plain ones (270 MB more for SmolLM2 in bf16).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

ROWS_HINT = 16  # oneDNN's hint for the rows per call; any row count still runs, and gives the same bits
# Above this many rows (prefill) the plain call was faster on SmolLM2's shapes (2-core AMX Xeon, bf16: 1.3-1.5x
# faster at 8-256 rows, 1.1-1.4x slower at 512-2048; `python benchmarks/packed_linear.py`).
PACKED_MAX_ROWS = 256
_verified: dict[tuple[torch.dtype, int, int], bool] = {}
_enabled = True


def use_packed_weights(enabled: bool) -> None:
    """Turn packing on or off for later `pack_linears` calls (benchmarks compare the two; outputs are equal)."""
    global _enabled
    _enabled = enabled


def packing_available(dtype: torch.dtype, out_features: int = 48, in_features: int = 40) -> bool:
    """True where packed weights give `F.linear`'s exact outputs for an `out_features x in_features` layer in
    `dtype` on this CPU, checked once per shape on random values at row counts up to `PACKED_MAX_ROWS`
    (oneDNN picks its kernels by shape: on SmolLM2's layers the two calls part above 288 rows); False without
    oneDNN, on an op this torch lacks, or on any difference."""
    key = (dtype, out_features, in_features)
    if key not in _verified:
        _verified[key] = _check(*key)
    return _verified[key]


def _check(dtype: torch.dtype, out_features: int, in_features: int) -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator).div(in_features**0.5).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype)
    rows = sorted({1, 5, 37, PACKED_MAX_ROWS // 2 + 3, PACKED_MAX_ROWS})
    try:
        packed = pack_weight(weight)
        return all(
            torch.equal(linear_on_packed(x, packed, b), F.linear(x, weight, b))
            for x in (torch.randn(n, in_features, generator=generator).to(dtype) for n in rows)
            for b in (None, bias)
        )
    except Exception:  # a capability probe: any failure of the private ops means the plain call (e.g. another torch)
        return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out x in) in oneDNN's blocked layout, for `linear_on_packed`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def linear_on_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` on `pack_weight(weight)`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != self.neat_packed_weight.dtype or x.requires_grad or x.numel() > PACKED_MAX_ROWS * x.shape[-1]:
        return F.linear(x, self.weight, self.bias)  # not what was packed for, or a prefill: the plain call
    return linear_on_packed(x, self.neat_packed_weight, self.bias)


@torch.no_grad()
def pack_linears(model) -> int:
    """Pack (or pack again, after its weights were written) every CPU `nn.Linear` of the inference copy
    `model` whose dtype and shape pass `packing_available`, or unpack them all while packing is turned off;
    returns how many layers now run packed."""
    packed = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if _enabled and module.weight.device.type == "cpu" and packing_available(module.weight.dtype,
                                                                                  *module.weight.shape):
            module.neat_packed_weight = pack_weight(module.weight)
            module.forward = types.MethodType(_forward, module)
            packed += 1
        else:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("neat_packed_weight", None)
    return packed
