import math

import pytest
import torch

import torch.nn.functional as F

from neat.losses import LOSSES, best_candidate_index, dpo_loss, pro_loss, rrhf_loss, sft_loss

NAN = float("nan")
INF = float("inf")


def dpo_vs_zero_reference(logps, rewards, mask):
    """DPO with a reference of log-prob 0 everywhere, to share the ranking losses' convention tests."""
    return dpo_loss(logps, rewards, mask, ref_logps=torch.zeros_like(logps), beta=0.1)


def t(rows, requires_grad=False):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=requires_grad)


def m(rows):
    return torch.tensor(rows, dtype=torch.bool)


# ----------------------------------------------------------------------------------------------- RRHF


def test_rrhf_hand_computed_with_tie():
    # prompt 0: r = [1, 3, 2], p = [-1, -2, -0.5]; pairs (worse i, better j):
    #   (0,1): max(0, -1 - (-2))   = 1.0
    #   (0,2): max(0, -1 - (-0.5)) = 0.0
    #   (2,1): max(0, -0.5 - (-2)) = 1.5          -> L0 = 2.5
    # prompt 1: r = [2, 2, 1], p = [-1, -3, -2]; (0,1) tied -> no pair
    #   (2,0): max(0, -2 - (-1)) = 0.0
    #   (2,1): max(0, -2 - (-3)) = 1.0            -> L1 = 1.0
    # mean over the 2 prompts = 1.75
    logps = t([[-1.0, -2.0, -0.5], [-1.0, -3.0, -2.0]])
    rewards = t([[1.0, 3.0, 2.0], [2.0, 2.0, 1.0]])
    mask = m([[True] * 3] * 2)
    assert rrhf_loss(logps, rewards, mask).item() == pytest.approx(1.75, abs=1e-6)


