"""The `Trainer`: online rounds of ranking-loss training on one policy.

Round 1 trains on the scored candidates of the `expand` → `score` stages. Each later round
re-samples positive and negative candidates from the current policy, re-scores them with the
reward model and trains on them. Each optimizer step takes `grad_accum` micro-batches of
`batch_size` prompts; the loss of a micro-batch is `neat.training.objective.step_loss` with the
ranking loss chosen once (`self.loss_fn`). How the run is spread over processes is its strategy's
(`neat.training.strategy`); the resumable state is `neat.training.checkpoint`'s. `resume=True`
continues from the last checkpoint and reaches the same final weights as an uninterrupted run on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from neat.candidates import read_candidates, write_candidates
from neat.encoding import PromptCandidates, batch_tokens, collate, collate_packed, fit_turns
from neat.errors import TrainingError
from neat.io import write_json_atomic
from neat.losses import LOSSES
from neat.models import autocast_device
from neat.progress import tqdm
from neat.steering import build_candidates
from neat.training.checkpoint import checkpoint_info, load_checkpoint, save_checkpoint
from neat.training.frozen_weights import FrozenWeightCasts
from neat.training.groups import groups_from_scored, mark_benign_refusals, round_order, round_steps
from neat.training.objective import batch_counts, step_loss
from neat.training.records import online_summary, write_log
from neat.training.strategy import strategy_for

log = logging.getLogger(__name__)

# train.schedule → transformers' schedule; `constant` keeps a warmup (transformers' plain `constant` has none)
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def make_scheduler(optimizer, schedule: str, warmup: int, total: int):
    """transformers' `get_scheduler`: the lr rises linearly from 0 over `warmup` steps, then stays
    (constant) or decays to 0 at step `total` (linear, cosine). A LambdaLR: its state_dict is checkpointed."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total)


def load_trainable_policy(params):
    from neat.models import apply_lora, enable_activation_checkpointing, load_policy

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
    if params.train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model, tokenizer


