"""oneDNN-packed Linear weights in the CPU generation copy: the same bits as the plain layers, kept current."""

import copy

import pytest
import torch
import torch.nn.functional as F

from neat import generation, packed_linear
from neat.generation import generate
from tests.test_generation import tiny  # noqa: F401  (fixture)

needs_packing = pytest.mark.skipif(not packed_linear.packing_available(torch.bfloat16),
                                   reason="this torch/CPU has no packed bf16 linear matching F.linear")


@pytest.fixture(autouse=True)
def packing_on():
    yield
    packed_linear.use_packed_weights(True)


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _packable(layers):
    """The layers whose shape packs with F.linear's bits on this CPU (oneDNN picks kernels by shape and CPU: on
    a Xeon without AMX some of the tiny model's bf16 shapes do not, and stay plain)."""
    return [m for m in layers if packed_linear.packing_available(m.weight.dtype, *m.weight.shape)]


@needs_packing
def test_the_bf16_copy_runs_packed_and_gives_the_plain_layers_bits(tiny):
    model, tok, prompts = tiny
    clone = generation.generation_copy(model, torch.bfloat16)
    layers = _linears(clone)
    packable = _packable(layers)
    assert packable and all(("neat_packed_weight" in m.__dict__) == (m in packable) for m in layers)
    ids = torch.tensor([tok(prompts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        packed_logits = clone(input_ids=ids).logits
        plain = generation._fresh_copy(model, torch.bfloat16)  # the same weights, plain layers
        assert not any("neat_packed_weight" in m.__dict__ for m in _linears(plain))
        plain_logits = plain(input_ids=ids).logits
    assert torch.equal(packed_logits, plain_logits)


@needs_packing
def test_generation_is_the_same_with_and_without_packing(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=10, batch_size=2, cpu_dtype="bfloat16", seed=3)
    runs = []
    for enabled in (True, False, True):
        packed_linear.use_packed_weights(enabled)
        greedy = generate(model, tok, prompts, **kw)
        sampled = generate(model, tok, prompts, temperature=1.0, top_p=0.9, num_return_sequences=2, **kw)
        clone = generation.generation_copy(model, torch.bfloat16)
        packed = sum("neat_packed_weight" in m.__dict__ for m in _linears(clone))
        assert packed == (len(_packable(_linears(clone))) if enabled else 0) and (packed or not enabled)
        runs.append([[(g.text, g.n_tokens) for g in gs] for gs in greedy + sampled])
    assert runs[0] == runs[1] == runs[2]


@needs_packing
def test_a_refreshed_copy_is_packed_from_its_new_weights(tiny):
    """After the model trains, the kept copy's packed weights follow: its logits are a fresh copy's."""
    model, tok, prompts = tiny
    trained = copy.deepcopy(model)
    first = generation.generation_copy(trained, torch.bfloat16)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    again = generation.generation_copy(trained, torch.bfloat16)
    assert again is first
    fresh = generation._fresh_copy(trained, torch.bfloat16)  # plain layers
    ids = torch.tensor([tok(prompts[1], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, fresh(input_ids=ids).logits)


@needs_packing
def test_packing_is_checked_per_shape_and_skipped_where_it_differs(monkeypatch):
    """A layer shape whose packed call differs from F.linear (here: made to) stays plain; the others pack."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 6)).to(torch.bfloat16)
    real = packed_linear.linear_on_packed
    monkeypatch.setattr(packed_linear, "_verified", {})
    monkeypatch.setattr(packed_linear, "linear_on_packed",
                        lambda x, packed, bias: real(x, packed, bias) + (1 if packed.shape[0] == 4 else 0))
    assert packed_linear.pack_linears(model) == 1
    assert "forward" not in model[0].__dict__ and "neat_packed_weight" in model[1].__dict__
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert torch.equal(model(x), F.linear(F.linear(x, model[0].weight, model[0].bias), model[1].weight, model[1].bias))


@needs_packing
def test_a_packed_layer_takes_the_plain_path_for_gradients_and_other_dtypes():
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    assert packed_linear.pack_linears(layer) == 1
    x = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    layer(x).sum().backward()  # the packed op has no backward: this would raise
    assert x.grad is not None
    with pytest.raises(RuntimeError):  # a float32 input is refused as F.linear refuses it, not silently cast
        layer(torch.randn(3, 8))


@needs_packing
def test_long_inputs_take_the_plain_call_with_the_same_bits(monkeypatch):
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    packed_linear.pack_linears(layer)
    calls = []
    real = packed_linear.linear_on_packed
    monkeypatch.setattr(packed_linear, "linear_on_packed", lambda *a: calls.append(1) or real(*a))
    short = torch.randn(2, packed_linear.PACKED_MAX_ROWS // 2, 8, dtype=torch.bfloat16)
    long = torch.randn(2, packed_linear.PACKED_MAX_ROWS, 8, dtype=torch.bfloat16)
    for x, packed in ((short, True), (long, False)):
        calls.clear()
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        assert bool(calls) == packed
