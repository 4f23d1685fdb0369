"""The reward model: Bradley–Terry training, scoring and ranking of candidates (stages `train_rm`, `score`).

The reward model is a sequence classifier with one output (`num_labels=1`). It reads a text pair:
the first segment is the dialogue so far (`reward_input`: "Human: …" / "Assistant: …" lines), the
second the response. It always sees the *original* prompt of a candidate row — never the positive or
negative steering prompt (nor the demonstrations) that the policy sampled it under; those live in
the row's `steering_prompt` column, which nothing here reads.

Truncation (`encode`): the response keeps its start and is cut only if it alone exceeds the token
budget; the prompt gives way first and keeps its *end* (the last turns), since the last user turn is
what the response answers.

Ranking (`rank_candidates`), per `prompt_id`:
* `rank` is 0 for the best candidate; tied rewards share the best rank among them ("min" ranking:
  rewards [3, 5, 5, 1] → ranks [2, 0, 0, 3]);
* a candidate whose reward is not finite (NaN, ±inf) or that is flagged `degenerate` gets
  `rank = None` and is left out of the ranking entirely — it neither takes a rank nor pushes the
  others down, and the training stage skips it;
* `n_ranked` (on every row of the prompt) is how many candidates of that prompt were ranked.

`separation` reports how well the reward model tells the origins apart, over ranked candidates only.

`neat score` works in shards of `reward.shard_size` candidates, each saved under `paths.checkpoints`
when done, so a killed run continues from the completed shards and ends with the same scores.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from neat.progress import tqdm

from neat.diagnostics import compare_scores, is_rankable, separation
from neat.errors import DataError, ModelError

_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


# ---------------------------------------------------------------- inputs


def reward_input(prompt_messages: list[dict]) -> str:
    """The dialogue as "Human: …" / "Assistant: …" lines (one per turn), the first segment of the pair.

    Model-agnostic: no chat template. A `system` turn of the original data is kept as "System: …".
    Long dialogues are cut by `encode`, which keeps the last turns.
    """
    lines = []
    for message in prompt_messages:
        speaker = _SPEAKERS.get(message["role"], str(message["role"]).capitalize())
        lines.append(f"{speaker}: {str(message['content']).strip()}")
    return "\n".join(lines)


def _budget(tokenizer, max_length: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        max_length = min(max_length, limit)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after the special tokens")
    return budget


def _pair_ids(tokenizer, prompts: list[str], responses: list[str], budget: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) per pair, with special tokens, truncated as documented above."""
    p_batch = tokenizer(prompts, add_special_tokens=False, verbose=False)
    r_batch = tokenizer(responses, add_special_tokens=False, verbose=False)
    out = []
    encodings = getattr(p_batch, "encodings", None)
    if encodings:  # a fast tokenizer: truncate `tokenizers.Encoding`s and let its post-processor add specials
        backend = tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        for ep, er in zip(p_batch.encodings, r_batch.encodings):
            if len(er.ids) > budget:
                er.truncate(budget, direction="right")
            keep = budget - len(er.ids)
            if len(ep.ids) > keep:
                ep.truncate(keep, direction="left")
            merged = backend.post_process(ep, er, add_special_tokens=True)
            out.append((list(merged.ids), list(merged.type_ids)))
        return out
    build = getattr(tokenizer, "build_inputs_with_special_tokens", None)
    if build is None:
        raise ModelError(f"{type(tokenizer).__name__}: the reward model needs a fast tokenizer (tokenizer.json)")
    types = getattr(tokenizer, "create_token_type_ids_from_sequences", None)
    for p, r in zip(p_batch["input_ids"], r_batch["input_ids"]):
        r = r[:budget]
        p = p[len(p) - min(len(p), budget - len(r)):]
        ids = build(p, r)
        out.append((ids, types(p, r) if types else [0] * len(ids)))
    return out


