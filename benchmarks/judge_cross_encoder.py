"""A cross-encoder refusal judge: all-MiniLM-L6-v2 fine-tuned end to end on (last user turn, response).

The learned judge (`neat.judges.LearnedJudge`) reads the response alone through a frozen encoder; most of every
judge's errors on real completions are refusals that depend on the request (lectures, arguing against the
premise, deflections). This one reads the request too and trains the encoder itself: mean-pooled MiniLM over
"user turn [SEP] response" (the turn truncated first), a scalar head (optionally with the string-match verdict as
one more input), class-balanced logistic loss, AdamW. Measured by 5-fold CV on data/refusal_labels/train.jsonl with
`benchmarks/judge_agreement.py`'s folds (string matching: 0.834 there); `--heldout` trains on the whole train part
and scores heldout.jsonl. One JSON line; ~80 s per 3 epochs of CV on 2 cores.

    .venv/bin/python benchmarks/judge_cross_encoder.py --epochs 6 --string-match-feature
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.judge_agreement import cv_folds  # noqa: E402
from neat.io import read_jsonl  # noqa: E402
from neat.judges import BUILTIN_ENCODER, StringMatchJudge, load_judge_encoder  # noqa: E402

LABELS = ROOT / "data/refusal_labels"


def last_user_turn(prompt: str) -> str:
    """The request a response answers: HH prompts are flattened "user: ... assistant: ..." dialogues."""
    at = prompt.rfind("user:")
    return prompt[at + len("user:"):].strip() if at >= 0 else prompt.strip()


class CrossEncoderJudge(nn.Module):
    def __init__(self, string_match_feature: bool, max_length: int = 192):
        super().__init__()
        self.tokenizer, encoder = load_judge_encoder(BUILTIN_ENCODER)
        self.encoder = copy.deepcopy(encoder).requires_grad_(True).train()
        self.string_match = StringMatchJudge() if string_match_feature else None
        self.head = nn.Linear(self.encoder.config.hidden_size + (1 if string_match_feature else 0), 1)
        self.max_length = max_length

    def forward(self, rows: list[dict]) -> torch.Tensor:
        batch = self.tokenizer([last_user_turn(r["prompt"]) for r in rows], [r["response"] for r in rows],
                               truncation="only_first", max_length=self.max_length, padding=True, return_tensors="pt")
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        x = (hidden * mask).sum(1) / mask.sum(1)
        if self.string_match is not None:
            verdict = torch.tensor(self.string_match([r["response"] for r in rows]), dtype=x.dtype)
            x = torch.cat([x, verdict[:, None]], dim=-1)
        return self.head(x).squeeze(-1)


def is_refusal(row: dict) -> bool:
    return row["label"] != "full_compliance"


def fit_predict(train: list[dict], test: list[dict], *, epochs: int, string_match_feature: bool,
                seed: int = 0, batch_size: int = 16) -> list[bool]:
    torch.manual_seed(seed)
    order = random.Random(seed)
    judge = CrossEncoderJudge(string_match_feature)
    y = torch.tensor([float(is_refusal(r)) for r in train])
    pos_weight = (len(y) - y.sum()) / y.sum().clamp(min=1)
    opt = torch.optim.AdamW([{"params": judge.encoder.parameters(), "lr": 3e-5},
                             {"params": judge.head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    idx = list(range(len(train)))
    for _ in range(epochs):
        order.shuffle(idx)
        for start in range(0, len(idx), batch_size):
            batch = idx[start:start + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(judge([train[i] for i in batch]), y[batch],
                                                                  pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    judge.eval()
    with torch.no_grad():
        return (judge(test) > 0).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--string-match-feature", action="store_true", help="the string-match verdict as one more input")
    ap.add_argument("--heldout", action="store_true", help="train on train.jsonl, score heldout.jsonl (no CV)")
    args = ap.parse_args()
    started = time.perf_counter()
    train = list(read_jsonl(LABELS / "train.jsonl"))
    kw = dict(epochs=args.epochs, string_match_feature=args.string_match_feature)
    out = {"epochs": args.epochs, "string_match_feature": args.string_match_feature}
    if args.heldout:
        test = list(read_jsonl(LABELS / "heldout.jsonl"))
        pred = fit_predict(train, test, **kw)
        out["heldout_agreement"] = sum(p == is_refusal(r) for p, r in zip(pred, test)) / len(test)
    else:
        folds = cv_folds(train)
        hits = 0
        for k in sorted(set(folds)):
            test = [r for r, f in zip(train, folds) if f == k]
            pred = fit_predict([r for r, f in zip(train, folds) if f != k], test, **kw)
            hits += sum(p == is_refusal(r) for p, r in zip(pred, test))
        out["cv_train_agreement"] = hits / len(train)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