def test_rrhf_masked_nan_slots_and_gradients():
    # prompt 0 as above: L0 = 2.5, dL0/dp = [+1, -1 - 1, +1] (pairs (0,1) and (2,1) active)
    # prompt 1: candidate 1 masked (NaN garbage); real r = [2, ., 1], p = [-1, ., -0.5]
    #   (2,0): max(0, -0.5 - (-1)) = 0.5          -> L1 = 0.5, dL1/dp = [-1, 0, +1]
    # prompt 2: a single real candidate -> contributes 0 and does not count
    # loss = (2.5 + 0.5) / 2 = 1.5
    logps = t([[-1.0, -2.0, -0.5], [-1.0, NAN, -0.5], [-1.0, NAN, INF]], requires_grad=True)
    rewards = t([[1.0, 3.0, 2.0], [2.0, NAN, 1.0], [0.0, NAN, -INF]])
    mask = m([[True, True, True], [True, False, True], [True, False, False]])
    loss = rrhf_loss(logps, rewards, mask)
    assert loss.item() == pytest.approx(1.5, abs=1e-6)
    loss.backward()
    expected = t([[1.0, -2.0, 1.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]) / 2
    assert torch.equal(logps.grad, expected)


def test_rrhf_zero_when_logps_in_reward_order():
    logps = t([[-3.0, -2.0, -1.0], [-0.1, -5.0, -0.2]], requires_grad=True)
    rewards = t([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    mask = m([[True] * 3] * 2)
    loss = rrhf_loss(logps, rewards, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros_like(logps))


@pytest.mark.parametrize("loss_fn", [rrhf_loss, pro_loss, dpo_vs_zero_reference])
def test_no_comparable_prompt_gives_connected_zero(loss_fn):
    # single real candidates, and a prompt whose two candidates tie: nothing to rank
    logps = t([[-1.0, NAN, NAN], [-2.0, -3.0, NAN]], requires_grad=True)
    rewards = t([[1.0, NAN, NAN], [0.5, 0.5, NAN]])
    mask = m([[True, False, False], [True, True, False]])
    loss = loss_fn(logps, rewards, mask)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros_like(logps))


@pytest.mark.parametrize("loss_fn", [rrhf_loss, pro_loss, dpo_vs_zero_reference])
def test_nan_reward_on_real_candidate_raises(loss_fn):
    logps = t([[-1.0, -2.0]])
    with pytest.raises(ValueError, match="prompt 0.*NaN or infinite"):
        loss_fn(logps, t([[1.0, NAN]]), m([[True, True]]))
    with pytest.raises(ValueError, match="finite"):
        loss_fn(logps, t([[INF, 0.0]]), m([[True, True]]))


def test_shape_checks():
    with pytest.raises(ValueError, match="shape"):
        rrhf_loss(t([[1.0, 2.0]]), t([[1.0, 2.0, 3.0]]), m([[True, True]]))
    with pytest.raises(ValueError, match="bool"):
        pro_loss(t([[1.0, 2.0]]), t([[1.0, 2.0]]), torch.ones(1, 2))


# ------------------------------------------------------------------------------------------------ PRO


def test_pro_hand_computed():
    # prompt 0: r = [1, 3, 2], p = [-1, -2, -0.5]; sorted best first: y1 = #1 (r 3, p -2),
    # y2 = #2 (r 2, p -0.5), y3 = #0 (r 1, p -1)
    #   k=1: gaps g12 = 1, g13 = 2, T_1^1 = 1/2 -> -log( e^{-2*2} / (e^{-2*2} + e^{-0.5*1} + e^{-1*2}) )
    #   k=2: gap  g23 = 1,          T_2^2 = 1   -> -log( e^{-0.5*1} / (e^{-0.5*1} + e^{-1*1}) )
    l0 = (math.log(math.exp(-4) + math.exp(-0.5) + math.exp(-2)) + 4) + (math.log(math.exp(-0.5) + math.exp(-1)) + 0.5)
    # prompt 1: r = [2, 2, 1], p = [-1, -3, -2]; #0 and #1 tie, neither is below the other:
    #   anchor #0: D = {#2}, gap 1 -> -log( e^{-1} / (e^{-1} + e^{-2}) )
    #   anchor #1: D = {#2}, gap 1 -> -log( e^{-3} / (e^{-3} + e^{-2}) )
    #   anchor #2: D empty -> no term
    l1 = (math.log(math.exp(-1) + math.exp(-2)) + 1) + (math.log(math.exp(-3) + math.exp(-2)) + 3)
    logps = t([[-1.0, -2.0, -0.5], [-1.0, -3.0, -2.0]])
    rewards = t([[1.0, 3.0, 2.0], [2.0, 2.0, 1.0]])
    mask = m([[True] * 3] * 2)
    assert pro_loss(logps, rewards, mask).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_pro_two_candidates_is_logistic():
    # n = 2: -log( e^{p1 g} / (e^{p1 g} + e^{p2 g}) ) = softplus(-(p1 - p2) g), g = r1 - r2
    logps = t([[-0.7, -1.9]])
    rewards = t([[0.25, 1.75]])  # candidate 1 is best, g = 1.5
    loss = pro_loss(logps, rewards, m([[True, True]]))
    expected = math.log1p(math.exp(-(-1.9 - -0.7) * 1.5))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def pro_reference(logps, rewards, mask):
    """Literal loop over the paper's formula, with temperatures T = 1 / gap; float64."""
    per_prompt = []
    for b in range(logps.shape[0]):
        idx = [k for k in range(logps.shape[1]) if mask[b, k]]
        idx.sort(key=lambda k: -rewards[b, k].item())  # best first
        loss = logps.new_zeros(())
        counted = False
        for pos, k in enumerate(idx):
            lower = [i for i in idx[pos + 1 :] if rewards[b, i] < rewards[b, k]]
            if not lower:
                continue
            counted = True
            temps = {i: 1.0 / (rewards[b, k] - rewards[b, i]) for i in lower}
            t_kk = min(temps.values())
            num = logps[b, k] / t_kk
            den = torch.logsumexp(torch.stack([num] + [logps[b, i] / temps[i] for i in lower]), dim=0)
            loss = loss + (den - num)
        if counted:
            per_prompt.append(loss)
    if not per_prompt:
        return logps.new_zeros(())
    return torch.stack(per_prompt).mean()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("with_ties", [False, True])
def test_pro_matches_loop_reference(seed, with_ties):
    g = torch.Generator().manual_seed(seed)
    B, K = 6, 5
    logps = -3 * torch.rand(B, K, generator=g, dtype=torch.float64)
    if with_ties:
        rewards = torch.randint(0, 3, (B, K), generator=g).double()
    else:
        rewards = torch.randn(B, K, generator=g, dtype=torch.float64)
    mask = torch.rand(B, K, generator=g) < 0.75
    mask[0] = True
    mask[1] = False
    mask[1, 0] = True  # a prompt with a single candidate
    garbage_logps = torch.where(mask, logps, torch.tensor(float("nan"), dtype=torch.float64))
    garbage_rewards = torch.where(mask, rewards, torch.tensor(float("nan"), dtype=torch.float64))

    x = garbage_logps.clone().requires_grad_(True)
    loss = pro_loss(x, garbage_rewards, mask)
    loss.backward()

    y = logps.clone().requires_grad_(True)
    ref = pro_reference(y, rewards, mask)
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=1e-5)
    assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))