class Trainer:
    """Holds the policy, the optimisation state and the round data of one training run."""

    def __init__(self, params, model, tokenizer, *, out_dir: Path, scorer=None, progress: bool = True,
                 state_dir: Path | None = None, answer_only: set[str] | None = None):
        self.params, self.cfg = params, params.train
        # the benign mix's prompt ids: with train.benign_refusals: last their refusing candidates rank last
        self.answer_only = set(answer_only or ()) if self.cfg.benign_refusals == "last" else set()
        self.model, self.tokenizer = model, tokenizer
        self.out_dir = Path(out_dir)
        self.state_dir = Path(state_dir) if state_dir else self.out_dir / "state"
        self.scorer = scorer  # callable(rows) -> rows with reward and rank, for rounds >= 2
        self.progress = progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError("the policy has no trainable parameter (LoRA disabled and weights frozen?)")
        self.log: list[dict] = []
        self.loss_fn = LOSSES[self.cfg.loss]  # the ranking loss (RRHF, PRO or DPO), chosen once
        # several processes (accelerate launch / torchrun): each takes a shard of every micro-batch, with
        # the model replicated (DDP) or its weights, gradients and optimizer state sharded (FSDP)
        from neat.packing import supports_packing

        self.strategy = strategy_for(model, self.cfg.parallel)
        self.forward_model = self.strategy.wrap(model)
        # after wrapping: FSDP replaces the parameters with sharded ones
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.shared_prompt = self.cfg.shared_prompt and supports_packing(model)
        self.autocast = autocast_device(self.cfg.bf16_autocast, next(model.parameters()).device)
        # under bf16 autocast the frozen base weights are cast once, not in every forward (same numbers);
        # FSDP's sharded parameters are its own to manage
        casts = FrozenWeightCasts(model) if self.autocast and self.strategy.name != "fsdp" else None
        self.frozen_casts = casts if casts else contextlib.nullcontext

    @property
    def is_main(self) -> bool:
        return self.strategy.is_main

    def full_policy(self):
        """Collective: the policy with full weights on the main process (None on the others).

        Replicated runs return the training model itself; under FSDP the gathered weights go into a
        fresh, unsharded copy (built with `load_trainable_policy`) for sampling and saving."""
        return self.strategy.full_policy(lambda: load_trainable_policy(self.params)[0])

    def save_state(self, info: dict) -> None:
        """Collective: the resumable checkpoint, written by the main process."""
        state = self.strategy.training_state(self.optimizer)
        if state is not None:
            weights, optimizer_state = state
            save_checkpoint(self.state_dir, weights, optimizer_state, self.scheduler,
                            info | self.strategy.checkpoint_info)

    def load_state(self) -> dict:
        """Every process restores the checkpoint (weights, optimizer, scheduler, RNG); returns its info."""
        info, weights, optimizer_state = load_checkpoint(self.state_dir, self.scheduler)
        self.strategy.load_training_state(self.optimizer, weights, optimizer_state)
        return info

    def collate(self, groups: list[PromptCandidates]):
        fn = collate_packed if self.shared_prompt else collate
        return fn(self.tokenizer, groups, self.cfg.max_prompt_tokens, self.cfg.max_response_tokens, self.pad_id)

    def steps_per_round(self, n_groups: int) -> int:
        """Optimizer steps of one round, as the loop takes them (epochs are concatenated, then batched):
        `train.steps_per_round` when set, else `epochs_per_round` passes over the round's prompts."""
        return round_steps(n_groups, self.cfg)

    def round_batches(self, n_groups: int, round_: int) -> list[list[int]]:
        """The round's micro-batches of prompt indices. With `train.steps_per_round`, as many seeded epoch
        permutations as the steps need (never fewer than `epochs_per_round`), cut at the last step's
        micro-batch; the first epochs are the same permutations as without it."""
        cfg = self.cfg
        epochs = cfg.epochs_per_round
        if cfg.steps_per_round:
            epochs = max(epochs, math.ceil(cfg.steps_per_round * cfg.grad_accum * cfg.batch_size / n_groups))
        order = round_order(n_groups, self.params.seed, round_, epochs)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        return batches[: cfg.steps_per_round * cfg.grad_accum] if cfg.steps_per_round else batches

    @property
    def loop_probes(self) -> bool:
        return self.cfg.loop_probes and self.cfg.degenerate == "last"

    def round_rows(self, round_: int, first_rows: list[dict], groups_source, demo_pool, policy_id: str) -> list[dict]:
        """Round 1: the scored expansion; later rounds: fresh samples from the current policy, scored.
        With `train.loop_probes`, every round adds the policy's degenerate greedy answers (`greedy_loops`)."""
        if round_ == 1 and not self.loop_probes:
            return first_rows
        # Sampled once per run and round, kept beside the resumable state (outside the DVC outputs, which
        # DVC deletes before a rerun) and keyed by the run's fingerprint: a resumed run trains on exactly
        # the same round data, and a run with other inputs or params never reuses it.
        path = self.state_dir.with_name("rounds") / f"round_{round_}-{self.fingerprint}.parquet"
        published = self.out_dir / "rounds" / f"round_{round_}.parquet"
        if self.strategy.main_says(path.exists()):
            rows = read_candidates(path)
            if self.is_main and not published.exists():
                write_candidates(published, rows)
            return rows
        policy = self.full_policy()
        if not self.is_main:  # the main process samples and scores the round; the others read it
            self.strategy.barrier()
            return read_candidates(path)
        rows: list[dict] = []
        with self._sampler(policy) as sampler:
            if round_ > 1:
                rows, _ = build_candidates(
                    sampler, self.tokenizer, groups_source, demo_pool, self.params.expand, seed=self.params.seed,
                    policy_id=policy_id, round_=round_, progress=self.progress,
                    include_dataset=self.cfg.include_dataset_responses,
                )
            if self.loop_probes:
                rows += self.greedy_loops(sampler, groups_source, round_, policy_id)
        del policy, sampler
        rows = self._score(rows)
        if round_ == 1:  # the expansion is scored already; its ranks do not depend on unranked (degenerate) rows
            rows = first_rows + rows
        write_candidates(path, rows)
        write_candidates(published, rows)
        self.strategy.barrier()
        return rows

    def _score(self, rows: list[dict]) -> list[dict]:
        if self.scorer is not None:
            return self.scorer(rows) if rows else []
        return [dict(r, reward=math.nan, rank=None, n_ranked=0) for r in rows]  # single round, no dev curve

    def greedy_loops(self, policy, groups_source, round_: int, policy_id: str) -> list[dict]:
        """The policy's unsteered greedy answers to the round's prompts (as `evaluate` decodes) that are
        degenerate (repetitive, empty, short), as candidate rows of origin `probe`; ranked last, they
        push down what greedy decoding loops into, which sampled candidates (T = 0.9) rarely show."""
        import json

        heads = [g[0] for g in groups_source]
        gens = self.greedy_answers(policy, heads, progress=f"loop probes round {round_}")
        settings = json.dumps({"temperature": 0.0, "max_new_tokens": self.params.expand.max_new_tokens})
        return [dict(prompt_id=p.prompt_id, prompt=p.prompt, origin="probe", response=g.text,
                     steering_prompt=None, n_demos=0, generation=settings, seed=self.params.seed,
                     policy_id=policy_id, round=round_, n_tokens=g.n_tokens, flags=g.flags, degenerate=True)
                for p, g in zip(heads, gens) if g.degenerate]

    def greedy_answers(self, sampler, heads, progress: str | None = None) -> list:
        """One `Generation` per prompt: the policy's unsteered greedy answer, rendered and decoded alike for the
        online curve's dev prompts and the loop probes (`expand.max_new_tokens`); `progress` names a bar."""
        from neat.generation import generate

        cfg = self.params.expand
        texts = [fit_turns(self.tokenizer, p.prompt, self.cfg.max_prompt_tokens)[0] for p in heads]
        with tqdm(total=len(texts), desc=progress, unit="prompt", disable=not (self.progress and progress)) as bar:
            gens = generate(sampler, self.tokenizer, texts, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.batch_size, seed=self.params.seed, min_tokens=cfg.min_response_tokens,
                            on_batch=bar.update)
        return [g[0] for g in gens]

    def probe(self, label: str, round_: int, dev_source) -> dict | None:
        """Collective: the current policy answers the dev prompts unsteered (greedy); the training reward
        model scores the answers. One point of the online curve (None on non-main processes)."""
        from neat.diagnostics import text_stats
        from neat.stats import mean_ci

        policy = self.full_policy()
        if not self.is_main:
            self.strategy.barrier()
            return None
        groups = [g[0] for g in dev_source]
        with self._sampler(policy) as sampler:
            responses = [g.text for g in self.greedy_answers(sampler, groups)]
        rows = [{"prompt_id": p.prompt_id, "prompt": p.prompt, "origin": "unsteered", "response": r}
                for p, r in zip(groups, responses)]
        rewards = [row["reward"] for row in self.scorer(rows)] if self.scorer else [None] * len(rows)
        self.strategy.barrier()
        reward = mean_ci(rewards)  # over the dev prompts: 16 at the default, so the interval is wide
        return {"label": label, "round": round_, "reward_mean": reward["mean"],
                "reward_mean_ci": None if reward["mean"] is None else [reward["ci_low"], reward["ci_high"]],
                **text_stats(responses),
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
        # where this process's time goes (a resumed run counts its own part only)
        self.phase_seconds = {"sampling": 0.0, "dev_probes": 0.0, "optimizer_steps": 0.0}
        # later rounds sample the same prompts; the round-1 count of trainable prompts sets the schedule
        n_prompts = max(1, len(groups_from_scored(self.marked(first_rows), self.cfg.degenerate, self.cfg.pair_labels)))
        total = self.steps_per_round(n_prompts) * cfg.rounds
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.warmup_steps, total)
        start_round, position, step = 1, 0, 0
        info = checkpoint_info(self.state_dir) if resume else None
        if info is not None:
            if self.strategy.main_says(info.get("fingerprint") == fingerprint_):
                try:
                    info = self.load_state()
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
            with self._timed("sampling"):
                rows = self.round_rows(round_, first_rows, groups_source, demo_pool, policy_id=f"round{round_ - 1}")
            marked = self.marked(rows)
            if position == 0 and not any(r["round"] == round_ for r in self.rounds_log):
                with self._timed("dev_probes"):
                    self.rounds_log.append(self._round_entry(round_, rows, marked, dev_source))
            groups = groups_from_scored(marked, self.cfg.degenerate, self.cfg.pair_labels)
            if not groups:
                raise TrainingError(f"round {round_}: no prompt has a ranked candidate to train on")
            batches = self.round_batches(len(groups), round_)
            while position < len(batches):
                step_batches = batches[position : position + cfg.grad_accum]
                with self._timed("optimizer_steps"):
                    record = self._optimizer_step([[groups[i] for i in b] for b in step_batches], round_, step)
                position += len(step_batches)
                step += 1
                self.log.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", round=round_)
                info = {"round": round_, "position": position, "step": step, "fingerprint": fingerprint_,
                        "log": self.log, "rounds_log": self.rounds_log, "round_done": position >= len(batches)}
                if info["round_done"] or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    with self._timed("optimizer_steps"):  # checkpoints count with the steps
                        self.save_state(info)
                        if self.is_main:
                            write_log(self.out_dir / "log.csv", self.log)
                        self.strategy.barrier()
                if stop_after_steps is not None and step >= stop_after_steps:
                    bar.close()
                    return {"stopped_at_step": step}
            position = 0
        bar.close()
        with self._timed("dev_probes"):
            final = self.probe("final", cfg.rounds + 1, dev_source) if dev_source else None
        if self.is_main:
            write_log(self.out_dir / "log.csv", self.log)
            online = self.rounds_log + ([{"round": cfg.rounds + 1, "dev": final}] if final else [])
            write_json_atomic(self.out_dir / "online.json", online)
        self.strategy.barrier()
        return {"steps": step, "rounds": cfg.rounds, **online_summary(self.rounds_log, final),
                "seconds_by_phase": {k: round(v, 1) for k, v in self.phase_seconds.items()}}

    @contextlib.contextmanager
    def _timed(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] += time.perf_counter() - started

    def marked(self, rows: list[dict]) -> list[dict]:
        """The round's scored rows with `train.benign_refusals: last` applied (`mark_benign_refusals`)."""
        if not self.answer_only:
            return rows
        return mark_benign_refusals(rows, self.answer_only, self.cfg.benign_refusal_text)

    def _round_entry(self, round_: int, rows: list[dict], marked: list[dict], dev_source) -> dict:
        """What the round trains on (reward by origin, P(positive > negative)) and, before it trains, the
        policy's unsteered answers to the dev prompts."""
        from neat.diagnostics import separation

        sep = separation(rows) if self.is_main else {}
        pos = sep.get("positive_over_negative", {})
        entry = {"round": round_, "candidates": len(rows),
                 "reward_by_origin": {o: v["mean"] for o, v in sep.get("by_origin", {}).items()},
                 "p_positive_over_negative": pos.get("p"),
                 "p_positive_over_negative_ci": [pos["ci_low"], pos["ci_high"]] if pos.get("p") is not None else None,
                 "p_chosen_over_rejected": sep.get("chosen_over_rejected", {}).get("p")}
        if self.answer_only:  # the policy's own samples that refuse a request it should answer (marked last)
            own = [r for r in marked if r["prompt_id"] in self.answer_only and r["origin"] in ("positive", "negative")]
            entry["benign_samples"] = len(own)
            entry["benign_samples_refused"] = sum(1 for r in own if r.get("ranked_last"))
        if self.loop_probes:  # how many of the round's prompts the policy answers with a loop (greedy)
            entry["greedy_loops"] = sum(1 for r in rows if r["origin"] == "probe")
            entry["prompts"] = len({r["prompt_id"] for r in rows})
        if dev_source:
            entry["dev"] = self.probe(f"before round {round_}", round_, dev_source)
        return entry

    def _optimizer_step(self, micro_batches: list[list[PromptCandidates]], round_: int, step: int) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        batches = []
        for groups in micro_batches:
            # this process's prompts; one without any still runs one (weight 0) to take part in the collectives
            groups, phantom = self.strategy.shard(groups)
            batches.append((self.collate(groups), phantom))
        # what the step's loss terms average over, across micro-batches and processes
        local = torch.tensor([sum(batch_counts(b, cfg.sft_target)[j] for b, phantom in batches if not phantom) for j in (0, 1)],
                             dtype=torch.float64)
        norm = tuple(float(x) for x in self.strategy.all_sum(local))
        with self.frozen_casts():
            tokens = self._micro_batches(batches, norm, totals, round_, step)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = self.strategy.clip_grad_norm(trainable, cfg.max_grad_norm)
        if self.strategy.world_size > 1:  # every process's tokens, not just this one's
            tokens = int(self.strategy.all_sum(torch.tensor([float(tokens)], dtype=torch.float64))[0])
        if not torch.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm at round {round_}, step {step + 1}; stopped. "
                                f"The last good checkpoint is kept in {self.state_dir}")
        lr = self.scheduler.get_last_lr()[0]
        self.strategy.optimizer_step(self.optimizer, self.scheduler)
        return {"round": round_, "step": step + 1, "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9)} | totals

    def _micro_batches(self, batches: list, norm: tuple, totals: dict, round_: int, step: int) -> int:
        """Forward and backward passes of one optimizer step's micro-batches; adds their statistics to
        `totals` and returns the tokens this process trained on."""
        cfg, tokens = self.cfg, 0
        for i, (batch, phantom) in enumerate(batches):
            tokens += 0 if phantom else batch_tokens(batch)
            last = i == len(batches) - 1
            sync = self.strategy.gradient_sync(last)  # gradients synchronised after the last micro-batch only
            amp = torch.autocast(self.autocast, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
            with sync:
                with amp:
                    loss, stats = step_loss(self.forward_model, batch, cfg, self.loss_fn, self.strategy, phantom,
                                            norm=norm)
                # stats["loss"] is the same on every process: all of them stop together
                if not math.isfinite(stats["loss"]) or not bool(torch.isfinite(loss)):
                    raise TrainingError(
                        f"non-finite loss ({stats['loss']}) at round {round_}, step {step + 1}; stopped. The last "
                        f"good checkpoint is kept in {self.state_dir} (lower train.lr or check the scored data)"
                    )
                self.strategy.backward(loss)
            for key, value in stats.items():
                share = key in ("loss", "rank_loss", "sft_loss")  # shares of the step's mean: they add up
                totals[key] = totals.get(key, 0.0) + (value if share else value / len(batches))
        return tokens
