"""Ranking losses over several scored candidate responses per prompt (RRHF, PRO, DPO) and the SFT term.

Shapes and conventions shared by every function here:

* ``logps``   float ``[B, K]``: length-normalised log-probability of candidate k of prompt b under the
  policy, i.e. the mean token log-prob over its response tokens (see ``neat.logprobs``).
* ``rewards`` float ``[B, K]``: reward-model score of each candidate; higher is better.
* ``mask``    bool  ``[B, K]``: ``True`` for a real candidate. Prompts may have fewer than K candidates;
  masked slots may hold anything (NaN, inf): they never reach the loss nor its gradient, because they
  are removed with ``torch.where`` (never by multiplying with the mask, as ``0 * nan = nan``).

A real candidate whose reward is not finite (NaN or +-inf) is a bug of the scoring stage and raises
``ValueError``.

Reduction: a prompt *counts* when its real candidates carry at least one strict preference, i.e. at
least two real candidates with different rewards. Every loss is the mean of the per-prompt loss over
the prompts that count. Prompts with fewer than two real candidates, or whose real candidates are all
tied, contribute 0 and are left out of the mean. If no prompt counts, the result is a zero that is
still connected to ``logps`` in the autograd graph (its gradient is all zeros), so ``backward()`` and
distributed gradient reduction behave as for any other batch.

Losses are computed in float32 whatever the input dtype.

DPO (:func:`dpo_loss`) differs in its inputs only: it takes *summed* response log-probs (as TRL does) of
the policy and of the reference policy, and keyword arguments; masking, the reward checks, ties and the
reduction are as above.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LOSSES", "rrhf_loss", "pro_loss", "dpo_loss", "sft_loss", "best_candidate_index"]


def _check_inputs(logps: Tensor, rewards: Tensor, mask: Tensor) -> None:
    if logps.dim() != 2:
        raise ValueError(f"logps must have shape [B, K], got {tuple(logps.shape)}")
    if rewards.shape != logps.shape or mask.shape != logps.shape:
        raise ValueError(
            "logps, rewards and mask must share one [B, K] shape, got "
            f"{tuple(logps.shape)}, {tuple(rewards.shape)} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    _check_rewards(rewards, mask)


def _check_rewards(rewards: Tensor, mask: Tensor) -> None:
    bad = mask & ~torch.isfinite(rewards)
    if bool(bad.any()):
        b, k = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"reward of real candidate {k} of prompt {b} is {rewards[b, k].item()}; "
            f"{int(bad.sum())} real candidate(s) have a NaN or infinite reward. Rewards must be "
            "finite: drop or re-score such candidates (or mask them out) before training."
        )


def _reduce(per_prompt: Tensor, counts: Tensor) -> Tensor:
    """Mean of ``per_prompt`` [B] over the prompts where ``counts`` [B] is True (0 if none)."""
    total = torch.where(counts, per_prompt, torch.zeros_like(per_prompt)).sum()
    return total / counts.sum().clamp(min=1).to(total.dtype)


def rrhf_loss(logps: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    r"""RRHF ranking loss (Yuan et al. 2023), without the SFT term (see :func:`sft_loss`).

    Per prompt, over ordered pairs of real candidates::

        L_b = sum_{i, j real, r_i < r_j} max(0, p_i - p_j)

    with ``p = logps[b]`` and ``r = rewards[b]``. A pair costs something only when the worse
    candidate i is more likely than the better one j. Ties (``r_i == r_j``) give no pair, so they
    contribute nothing. The result is the mean of ``L_b`` over the prompts that count (see the
    module docstring): ``L = sum_{b counts} L_b / max(1, #{b counts})``.

    If the logps are already in reward order (``r_i < r_j  =>  p_i <= p_j``) the loss is exactly 0.
    """
    _check_inputs(logps, rewards, mask)
    p = torch.where(mask, logps.float(), torch.zeros((), device=logps.device))
    r = torch.where(mask, rewards.float(), torch.zeros((), device=rewards.device))
    # pair[b, i, j]: i and j are real and i is strictly worse than j.
    pair = mask[:, :, None] & mask[:, None, :] & (r[:, :, None] < r[:, None, :])
    hinge = (p[:, :, None] - p[:, None, :]).clamp(min=0)
    per_prompt = torch.where(pair, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))
    return _reduce(per_prompt, pair.flatten(1).any(dim=1))


def pro_loss(logps: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    r"""PRO listwise ranking loss (Song et al. 2023, "Preference Ranking Optimization", eq. 7-9).

    Sort the n real candidates of a prompt by reward, best first: y_1 .. y_n with rewards r_k and
    policy scores p_k (= ``logps``). PRO's loss is a sum over the n-1 prefixes of the ranking::

        L_b = - sum_{k=1}^{n-1} log( exp(p_k / T_k^k) / sum_{i=k}^{n} exp(p_i / T_k^i) )
        T_k^i = 1 / (r_k - r_i)                 for i > k
        T_k^k = min_{i>k} T_k^i = 1 / max_{i>k} (r_k - r_i)

    i.e. with gaps g_ki = r_k - r_i (scores are *multiplied* by the reward gap, as in the
    reference implementation)::

        L_b = sum_k [ logsumexp( p_k * max_{i>k} g_ki ,  {p_i * g_ki}_{i>k} ) - p_k * max_{i>k} g_ki ]

    Following the paper (and its reference code), the terms are *summed* over k, not averaged, so a
    prompt with more candidates weighs more. The result is the mean of ``L_b`` over the prompts that
    count (see the module docstring).

    Ties. With g_ki = 0 the paper's temperature 1/g is infinite. Here a candidate tied with y_k is
    treated as *not below* y_k: the term for anchor k runs over the candidates strictly worse than it,
    ``D_k = {i real : r_i < r_k}``, and a term whose ``D_k`` is empty (the worst candidate, or a group
    of candidates tied for last) is dropped::

        L_b = sum_{k real, D_k nonempty} [ logsumexp( p_k * G_k , {p_i * g_ki}_{i in D_k} ) - p_k * G_k ]
        G_k = max_{i in D_k} g_ki

    Without ties this is exactly the formula above. With ties it does not depend on how the sort
    would order tied candidates, and it never divides by zero. (The reference code instead keeps a
    tied candidate in the denominator with score ``p_i * 0``, i.e. a constant ``exp(0) = 1`` term.)
    """
    _check_inputs(logps, rewards, mask)
    p = torch.where(mask, logps.float(), torch.zeros((), device=logps.device))
    r = torch.where(mask, rewards.float(), torch.zeros((), device=rewards.device))
    # below[b, k, i]: i is real and strictly worse than the real anchor k.
    below = mask[:, :, None] & mask[:, None, :] & (r[:, None, :] < r[:, :, None])
    gap = torch.where(below, r[:, :, None] - r[:, None, :], torch.zeros((), device=r.device))  # > 0 where below
    has_below = below.any(dim=2)  # [B, K]
    top_gap = gap.amax(dim=2)  # [B, K], G_k (0 where D_k is empty)
    anchor = p * top_gap  # [B, K]
    neg_inf = torch.full((), float("-inf"), device=p.device)
    others = torch.where(below, p[:, None, :] * gap, neg_inf)  # [B, K, K]
    # The anchor column is always finite, so the logsumexp and its gradient are finite.
    lse = torch.logsumexp(torch.cat([anchor[:, :, None], others], dim=2), dim=2)  # [B, K]
    terms = torch.where(has_below, lse - anchor, torch.zeros_like(anchor))
    per_prompt = terms.sum(dim=1)
    return _reduce(per_prompt, has_below.any(dim=1))


def dpo_loss(logps: Tensor, rewards: Tensor, mask: Tensor, *, ref_logps: Tensor, beta: float) -> Tensor:
    r"""DPO sigmoid loss (Rafailov et al. 2023) on each prompt's best-vs-worst pair by reward.

    Unlike the ranking losses, ``logps`` and ``ref_logps`` ``[B, K]`` are the *summed* response
    log-probs (as in the paper and TRL) of the policy and of the reference policy. Per prompt, with
    w the real candidate of highest reward and l the one of lowest reward (ties: the lowest index)::

        L_b = - log sigmoid( beta * [ (logps_w - ref_logps_w) - (logps_l - ref_logps_l) ] )

    which is TRL's ``-F.logsigmoid(beta * (chosen_logratios - rejected_logratios))``. Only the pair
    enters: other candidates get no gradient. A prompt counts when ``r_w > r_l`` (see the module
    docstring); masked slots of ``logps`` and ``ref_logps`` may hold anything.
    """
    _check_inputs(logps, rewards, mask)
    if ref_logps.shape != logps.shape:
        raise ValueError(f"ref_logps must have the shape of logps {tuple(logps.shape)}, got {tuple(ref_logps.shape)}")
    zero = torch.zeros((), device=logps.device)
    p = torch.where(mask, logps.float(), zero)
    ref = torch.where(mask, ref_logps.detach().float(), zero)
    r = torch.where(mask, rewards.float(), zero)
    big = torch.finfo(r.dtype).max
    hi = torch.where(mask, r, torch.full_like(r, -big))
    lo = torch.where(mask, r, torch.full_like(r, big))
    idx = torch.arange(r.shape[1], device=r.device).expand_as(r)
    k = r.shape[1]
    w = torch.where(mask & (hi == hi.amax(dim=1, keepdim=True)), idx, torch.full_like(idx, k)).amin(dim=1)
    l = torch.where(mask & (lo == lo.amin(dim=1, keepdim=True)), idx, torch.full_like(idx, k)).amin(dim=1)
    counts = (mask.sum(dim=1) >= 2) & (hi.amax(dim=1) > lo.amin(dim=1))
    # a prompt without a real candidate gets index K: clamp it; the prompt does not count anyway
    w, l = w.clamp(max=k - 1)[:, None], l.clamp(max=k - 1)[:, None]
    ratio = p - ref
    margin = (ratio.gather(1, w) - ratio.gather(1, l)).squeeze(1)
    per_prompt = -torch.nn.functional.logsigmoid(beta * margin)
    return _reduce(per_prompt, counts)


def best_candidate_index(rewards: Tensor, mask: Tensor) -> Tensor:
    """Index [B] (int64) of the real candidate with the highest reward; ties go to the lowest index.

    Raises ``ValueError`` if a prompt has no real candidate or a real candidate's reward is not finite.
    """
    if rewards.dim() != 2 or mask.shape != rewards.shape:
        raise ValueError(
            f"rewards and mask must share one [B, K] shape, got {tuple(rewards.shape)} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"prompt {int(empty.nonzero()[0])} has no real candidate to pick as the best one")
    _check_rewards(rewards, mask)
    neg_inf = torch.full((), float("-inf"), device=rewards.device, dtype=rewards.dtype)
    r = torch.where(mask, rewards, neg_inf)
    is_best = mask & (r == r.amax(dim=1, keepdim=True))
    k = rewards.shape[1]
    idx = torch.arange(k, device=rewards.device).expand_as(r)
    return torch.where(is_best, idx, torch.full_like(idx, k)).amin(dim=1)


def sft_loss(sum_logps: Tensor, n_tokens: Tensor, best_index: Tensor | None = None) -> Tensor:
    """Negative mean token log-likelihood of the best candidates (the SFT term of RRHF / PRO).

    ``sum_logps`` and ``n_tokens`` are either ``[B]`` (already the chosen candidate of each prompt) or
    ``[B, K]`` together with ``best_index`` ``[B]`` (e.g. from :func:`best_candidate_index`), which
    selects one candidate per prompt. The loss is token-weighted over the batch, like the usual
    causal-LM cross-entropy::

        L = - sum_b sum_logps[b, best_b] / max(1, sum_b n_tokens[b, best_b])

    Other candidates (which may hold garbage) neither enter the value nor receive gradient.
    Note the PRO reference code scales its SFT term by ``sft_weight * (n - 1) ** 2``; any such weight
    is left to the caller.
    """
    if best_index is not None:
        if sum_logps.dim() != 2 or n_tokens.shape != sum_logps.shape:
            raise ValueError(
                "with best_index, sum_logps and n_tokens must share one [B, K] shape, got "
                f"{tuple(sum_logps.shape)} and {tuple(n_tokens.shape)}"
            )
        if best_index.shape != sum_logps.shape[:1]:
            raise ValueError(f"best_index must have shape [{sum_logps.shape[0]}], got {tuple(best_index.shape)}")
        idx = best_index.long()[:, None]
        sum_logps = sum_logps.gather(1, idx).squeeze(1)
        n_tokens = n_tokens.gather(1, idx).squeeze(1)
    elif sum_logps.dim() != 1 or n_tokens.shape != sum_logps.shape:
        raise ValueError(
            "without best_index, sum_logps and n_tokens must share one [B] shape, got "
            f"{tuple(sum_logps.shape)} and {tuple(n_tokens.shape)}"
        )
    total = sum_logps.float().sum()
    return -total / n_tokens.sum().clamp(min=1).to(total.dtype)


# `train.loss` → the ranking loss: `(logps, rewards, mask) -> scalar`. The trainer picks its entry once.
# `dpo` takes summed log-probs and `ref_logps=`, `beta=` as well (see `neat.training.objective.step_loss`).
LOSSES = {"rrhf": rrhf_loss, "pro": pro_loss, "dpo": dpo_loss}