def test_pro_matches_reference_code_formula_without_ties():
    # PRO's released code: rewards sorted best first, scores multiplied by the reward gaps, summed over k
    g = torch.Generator().manual_seed(7)
    logps = -2 * torch.rand(4, 4, generator=g)
    rewards = torch.randn(4, 4, generator=g).sort(dim=1, descending=True).values
    total = 0.0
    for k in range(3):
        neg_t = rewards[:, k : k + 1] - rewards[:, k + 1 :]
        pos_t = neg_t.max(dim=1).values
        pos = logps[:, k] * pos_t
        total = total + (torch.logsumexp(torch.cat([pos[:, None], logps[:, k + 1 :] * neg_t], 1), 1) - pos).mean()
    perm = torch.randperm(4, generator=g)  # candidate order must not matter
    got = pro_loss(logps[:, perm], rewards[:, perm], torch.ones(4, 4, dtype=torch.bool))
    assert got.item() == pytest.approx(total.item(), abs=1e-5)


def test_pro_tied_candidates_order_invariant():
    logps = t([[-1.0, -2.0, -0.3, -1.5]])
    rewards = t([[1.0, 2.0, 2.0, 0.0]])
    mask = m([[True] * 4])
    a = pro_loss(logps, rewards, mask)
    b = pro_loss(logps[:, [0, 2, 1, 3]], rewards[:, [0, 2, 1, 3]], mask)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_pro_large_scores_are_finite():
    logps = t([[-500.0, -0.01, -80.0]], requires_grad=True)
    rewards = t([[100.0, -100.0, 0.0]])
    loss = pro_loss(logps, rewards, m([[True] * 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()


def test_bf16_input_gives_float32_loss_and_bf16_grad():
    logps = t([[-1.0, -2.0, -0.5]]).bfloat16().requires_grad_(True)
    rewards = t([[1.0, 3.0, 2.0]])
    for fn in (rrhf_loss, pro_loss):
        loss = fn(logps, rewards, m([[True] * 3]))
        assert loss.dtype == torch.float32
        loss.backward()
        assert logps.grad.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------- best index, SFT


def test_best_candidate_index_ties_and_mask():
    rewards = t([[1.0, 3.0, 3.0], [5.0, NAN, 5.0], [0.0, 2.0, 9.0], [-1.0, -1.0, -1.0], [NAN, -2.0, -3.0]])
    mask = m([[True] * 3, [True, False, True], [True, True, False], [True] * 3, [False, True, True]])
    idx = best_candidate_index(rewards, mask)
    assert idx.dtype == torch.int64
    assert idx.tolist() == [1, 0, 1, 0, 1]


def test_best_candidate_index_errors():
    with pytest.raises(ValueError, match="no real candidate"):
        best_candidate_index(t([[1.0, 2.0], [1.0, 2.0]]), m([[True, True], [False, False]]))
    with pytest.raises(ValueError, match="NaN"):
        best_candidate_index(t([[1.0, NAN]]), m([[True, True]]))


def test_sft_loss_hand_computed():
    # best = [0, 2]: -(-4 + -9) / (2 + 3) = 2.6; garbage elsewhere has no effect
    sum_logps = t([[-4.0, -10.0, NAN], [-6.0, INF, -9.0]], requires_grad=True)
    n_tokens = torch.tensor([[2, 5, 0], [3, 1, 3]])
    best = torch.tensor([0, 2])
    loss = sft_loss(sum_logps, n_tokens, best)
    assert loss.item() == pytest.approx(2.6, abs=1e-6)
    loss.backward()
    assert torch.equal(sum_logps.grad, t([[-0.2, 0.0, 0.0], [0.0, 0.0, -0.2]]))
    # the [B] form
    assert sft_loss(t([-4.0, -9.0]), torch.tensor([2, 3])).item() == pytest.approx(2.6, abs=1e-6)


def test_sft_loss_with_best_candidate_index():
    rewards = t([[0.1, 0.9, NAN], [0.3, 0.2, 0.1]])
    mask = m([[True, True, False], [True, True, True]])
    sum_logps = t([[-1.0, -6.0, NAN], [-8.0, -1.0, -1.0]])
    n_tokens = torch.tensor([[1, 4, 0], [2, 1, 1]])
    loss = sft_loss(sum_logps, n_tokens, best_candidate_index(rewards, mask))
    assert loss.item() == pytest.approx((6.0 + 8.0) / (4 + 2), abs=1e-6)


def test_loss_registry_covers_exactly_the_schema_choices():
    import typing

    from neat.config import TrainParams

    choices = typing.get_args(TrainParams.model_fields["loss"].annotation)
    assert set(LOSSES) == set(choices), f"train.loss allows {choices}; neat.losses.LOSSES has {sorted(LOSSES)}"
    assert LOSSES["rrhf"] is rrhf_loss and LOSSES["pro"] is pro_loss and LOSSES["dpo"] is dpo_loss


# ----------------------------------------------------------------------------------------------- DPO

# Summed log-probs of policy and reference. Prompt 0: candidate 2 masked (NaN garbage); best = 1
# (r 0.9), worst = 0 (r 0.2). Prompt 1: all tied, does not count. Prompt 2: r = [0, .5, .5], the best
# is tied between 1 and 2 -> the lowest index, 1; worst = 0.
DPO_LOGPS = [[-3.0, -2.0, NAN], [-1.0, -2.0, -3.0], [-1.0, -4.0, -9.0]]
DPO_REF = [[-2.5, -2.5, NAN], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]
DPO_REWARDS = [[0.2, 0.9, NAN], [1.0, 1.0, 1.0], [0.0, 0.5, 0.5]]
DPO_MASK = [[True, True, False], [True, True, True], [True, True, True]]


def test_dpo_hand_computed_with_mask_and_ties():
    # prompt 0: margin = (-2 - -2.5) - (-3 - -2.5) = 0.5 + 0.5 = 1.0; beta 0.5 -> log(1 + e^-0.5)
    # prompt 2: margin = (-4 - -1) - (-1 - -1) = -3.0;              beta 0.5 -> log(1 + e^1.5)
    logps = t(DPO_LOGPS, requires_grad=True)
    loss = dpo_loss(logps, t(DPO_REWARDS), m(DPO_MASK), ref_logps=t(DPO_REF), beta=0.5)
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1.5))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # d/d margin of -log sigmoid(beta m) = -beta sigmoid(-beta m); +/- on the pair, halved by the mean
    g0 = -0.5 / (1 + math.exp(0.5)) / 2
    g2 = -0.5 / (1 + math.exp(-1.5)) / 2
    expected_grad = torch.tensor([[-g0, g0, 0.0], [0.0, 0.0, 0.0], [-g2, g2, 0.0]])
    assert torch.allclose(logps.grad, expected_grad, atol=1e-6)  # masked, tied-out and unpaired slots: 0


def test_dpo_equals_trls_formula_on_the_same_numbers():
    # TRL's DPOTrainer (loss_type="sigmoid"), written out on the pairs the loss picks
    beta = 0.5
    policy_chosen, policy_rejected = torch.tensor([-2.0, -4.0]), torch.tensor([-3.0, -1.0])
    reference_chosen, reference_rejected = torch.tensor([-2.5, -1.0]), torch.tensor([-2.5, -1.0])
    chosen_logratios = policy_chosen - reference_chosen
    rejected_logratios = policy_rejected - reference_rejected
    trl = (-F.logsigmoid(beta * (chosen_logratios - rejected_logratios))).mean()
    ours = dpo_loss(t(DPO_LOGPS), t(DPO_REWARDS), m(DPO_MASK), ref_logps=t(DPO_REF), beta=beta)
    assert ours.item() == pytest.approx(trl.item(), abs=1e-6)


def test_dpo_at_the_reference_is_log_2_and_beta_scales_the_margin():
    logps = t([[-1.0, -5.0, -2.0]])
    rewards, mask = t([[0.3, 0.1, 0.7]]), m([[True, True, True]])
    assert dpo_loss(logps, rewards, mask, ref_logps=logps.clone(), beta=0.1).item() == pytest.approx(math.log(2))
    # best 2, worst 1: margin = (-2 - 0) - (-5 - 0) = 3
    ref = torch.zeros_like(logps)
    for beta in (0.1, 1.0):
        assert dpo_loss(logps, rewards, mask, ref_logps=ref, beta=beta).item() == pytest.approx(
            math.log(1 + math.exp(-3 * beta)), abs=1e-6)


def test_dpo_reference_gets_no_gradient_and_shape_is_checked():
    ref = t([[0.0, 0.0]], requires_grad=True)
    loss = dpo_loss(t([[-1.0, -2.0]], requires_grad=True), t([[1.0, 0.0]]), m([[True, True]]), ref_logps=ref, beta=1.0)
    loss.backward()
    assert ref.grad is None
    with pytest.raises(ValueError, match="ref_logps"):
        dpo_loss(t([[-1.0, -2.0]]), t([[1.0, 0.0]]), m([[True, True]]), ref_logps=t([[0.0]]), beta=1.0)
