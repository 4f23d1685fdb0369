"""Frozen base weights cast to bf16 once per step instead of in every autocast forward: same numbers."""

from __future__ import annotations

import contextlib

import pytest
import torch

from neat.encoding import collate_packed
from neat.losses import LOSSES
from neat.steering import select_prompts
from neat.training.frozen_weights import FrozenWeightCasts
from neat.training.groups import groups_from_scored
from neat.training.objective import step_loss
from neat.training.trainer import Trainer, load_trainable_policy
from tests.test_train import make_params, synthetic_rows

LORA = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def lora_params(tmp_path, **train):
    params = make_params(tmp_path, **({"anchor_weight": 1.0, "bf16_autocast": True} | train))
    return params.model_copy(update={"policy": params.policy.model_copy(
        update={"lora": params.policy.lora.model_copy(update=LORA)})})


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    params = lora_params(tmp_path_factory.mktemp("frozen"))
    model, tokenizer = load_trainable_policy(params)
    return params, model, tokenizer


def test_only_frozen_float32_linear_weights_are_cast(policy):
    _, model, _ = policy
    casts = FrozenWeightCasts(model)
    cast = {id(w) for w, _, _ in casts.swaps}
    base = model.get_base_model()
    layer = base.model.layers[0]
    assert id(layer.self_attn.q_proj.base_layer.weight) in cast  # LoRA's frozen base
    assert id(layer.self_attn.k_proj.weight) in cast  # a frozen projection without an adapter
    assert id(layer.mlp.down_proj.weight) in cast
    assert id(layer.self_attn.q_proj.lora_A["default"].weight) not in cast  # trainable
    assert id(base.get_input_embeddings().weight) not in cast
    assert id(base.get_output_embeddings().weight) not in cast  # the head runs in float32 (tied or not)
    assert all(not w.requires_grad and full.dtype == torch.float32 and low.dtype == torch.bfloat16
               for w, full, low in casts.swaps)


def test_weights_are_bf16_inside_and_the_same_float32_tensors_after(policy):
    _, model, _ = policy
    casts = FrozenWeightCasts(model)
    weight = casts.swaps[0][0]
    before = weight.data_ptr()
    with casts():
        assert weight.dtype == torch.bfloat16
    assert weight.dtype == torch.float32 and weight.data_ptr() == before
    with pytest.raises(RuntimeError), casts():
        raise RuntimeError("a failed step")
    assert weight.dtype == torch.float32 and weight.data_ptr() == before  # put back on the way out


def test_step_loss_and_gradients_are_bit_identical(policy):
    params, model, tokenizer = policy
    cfg = params.train
    _, rows = synthetic_rows(4)
    batch = collate_packed(tokenizer, groups_from_scored(rows), cfg.max_prompt_tokens, cfg.max_response_tokens,
                           tokenizer.pad_token_id)
    casts = FrozenWeightCasts(model)
    assert len(casts)
    results = []
    for block in (contextlib.nullcontext, casts):
        model.zero_grad(set_to_none=True)
        with block(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, stats = step_loss(model, batch, cfg, LOSSES[cfg.loss])  # the anchor's reference pass too
            loss.backward()
        assert stats["anchor_loss"] >= 0
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name


@pytest.mark.filterwarnings("error:.*gradient_checkpointing")  # transformers 5's deprecated names warn
@pytest.mark.parametrize("checkpointing", [False, True])
def test_trainer_casts_under_autocast_only_and_reaches_the_same_weights(tmp_path, checkpointing):
    """checkpointing: the recomputed forwards of the backward pass run inside the step, on the bf16 copies too."""
    pairs, rows = synthetic_rows(4)
    weights = []
    for cast in (True, False):
        params = lora_params(tmp_path / str(cast), gradient_checkpointing=checkpointing)
        model, tokenizer = load_trainable_policy(params)
        assert model.get_base_model().is_activation_checkpointing == checkpointing
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
        assert isinstance(trainer.frozen_casts, FrozenWeightCasts)
        if not cast:
            trainer.frozen_casts = contextlib.nullcontext
        trainer.run(rows, select_prompts(pairs, 4), pairs, fingerprint_="x")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name

    plain = lora_params(tmp_path / "fp32", bf16_autocast=False)
    model, tokenizer = load_trainable_policy(plain)
    trainer = Trainer(plain, model, tokenizer, out_dir=plain.out("train"), progress=False)
    assert not isinstance(trainer.frozen_casts, FrozenWeightCasts)  # float32 training: nothing to cast
