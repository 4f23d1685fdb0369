"""Online ranking-loss training (`neat train`).

Round 1 trains on the scored candidates of the `expand` → `score` stages. Each later round
re-samples positive and negative candidates from the current policy, re-scores them with the
reward model and trains on them. The loss is computed on π(y | x) with the steering prompt
removed: a ranking loss (RRHF or PRO) over the length-normalised log-probs of every candidate of a
prompt, or DPO over the summed log-probs of its best-vs-worst pair against the reference policy,
plus `sft_weight` × the NLL of the best-reward candidate.

Tokenising and batching a prompt with its candidates lives in `neat.encoding`.

Checkpoints (end of round and every `checkpoint_every` optimizer steps) hold the trainable weights
(safetensors), optimizer, scheduler, RNG states, round, step and data position; `resume=True`
continues from them and reaches the same final weights as an uninterrupted run on CPU.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from neat.progress import tqdm

from neat.data import read_pairs
from neat.diagnostics import ranking_accuracy
from neat.encoding import PackedBatch, PromptCandidates, batch_tokens, collate, collate_packed, fit_turns
from neat.errors import NeatError
from neat.expand import ORIGINS, SCORED_COLUMNS, build_candidates, read_candidates, select_prompts, write_candidates
from neat.io import atomic_path, write_json_atomic
from neat.logprobs import length_normalised, response_logprobs
from neat.losses import LOSSES, best_candidate_index, dpo_loss, sft_loss

log = logging.getLogger(__name__)

LOG_COLUMNS = (
    ["round", "step", "loss", "rank_loss", "sft_loss", "lr", "tokens_per_s", "grad_norm"]
    + [f"logp_{o}" for o in ORIGINS]
    + [f"reward_{o}" for o in ORIGINS]
    + ["anchor_loss", "rank_acc"]
)


class TrainingError(NeatError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


# `train.pair_labels: origin`: the label that stands for the reward (RLCD: the steering decides, no reward model)
ORIGIN_LABELS = {"positive": 1.0, "chosen": 1.0, "negative": 0.0, "rejected": 0.0}


def groups_from_scored(rows: list[dict], degenerate: str = "exclude", labels: str = "reward") -> list[PromptCandidates]:
    """Ranked candidates grouped by prompt, in file order; unranked ones (NaN reward, degenerate) are left out.

    `labels="origin"`: each candidate's reward is replaced by its origin's label (`ORIGIN_LABELS`:
    positive-steered and chosen 1, negative-steered and rejected 0), so the losses order candidates by
    how they were produced, whatever the reward model said (RLCD's pairs).

    `degenerate="last"`: a candidate flagged degenerate (empty, short, repetitive) joins its prompt's
    group with a reward 1 below the group's lowest, so the ranking loss pushes it under every other
    candidate (a reward model that was never shown such text may score it high). A prompt with
    nothing but degenerate candidates stays out.
    """
    groups: dict[str, PromptCandidates] = {}
    worst: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("rank") is None:
            if degenerate == "last" and row.get("degenerate", False):
                worst.setdefault(row["prompt_id"], []).append(row)
            continue
        g = groups.setdefault(row["prompt_id"], PromptCandidates(row["prompt_id"], row["prompt"], [], [], []))
        g.responses.append(row["response"])
        g.rewards.append(_label(row, labels))
        g.origins.append(row["origin"])
    for prompt_id, extra in worst.items():
        g = groups.get(prompt_id)
        if g is None:
            continue
        floor = min(g.rewards) - 1.0
        for row in extra:
            g.responses.append(row["response"])
            g.rewards.append(floor)
            g.origins.append(row["origin"])
    return list(groups.values())


def _label(row: dict, labels: str) -> float:
    if labels == "reward":
        return float(row["reward"])
    if row["origin"] not in ORIGIN_LABELS:
        raise TrainingError(f"train.pair_labels: origin cannot label a candidate of origin '{row['origin']}' "
                            f"(prompt {row['prompt_id']}); known: {', '.join(ORIGIN_LABELS)}")
    return ORIGIN_LABELS[row["origin"]]


# ---------------------------------------------------------------- log-probs and the loss of a micro-batch


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
    picked = torch.zeros_like(batch.mask)
    for b, row in enumerate(batch.origins):
        for k, origin in enumerate(row):
            picked[b, k] = origin in wanted
    picked &= batch.mask
    has = picked.any(dim=1, keepdim=True)
    return torch.where(has, picked, batch.mask)


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
    best = best_candidate_index(batch.rewards, sft_mask(batch, sft_target))
    n_sft = response_token_counts(batch).gather(1, best[:, None]).sum()
    return float(_counting_prompts(batch.rewards, batch.mask).sum()), float(n_sft)


def step_loss(model, batch, cfg, loss_fn, dist_group=None, phantom: bool = False,
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
    summed over processes with `dist_group`). `rank_loss`, `sft_loss` and `loss` in the returned stats
    are this micro-batch's shares too (they add up over the step), under `dist_group` over all processes.
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
    best = best_candidate_index(rewards, sft_mask(batch, cfg.sft_target).to(device))
    sft = sft_loss(sums, counts, best)
    counting = _counting_prompts(rewards, mask)
    n_rank = counting.sum().double()
    n_sft = counts.gather(1, best[:, None]).sum().double()
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
    sums_t = dist_group.all_sum(local_t) if dist_group is not None else local_t
    g_rank, g_sft = (float(sums_t[0]), float(sums_t[1])) if norm is None else norm
    g_rank, g_sft = max(g_rank, 1.0), max(g_sft, 1.0)
    world = dist_group.world_size if dist_group is not None else 1
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


# ---------------------------------------------------------------- optimisation state


# train.schedule → transformers' schedule; `constant` keeps a warmup (transformers' plain `constant` has none)
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def make_scheduler(optimizer, schedule: str, warmup: int, total: int):
    """transformers' `get_scheduler`: the lr rises linearly from 0 over `warmup` steps, then stays
    (constant) or decays to 0 at step `total` (linear, cosine). A LambdaLR: its state_dict is checkpointed."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def fingerprint(params, scored_path: Path) -> str:
    """What a checkpoint was trained from; resuming under anything else would mix two runs."""
    keys = {k: getattr(params, k).model_dump(mode="json") for k in ("policy", "expand", "train", "data")}
    # (train.parallel counts too: sharded and replicated runs keep the optimizer state in different layouts)
    keys["seed"] = params.seed
    if params.generation.backend != "hf" or params.generation.engine != "hf":  # online rounds sample with another engine
        keys["generation"] = params.generation.model_dump(mode="json")
    h = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    if scored_path.exists():
        h.update(scored_path.read_bytes())
    return h.hexdigest()[:16]


def save_checkpoint(state_dir: Path, model, optimizer, scheduler, info: dict, *, weights: dict | None = None,
                    optimizer_state: dict | None = None) -> None:
    """`weights` / `optimizer_state`: already gathered full states (FSDP) instead of `model` / `optimizer`'s."""
    with atomic_path(state_dir, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        weights = trainable_state(model) if weights is None else {k: v.contiguous() for k, v in weights.items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state().tolist(), "python": _jsonable(random.getstate())}
        (tmp / "state.json").write_text(json.dumps(info | {"rng": rng}))


def _jsonable(obj):
    return [_jsonable(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _tuplify(obj):
    return tuple(_tuplify(x) for x in obj) if isinstance(obj, list) else obj


def load_checkpoint(state_dir: Path, model, optimizer, scheduler, *, sharded: bool = False) -> dict:
    """Restore a checkpoint; `sharded`: `model` is FSDP-sharded and every process reads the full state."""
    info = json.loads((state_dir / "state.json").read_text())
    weights = load_file(str(state_dir / "trainable.safetensors"))
    optimizer_state = torch.load(state_dir / "optimizer.pt", weights_only=True)
    if sharded:
        from neat.distributed import load_full_state

        load_full_state(model, weights, optimizer, optimizer_state)
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.tensor(info["rng"]["torch"], dtype=torch.uint8))
    random.setstate(_tuplify(info["rng"]["python"]))
    return info


# ---------------------------------------------------------------- the loop


def round_order(n: int, seed: int, round_: int, epochs: int) -> list[int]:
    order: list[int] = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + round_ * 101 + epoch)
        order += torch.randperm(n, generator=gen).tolist()
    return order


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


class Trainer:
    """Holds the policy, the optimisation state and the round data of one training run."""

    def __init__(self, params, model, tokenizer, *, out_dir: Path, scorer=None, progress: bool = True,
                 state_dir: Path | None = None):
        self.params, self.cfg = params, params.train
        self.model, self.tokenizer = model, tokenizer
        self.out_dir = Path(out_dir)
        self.state_dir = Path(state_dir) if state_dir else self.out_dir / "state"
        self.scorer = scorer  # callable(rows) -> rows with reward and rank, for rounds >= 2
        self.progress = progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise TrainingError("the policy has no trainable parameter (LoRA disabled and weights frozen?)")
        self.log: list[dict] = []
        self.loss_fn = LOSSES[self.cfg.loss]  # the ranking loss (RRHF, PRO or DPO), chosen once
        # several processes (accelerate launch / torchrun): each takes a shard of every micro-batch, with
        # the model replicated (DDP) or its weights, gradients and optimizer state sharded (FSDP)
        from neat.distributed import init_from_env, shard_fsdp, wrap_ddp
        from neat.packing import supports_packing

        self.dist = init_from_env(next(model.parameters()).device)
        self.fsdp = self.dist is not None and self.cfg.parallel == "fsdp"
        if self.fsdp:
            self.forward_model = shard_fsdp(model, self.dist)
        else:
            self.forward_model = wrap_ddp(model, self.dist) if self.dist else model
        # after sharding: FSDP replaces the parameters with sharded ones
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.shared_prompt = self.cfg.shared_prompt and supports_packing(model)
        self.autocast = bool(self.cfg.bf16_autocast) and next(model.parameters()).device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def _barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def _main_says(self, flag: bool) -> bool:
        """The main process's `flag`, on every process (a file check must not race with the main's writes)."""
        if self.dist is None:
            return flag
        return bool(self.dist.all_sum(torch.tensor([float(flag and self.is_main)], dtype=torch.float64))[0] > 0)

    def full_policy(self):
        """Collective: the policy with full weights on the main process (None on the others).

        Replicated runs return the training model itself; under FSDP the gathered weights go into a
        fresh, unsharded copy (built with `load_trainable_policy`) for sampling and saving."""
        if not self.fsdp:
            return self.model if self.is_main else None
        from neat.distributed import gather_full_state

        weights, _ = gather_full_state(self.model)
        if not self.is_main:
            return None
        copy, _ = load_trainable_policy(self.params)
        copy.load_state_dict(weights, strict=True)
        return copy

    def save_state(self, info: dict) -> None:
        """Collective: the resumable checkpoint, written by the main process."""
        if self.fsdp:
            from neat.distributed import gather_full_state

            weights, optim = gather_full_state(self.model, self.optimizer)
            if self.is_main:
                keep = set(self.trainable_names)
                save_checkpoint(self.state_dir, None, None, self.scheduler, info | {"layout": "fsdp"},
                                weights={k: v for k, v in weights.items() if k in keep}, optimizer_state=optim)
        elif self.is_main:
            save_checkpoint(self.state_dir, self.model, self.optimizer, self.scheduler, info)

    def collate(self, groups: list[PromptCandidates]):
        fn = collate_packed if self.shared_prompt else collate
        return fn(self.tokenizer, groups, self.cfg.max_prompt_tokens, self.cfg.max_response_tokens, self.pad_id)

    def steps_per_round(self, n_groups: int) -> int:
        """Optimizer steps of one round, as the loop takes them (epochs are concatenated, then batched)."""
        batches = math.ceil(n_groups * self.cfg.epochs_per_round / self.cfg.batch_size)
        return math.ceil(batches / self.cfg.grad_accum)

    def round_rows(self, round_: int, first_rows: list[dict], groups_source, demo_pool, policy_id: str) -> list[dict]:
        """Round 1: the scored expansion; later rounds: fresh samples from the current policy, scored."""
        if round_ == 1:
            return first_rows
        # Sampled once per run and round, kept beside the resumable state (outside the DVC outputs, which
        # DVC deletes before a rerun) and keyed by the run's fingerprint: a resumed run trains on exactly
        # the same round data, and a run with other inputs or params never reuses it.
        path = self.state_dir.with_name("rounds") / f"round_{round_}-{self.fingerprint}.parquet"
        published = self.out_dir / "rounds" / f"round_{round_}.parquet"
        if self._main_says(path.exists()):
            rows = read_candidates(path)
            if self.is_main and not published.exists():
                write_candidates(published, rows)
            return rows
        policy = self.full_policy()
        if not self.is_main:  # the main process samples and scores the round; the others read it
            self._barrier()
            return read_candidates(path)
        with self._sampler(policy) as sampler:
            rows, _ = build_candidates(
                sampler, self.tokenizer, groups_source, demo_pool, self.params.expand, seed=self.params.seed,
                policy_id=policy_id, round_=round_, progress=self.progress,
                include_dataset=self.cfg.include_dataset_responses,
            )
        del policy, sampler
        rows = self.scorer(rows)
        write_candidates(path, rows)
        write_candidates(published, rows)
        self._barrier()
        return rows

    def probe(self, label: str, round_: int, dev_source) -> dict | None:
        """Collective: the current policy answers the dev prompts unsteered (greedy); the training reward
        model scores the answers. One point of the online curve (None on non-main processes)."""
        from neat.diagnostics import mean_or_none, text_stats
        from neat.generation import generate

        policy = self.full_policy()
        if not self.is_main:
            self._barrier()
            return None
        groups = [g[0] for g in dev_source]
        texts = [fit_turns(self.tokenizer, p.prompt, self.cfg.max_prompt_tokens)[0] for p in groups]
        with self._sampler(policy) as sampler:
            gens = generate(sampler, self.tokenizer, texts, max_new_tokens=self.params.expand.max_new_tokens,
                            batch_size=self.params.expand.batch_size, seed=self.params.seed)
        responses = [g[0].text for g in gens]
        rows = [{"prompt_id": p.prompt_id, "prompt": p.prompt, "origin": "unsteered", "response": r}
                for p, r in zip(groups, responses)]
        rewards = [row["reward"] for row in self.scorer(rows)] if self.scorer else [None] * len(rows)
        self._barrier()
        return {"label": label, "round": round_, "reward_mean": mean_or_none(rewards), **text_stats(responses),
                "answers": [{"prompt_id": p.prompt_id, "prompt": p.prompt, "response": r, "reward": w}
                            for p, r, w in zip(groups, responses, rewards)]}

    def _sampler(self, policy):
        """What samples a round: the policy itself, or a vLLM engine on a saved copy of it."""
        if self.params.generation.backend == "vllm":
            from neat.vllm_backend import engine_for_trained_policy

            return engine_for_trained_policy(policy, self.tokenizer, self.params,
                                             self.state_dir.with_name("vllm-policy"))
        return contextlib.nullcontext(policy)

    def run(self, first_rows: list[dict], groups_source, demo_pool, *, fingerprint_: str, resume: bool = False,
            stop_after_steps: int | None = None, dev_source=None) -> dict:
        cfg = self.cfg
        self.fingerprint = fingerprint_
        self.rounds_log: list[dict] = []
        # later rounds sample the same prompts; the round-1 count of trainable prompts sets the schedule
        n_prompts = max(1, len(groups_from_scored(first_rows, self.cfg.degenerate, self.cfg.pair_labels)))
        total = self.steps_per_round(n_prompts) * cfg.rounds
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.warmup_steps, total)
        start_round, position, step = 1, 0, 0
        if resume and (self.state_dir / "state.json").exists():
            try:
                info = json.loads((self.state_dir / "state.json").read_text())
            except ValueError:
                raise TrainingError(f"{self.state_dir / 'state.json'}: damaged checkpoint state; remove "
                                    f"{self.state_dir} to start over") from None
            if self._main_says(info.get("fingerprint") == fingerprint_):
                try:
                    info = load_checkpoint(self.state_dir, self.model, self.optimizer, self.scheduler,
                                           sharded=self.fsdp)
                except Exception as exc:  # a damaged or tampered checkpoint (torch.load refuses pickles)
                    raise TrainingError(f"{self.state_dir}: checkpoint cannot be loaded safely "
                                        f"({type(exc).__name__}); remove it to start over") from None
                start_round, position, step = info["round"], info["position"], info["step"]
                self.log = info["log"]
                self.rounds_log = info.get("rounds_log", [])
                if info.get("round_done"):
                    start_round, position = start_round + 1, 0
            else:
                log.warning("neat train: checkpoint in %s is from other inputs/params; starting fresh", self.state_dir)
        self.model.train()
        bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (self.progress and self.is_main))
        for round_ in range(start_round, cfg.rounds + 1):
            rows = self.round_rows(round_, first_rows, groups_source, demo_pool, policy_id=f"round{round_ - 1}")
            if position == 0 and not any(r["round"] == round_ for r in self.rounds_log):
                self.rounds_log.append(self._round_entry(round_, rows, dev_source))
            groups = groups_from_scored(rows, self.cfg.degenerate, self.cfg.pair_labels)
            if not groups:
                raise TrainingError(f"round {round_}: no prompt has a ranked candidate to train on")
            order = round_order(len(groups), self.params.seed, round_, cfg.epochs_per_round)
            batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            while position < len(batches):
                step_batches = batches[position : position + cfg.grad_accum]
                record = self._optimizer_step([[groups[i] for i in b] for b in step_batches], round_, step)
                position += len(step_batches)
                step += 1
                self.log.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", round=round_)
                info = {"round": round_, "position": position, "step": step, "fingerprint": fingerprint_,
                        "log": self.log, "rounds_log": self.rounds_log, "round_done": position >= len(batches)}
                if info["round_done"] or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    self.save_state(info)
                    if self.is_main:
                        write_log(self.out_dir / "log.csv", self.log)
                    self._barrier()
                if stop_after_steps is not None and step >= stop_after_steps:
                    bar.close()
                    return {"stopped_at_step": step}
            position = 0
        bar.close()
        final = self.probe("final", cfg.rounds + 1, dev_source) if dev_source else None
        if self.is_main:
            write_log(self.out_dir / "log.csv", self.log)
            online = self.rounds_log + ([{"round": cfg.rounds + 1, "dev": final}] if final else [])
            write_json_atomic(self.out_dir / "online.json", online)
        self._barrier()
        return {"steps": step, "rounds": cfg.rounds, **online_summary(self.rounds_log, final)}

    def _round_entry(self, round_: int, rows: list[dict], dev_source) -> dict:
        """What the round trains on (reward by origin, P(positive > negative)) and, before it trains, the
        policy's unsteered answers to the dev prompts."""
        from neat.reward import separation

        sep = separation(rows) if self.is_main else {}
        entry = {"round": round_, "candidates": len(rows),
                 "reward_by_origin": {o: v["mean"] for o, v in sep.get("by_origin", {}).items()},
                 "p_positive_over_negative": sep.get("positive_over_negative", {}).get("p"),
                 "p_chosen_over_rejected": sep.get("chosen_over_rejected", {}).get("p")}
        if dev_source:
            entry["dev"] = self.probe(f"before round {round_}", round_, dev_source)
        return entry

    def _optimizer_step(self, micro_batches: list[list[PromptCandidates]], round_: int, step: int) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        tokens = 0
        batches = []
        for groups in micro_batches:
            phantom = False
            if self.dist is not None:
                shard = self.dist.shard(groups)
                # a process without a prompt still runs one (weight 0) to take part in the collectives
                groups, phantom = (shard, False) if shard else (groups[:1], True)
            batches.append((self.collate(groups), phantom))
        # what the step's loss terms average over, across micro-batches and processes
        local = torch.tensor([sum(batch_counts(b, cfg.sft_target)[j] for b, phantom in batches if not phantom) for j in (0, 1)],
                             dtype=torch.float64)
        norm = tuple(float(x) for x in (self.dist.all_sum(local) if self.dist is not None else local))
        for i, (batch, phantom) in enumerate(batches):
            tokens += 0 if phantom else batch_tokens(batch)
            last = i == len(batches) - 1
            if self.fsdp:  # reduce-scatter gradients only after the last micro-batch
                self.forward_model.set_requires_gradient_sync(last)
            sync = (contextlib.nullcontext() if self.dist is None or self.fsdp or last
                    else self.forward_model.no_sync())
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
            with sync:
                with amp:
                    loss, stats = step_loss(self.forward_model, batch, cfg, self.loss_fn, self.dist, phantom,
                                                  norm=norm)
                # stats["loss"] is the same on every process: all of them stop together
                if not math.isfinite(stats["loss"]) or not bool(torch.isfinite(loss)):
                    raise TrainingError(
                        f"non-finite loss ({stats['loss']}) at round {round_}, step {step + 1}; stopped. The last "
                        f"good checkpoint is kept in {self.state_dir} (lower train.lr or check the scored data)"
                    )
                loss.backward()
            for key, value in stats.items():
                share = key in ("loss", "rank_loss", "sft_loss")  # shares of the step's mean: they add up
                totals[key] = totals.get(key, 0.0) + (value if share else value / len(batches))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, already reduced over the processes
            grad_norm = grad_norm.full_tensor()
        if self.dist is not None:  # every process's tokens, not just this one's
            tokens = int(self.dist.all_sum(torch.tensor([float(tokens)], dtype=torch.float64))[0])
        if not torch.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm at round {round_}, step {step + 1}; stopped. "
                                f"The last good checkpoint is kept in {self.state_dir}")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {"round": round_, "step": step + 1, "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9)} | totals


# ---------------------------------------------------------------- the stage


def online_summary(rounds_log: list[dict], final: dict | None) -> dict:
    """The online curve in numbers: the dev-prompt reward before each round and after the last, and
    P(positive > negative) of each round's candidates."""
    dev = [e["dev"]["reward_mean"] for e in rounds_log if e.get("dev")] + ([final["reward_mean"]] if final else [])
    return {"online_dev_reward": dev,
            "online_p_positive_over_negative": [e.get("p_positive_over_negative") for e in rounds_log]}


def load_trainable_policy(params):
    from neat.models import apply_lora, load_policy

    model, tokenizer = load_policy(params.policy.model, cache_dir=params.paths.cache, device=params.policy.device,
                                   dtype=params.policy.dtype, trust_remote_code=params.policy.trust_remote_code,
                                   seed=params.seed)
    lora = params.policy.lora
    if lora.enabled:
        # the adapters' random init depends on the seed alone (every process of a run gets the same),
        # not on what ran before; the global RNG is left as it was
        device = next(model.parameters()).device
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(params.seed)
            model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                               target_modules=lora.target_modules)
    if params.train.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def reward_scorer(params):
    """Scores and ranks candidate rows with the training reward model (for rounds >= 2)."""
    from neat.models import load_reward_model
    from neat.reward import reward_model_ref, score_candidates

    rm, rm_tok = load_reward_model(reward_model_ref(params), cache_dir=params.paths.cache,
                                   device=params.reward.device, trust_remote_code=params.reward.trust_remote_code,
                                   seed=params.reward.seed)
    return lambda rows: score_candidates(rows, rm, rm_tok, batch_size=params.reward.batch_size,
                                         max_length=params.reward.max_length)