def encode(tokenizer, prompts: list[str] | list[list[dict]], responses: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Padded tensors for (prompt, response) text pairs of at most `max_length` tokens each.

    `prompts` are `reward_input` strings (message lists are rendered with it). The prompt is cut from
    the left first (its end is kept); the response is cut from the right only if it alone exceeds
    the budget, leaving an empty prompt. `max_length` is capped at the tokenizer's model_max_length.
    A tokenizer without a separator token (decoder models, whose pair template just concatenates)
    gets "\nAssistant:" after the prompt and a space before the response, so the two stay apart.
    Returns input_ids, attention_mask and, when the model takes them, token_type_ids.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("encode needs at least one (prompt, response) pair")
    prompts = [p if isinstance(p, str) else reward_input(p) for p in prompts]
    responses = list(responses)
    if getattr(tokenizer, "sep_token_id", None) is None:  # no separator between the segments (decoders)
        prompts = [p + "\nAssistant:" for p in prompts]
        responses = [" " + r for r in responses]
    pairs = _pair_ids(tokenizer, prompts, responses, _budget(tokenizer, max_length))
    width = max((len(ids) for ids, _ in pairs), default=0)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    ids_rows, mask_rows, type_rows = [], [], []
    for ids, types in pairs:
        n = width - len(ids)
        if left:
            ids_rows.append([pad_id] * n + ids), mask_rows.append([0] * n + [1] * len(ids)), type_rows.append([0] * n + types)
        else:
            ids_rows.append(ids + [pad_id] * n), mask_rows.append([1] * len(ids) + [0] * n), type_rows.append(types + [0] * n)
    batch = {"input_ids": torch.tensor(ids_rows, dtype=torch.long).reshape(len(pairs), width),
             "attention_mask": torch.tensor(mask_rows, dtype=torch.long).reshape(len(pairs), width)}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        batch["token_type_ids"] = torch.tensor(type_rows, dtype=torch.long).reshape(len(pairs), width)
    return batch


# ---------------------------------------------------------------- scoring


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] float32 rewards (the single logit)."""
    device = _device_of(model)
    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
    if logits.dim() != 2 or logits.shape[1] != 1:
        raise ModelError(f"the reward model must have one output (num_labels=1), got logits of shape {tuple(logits.shape)}")
    return logits[:, 0].float()


def score_texts(model, tokenizer, prompts: list[list[dict]], responses: list[str], *, batch_size: int,
                max_length: int, progress: bool = True, desc: str = "score") -> list[float]:
    """The reward of each (original prompt, response) pair, as python floats (NaN kept as NaN).

    Batched by similar length (inputs sorted by character length, results returned in input order),
    under no_grad in eval mode; the model's previous train/eval mode is restored afterwards.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    texts = [reward_input(p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: -(len(texts[i]) + len(responses[i])))
    scores = [math.nan] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(order), desc=desc, unit="text", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = encode(tokenizer, [texts[i] for i in idx], [responses[i] for i in idx], max_length)
                for i, value in zip(idx, _rewards(model, batch).tolist()):
                    scores[i] = float(value)
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return scores


# ---------------------------------------------------------------- Bradley–Terry training


def pair_fields(pair) -> tuple[list[dict], str, str]:
    if isinstance(pair, dict):
        return pair["prompt"], pair["chosen"], pair["rejected"]
    return pair.prompt, pair.chosen, pair.rejected


def train_bradley_terry(model, tokenizer, pairs, *, epochs: int, lr: float, batch_size: int, max_length: int,
                        seed: int, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                        progress: bool = True, autocast: str | None = None) -> dict:
    """Train in place on preference pairs with loss −log σ(r_chosen − r_rejected), AdamW, constant lr.

    Deterministic given `seed` (on CPU): the pair order of every epoch comes from a seeded
    `torch.Generator`, and dropout draws from the global RNG seeded with `seed` inside
    `torch.random.fork_rng`, so the caller's RNG state is left untouched. Gradients are clipped to
    `max_grad_norm`. Returns the history: `loss` (one value per optimizer step), `epoch_loss`,
    `steps`, `pairs`, `seconds`. A non-finite loss stops training with a `ModelError`. `autocast`
    ("cpu", "cuda" or None): the forward passes in bf16 autocast over the float32 weights.
    """
    pairs = [pair_fields(p) for p in pairs]
    if not pairs:
        raise DataError("no preference pairs to train the reward model on")
    prompts = [reward_input(p) for p, _, _ in pairs]
    device = _device_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order_rng = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"loss": [], "epoch_loss": []}
    n = len(pairs)
    steps_per_epoch = math.ceil(n / batch_size)
    start_time = time.perf_counter()
    was_training = model.training
    model.train()
    forked = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked), \
                tqdm(total=epochs * steps_per_epoch, desc="reward model", unit="step", disable=not progress) as bar:
            torch.manual_seed(seed)
            for epoch in range(epochs):
                order = torch.randperm(n, generator=order_rng).tolist()
                epoch_losses = []
                for start in range(0, n, batch_size):
                    idx = order[start:start + batch_size]
                    batch = encode(tokenizer, [prompts[i] for i in idx] * 2,
                                   [pairs[i][1] for i in idx] + [pairs[i][2] for i in idx], max_length)
                    with torch.autocast(autocast or "cpu", dtype=torch.bfloat16, enabled=autocast is not None):
                        rewards = _rewards(model, batch)
                    margin = rewards[:len(idx)] - rewards[len(idx):]
                    loss = -F.logsigmoid(margin).mean()
                    if not torch.isfinite(loss):
                        raise ModelError(f"reward model training diverged: loss is {loss.item()} at step "
                                         f"{len(history['loss']) + 1} (try a lower reward.lr)")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
                    history["loss"].append(loss.item())
                    epoch_losses.append(loss.item())
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
                history["epoch_loss"].append(sum(epoch_losses) / len(epoch_losses))
    finally:
        model.train(was_training)
    history.update(steps=len(history["loss"]), pairs=n, epochs=epochs, seconds=round(time.perf_counter() - start_time, 2))
    return history


