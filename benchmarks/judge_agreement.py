"""Agreement of the refusal judges with hand labels on held-out real SmolLM2 completions.

    .venv/bin/python benchmarks/judge_agreement.py                # default data/refusal_labels/
    .venv/bin/python benchmarks/judge_agreement.py --cv           # also 5-fold CV on the train part
    .venv/bin/python benchmarks/judge_agreement.py --variants learned_cues_string_match

Trains every learned-judge variant on ``train.jsonl`` and measures, on ``heldout.jsonl`` (a fixed
split by prompt hash, see data/refusal_labels/README.md), the share of responses where the judge's
refusal verdict equals the human label (full_refusal / partial_refusal = refusal), with a 95 %
percentile-bootstrap interval, and each learned variant's paired difference to string matching
(bootstrap over held-out responses). ``--cv`` adds 5-fold cross-validated agreement on the train
part, grouped by prompt: that, not the held-out figure, is what a variant is chosen by.
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
        judge = LearnedJudge(**kw).fit(x, y, seed=0, **fit_kw)
        hits += sum(p == labels[i] for p, i in zip(judge([texts[i] for i in te]), te))
    return hits / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=str(ROOT / "data/refusal_labels/train.jsonl"))
    ap.add_argument("--heldout", default=str(ROOT / "data/refusal_labels/heldout.jsonl"))
    ap.add_argument("--cv", action="store_true", help="also 5-fold CV agreement on the train part")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated learned variants")
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
        out["judges"][name] = res
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
