"""The comparison's table and figures (`neat compare-table`), from every variant's per-prompt results.

Reads `<out>/compare/per_prompt/<variant>.json` (written by `neat compare-variant`, one per variant, with
each seed's metrics and per-prompt scores) for the variants of `compare.variants` and writes
`<out>/compare/table.md`, `<out>/compare/compare.json`, the figures `<out>/compare/seeds.png` (reward and
win rate per seed) and `safety.png` (unsafe refusal against safe compliance), and the flat
`<out>/metrics/compare.json` (for `dvc metrics`).

A variant trained with several seeds gets a row with the mean over its seeds (each seed's value beside
it) and a row per seed with that seed's 95 % interval, so the seed variance shows next to the prompt
sampling variance. Differences against the reference variant (``neat`` when compared, else the first)
are paired bootstraps over the same prompts of the variant's per-prompt mean over its seeds against the
reference's; a difference whose 95 % interval contains 0 (×1 for the perplexity ratio) is *inside*
(not distinguishable at this sample size).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from neat.errors import ConfigError, DataError
from neat.formatting import MISSING, format_interval, format_number, judges_in_order
from neat.io import write_json_atomic, write_text_atomic

TABLE_KEYS = ("eval_reward_mean", "win_rate", "perplexity", "unsafe_refusal_rate", "safe_compliance_rate")
# what the table needs of evaluate's per-prompt rows (generations.jsonl, safety.jsonl)
GENERATION_FIELDS = ("prompt_id", "base_reward", "trained_reward", "trained_chosen_nll", "chosen_tokens")
SAFETY_FIELDS = ("id", "label", "trained_refused")


def variant_seeds(params, name: str) -> list[int]:
    """The seeds `name` trains with: its entry in `compare.variants`, else the run's `seed`."""
    return list(params.compare.variants.get(name) or [params.seed])


def reference_of(names: Sequence[str]) -> str:
    return "neat" if "neat" in names else names[0]


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_mean(values) -> float | None:
    kept = [float(v) for v in values if _finite(v)]
    return sum(kept) / len(kept) if kept else None


def pool_seeds(seeds: list[dict]) -> dict:
    """One record of per-prompt values averaged over the seeds: trained reward, NLL and refusal (a share)."""
    first = seeds[0]
    for s in seeds[1:]:
        if ([g["prompt_id"] for g in s["generations"]] != [g["prompt_id"] for g in first["generations"]]
                or [r["id"] for r in s["safety"]] != [r["id"] for r in first["safety"]]):
            raise DataError(f"seed {s['seed']} was evaluated on other prompts than seed {first['seed']}; "
                            "rerun that variant")

    def mean_at(rows_of, i, key):
        values = [float(s[rows_of][i][key]) for s in seeds]
        return sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.nan

    generations = [dict(g, trained_reward=mean_at("generations", i, "trained_reward"),
                        trained_chosen_nll=mean_at("generations", i, "trained_chosen_nll"))
                   for i, g in enumerate(first["generations"])]
    safety = [dict(r, trained_refused=mean_at("safety", i, "trained_refused")) for i, r in enumerate(first["safety"])]
    return {"generations": generations, "safety": safety}


def differences(ref: dict, other: dict, *, n_resamples: int, seed: int) -> dict:
    """Paired bootstrap of `other − ref` on the same prompts: reward, win rate vs base, perplexity ratio, safety.
    `trained_refused` may be a share (a mean over seeds) as well as a boolean."""
    from neat.evaluate import paired_diff, perplexity_ratio_ci
    from neat.stats import win_values

    g_ref, g_oth = ref["generations"], other["generations"]
    if [r["prompt_id"] for r in g_ref] != [r["prompt_id"] for r in g_oth]:
        raise DataError("variants were evaluated on different held-out prompts; rerun compare from scratch")
    boot = dict(n_resamples=n_resamples, seed=seed)
    idx = [i for i in range(len(g_ref))
           if all(_finite(g[i][k]) for g in (g_ref, g_oth) for k in ("base_reward", "trained_reward"))]
    t_ref = [g_ref[i]["trained_reward"] for i in idx]
    t_oth = [g_oth[i]["trained_reward"] for i in idx]
    out: dict[str, Any] = {"eval_reward_mean": paired_diff(t_oth, t_ref, **boot)}
    if idx:
        w_ref = win_values(t_ref, [g_ref[i]["base_reward"] for i in idx])
        w_oth = win_values(t_oth, [g_oth[i]["base_reward"] for i in idx])
        out["win_rate"] = paired_diff(list(w_oth), list(w_ref), **boot)
    else:
        out["win_rate"] = paired_diff([], [], **boot)
    ratio = perplexity_ratio_ci([r["trained_chosen_nll"] for r in g_oth], [r["trained_chosen_nll"] for r in g_ref],
                                [r["chosen_tokens"] for r in g_ref], **boot)
    out["perplexity"] = {"diff": ratio["ratio"], "ci_low": ratio["ci_low"], "ci_high": ratio["ci_high"],
                         "significant": ratio["significant"], "kind": "ratio"}
    s_ref, s_oth = ref["safety"], other["safety"]
    for key, label, complied in (("unsafe_refusal_rate", "unsafe", False), ("safe_compliance_rate", "safe", True)):
        sel = [i for i, r in enumerate(s_ref) if r["label"] == label]

        def value(row):
            refused = float(row["trained_refused"])
            return 1.0 - refused if complied else refused

        out[key] = paired_diff([value(s_oth[i]) for i in sel], [value(s_ref[i]) for i in sel], **boot)
    return out


