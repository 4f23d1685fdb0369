"""Steered sampling of candidates: the library behind `neat expand` and the trainer's online rounds.

For each prompt the policy samples `k_pos` responses under the positive steering prompt and `k_neg`
under the negative one, applied as a system message through the chat template, with `n_demos`
in-context demonstrations taken from *other* prompts (chosen responses for the positive prompt,
rejected ones for the negative) for the steering prompts named in `demo_origins`. The dataset's
chosen and rejected responses join them as candidates. Every candidate records where it came from
(the columns `neat.candidates.SAMPLED_COLUMNS`).

`build_candidates` works in shards of prompts, each independent of the others (bucketing and
seeding stay inside a shard), so a run resumed from saved shards ends with the same rows.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from neat.data import PreferencePair
from neat.encoding import ORIGINS, render_prompt
from neat.generation import generate
from neat.progress import tqdm


@dataclass(frozen=True)
class SteeringSpec:
    origin: str  # "positive" | "negative"
    system: str
    k: int


def select_prompts(pairs: list[PreferencePair], limit: int | None) -> list[list[PreferencePair]]:
    """Group pairs by prompt in file order; keep the first `limit` prompts."""
    groups: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        groups.setdefault(pair.prompt_id, []).append(pair)
    out = list(groups.values())
    return out[:limit] if limit else out


def pick_demos(pool: list[PreferencePair], exclude_id: str, n: int, seed: int, use: str) -> list[dict]:
    """`n` demonstration turns from prompts other than `exclude_id` (single-turn, short ones first)."""
    return _draw_demos(pool, {exclude_id}, n, f"{seed}:{exclude_id}:{use}", use)


def pick_round_demos(pool: list[PreferencePair], exclude_ids: set[str], n: int, seed: int, round_: int,
                     use: str) -> list[dict]:
    """`n` demonstration turns shared by every prompt of a round (`expand.demo_scope: round`), from prompts
    outside `exclude_ids` (the round's own prompts), so that no prompt sees its own responses."""
    return _draw_demos(pool, exclude_ids, n, f"{seed}:round{round_}:{use}", use)


def _draw_demos(pool: list[PreferencePair], exclude_ids: set[str], n: int, rng_key: str, use: str) -> list[dict]:
    if n == 0:
        return []
    candidates = [p for p in pool if p.prompt_id not in exclude_ids and len(p.prompt) == 1]
    candidates = [p for p in candidates if len(getattr(p, use).split()) <= 80] or candidates
    rng = random.Random(rng_key)
    chosen = rng.sample(candidates, min(n, len(candidates)))
    turns: list[dict] = []
    for demo in chosen:
        turns += [{"role": "user", "content": demo.prompt[-1]["content"]},
                  {"role": "assistant", "content": getattr(demo, use)}]
    return turns


def steered_prompt(tokenizer, prompt: list[dict], system: str, demos: list[dict], max_tokens: int) -> str | None:
    """The rendered prompt with steering; drops demos, then early turns, until it fits `max_tokens`."""
    def size(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    demos = list(demos)
    turns = list(prompt)
    while True:
        text = render_prompt(tokenizer, demos + turns, system=system)
        if size(text) <= max_tokens:
            return text
        if demos:
            demos = demos[2:]
        elif len(turns) > 2:
            turns = turns[2:]
        else:
            return None


def candidate_rows_from_dataset(group: list[PreferencePair], round_: int) -> list[dict]:
    rows, seen = [], set()
    for pair in group:
        for origin in ("chosen", "rejected"):
            text = getattr(pair, origin)
            if text is None or text in seen:
                continue
            seen.add(text)
            rows.append(dict(
                prompt_id=pair.prompt_id, prompt=pair.prompt, origin=origin, response=text,
                steering_prompt=None, n_demos=0, generation=None, seed=None, policy_id="dataset",
                round=round_, n_tokens=None, flags=[], degenerate=False,
            ))
    return rows


def sample_candidates(model, tokenizer, groups: list[list[PreferencePair]], demo_pool: list[PreferencePair],
                      cfg, *, seed: int, policy_id: str, round_: int, progress: bool = True,
                      bar=None) -> tuple[list[dict], dict]:
    """Sample positive and negative candidates for every prompt group; returns (rows, stats).

    With `cfg.negative_opening`, each negative answer is begun with that text in the rendered prompt,
    and the candidate's response is the opening followed by the sampled continuation. With
    `cfg.demo_scope: round` every prompt gets the same demonstrations (`pick_round_demos`).

    The prompts are bucketed by length *within* `groups` only, and every generation batch is seeded
    from its own first prompt, so the result for a set of groups never depends on what ran before.
    """
    specs = [SteeringSpec("positive", cfg.positive_prompt, cfg.k_pos), SteeringSpec("negative", cfg.negative_prompt, cfg.k_neg)]
    specs = [s for s in specs if s.k > 0]
    gen_settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p}
    rows: list[dict] = []
    stats = {"prompts": len(groups), "prompts_too_long": 0, "samples": 0, "degenerate": 0, "generated_tokens": 0}
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(groups) * len(specs), desc=f"expand round {round_}", unit="prompt", disable=not progress)
    for spec in specs:
        demo_use = "chosen" if spec.origin == "positive" else "rejected"
        opening = cfg.negative_opening if spec.origin == "negative" else ""  # the answer's forced start, kept
        texts, keep = [], []
        n = cfg.n_demos if spec.origin in cfg.demo_origins else 0
        shared = None  # demo_scope round: one draw for all, which the generation loop prefills once per batch
        if cfg.demo_scope == "round":
            shared = pick_round_demos(demo_pool, {g[0].prompt_id for g in groups}, n, seed, round_, demo_use)
        for group in groups:
            head = group[0]
            demos = shared if shared is not None else pick_demos(demo_pool, head.prompt_id, n, seed, demo_use)
            text = steered_prompt(tokenizer, head.prompt, spec.system, demos, cfg.max_prompt_tokens)
            if text is None:
                stats["prompts_too_long"] += spec.origin == specs[0].origin
                bar.update(1)
                continue
            texts.append(text + opening)
            keep.append((head, (len(demos) // 2)))
        outputs = generate(
            model, tokenizer, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, num_return_sequences=spec.k, batch_size=cfg.batch_size,
            seed=seed * 1000 + round_ * 10 + (spec.origin == "negative"), min_tokens=cfg.min_response_tokens,
            on_batch=bar.update,
        )
        for (head, n_demos), gens in zip(keep, outputs):
            for gen in gens:
                response = f"{opening} {gen.text}".strip() if opening else gen.text
                rows.append(dict(
                    prompt_id=head.prompt_id, prompt=head.prompt, origin=spec.origin, response=response,
                    steering_prompt=spec.system, n_demos=n_demos, generation=json.dumps(gen_settings),
                    seed=seed, policy_id=policy_id, round=round_, n_tokens=gen.n_tokens, flags=gen.flags,
                    degenerate=gen.degenerate,
                ))
                stats["samples"] += 1
                stats["degenerate"] += gen.degenerate
                stats["generated_tokens"] += gen.n_tokens
    if own_bar:
        bar.close()
    return rows, stats


SHARD_STATS = ("prompts", "prompts_too_long", "samples", "degenerate", "generated_tokens")


def shard_groups(groups: list, shard_size: int | None) -> list[list]:
    """Consecutive shards of `shard_size` prompt groups (one shard when `shard_size` is falsy)."""
    size = shard_size or max(len(groups), 1)
    return [groups[i:i + size] for i in range(0, len(groups), size)] or [[]]


def build_candidates(model, tokenizer, groups, demo_pool, cfg, *, seed, policy_id, round_, progress=True,
                     include_dataset: bool = True, shards=None) -> tuple[list[dict], dict]:
    """Dataset responses (optional) plus steered samples for every prompt group.

    The groups are processed in shards of `cfg.shard_size` prompts, each independently (bucketing
    and seeding stay inside a shard), so the rows are the same whether shards run in one go or
    across a killed run and its rerun. `shards` (a `neat.io.ShardStore`) persists each finished
    shard and returns it instead of recomputing; without it nothing is persisted.
    """
    chunks = shard_groups(groups, getattr(cfg, "shard_size", None))
    n_specs = (cfg.k_pos > 0) + (cfg.k_neg > 0)
    stats = {k: 0 for k in SHARD_STATS} | {"shards": len(chunks), "shards_resumed": 0}
    rows: list[dict] = []
    bar = tqdm(total=len(groups) * n_specs, desc=f"expand round {round_}", unit="prompt", disable=not progress)
    for i, chunk in enumerate(chunks):
        saved = shards.load(i) if shards is not None else None
        if saved is not None:
            chunk_rows, chunk_stats = saved["rows"], saved["stats"]
            stats["shards_resumed"] += 1
            bar.update(len(chunk) * n_specs)
        else:
            chunk_rows = []
            if include_dataset:
                for group in chunk:
                    chunk_rows += candidate_rows_from_dataset(group, round_)
            sampled, chunk_stats = sample_candidates(model, tokenizer, chunk, demo_pool, cfg, seed=seed,
                                                     policy_id=policy_id, round_=round_, bar=bar)
            chunk_rows += sampled
            if shards is not None:
                shards.save(i, {"rows": chunk_rows, "stats": chunk_stats})
        rows += chunk_rows
        for key in SHARD_STATS:
            stats[key] += chunk_stats[key]
    bar.close()
    order = {g[0].prompt_id: i for i, g in enumerate(groups)}
    rows = sorted(rows, key=lambda r: (order[r["prompt_id"]], ORIGINS.index(r["origin"])))
    return rows, stats
