"""Which training target moves the policy up? Offline probe on dev prompts of the *train* split.

Trains the LoRA policy for STEPS steps on train-split preference pairs (no sampling: the dataset's
chosen and rejected responses, labelled by the human preference), then answers held-back train-split
prompts greedily and asks the evaluation reward model which answer is better, base or trained.
It never reads the eval split. One JSON line per run, appended to --results.

    dvc repro evaluate      # or `make all`: needs outputs/data and outputs/eval_reward_model
    python benchmarks/training_target_probe.py --name sft-chosen --candidates chosen --steps 32
    python benchmarks/training_target_probe.py --name rank-pair --candidates pair --steps 32

--candidates pair: RRHF on (chosen > rejected) plus the SFT term on chosen; chosen: the SFT term alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from neat.config import load_params
from neat.data import read_pairs
from neat.diagnostics import is_repetitive
from neat.encoding import PromptCandidates, collate_packed, render_prompt
from neat.evaluate import win_rate_ci
from neat.generation import generate
from neat.judges import StringMatchJudge
from neat.losses import LOSSES
from neat.models import load_reward_model
from neat.reward import score_texts
from neat.training.objective import step_loss
from neat.training.trainer import load_trainable_policy, make_scheduler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--candidates", choices=("pair", "chosen"), default="pair")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--train-prompts", type=int, default=100, help="first N train-split prompts are trained on")
    ap.add_argument("--dev-prompts", type=int, default=64, help="the next N are answered and judged")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", "-S", action="append", default=[], help="params override, e.g. train.lr=1e-4")
    ap.add_argument("--results", default="outputs/probe/results.jsonl")
    args = ap.parse_args()

    params = load_params(args.params, overrides=args.set)
    out = Path(params.paths.out)
    first: dict[str, object] = {}
    for pair in read_pairs(out / "data" / "train.jsonl"):
        first.setdefault(pair.prompt_id, pair)
    prompts = list(first.values())
    train, dev = prompts[: args.train_prompts], prompts[args.train_prompts : args.train_prompts + args.dev_prompts]
    if not train or not dev:
        raise SystemExit(f"{len(prompts)} train-split prompts: too few for {args.train_prompts} + {args.dev_prompts}")

    model, tok = load_trainable_policy(params)
    rendered = [render_prompt(tok, p.prompt) for p in dev]

    def answers() -> list[str]:
        gens = generate(model, tok, rendered, max_new_tokens=params.evaluate.max_new_tokens, batch_size=8, seed=0)
        return [g[0].text for g in gens]

    with model.disable_adapter():
        base = answers()
    if args.candidates == "pair":
        groups = [PromptCandidates(p.prompt_id, p.prompt, [p.chosen, p.rejected], [1.0, 0.0], ["chosen", "rejected"]) for p in train]
    else:
        groups = [PromptCandidates(p.prompt_id, p.prompt, [p.chosen], [1.0], ["chosen"]) for p in train]
    cfg = params.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.warmup_steps, args.steps)
    started = time.perf_counter()
    model.train()
    for step in range(args.steps):
        batch = [groups[(step * cfg.batch_size + j) % len(groups)] for j in range(cfg.batch_size)]
        optimizer.zero_grad(set_to_none=True)
        loss, _ = step_loss(model, collate_packed(tok, batch, cfg.max_prompt_tokens, cfg.max_response_tokens,
                                                  tok.pad_token_id), cfg, LOSSES[cfg.loss])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
    train_s = time.perf_counter() - started
    model.eval()
    trained = answers()

    judge_rm, judge_tok = load_reward_model(str(out / "eval_reward_model"), cache_dir=params.paths.cache, device="cpu")
    dialogues = [p.prompt for p in dev]
    r_base = score_texts(judge_rm, judge_tok, dialogues, base, batch_size=16, max_length=params.reward.max_length,
                         progress=False)
    r_new = score_texts(judge_rm, judge_tok, dialogues, trained, batch_size=16, max_length=params.reward.max_length,
                        progress=False)
    n = len(dev)
    win = win_rate_ci(r_new, r_base, n_resamples=1000, seed=params.seed)  # the evaluate stage's win rate
    refusal = StringMatchJudge()
    result = {
        "name": args.name, "candidates": args.candidates, "steps": args.steps, "overrides": args.set,
        "dev_prompts": n, "win_rate": win["win_rate"], "win_rate_ci": [round(win["ci_low"], 3), round(win["ci_high"], 3)],
        "wins": win["wins"], "ties": win["ties"], "losses": win["losses"],
        "eval_reward_diff": statistics.mean(r_new) - statistics.mean(r_base),
        "changed_share": sum(a != b for a, b in zip(base, trained)) / n,
        "refusal_rate": [sum(refusal.judge(base)) / n, sum(refusal.judge(trained)) / n],
        "repetition_rate": [sum(map(is_repetitive, base)) / n, sum(map(is_repetitive, trained)) / n],
        "train_s": round(train_s, 1),
    }
    print(json.dumps(result))
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