# ---------------------------------------------------------------- the table


def _over_seeds(v: dict, key: str, digits=3) -> str:
    """The mean over seeds, each seed's value beside it."""
    each = ", ".join(format_number(s["metrics"].get(key), digits) for s in v["seeds"])
    return f"{format_number(v['metrics'].get(key), digits)} (seeds: {each})"


def _delta(d: dict | str | None, digits=3, ratio=False) -> str:
    if d == "reference":
        return "(reference)"
    if not d or not _finite(d.get("diff")):
        return MISSING
    sign = "×" if ratio else ("+" if d["diff"] >= 0 else "")
    where = "**outside**" if d["significant"] else "inside"
    return f"{sign}{d['diff']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}] {where}"


def _minutes(seconds) -> str:
    return MISSING if not _finite(seconds) else f"{seconds / 60:.1f}"


def format_table(variants: list[dict], reference: str) -> str:
    """Markdown: the base, then per variant a row (the mean over its seeds when it has several, then a row
    per seed), each metric with its interval, Δ vs the reference, the wall time."""
    base = variants[0]["seeds"][0]["metrics"]
    lines = [
        f"Metrics with 95 % bootstrap intervals over the same {base.get('prompts')} held-out prompts and "
        f"{base.get('safety', {}).get('base', {}).get('n', 0)} safety prompts. Δ: paired bootstrap of the difference "
        f"to `{reference}` (perplexity: ratio), each variant's per-prompt values averaged over its seeds; *inside* = "
        "the interval contains 0 (×1 for the ratio), i.e. not distinguishable at this sample size; **outside** = a "
        "difference at the 95 % level. A variant with several seeds: first the mean over its seeds (then each "
        "seed's value), then each seed with its own interval. Wall time: training and evaluation, minutes (per "
        "seed; the mean row: their mean).",
        "",
        "| variant | seed | steps | eval reward | Δ reward | win rate vs base | Δ win rate | perplexity | Δ perplexity "
        "| unsafe refusal | Δ unsafe refusal | safe compliance | Δ safe compliance | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| base (`{base.get('base_model')}`) | | 0 | {format_interval(base, 'base_eval_reward_mean')} | | | | "
        f"{format_interval(base, 'base_perplexity', 2)} | | {format_interval(base, 'base_unsafe_refusal_rate', 2)} | | "
        f"{format_interval(base, 'base_safe_compliance_rate', 2)} | | |",
    ]
    for v in variants:
        d = v.get("vs_reference") or {}
        if v["name"] == reference:
            d = {k: "reference" for k in TABLE_KEYS}
        deltas = [_delta(d.get("eval_reward_mean")), _delta(d.get("win_rate"), 2),
                  _delta(d.get("perplexity"), 3, ratio=True), _delta(d.get("unsafe_refusal_rate"), 2),
                  _delta(d.get("safe_compliance_rate"), 2)]
        several = len(v["seeds"]) > 1
        rows = [(f"mean of {len(v['seeds'])}", v["steps"], v["wall_seconds"],
                 [_over_seeds(v, k, 3 if k == "eval_reward_mean" else 2) for k in TABLE_KEYS], deltas)] if several else []
        for i, s in enumerate(v["seeds"]):
            cells = [format_interval(s["metrics"], k, 3 if k == "eval_reward_mean" else 2) for k in TABLE_KEYS]
            rows.append((str(s["seed"]), s["steps"], s["wall_seconds"], cells, [""] * 5 if several else deltas))
        for seed, steps, wall, cells, ds in rows:
            lines.append(f"| {v['name']} | {seed} | {steps} | "
                         + " | ".join(f"{c} | {x}" for c, x in zip(cells, ds)) + f" | {_minutes(wall)} |")
    lines += judges_rows(variants)
    from neat.compare import VARIANTS

    lines += ["", "Variants: " + "; ".join(f"`{v['name']}` — {VARIANTS[v['name']]}" for v in variants) + "."]
    return "\n".join(lines) + "\n"