def dev_prompts(pairs, params) -> list:
    """Train-split prompts the policy never trains on (those after `data.max_train_prompts`), for the online curve."""
    n = params.train.dev_prompts
    if not n or params.data.max_train_prompts is None:
        return []
    return select_prompts(pairs, None)[params.data.max_train_prompts : params.data.max_train_prompts + n]


def state_dir_for(params) -> Path:
    """Resumable state lives outside the DVC outputs (DVC deletes outputs before it reruns a stage)."""
    out = Path(params.paths.out).resolve()
    key = hashlib.sha256(str(out).encode()).hexdigest()[:8]
    return Path(params.paths.checkpoints) / f"{out.name}-{key}" / "train"


def train(params, resume: bool = False, stop_after_steps: int | None = None) -> dict:
    """Stage: online rounds of ranking-loss training → `<out>/policy` (merged HF checkpoint)."""
    from neat.generation import use_engine
    from neat.models import save_model

    use_engine(params.generation.engine, params.generation.batch_tokens)
    if params.generation.backend == "vllm" and params.train.rounds > 1:  # checked before round 1, not after it
        from neat.distributed import world_size_from_env
        from neat.vllm_backend import BackendUnavailable, require_vllm

        if world_size_from_env() > 1:
            # the round's engine would start inside this run's process group, which vLLM (one process,
            # its own group) does not join
            raise BackendUnavailable(
                f"generation.backend: vllm samples the online rounds of single-process training only; this run "
                f"has {world_size_from_env()} processes: set generation.backend: hf for it (or train.rounds: 1)")
        require_vllm()
    torch.manual_seed(params.seed)
    random.seed(params.seed)
    scored_path = params.out("score", "candidates.parquet")
    first_rows = read_candidates(scored_path, SCORED_COLUMNS, "score")
    pairs = read_pairs(params.out("data", "train.jsonl"))
    groups_source = select_prompts(pairs, params.data.max_train_prompts)
    model, tokenizer = load_trainable_policy(params)
    dev_source = dev_prompts(pairs, params)
    scorer = reward_scorer(params) if params.train.rounds > 1 or dev_source else None
    out_dir = params.out("train")
    (out_dir / "rounds").mkdir(parents=True, exist_ok=True)  # a DVC output even with a single round
    started = time.perf_counter()
    trainer = Trainer(params, model, tokenizer, out_dir=out_dir, scorer=scorer,
                      state_dir=state_dir_for(params))
    summary = trainer.run(first_rows, groups_source, pairs, fingerprint_=fingerprint(params, scored_path),
                          resume=resume, stop_after_steps=stop_after_steps, dev_source=dev_source)
    if "stopped_at_step" in summary:
        return summary
    policy = trainer.full_policy()
    if not trainer.is_main:
        return summary
    save_model(policy, tokenizer, params.out("policy"), base_ref=params.policy.model)  # + adapter/ under LoRA
    last = trainer.log[-1] if trainer.log else {}
    summary |= {"seconds": round(time.perf_counter() - started, 1), "final_loss": last.get("loss")}
    write_json_atomic(params.out("metrics", "train.json"), summary)
    from neat.modelcard import write_model_card

    write_model_card(params.out("policy"), params, evaluation={})  # a previous run's evaluate.json is not this one's
    return summary
