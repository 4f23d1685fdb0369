"""The loss of one micro-batch (`step_loss`) and the log-probs it is built on.

The ranking loss (`neat.losses.LOSSES[train.loss]`, chosen once by the `Trainer`) over the
candidates' length-normalised log-probs π(y | x), or DPO over their summed log-probs against the
reference policy (the model with its LoRA adapters off), plus `sft_weight` × the NLL of the best
candidate and `anchor_weight` × the squared drift from the reference.
"""

from __future__ import annotations

import contextlib
import math

import torch

from neat.diagnostics import ranking_accuracy
from neat.encoding import PackedBatch
from neat.errors import TrainingError
from neat.encoding import ORIGINS
from neat.logprobs import length_normalised, response_logprobs
from neat.losses import best_candidate_index, dpo_loss

def batch_logps(model, batch, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass over every candidate of the batch → (normalised logps, sums, counts), each [B, K].

    `batch` is a `Batch` (one sequence per candidate) or a `PackedBatch` (one per prompt)."""
    device = next(model.parameters()).device
    if isinstance(batch, PackedBatch):
        from neat.packing import block_mask, model_mask

        attn = model_mask(model, block_mask(batch.segment_ids.to(device)))
        sums, counts = response_logprobs(
            model, batch.input_ids.to(device), attn, batch.response_mask.to(device), chunk_size=chunk,
            position_ids=batch.position_ids.to(device), sequence_index=batch.sequence_index.to(device),
            num_sequences=batch.slot.shape[0],
        )
    else:
        sums, counts = response_logprobs(
            model, batch.input_ids.to(device), batch.attention_mask.to(device), batch.response_mask.to(device),
            chunk_size=chunk,
        )
    shape = batch.mask.shape
    b, k = batch.slot[:, 0].to(device), batch.slot[:, 1].to(device)
    sum_bk = torch.zeros(shape, device=device).index_put((b, k), sums)
    n_bk = torch.zeros(shape, dtype=torch.long, device=device).index_put((b, k), counts)
    return length_normalised(sum_bk, n_bk), sum_bk, n_bk


def sft_mask(batch, target: str) -> torch.Tensor:
    """[B, K] candidates the SFT term may pick from: all ("best"), the policy's own samples
    ("best_generated") or the dataset's chosen response ("chosen"); a prompt without any such
    candidate falls back to all of its candidates."""
    if target == "best":
        return batch.mask
    wanted = ("positive", "negative") if target == "best_generated" else ("chosen",)
    picked = _origin_mask(batch, wanted)
    return torch.where(picked.any(dim=1, keepdim=True), picked, batch.mask)


def _origin_mask(batch, wanted: tuple[str, ...]) -> torch.Tensor:
    picked = torch.zeros_like(batch.mask)
    for b, row in enumerate(batch.origins):
        for k, origin in enumerate(row):
            picked[b, k] = origin in wanted
    return picked & batch.mask


def sft_selection(batch, rewards: torch.Tensor, target: str) -> torch.Tensor:
    """[B, K] bool: the candidates the SFT term imitates, by `train.sft_target`.

    One part ("best", "best_generated", "chosen"): the highest-reward candidate of `sft_mask`, one per
    prompt. "positive": the highest-reward positive-steered sample, and only where it outranks every
    `rejected` response of its prompt (so a degenerate sample, ranked last, is never imitated) — the
    positive steering prompt distilled into the policy without it. Parts joined by "+" add up (e.g.
    "chosen+positive": the human-preferred response and the best positive sample of each prompt).
    """
    selected = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    for part in target.split("+"):
        if part != "positive":
            selected[rows, best_candidate_index(rewards, sft_mask(batch, part).to(rewards.device))] = True
            continue
        positive = _origin_mask(batch, ("positive",)).to(rewards.device)
        rejected = _origin_mask(batch, ("rejected",)).to(rewards.device)
        floor = torch.full_like(rewards, -math.inf)
        eligible = positive & (rewards > torch.where(rejected, rewards, floor).amax(dim=1, keepdim=True))
        has = eligible.any(dim=1)
        if bool(has.any()):
            best = torch.where(eligible, rewards, floor).argmax(dim=1)
            selected[rows[has], best[has]] = True
    return selected


@contextlib.contextmanager
def reference_policy(model):
    """The policy without its LoRA adapters (the base model) inside the block."""
    from neat.distributed import base_model

    peft_model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    disable = getattr(peft_model, "disable_adapter", None)
    if disable is None:
        raise TrainingError("train.anchor_weight needs policy.lora.enabled (and so does train.loss: dpo): the "
                            "reference policy is the model with its adapters off "
                            f"({type(base_model(model)).__name__} has none)")
    with disable():
        yield


def _counting_prompts(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prompts the ranking losses average over: at least two real candidates with different rewards."""
    big = torch.finfo(rewards.dtype).max
    hi = torch.where(mask, rewards, torch.full_like(rewards, -big)).amax(dim=1)
    lo = torch.where(mask, rewards, torch.full_like(rewards, big)).amin(dim=1)
    return (mask.sum(dim=1) >= 2) & (hi > lo)


def response_token_counts(batch) -> torch.Tensor:
    """[B, K] response tokens of each candidate, as `batch_logps` counts them (without a forward pass)."""
    predicts = batch.response_mask[:, 1:].bool()
    n = batch.slot.shape[0]
    if isinstance(batch, PackedBatch):
        seq = batch.sequence_index[:, 1:][predicts].long()
    else:
        seq = predicts.nonzero(as_tuple=True)[0]
    per_sequence = torch.bincount(seq, minlength=n)
    counts = torch.zeros(batch.mask.shape, dtype=torch.long)
    return counts.index_put((batch.slot[:, 0], batch.slot[:, 1]), per_sequence)


def batch_counts(batch, sft_target: str = "best") -> tuple[float, float]:
    """What the loss terms average over: (prompts that count for the ranking loss, tokens of the
    best candidates for the SFT term)."""
    n_sft = response_token_counts(batch)[sft_selection(batch, batch.rewards, sft_target)].sum()
    return float(_counting_prompts(batch.rewards, batch.mask).sum()), float(n_sft)


def step_loss(model, batch, cfg, loss_fn, strategy=None, phantom: bool = False,
              norm: tuple[float, float] | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of one micro-batch and its logged statistics.

    `loss_fn`: the ranking loss over the candidates' length-normalised log-probs,
    `(logps, rewards, mask) -> scalar` (`neat.losses.LOSSES[cfg.loss]`, chosen once by the `Trainer`);
    `dpo_loss` gets the summed log-probs instead, with the reference policy's (`reference_policy`) and
    `cfg.dpo_beta`. The reference pass runs once per micro-batch, in the same (packed) layout, and
    serves the anchor term as well.

    The ranking loss is a mean over the prompts that count and the SFT term a mean over the tokens of
    the best candidates; `norm` = (prompts, tokens) they average over in the whole optimizer step (every
    micro-batch of every process; `batch_counts`). Each micro-batch's loss is its share of that mean,
    so the gradients summed over micro-batches (and averaged by DDP/FSDP, hence the factor world size)
    equal the gradient of the whole step's batch in one process, however unevenly its prompts and
    tokens fall into micro-batches. Without `norm` the batch is the whole step (its own counts,
    summed over processes with `strategy`). `rank_loss`, `sft_loss` and `loss` in the returned stats
    are this micro-batch's shares too (they add up over the step), under `strategy` over all processes.
    `strategy`: what sums over the processes (`all_sum`, `world_size`: a `neat.training.strategy`
    strategy or a process group); None in a single process.
    `phantom`: this process has no prompt of the micro-batch and runs `batch` only to take part in
    the collective calls; it contributes nothing (weight 0).
    """
    device = next(model.parameters()).device
    rewards, mask = batch.rewards.to(device), batch.mask.to(device)
    logps, sums, counts = batch_logps(model, batch, cfg.logprob_chunk)
    needs_reference = loss_fn is dpo_loss
    if cfg.anchor_weight > 0 or needs_reference:  # one reference pass serves the anchor and DPO
        with torch.no_grad(), reference_policy(model):
            ref_logps, ref_sums, _ = batch_logps(model, batch, cfg.logprob_chunk)
    if needs_reference:  # DPO: summed log-probs against the reference's, as in TRL
        rank = loss_fn(sums, rewards, mask, ref_logps=ref_sums, beta=cfg.dpo_beta)
    else:
        rank = loss_fn(logps, rewards, mask)
    selected = sft_selection(batch, rewards, cfg.sft_target)
    zero = torch.zeros_like(sums)
    # token mean over the selected candidates, as `sft_loss`; the others (maybe garbage) get no gradient
    sft = -torch.where(selected, sums, zero).sum() / torch.where(selected, counts, 0).sum().clamp(min=1)
    counting = _counting_prompts(rewards, mask)
    n_rank = counting.sum().double()
    n_sft = torch.where(selected, counts, 0).sum().double()
    anchor_sum = torch.zeros((), device=device)
    if cfg.anchor_weight > 0:
        sq = torch.where(mask, 0.5 * (logps - ref_logps) ** 2, torch.zeros_like(logps))
        per_prompt = sq.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        anchor_sum = (per_prompt * counting).sum()  # averaged over the same prompts as the ranking loss
    agree, n_pairs = ranking_accuracy(logps, rewards, mask)
    sel_by_origin = {o: [(b, k) for b, row in enumerate(batch.origins) for k, x in enumerate(row) if x == o]
                     for o in ORIGINS}
    if phantom:
        n_rank, n_sft, sel_by_origin = n_rank * 0, n_sft * 0, {o: [] for o in ORIGINS}
        anchor_sum, agree, n_pairs = anchor_sum * 0, 0.0, 0
    detached = logps.detach().cpu()
    local = [n_rank, n_sft, rank.detach().double() * n_rank, sft.detach().double() * n_sft,
             anchor_sum.detach().double(), torch.tensor(agree), torch.tensor(float(n_pairs))]
    for origin, sel in sel_by_origin.items():
        local += [torch.tensor(float(len(sel))), torch.tensor(float(sum(detached[b, k] for b, k in sel))),
                  torch.tensor(float(sum(batch.rewards[b, k] for b, k in sel)))]
    local_t = torch.stack([torch.as_tensor(x, dtype=torch.float64).reshape(()).cpu() for x in local])
    # one all_reduce of a small vector: the micro-batch's sums over every process
    sums_t = strategy.all_sum(local_t) if strategy is not None else local_t
    g_rank, g_sft = (float(sums_t[0]), float(sums_t[1])) if norm is None else norm
    g_rank, g_sft = max(g_rank, 1.0), max(g_sft, 1.0)
    world = strategy.world_size if strategy is not None else 1
    loss = (cfg.rank_weight * rank * (n_rank.float() / g_rank) + cfg.sft_weight * sft * (n_sft.float() / g_sft)
            + cfg.anchor_weight * anchor_sum.float() / g_rank) * world
    stats = {"rank_loss": float(sums_t[2]) / g_rank, "sft_loss": float(sums_t[3]) / g_sft,
             "anchor_loss": float(sums_t[4]) / g_rank,
             "rank_acc": float(sums_t[5]) / float(sums_t[6]) if float(sums_t[6]) else math.nan,
             "rank_pairs": float(sums_t[6])}
    for i, origin in enumerate(ORIGINS):
        n, lp, rw = (float(v) for v in sums_t[7 + 3 * i : 10 + 3 * i])
        stats[f"logp_{origin}"] = lp / n if n else math.nan
        stats[f"reward_{origin}"] = rw / n if n else math.nan
    stats["loss"] = cfg.rank_weight * stats["rank_loss"] + cfg.sft_weight * stats["sft_loss"] + cfg.anchor_weight * stats["anchor_loss"]
    return loss, stats