def pairwise_outcomes(model, tokenizer, pairs, *, batch_size: int, max_length: int,
                      progress: bool = True) -> list[float]:
    """Per pair: 1 where the chosen response outscores the rejected one, ½ a tie, 0 otherwise (a NaN score too)."""
    pairs = [pair_fields(p) for p in pairs]
    if not pairs:
        return []
    prompts = [p for p, _, _ in pairs]
    scores = score_texts(model, tokenizer, prompts * 2, [c for _, c, _ in pairs] + [r for _, _, r in pairs],
                         batch_size=batch_size, max_length=max_length, progress=progress, desc="pairwise accuracy")
    n = len(pairs)
    return [compare_scores(scores[i], scores[n + i]) for i in range(n)]


def pairwise_accuracy(model, tokenizer, pairs, *, batch_size: int, max_length: int, progress: bool = True) -> float:
    """Fraction of pairs whose chosen response outscores the rejected one; ties count ½, a NaN score 0.

    NaN for an empty list.
    """
    outcomes = pairwise_outcomes(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                                 progress=progress)
    return sum(outcomes) / len(outcomes) if outcomes else math.nan


def accuracy_with_interval(outcomes: list[float]) -> dict:
    """`eval_accuracy` and its 95 % interval over the pairs (`_ci_low`, `_ci_high`); NaN / None without pairs.
    The eval split is small (144 pairs on the shipped slice: about ±0.08), so the interval is half the figure."""
    from neat.stats import mean_ci

    m = mean_ci(outcomes)
    return {"eval_accuracy": math.nan if m["mean"] is None else m["mean"],
            "eval_accuracy_ci_low": m["ci_low"], "eval_accuracy_ci_high": m["ci_high"]}


# ---------------------------------------------------------------- candidates


def _reward_of(row: dict, number: int) -> float:
    if "reward" not in row:
        raise ValueError(f"candidate row {number} has no 'reward' (score it first)")
    value = row["reward"]
    return math.nan if value is None else float(value)


def rank_candidates(rows: list[dict]) -> list[dict]:
    """New rows (input order) with `rank` and `n_ranked` added, per `prompt_id`.

    `rank` = the number of ranked candidates of the same prompt with a strictly higher reward, so 0
    is the best and ties share the best rank among them ("min" ranking). Candidates with a NaN or
    infinite reward, or flagged `degenerate`, get `rank = None`: they are excluded from the ranking
    (they do not count towards other candidates' ranks nor `n_ranked`).
    """
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for number, row in enumerate(rows):
        _reward_of(row, number)
        if is_rankable(row):
            by_prompt[row["prompt_id"]].append(float(row["reward"]))
    ranked_rewards = {pid: sorted(vals, reverse=True) for pid, vals in by_prompt.items()}
    out = []
    for row in rows:
        values = ranked_rewards.get(row["prompt_id"], [])
        rank = None
        if is_rankable(row):
            reward = float(row["reward"])
            rank = sum(1 for v in values if v > reward)
        out.append({**row, "rank": rank, "n_ranked": len(values)})
    return out