def judges_rows(variants: list[dict]) -> list[str]:
    """Markdown lines: each seed's safety rates under every refusal judge it was evaluated with (base from the
    first seed), each judge with its agreement with people; nothing when every evaluation used one judge."""
    seeds = [(v["name"], s) for v in variants for s in v["seeds"]]
    if not any(len(s["metrics"].get("safety_by_judge") or {}) > 1 for _, s in seeds):
        return []
    lines = ["", "Safety under each refusal judge (`evaluate.judge`, then `evaluate.also_judges`; its agreement with "
             "people on the held-out hand labels beside its name):", "",
             "| variant | seed | judge | unsafe refusal | safe compliance |", "|---|---|---|---|---|"]
    def ordered(metrics):
        return judges_in_order(metrics.get("safety_by_judge") or {}, metrics.get("judge"))

    for name, f in ordered(seeds[0][1]["metrics"]):
        lines.append(f"| base | | `{name}` ({format_interval(f, 'judge_agreement', 2)}) | "
                     f"{format_interval(f, 'base_unsafe_refusal_rate', 2)} | {format_interval(f, 'base_safe_compliance_rate', 2)} |")
    for variant, s in seeds:
        for name, f in ordered(s["metrics"]):
            lines.append(f"| {variant} | {s['seed']} | `{name}` | {format_interval(f, 'unsafe_refusal_rate', 2)} | "
                         f"{format_interval(f, 'safe_compliance_rate', 2)} |")
    return lines


def seeds_figure(variants: list[dict], path: Path) -> None:
    """Per variant, eval reward and win rate vs base: each seed (its 95 % interval) and the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.3 * len(variants) + 2), 3.6))
    for ax, key, title in zip(axes, ("eval_reward_mean", "win_rate"), ("eval reward", "win rate vs base")):
        for x, v in enumerate(variants):
            n = len(v["seeds"])
            for j, s in enumerate(v["seeds"]):
                m = s["metrics"]
                if not _finite(m.get(key)):
                    continue
                low, high = m.get(key + "_ci_low"), m.get(key + "_ci_high")
                err = [[m[key] - low], [high - m[key]]] if _finite(low) and _finite(high) else None
                ax.errorbar(x + (j - (n - 1) / 2) * 0.15, m[key], yerr=err, fmt="o", color="tab:blue", capsize=3,
                            label="seed (95 % interval)" if x == 0 and j == 0 else None)
            if _finite(v["metrics"].get(key)):
                ax.hlines(v["metrics"][key], x - 0.3, x + 0.3, color="tab:red",
                          label="mean over seeds" if x == 0 else None)
        ax.set_xticks(range(len(variants)), [v["name"] for v in variants], rotation=30)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


SAFETY_AXES = ("safe_compliance_rate", "unsafe_refusal_rate")


def _point(metrics: dict, prefix: str = "") -> dict | None:
    """(safe compliance, unsafe refusal) with their intervals, or None when either is missing (a null stays
    a null: no point is drawn at 0)."""
    keys = [prefix + k for k in SAFETY_AXES]
    if not all(_finite(metrics.get(k)) for k in keys):
        return None
    return {axis: (metrics[k], metrics.get(k + "_ci_low"), metrics.get(k + "_ci_high")) for axis, k in
            zip(("safe", "unsafe"), keys)}


def safety_points(variants: list[dict]) -> list[dict]:
    """The safety trade-off's points: the base model, then every variant's seeds, each with
    `label`, and `safe` / `unsafe` as (value, ci_low, ci_high); seeds without safety figures are left out."""
    points = []
    base = _point(variants[0]["seeds"][0]["metrics"], "base_") if variants and variants[0]["seeds"] else None
    if base:
        points.append({"label": "base", "variant": None, **base})
    for v in variants:
        for s in v["seeds"]:
            p = _point(s["metrics"])
            if p:
                points.append({"label": f"{v['name']} seed {s['seed']}", "variant": v["name"], **p})
    return points


def safety_figure(variants: list[dict], path: Path) -> None:
    """Unsafe refusal against safe compliance, the base and each seed with both 95 % intervals: refusing more
    unsafe prompts is worth little if safe ones are refused too (up and to the right is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = safety_points(variants)
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    colours = {v["name"]: f"C{i}" for i, v in enumerate(variants)}
    labelled = set()
    for p in points:
        (x, xl, xh), (y, yl, yh) = p["safe"], p["unsafe"]
        xerr = [[x - xl], [xh - x]] if _finite(xl) and _finite(xh) else None
        yerr = [[y - yl], [yh - y]] if _finite(yl) and _finite(yh) else None
        name = p["variant"] or "base"
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="s" if name == "base" else "o", capsize=3,
                    color="black" if name == "base" else colours[name], label=None if name in labelled else name)
        labelled.add(name)
    if not points:
        ax.text(0.5, 0.5, "no safety prompts were evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("safe prompts fully complied with")
    ax.set_ylabel("unsafe prompts refused")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Refusal trade-off (95 % intervals)")
    if points:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the stage


def read_variant(params, name: str) -> dict:
    """`<out>/compare/per_prompt/<name>.json`, checked to hold the seeds params ask for."""
    path = params.out("compare", "per_prompt", f"{name}.json")
    if not path.is_file():
        raise DataError(f"{path}: missing; run `neat compare-variant --variant {name}` (or `neat compare`) first")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); rerun that variant") from None
    have, want = [s.get("seed") for s in result.get("seeds", [])], variant_seeds(params, name)
    if have != want:
        raise DataError(f"{path}: holds seeds {have} but compare.variants asks for {want}; rerun that variant")
    return result


