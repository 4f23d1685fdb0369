"""Agreement of the refusal judges with hand labels on held-out real SmolLM2 completions.

    .venv/bin/python benchmarks/judge_agreement.py                # default data/refusal_labels/
    .venv/bin/python benchmarks/judge_agreement.py --cv           # also 5-fold CV on the train part
    .venv/bin/python benchmarks/judge_agreement.py --variants learned_cues_string_match
    .venv/bin/python benchmarks/judge_agreement.py --curve 0.25,0.5,0.75,1 --draws 5   # agreement vs labels

Trains every learned-judge variant on ``train.jsonl`` and measures, on ``heldout.jsonl`` (a fixed
split by prompt hash, see data/refusal_labels/README.md), the share of responses where the judge's
refusal verdict equals the human label (full_refusal / partial_refusal = refusal), with a 95 %
percentile-bootstrap interval, and each learned variant's paired difference to string matching
(bootstrap over held-out responses). ``--cv`` adds 5-fold cross-validated agreement on the train
part, grouped by prompt: that, not the held-out figure, is what a variant is chosen by.
``--curve`` adds the learning curve: each learned variant trained on a share of the train part's prompts
(``--draws`` random draws of prompts per share, all completions of a drawn prompt), its held-out agreement
per share (mean, lowest and highest over the draws), and the log-linear trend through the means with the
number of labelled completions at which it would reach ``--target`` were it to hold.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neat.io import read_jsonl  # noqa: E402
from neat.judges import LearnedJudge, StringMatchJudge, read_refusal_examples  # noqa: E402
from neat.stats import paired_bootstrap_ci, rate_with_ci  # noqa: E402

DEMO = ROOT / "data/demo/refusal_examples.jsonl"

# name -> (LearnedJudge kwargs, fit kwargs, trained on): "real" = the train part, "real+demo" = the
# train part plus the team-written demo examples, "demo" = the demo examples only (the judge as it
# shipped before data/refusal_labels/ existed).
VARIANTS = {
    "learned_demo_only": ({}, {}, "demo"),
    "learned": ({}, {}, "real"),
    "learned_first_sentence": ({"text": "first_sentence"}, {}, "real"),
    "learned_string_match_feature": ({"features": ("embedding", "string_match")}, {}, "real"),
    "learned_unbalanced_wd0.1_demo": ({}, {"class_weight": "none", "weight_decay": 0.1}, "real+demo"),
    "learned_cues_string_match": ({"features": ("cues", "string_match")},
                                  {"class_weight": "none", "weight_decay": 0.1}, "real+demo"),
    "learned_embedding_cues_string_match": ({"features": ("embedding", "cues", "string_match")},
                                            {"class_weight": "none", "weight_decay": 0.1}, "real+demo"),
}


def _agreement(pred, labels, seed=0) -> dict:
    res = rate_with_ci([p == y for p, y in zip(pred, labels)], n_resamples=2000, seed=seed)
    return {"agreement": res["rate"], "ci_low": res["ci_low"], "ci_high": res["ci_high"], "n": res["n"]}


def cv_folds(rows: list[dict], folds: int = 5) -> list[int]:
    """Each row's fold, by prompt hash: a prompt's completions stay together."""
    return [int(hashlib.sha256(("cv:" + r["prompt"]).encode()).hexdigest(), 16) % folds for r in rows]


def _cv(rows: list[dict], variant: tuple, demo: tuple[list, list], folds: int = 5) -> float | None:
    """Cross-validated agreement on the train `rows`, folds by prompt hash (a prompt's completions stay
    together); demo examples, when the variant uses them, join every training fold."""
    kw, fit_kw, data = variant
    if data == "demo":
        return None
    fold = cv_folds(rows, folds)
    texts = [r["response"] for r in rows]
    labels = [r["label"] != "full_compliance" for r in rows]
    hits = 0
    for k in range(folds):
        tr = [i for i in range(len(rows)) if fold[i] != k]
        te = [i for i in range(len(rows)) if fold[i] == k]
        x, y = [texts[i] for i in tr], [labels[i] for i in tr]
        if data == "real+demo":
            x, y = x + demo[0], y + demo[1]
        judge = _CachedFeatures(**kw).fit(x, y, seed=0, **fit_kw)
        hits += sum(p == labels[i] for p, i in zip(judge([texts[i] for i in te]), te))
    return hits / len(rows)


class _CachedFeatures(LearnedJudge):
    """A learned judge whose features are computed once per text and feature set: the curve fits many."""

    _cache: dict = {}

    def features(self, texts):
        import torch

        key = (self.feature_groups, self.text, self.encoder)
        store = self._cache.setdefault(key, {})
        missing = list(dict.fromkeys(t for t in map(str, texts) if t not in store))
        if missing:
            for t, row in zip(missing, super().features(missing)):
                store[t] = row
        return torch.stack([store[str(t)] for t in texts]) if texts else super().features([])


def learning_curve(rows: list[dict], test: tuple[list, list], demo: tuple[list, list], variant: tuple, *,
                   shares: list[float], draws: int, target: float) -> dict:
    """Held-out agreement of `variant` trained on `shares` of the train prompts, `draws` draws each."""
    import numpy as np

    kw, fit_kw, data = variant
    prompts = sorted({r["prompt"] for r in rows})
    position = {p: i for i, p in enumerate(prompts)}
    points = []
    for share in shares:
        k = max(2, round(share * len(prompts)))
        scores, sizes = [], []
        for draw in range(draws if k < len(prompts) else 1):
            chosen = set(np.random.default_rng(draw).choice(len(prompts), size=k, replace=False).tolist())
            picked = [r for r in rows if position[r["prompt"]] in chosen] if k < len(prompts) else rows
            x = [r["response"] for r in picked]
            y = [r["label"] != "full_compliance" for r in picked]
            if len(set(y)) < 2:
                continue
            if data == "real+demo":
                x, y = x + demo[0], y + demo[1]
            judge = _CachedFeatures(**kw).fit(x, y, seed=0, **fit_kw)
            scores.append(sum(p == t for p, t in zip(judge(test[0]), test[1])) / len(test[1]))
            sizes.append(len(picked))
        points.append({"share": share, "prompts": k, "labelled": float(np.mean(sizes)), "draws": len(scores),
                       "agreement": float(np.mean(scores)), "lowest": min(scores), "highest": max(scores)})
    slope, intercept = np.polyfit(np.log([p["labelled"] for p in points]), [p["agreement"] for p in points], 1)
    reach = float(np.exp((target - intercept) / slope)) if slope > 0 else None
    return {"points": points, "trend": {"agreement_per_doubling": float(slope * np.log(2)),
                                       f"labelled_for_{target}": reach}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=str(ROOT / "data/refusal_labels/train.jsonl"))
    ap.add_argument("--heldout", default=str(ROOT / "data/refusal_labels/heldout.jsonl"))
    ap.add_argument("--cv", action="store_true", help="also 5-fold CV agreement on the train part")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated learned variants")
    ap.add_argument("--curve", default="", help="comma-separated shares of the train prompts: the learning curve")
    ap.add_argument("--draws", type=int, default=5, help="draws of prompts per share of the curve")
    ap.add_argument("--target", type=float, default=0.92, help="agreement the curve's trend is read at")
    args = ap.parse_args()

    train_texts, train_labels = read_refusal_examples(args.train)
    test_texts, test_labels = read_refusal_examples(args.heldout)
    train_rows = read_jsonl(args.train)
    out: dict = {
        "train": args.train, "heldout": args.heldout, "n_train": len(train_texts),
        "n_heldout": len(test_texts), "heldout_refusal_share": sum(test_labels) / len(test_labels),
        "judges": {},
    }
    sm_pred = StringMatchJudge()(test_texts)
    sm_hits = [float(p == y) for p, y in zip(sm_pred, test_labels)]
    out["judges"]["string_match"] = _agreement(sm_pred, test_labels)
    if args.cv:
        sm_cv = StringMatchJudge()([r["response"] for r in train_rows])
        out["judges"]["string_match"]["cv_train_agreement"] = sum(
            p == (r["label"] != "full_compliance") for p, r in zip(sm_cv, train_rows)) / len(train_rows)
    demo = read_refusal_examples(DEMO)
    for name in [v for v in args.variants.split(",") if v]:
        kw, fit_kw, data = VARIANTS[name]
        x, y = {"real": (train_texts, train_labels), "demo": demo,
                "real+demo": (train_texts + demo[0], train_labels + demo[1])}[data]
        judge = LearnedJudge(**kw).fit(x, y, seed=0, **fit_kw)
        pred = judge(test_texts)
        res = _agreement(pred, test_labels)
        hits = [float(p == y) for p, y in zip(pred, test_labels)]
        d, lo, hi = paired_bootstrap_ci(hits, sm_hits, n_resamples=2000, seed=0)
        res.update({"options": {**kw, **fit_kw}, "trained_on": data, "minus_string_match": d,
                    "minus_string_match_ci": [lo, hi], "train_accuracy": judge.train_info["train_accuracy"]})
        if args.cv:
            res["cv_train_agreement"] = _cv(train_rows, VARIANTS[name], demo)
        if args.curve and data != "demo":
            res["curve"] = learning_curve(train_rows, (test_texts, test_labels), demo, VARIANTS[name],
                                          shares=[float(x) for x in args.curve.split(",")], draws=args.draws,
                                          target=args.target)
        out["judges"][name] = res
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
