"""Shared-prompt packing: the prompt computed once gives the same log-probs and gradients as unshared."""

from __future__ import annotations

import copy

import pytest
import torch

from neat.logprobs import response_logprobs
from neat.losses import LOSSES
from neat.packing import block_mask, model_mask, pack_rows, supports_packing
from neat.encoding import batch_tokens, collate, collate_packed
from neat.training.groups import groups_from_scored
from neat.training.objective import batch_logps, step_loss
from neat.training.trainer import Trainer, load_trainable_policy
from neat.steering import select_prompts
from tests.test_train import make_params, synthetic_rows


def test_pack_rows_layout():
    rows = pack_rows([[5, 6, 7], []], [[[8, 9], [10]], [[11, 12, 13]]], pad_id=0)
    # row 0: shared [5, 6] | [7, 8, 9] | [7, 10]; row 1 (empty prompt): [11, 12, 13]
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9, 7, 10], [11, 12, 13, 0, 0, 0, 0]]
    assert rows.position_ids[0].tolist() == [0, 1, 2, 3, 4, 2, 3]
    assert rows.position_ids[1, :3].tolist() == [0, 1, 2]
    assert rows.segment_ids.tolist() == [[0, 0, 1, 1, 1, 2, 2], [1, 1, 1, -1, -1, -1, -1]]
    assert rows.response_mask.int().tolist() == [[0, 0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0, 0]]
    assert rows.sequence_index.tolist() == [[-1, -1, -1, 0, 0, -1, 1], [-1, 2, 2, -1, -1, -1, -1]]
    assert rows.n_sequences == 3 and rows.n_tokens == 10
    m = block_mask(rows.segment_ids)[0, 0]
    # second candidate's tokens see the shared prompt and themselves, never the first candidate
    assert m[5].tolist() == [True, True, False, False, False, True, False]
    assert m[6].tolist() == [True, True, False, False, False, True, True]
    pad = block_mask(rows.segment_ids)[1, 0, 4]
    assert pad.tolist() == [False, False, False, False, True, False, False]  # padding sees itself only


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    params = make_params(tmp_path_factory.mktemp("packing"))
    model, tokenizer = load_trainable_policy(params)
    _, rows = synthetic_rows(4)
    # candidates of unequal counts per prompt, one of them long enough to be cut
    rows = rows[:-1] + [dict(rows[0], prompt_id="x", response="word " * 40, reward=3.0, rank=0)]
    return params, model, tokenizer, groups_from_scored(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_equals_unshared_logps_and_grads(tiny, attn):
    params, model, tokenizer, groups = tiny
    cfg = params.train
    model = copy.deepcopy(model)
    model.config._attn_implementation = attn
    assert supports_packing(model)
    plain = collate(tokenizer, groups, cfg.max_prompt_tokens, cfg.max_response_tokens, tokenizer.pad_token_id)
    packed = collate_packed(tokenizer, groups, cfg.max_prompt_tokens, cfg.max_response_tokens, tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] == len(groups) and batch_tokens(packed) < batch_tokens(plain)

    results = []
    for batch in (plain, packed):
        model.zero_grad(set_to_none=True)
        logps, sums, counts = batch_logps(model, batch, chunk=7)
        loss, stats = step_loss(model, batch, cfg, LOSSES[cfg.loss])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), sums.detach(), counts, loss.item(), stats, grads))
    (lp0, s0, c0, l0, st0, g0), (lp1, s1, c1, l1, st1, g1) = results
    assert torch.equal(c0, c1)
    torch.testing.assert_close(s1, s0, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    assert abs(l0 - l1) < 1e-5
    for key in ("rank_loss", "sft_loss", "logp_chosen", "logp_negative"):
        assert abs(st0[key] - st1[key]) < 1e-5, key
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4, msg=name)


def test_model_mask_forms(tiny):
    _, model, _, _ = tiny
    allowed = block_mask(torch.tensor([[0, 1, 1, -1]]))
    m = copy.deepcopy(model)
    m.config._attn_implementation = "eager"
    additive = model_mask(m, allowed)
    assert additive.dtype == torch.float32 and additive[0, 0, 0, 0] == 0 and additive[0, 0, 0, 1] < -1e30
    m.config._attn_implementation = "sdpa"
    assert model_mask(m, allowed).dtype == torch.bool
    m.config._attn_implementation = "flash_attention_2"
    assert not supports_packing(m)


def test_response_logprobs_4d_needs_position_ids(tiny):
    _, model, _, _ = tiny
    rows = pack_rows([[5, 6, 7]], [[[8, 9], [10]]], pad_id=0)
    mask = block_mask(rows.segment_ids)
    with pytest.raises(ValueError, match="position_ids"):
        response_logprobs(model, rows.input_ids, mask, rows.response_mask)
    with pytest.raises(ValueError, match=r"\[N, 1, T, T\]"):
        response_logprobs(model, rows.input_ids, mask[:, :, :2], rows.response_mask, position_ids=rows.position_ids)
    with torch.no_grad():
        sums, n = response_logprobs(model, rows.input_ids, mask, rows.response_mask, position_ids=rows.position_ids,
                                    sequence_index=rows.sequence_index)
        one, _ = response_logprobs(model, torch.tensor([[5, 6, 7, 10]]), torch.ones(1, 4, dtype=torch.long),
                                   torch.tensor([[0, 0, 0, 1]]))
    assert n.tolist() == [2, 1]
    torch.testing.assert_close(sums[1:], one, atol=1e-5, rtol=0)


def test_trainer_shared_and_unshared_reach_the_same_weights(tmp_path):
    pairs, rows = synthetic_rows(4)
    weights = []
    for shared in (True, False):
        params = make_params(tmp_path / str(shared))
        model, tokenizer = load_trainable_policy(params)
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
        assert trainer.shared_prompt  # the default
        trainer.shared_prompt = shared
        trainer.run(rows, select_prompts(pairs, 4), pairs, fingerprint_="x")
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=1e-5, rtol=1e-4, msg=name)