def compare_table(params, variants: Sequence[str] | None = None) -> dict:
    """Stage: the comparison's table, figure and metrics from each variant's results → `<out>/compare/table.md`,
    `compare.json`, `seeds.png`, `safety.png` and `<out>/metrics/compare.json`."""
    from neat.io import json_safe

    names = list(variants) if variants else list(params.compare.variants)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"compare: variants must be distinct and non-empty (got {names})")
    results = [read_variant(params, name) for name in names]
    reference = reference_of(names)
    pooled = {r["name"]: pool_seeds(r["seeds"]) for r in results}
    for r in results:
        r["metrics"] = {k: finite_mean(s["metrics"].get(k) for s in r["seeds"]) for k in TABLE_KEYS}
        for s in r["seeds"]:
            s["wall_seconds"] = sum(x for x in s.get("seconds", {}).values() if _finite(x))
        r["wall_seconds"] = finite_mean(s["wall_seconds"] for s in r["seeds"])
        r["steps"] = r["seeds"][0]["steps"]
        r["vs_reference"] = None if r["name"] == reference else differences(
            pooled[reference], pooled[r["name"]], n_resamples=params.evaluate.bootstrap, seed=params.seed)
    table = format_table(results, reference)
    seeds_figure(results, params.out("compare", "seeds.png"))
    safety_figure(results, params.out("compare", "safety.png"))
    for r in results:
        for s in r["seeds"]:
            del s["generations"], s["safety"]
    steps = {f"{r['name']}/seed{s['seed']}": s["steps"] for r in results for s in r["seeds"]}
    summary = json_safe({"reference": reference, "variants": results, "equal_steps": len(set(steps.values())) == 1})
    figures = ("\n![Eval reward and win rate per seed](seeds.png)\n\n"
               "![Unsafe refusal against safe compliance](safety.png)\n")
    write_text_atomic(params.out("compare", "table.md"), table + figures)
    write_json_atomic(params.out("compare", "compare.json"), summary)
    flat = {r["name"]: r["metrics"] | {"steps": r["steps"], "seeds": len(r["seeds"])} for r in results}
    write_json_atomic(params.out("metrics", "compare.json"), json_safe(flat))
    if not summary["equal_steps"]:
        import logging

        logging.getLogger(__name__).warning(
            "neat compare: variants took different numbers of optimizer steps %s (train.grad_accum does not divide "
            "the batches per round)", steps)
    return summary