def score_candidates(rows: list[dict], model, tokenizer, *, batch_size: int, max_length: int,
                     progress: bool = True, shard_size: int | None = None, shards=None) -> list[dict]:
    """New rows with `reward` (float, NaN possible) for every candidate, degenerate ones included, then ranked.

    The reward model reads each row's original `prompt` and its `response`. Rows are scored in
    consecutive shards of `shard_size` (all at once when None); batching stays inside a shard, so
    the rewards do not depend on whether the shards ran in one go. `shards` (a
    `neat.io.ShardStore`) persists each shard's rewards and returns saved ones instead of rescoring.
    """
    size = shard_size or max(len(rows), 1)
    scores: list[float] = []
    n_shards = max(1, math.ceil(len(rows) / size))
    for i, start in enumerate(range(0, len(rows), size)):
        chunk = rows[start:start + size]
        saved = shards.load(i) if shards is not None else None
        if saved is not None and len(saved.get("rewards", ())) == len(chunk):
            scores += [float(v) for v in saved["rewards"]]
            continue
        desc = "score candidates" if n_shards == 1 else f"score shard {i + 1}/{n_shards}"
        chunk_scores = score_texts(model, tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk],
                                   batch_size=batch_size, max_length=max_length, progress=progress, desc=desc)
        if shards is not None:
            shards.save(i, {"rewards": chunk_scores})
        scores += chunk_scores
    return rank_candidates([{**row, "reward": score} for row, score in zip(rows, scores)])


def score_fingerprint(params, source, ref: str) -> str:
    """Everything the scores depend on: a shard saved under another fingerprint is never reused."""
    from neat.io import fingerprint_of
    from neat.models import checkpoint_id

    desc = {"stage": "score", "format": 1, "reward": params.reward.model_dump(mode="json"), "ref": ref,
            "ref_id": checkpoint_id(ref, seed=params.reward.seed)}
    return fingerprint_of(desc, source)


def ranking_stats(rows: list[dict]) -> dict:
    """Counts over ranked rows: NaN/inf rewards, degenerate, unranked, ties, thin prompts."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt_id"]].append(row)
    tied, prompts_with_ties, thin = 0, 0, 0
    for group in by_prompt.values():
        ranks = [r["rank"] for r in group if r.get("rank") is not None]
        shared = sum(1 for r in ranks if ranks.count(r) > 1)
        tied += shared
        prompts_with_ties += shared > 0
        thin += len(ranks) < 2
    return {
        "candidates": len(rows),
        "prompts": len(by_prompt),
        "ranked": sum(1 for r in rows if r.get("rank") is not None),
        "unranked": sum(1 for r in rows if r.get("rank") is None),
        "nonfinite_rewards": sum(1 for r in rows if r.get("reward") is None or not math.isfinite(r["reward"])),
        "degenerate": sum(1 for r in rows if r.get("degenerate", False)),
        "tied": tied,
        "prompts_with_ties": prompts_with_ties,
        "prompts_under_two_ranked": thin,
    }


# ---------------------------------------------------------------- stages


def reward_model_ref(params) -> str:
    """The reward model to score with: the trained directory if `reward.train`, else `reward.model` as is."""
    return str(params.out("reward_model")) if params.reward.train else params.reward.model


def _load(params, ref: str, dtype: str = "auto"):
    from neat.models import load_reward_model

    r = params.reward
    return load_reward_model(ref, cache_dir=params.paths.cache, device=r.device, dtype=dtype,
                             trust_remote_code=r.trust_remote_code, seed=r.seed)


def fit_reward_model(model, tokenizer, eval_pairs, train_pairs, cfg, *, seed: int, save_to,
                     progress: bool = True) -> dict:
    """The flow both reward-model stages share (`train_rm`, `evaluate.train_eval_rm`): eval-split
    pairwise accuracy before, Bradley–Terry on `train_pairs` (`cfg`: the `reward` section's epochs,
    lr, batch size, max length; `seed`), accuracy after, the model saved to `save_to`; returns the
    metrics of it. `train_pairs=None`: nothing is trained or saved, only the accuracy of the model as given."""
    common = dict(batch_size=cfg.batch_size, max_length=cfg.max_length, progress=progress)
    device = str(_device_of(model))
    if train_pairs is None:
        return accuracy_with_interval(pairwise_outcomes(model, tokenizer, eval_pairs, **common)) | {"device": device}
    from neat.models import autocast_device, save_model

    before = pairwise_accuracy(model, tokenizer, eval_pairs, **common)
    history = train_bradley_terry(model, tokenizer, train_pairs, epochs=cfg.epochs, lr=cfg.lr, seed=seed, **common,
                                  autocast=autocast_device(cfg.bf16_autocast, _device_of(model)))
    after = accuracy_with_interval(pairwise_outcomes(model, tokenizer, eval_pairs, **common))
    save_model(model, tokenizer, save_to)
    return {"eval_accuracy_before": before, **after, "epochs": cfg.epochs, "steps": history["steps"],
            "train_loss_first": history["loss"][0], "train_loss_last": history["loss"][-1],
            "train_loss_by_epoch": history["epoch_loss"], "train_seconds": history["seconds"],
            "saved_to": str(save_to), "device": device}


def train_rm(params) -> dict:
    """Stage: train the reward model on the train split → `<out>/reward_model` (HF checkpoint).

    Metrics go to `<out>/metrics/reward_model.json`: eval-split pairwise accuracy (before and after
    training), first/last training loss, pairs used, seconds (`fit_reward_model`). The first
    `reward.max_pairs` train pairs (file order) are used. Training loads the model in float32. With
    `reward.train: false` nothing is trained or saved: the metrics hold the eval accuracy of
    `reward.model` as given.
    """
    from neat.data import read_pairs
    from neat.io import json_safe, write_json_atomic

    r = params.reward
    start = time.perf_counter()
    eval_pairs = read_pairs(params.out("data", "eval.jsonl"))
    metrics: dict[str, Any] = {"model": r.model, "trained": r.train, "eval_pairs": len(eval_pairs)}
    train_pairs = None
    if r.train:
        train_pairs = read_pairs(params.out("data", "train.jsonl"))
        if r.max_pairs:
            train_pairs = train_pairs[:r.max_pairs]
        if not train_pairs:
            raise DataError(f"{params.out('data', 'train.jsonl')}: no training pairs for the reward model")
        metrics["train_pairs"] = len(train_pairs)
    model, tokenizer = _load(params, r.model, dtype="float32") if r.train else _load(params, r.model)
    metrics |= fit_reward_model(model, tokenizer, eval_pairs, train_pairs, r, seed=r.seed,
                                save_to=params.out("reward_model"))
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    if r.train:
        from neat.models import arithmetic

        metrics["arithmetic"] = arithmetic(params, "reward_training")
    metrics = json_safe(metrics)
    write_json_atomic(params.out("metrics", "reward_model.json"), metrics)
    return metrics


def score(params) -> dict:
    """Stage: reward and rank the expanded candidates → `<out>/score/candidates.parquet` and `stats.json`."""
    from pathlib import Path

    from neat.candidates import read_candidates, write_candidates
    from neat.io import json_safe, write_json_atomic

    source = params.out("expand", "candidates.parquet")
    rows = read_candidates(source)
    if not rows:
        raise DataError(f"{source}: no candidates to score")
    ref = reward_model_ref(params)
    if params.reward.train and not Path(ref).is_dir():
        raise ModelError(f"{ref}: trained reward model not found (run the train_rm stage first, "
                         "or set reward.train: false to score with reward.model as is)")
    from neat.io import ShardStore, work_dir_for

    start = time.perf_counter()
    model, tokenizer = _load(params, ref)
    size = params.reward.shard_size
    shards = ShardStore(work_dir_for(params.paths.checkpoints, params.paths.out, "score"),
                        score_fingerprint(params, source, ref), max(1, math.ceil(len(rows) / size)), label="score")
    shards.announce()
    scored = score_candidates(rows, model, tokenizer, batch_size=params.reward.batch_size,
                              max_length=params.reward.max_length, shard_size=size, shards=shards)
    write_candidates(params.out("score", "candidates.parquet"), scored)
    stats = {"model": ref, **ranking_stats(scored), "separation": separation(scored),
             "seconds": round(time.perf_counter() - start, 2)}
    stats = json_safe(stats)
    write_json_atomic(params.out("score", "stats.json"), stats)
    shards.finish()
    return stats
