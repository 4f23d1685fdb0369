"""The run report (`neat report`): `<out>/report/report.md` with PNG figures beside it, opens offline.

Reads whatever the pipeline has produced under `<out>` — scored candidates (`score/`,
`train/rounds/`), the training log, the evaluation files and the metrics — and writes, into
`<out>/report/` (replaced atomically as one directory):

* `report.md` — run summary, held-out evaluation table (base vs trained with 95 % intervals), safety
  tables (overall and per type), reward by candidate origin, training curves, example generations
  side by side, the variant comparison when `neat compare` ran, stage wall times, and the caveat
  that the embedded evaluation reward model is weaker than a real held-out judge. Images are linked
  by relative path, so the folder can be moved or zipped as is.
* `report.html` — the same report as one self-contained page (figures inlined as base64), to mail or
  attach anywhere;
* figures: `reward_by_origin.png`, `training.png`, `eval_rewards.png`, `safety.png` (each only when
  its data exists);
* plot data for `dvc plots`: `reward_by_origin.csv` (per round and origin: n, mean, quantiles) and
  `safety_by_type.csv` (per type: base and trained refusal rates), in the report folder and copied
  to `<out>/plots/` (a stage can declare those as its plots while the report folder is one output).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from pathlib import Path
from typing import Any

from neat.errors import DataError
from neat.formatting import describe_arithmetic, format_interval, format_number, format_value_interval, judges_in_order
from neat.io import atomic_path
from neat.stage_inputs import check_online_entries, read_csv_output, read_json_output, read_jsonl_output
from neat.stats import mean_ci

ORIGIN_COLORS = {"chosen": "#2b8a3e", "rejected": "#c92a2a", "positive": "#1971c2", "negative": "#e67700", "probe": "#868e96"}
CAVEAT = (
    "**Caveat — the judge.** Rewards here come from the *evaluation* reward model, a small MiniLM "
    "classifier trained on a few preference pairs held out from training (the judge split, its own "
    "seed). It never scored the training candidates, but it is far weaker than a real held-out judge "
    "(a large reward model, GPT-4-as-judge or human raters): its pairwise accuracy on the eval split "
    "is reported below, and differences smaller than its noise mean little. The refusal judge is "
    "heuristic too (string match or a small learned classifier)."
)


# ---------------------------------------------------------------- reading


# what the report reads of each evaluation row; a file without them is damaged, not a smaller report
GENERATION_KEYS = ("prompt_id", "prompt", "base_response", "trained_response", "base_reward", "trained_reward")
SAFETY_KEYS = ("prompt", "label", "base_response", "trained_response", "base_refused", "trained_refused")
LOG_KEYS = ("round", "step", "loss", "rank_loss", "sft_loss")


def _load_online(path: Path) -> list[dict]:
    """train/online.json: the per-round entries ([] without the file); damaged → one DataError naming it."""
    return check_online_entries(path, read_json_output(path, "train", expect=list) or [])


def _load_log(path: Path) -> list[dict]:
    return [{k: _float(v) for k, v in row.items()} for row in read_csv_output(path, "train", LOG_KEYS)]


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def candidate_rewards(params) -> list[dict]:
    """(round, origin, reward) of every scored candidate with a finite reward: round 1 and later rounds."""
    from neat.candidates import read_candidates

    paths = [params.out("score", "candidates.parquet")]
    rounds_dir = params.out("train", "rounds")
    if rounds_dir.is_dir():
        paths += sorted(rounds_dir.glob("round_*.parquet"), key=lambda p: int(p.stem.split("_")[-1]))
    out = []
    for n, path in enumerate(paths):
        if not path.is_file():
            continue
        for row in read_candidates(path, ("origin", "reward"), "score"):
            reward = row.get("reward")
            if reward is not None and math.isfinite(reward):
                out.append({"round": int(row.get("round") or (n + 1)), "origin": row["origin"], "reward": float(reward)})
    return out


def origin_summary(rows: list[dict]) -> list[dict]:
    """Per (round, origin): n, mean, std, 10/50/90 % quantiles of the reward."""
    from neat.encoding import ORIGINS

    groups: dict[tuple[int, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["round"], r["origin"]), []).append(r["reward"])
    order = {o: i for i, o in enumerate(ORIGINS)}
    out = []
    for (rnd, origin), values in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])):
        values = sorted(values)
        q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
        out.append({"round": rnd, "origin": origin, "n": len(values), "mean": statistics.fmean(values),
                    "std": statistics.pstdev(values), "p10": q[0], "p50": statistics.median(values), "p90": q[-1]})
    return out


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_reward_by_origin(rows: list[dict], summary: list[dict], path: Path) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    origins = [o for o in ORIGIN_COLORS if any(r["origin"] == o for r in rows)]
    origins += sorted({r["origin"] for r in rows} - set(origins))
    values = [[r["reward"] for r in rows if r["origin"] == o] for o in origins]
    lo, hi = min(min(v) for v in values), max(max(v) for v in values)
    bins = [lo + (hi - lo + 1e-9) * i / 30 for i in range(31)]
    for origin, vals in zip(origins, values):
        ax1.hist(vals, bins=bins, histtype="step", linewidth=1.8, label=f"{origin} (n={len(vals)})",
                 color=ORIGIN_COLORS.get(origin))
    ax1.set(title="Training-RM reward by candidate origin (all rounds)", xlabel="reward", ylabel="candidates")
    ax1.legend(fontsize=8)
    for origin in origins:
        pts = [(s["round"], s["mean"]) for s in summary if s["origin"] == origin]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=origin, color=ORIGIN_COLORS.get(origin))
    ax2.set(title="Mean reward by origin and round", xlabel="round", ylabel="mean reward")
    ax2.set_xticks(sorted({s["round"] for s in summary}))
    ax2.legend(fontsize=8)
    _save(fig, path)


def plot_training(log: list[dict], path: Path) -> None:
    from neat.encoding import ORIGINS

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    steps = [r["step"] for r in log]
    for key in ("loss", "rank_loss", "sft_loss"):
        axes[0].plot(steps, [r.get(key, math.nan) for r in log], label=key)
    axes[0].set(title="Loss", xlabel="optimizer step")
    for prefix, ax, title in (("reward", axes[1], "Mean reward of the batch's candidates"),
                              ("logp", axes[2], "Mean length-normalised log p(y|x)")):
        for origin in ORIGINS:
            ys = [r.get(f"{prefix}_{origin}", math.nan) for r in log]
            if any(math.isfinite(y) for y in ys):
                ax.plot(steps, ys, marker=".", label=origin, color=ORIGIN_COLORS[origin])
        ax.set(title=title, xlabel="optimizer step")
    rounds = [r["round"] for r in log]
    for ax in axes:
        for i in range(1, len(rounds)):
            if rounds[i] != rounds[i - 1]:
                ax.axvline(steps[i] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=8)
    _save(fig, path)


def with_bars(ax, xs: list, ys: list, intervals: list, **style) -> None:
    """A line with 95 % error bars where an interval ([low, high]) is known; a missing value is a gap."""
    ys = [math.nan if y is None else y for y in ys]
    spans = [iv if isinstance(iv, (list, tuple)) and None not in iv and y == y else (y, y)
             for iv, y in zip(intervals, ys)]
    below = [y - lo if y == y else 0.0 for y, (lo, _) in zip(ys, spans)]
    above = [hi - y if y == y else 0.0 for y, (_, hi) in zip(ys, spans)]
    ax.errorbar(xs, ys, yerr=[below, above], capsize=3, **style)


def plot_online(online: list[dict], eval_curve: list, path: Path, eval_ci: list | None = None) -> None:
    """The online curve: dev-prompt reward of the unsteered policy before each round and after the last
    (training and evaluation RM), P(positive > negative) of each round's candidates, repetition."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    probes = [e for e in online if e.get("dev")]
    xs = [e["round"] for e in probes]
    with_bars(axes[0], xs, [e["dev"].get("reward_mean") for e in probes],
              [e["dev"].get("reward_mean_ci") for e in probes], marker="o", label="training RM")
    axes[0].set(title="Unsteered dev answers: mean reward (95 %)", xlabel="before round (last = after training)",
                ylabel="training RM")
    if eval_curve and len(eval_curve) == len(xs):  # its own scale: the two RMs' rewards are not comparable
        twin = axes[0].twinx()
        with_bars(twin, [x + 0.05 for x in xs], eval_curve, eval_ci or [None] * len(xs), marker="s", color="tab:orange",
                  label="evaluation RM")
        twin.set_ylabel("evaluation RM", color="tab:orange")
        twin.legend(fontsize=8, loc="lower right")
    rounds = [e for e in online if e.get("p_positive_over_negative") is not None]
    with_bars(axes[1], [e["round"] for e in rounds], [e["p_positive_over_negative"] for e in rounds],
              [e.get("p_positive_over_negative_ci") for e in rounds], marker="o")
    axes[1].axhline(0.5, color="grey", linestyle=":")
    axes[1].set(title="P(reward positive > negative) per round", xlabel="round", ylim=(0, 1))
    axes[2].plot(xs, [e["dev"].get("repetition_rate") for e in probes], marker="o", label="repetition rate")
    axes[2].plot(xs, [e["dev"].get("distinct_2") for e in probes], marker="s", label="distinct-2")
    axes[2].set(title="Degeneration of dev answers", xlabel="before round", ylim=(0, 1))
    for ax in axes:
        ax.set_xticks(sorted(set(xs + [e["round"] for e in rounds])))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)


def format_repetition(dev: dict) -> str:
    """A dev probe's repetition rate with its interval over the probe's answers."""
    from neat.diagnostics import is_repetitive

    answers = [a["response"] for a in dev.get("answers") or []]
    if not answers:
        return format_number(dev.get("repetition_rate"), 2)
    rep = mean_ci([float(is_repetitive(t)) for t in answers])
    return format_value_interval(rep["mean"], [rep["ci_low"], rep["ci_high"]], 2)


def online_section(online: list[dict], ev: dict | None, log: list[dict], tmp: Path,
                   train_gain: dict | None = None) -> list[str]:
    """Markdown (and a figure) for the online curve, per-round ranking accuracy and degeneration."""
    eval_curve = (ev or {}).get("online_dev_eval_reward") or []
    plot_online(online, eval_curve, tmp / "online.png", (ev or {}).get("online_dev_eval_reward_ci"))
    md = ["## Online curve", "",
          "Before every round (and after the last) the policy answers train-split prompts it never trains on, "
          "without steering; both reward models score the answers. A training-RM curve that rises while the "
          "evaluation-RM curve falls is reward hacking. `rank acc` is the share of candidate pairs whose "
          "log-prob order matched the reward order while the round trained. Intervals (95 %) resample the round's "
          "prompts for P(pos > neg), the dev prompts for their reward and repetition, the steps for rank acc.", "",
          "![Online curve](online.png)", "",
          "| round | P(pos > neg) | reward chosen / rejected / positive / negative | dev reward (train RM) | "
          "dev reward (eval RM) | dev repetition | rank acc |", "|---|---|---|---|---|---|---|"]
    probes = [e for e in online if e.get("dev")]
    rounds_of_probes = [e["round"] for e in probes]
    eval_by_round = dict(zip(rounds_of_probes, eval_curve))
    eval_ci_by_round = dict(zip(rounds_of_probes, (ev or {}).get("online_dev_eval_reward_ci") or []))
    for e in online:
        by = e.get("reward_by_origin") or {}
        acc = mean_ci([r.get("rank_acc") for r in log if int(r.get("round", 0)) == e["round"]])  # over the steps
        dev = e.get("dev") or {}
        label = str(e["round"]) if "p_positive_over_negative" in e else "after training"
        p_pos = format_value_interval(e.get("p_positive_over_negative"), e.get("p_positive_over_negative_ci"), 2)
        md.append(f"| {label} | {p_pos} | "
                  + " / ".join(format_number(by.get(o), 2) for o in ("chosen", "rejected", "positive", "negative"))
                  + f" | {format_value_interval(dev.get('reward_mean'), dev.get('reward_mean_ci'))} | "
                  f"{format_value_interval(eval_by_round.get(e['round']), eval_ci_by_round.get(e['round']))} | "
                  f"{format_repetition(dev)} | "
                  f"{format_value_interval(acc['mean'], [acc['ci_low'], acc['ci_high']], 2)} |")
    md.append("")
    gains = [(name, g) for name, g in (("training RM", train_gain),
                                       ("evaluation RM", (ev or {}).get("online_dev_eval_reward_gain")))
             if isinstance(g, dict)]
    if gains:  # the online curve's question, answered with a paired interval
        md += ["Rise of the dev reward from the first probe to the last, paired over the same "
               f"{gains[0][1].get('prompts')} dev prompts: "
               + "; ".join(f"{name} {format_value_interval(g['gain'], [g['ci_low'], g['ci_high']])}" for name, g in gains)
               + ".", ""]
    loops = [e for e in online if "greedy_loops" in e]
    if loops:
        md += ["Degenerate greedy answers to the round's own training prompts, ranked last as `probe` candidates "
               "(`train.loop_probes`): " + ", ".join(f"round {e['round']} {e['greedy_loops']} of {e.get('prompts', '?')}"
                                                       for e in loops) + ".", ""]
    if ev and ev.get("changed_share") is not None:
        md += ["| held-out greedy answers | base | trained |", "|---|---|---|",
               f"| changed from base | | {format_interval(ev, 'changed_share', 2)} |",
               f"| repetitive (word 3-grams < 50 % distinct) | {format_interval(ev, 'base_repetition_rate', 2)} | "
               f"{format_interval(ev, 'repetition_rate', 2)} |",
               f"| distinct-2 | {format_interval(ev, 'base_distinct_2', 2)} | {format_interval(ev, 'distinct_2', 2)} |",
               f"| mean length (words) | {format_interval(ev, 'base_mean_words', 1)} | "
               f"{format_interval(ev, 'mean_words', 1)} |", ""]
    return md


def plot_eval_rewards(records: list[dict], path: Path) -> None:
    plt = _plt()
    pts = [(r["base_reward"], r["trained_reward"]) for r in records
           if r.get("base_reward") is not None and r.get("trained_reward") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    base, trained = [p[0] for p in pts], [p[1] for p in pts]
    lo, hi = min(base + trained), max(base + trained)
    bins = [lo + (hi - lo + 1e-9) * i / 20 for i in range(21)]
    ax1.hist(base, bins=bins, histtype="step", linewidth=1.8, label="base", color="#868e96")
    ax1.hist(trained, bins=bins, histtype="step", linewidth=1.8, label="trained", color="#1971c2")
    ax1.set(title="Eval-RM reward of greedy responses", xlabel="reward", ylabel="prompts")
    ax1.legend()
    ax2.scatter(base, trained, s=14, color="#1971c2")
    ax2.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    ax2.set(title="Per prompt: above the line = trained wins", xlabel="base reward", ylabel="trained reward")
    _save(fig, path)


def plot_safety(by_type: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(by_type) + 3), 4))
    x = list(range(len(by_type)))
    for offset, who, color in ((-0.2, "base", "#868e96"), (0.2, "trained", "#1971c2")):
        rates = [t[f"{who}_refusal_rate"] if t[f"{who}_refusal_rate"] is not None else math.nan for t in by_type]
        low = [r - (t[f"{who}_ci_low"] if t[f"{who}_ci_low"] is not None else r) for r, t in zip(rates, by_type)]
        high = [(t[f"{who}_ci_high"] if t[f"{who}_ci_high"] is not None else r) - r for r, t in zip(rates, by_type)]
        ax.bar([i + offset for i in x], rates, width=0.4, yerr=[low, high], capsize=2, label=who, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t['type']}\n({t['label']})" for t in by_type], rotation=45, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="refusal rate", title="Refusal rate by prompt type (95 % CI)\n"
                                                        "unsafe: higher is safer; safe: lower is better")
    ax.legend(fontsize=8)
    _save(fig, path)


# ---------------------------------------------------------------- markdown helpers


def _cell(text: Any, limit: int = 360) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") or "*(empty)*"


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return " / ".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)


def pick_examples(records: list[dict], k: int = 4) -> list[tuple[str, dict]]:
    """A few prompts to show: the largest trained wins, the largest loss, and the first prompt."""
    scored = [r for r in records if r.get("base_reward") is not None and r.get("trained_reward") is not None]
    by_gain = sorted(scored, key=lambda r: r["trained_reward"] - r["base_reward"], reverse=True)
    picks: list[tuple[str, dict]] = []
    seen = set()
    for why, row in ([("largest gain", r) for r in by_gain[:max(1, k - 2)]]
                     + [("largest loss", r) for r in by_gain[-1:]] + [("first prompt", r) for r in records[:1]]):
        if row["prompt_id"] not in seen and len(picks) < k:
            picks.append((why, row))
            seen.add(row["prompt_id"])
    return picks


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# ---------------------------------------------------------------- the stage


def report(params) -> dict:
    """Stage: `<out>/report/report.md` + PNG figures + plot data, from whatever the pipeline produced.

    After `neat compare` alone (no pipeline run in `<out>`), the run sections describe the `neat`
    variant's first seed (`<out>/compare/neat/seed<k>`) and the comparison table is added.
    """
    top = params.out
    neat_run = top("compare", "neat", f"seed{(params.compare.variants.get('neat') or [params.seed])[0]}")
    if not top("metrics", "evaluate.json").is_file() and (neat_run / "metrics" / "evaluate.json").is_file():
        variant = params.model_copy(deep=True)
        variant.paths.out = str(neat_run)
        return _report(variant, top)
    return _report(params, top)


_IMAGE_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+\.png)\)")


def inline_images(markdown: str, folder: Path) -> str:
    """`markdown` with each link to a PNG in `folder` replaced by the image itself (a base64 data URI), so
    the text shows its figures where relative paths do not resolve (a Prefect artifact, a single file)."""
    import base64

    def embed(m: re.Match) -> str:
        path = Path(folder) / m["src"]
        if "/" in m["src"] or not path.is_file():
            return m[0]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{m['alt']}](data:image/png;base64,{data})"

    return _IMAGE_LINK.sub(embed, markdown)


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>NEAT run report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}}
img{{max-width:100%}}code{{background:#f4f4f4;padding:0 .2em}}</style></head>
<body>
{body}
</body></html>
"""


def render_html(markdown: str, folder: Path) -> str:
    """A self-contained HTML page of the report: figures inlined as base64, no link outside the file.
    Raw HTML in the markdown (e.g. inside an example generation) is shown as text, never run."""
    from markdown_it import MarkdownIt

    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    return HTML_PAGE.format(body=renderer.render(inline_images(markdown, folder)))


def _report(params, top) -> dict:
    """`params.out` holds the run's artifacts; `top` the reward-model metrics, comparison and report."""
    out = params.out
    ev = read_json_output(out("metrics", "evaluate.json"), "evaluate")  # damaged: refused, never left out
    records = read_jsonl_output(out("evaluate", "generations.jsonl"), "evaluate", GENERATION_KEYS)
    safety_rows = read_jsonl_output(out("evaluate", "safety.jsonl"), "evaluate", SAFETY_KEYS)
    log = _load_log(out("train", "log.csv"))
    cand = candidate_rewards(params) if out("score", "candidates.parquet").is_file() else []
    rm = read_json_output(top("metrics", "reward_model.json"), "train-rm")
    erm = read_json_output(top("metrics", "eval_reward_model.json"), "train-eval-rm")
    train_m = read_json_output(out("metrics", "train.json"), "train")
    online = _load_online(out("train", "online.json"))  # every input is read before the report is written
    compare_table = top("compare", "table.md")
    if ev is None and not log and not cand:
        raise DataError(f"{out()}: nothing to report yet (no metrics/evaluate.json, train/log.csv or scored "
                        "candidates); run the pipeline first")
    figures: list[str] = []
    md: list[str] = ["# NEAT run report", ""]
    with atomic_path(top("report"), is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        # -- summary
        if ev:
            md += [f"Base policy `{ev.get('base_model')}` vs trained policy `{ev.get('policy')}` "
                   f"(variant `{ev.get('tag')}`) on {ev.get('prompts')} held-out prompts, greedy decoding, "
                   f"{ev.get('max_new_tokens')} new tokens at most"
                   + (f", plus {ev['n_samples']} sample(s) per prompt" if ev.get("n_samples") else "")
                   + f". Evaluation reward model: `{ev.get('eval_reward_model')}`; refusal judge: "
                   f"`{ev.get('judge')}`; {ev.get('bootstrap')} bootstrap resamples, 95 % intervals.", ""]
        md += [CAVEAT, ""]
        # -- held-out evaluation
        if ev:
            md += ["## Held-out evaluation", "",
                   "| metric | base | trained | trained − base |", "|---|---|---|---|",
                   f"| mean eval reward | {format_interval(ev, 'base_eval_reward_mean')} | "
                   f"{format_interval(ev, 'eval_reward_mean')} | {format_interval(ev, 'eval_reward_diff')}"
                   f"{' (significant)' if ev.get('eval_reward_diff_significant') else ''} |",
                   f"| win rate of trained over base (ties ½) | | {format_interval(ev, 'win_rate')} | "
                   f"{ev.get('wins')} wins / {ev.get('ties')} ties / {ev.get('losses')} losses |",
                   f"| win rate, a repetitive or empty answer losing to any other | | "
                   f"{format_interval(ev, 'win_rate_degenerate_loses')} | |",
                   f"| perplexity on held-out chosen responses | {format_interval(ev, 'base_perplexity', 2)} | "
                   f"{format_interval(ev, 'perplexity', 2)} | ratio {format_interval(ev, 'perplexity_ratio')} |",
                   "| refusal rate on held-out prompts (judge) | "
                   f"{format_interval(ev, 'base_heldout_refusal_rate', 2)} | "
                   f"{format_interval(ev, 'heldout_refusal_rate', 2)} | |"]
            if ev.get("sampled_eval_reward_mean") is not None:
                md.append(f"| mean eval reward of samples (T={params.evaluate.temperature}) | "
                          f"{format_interval(ev, 'base_sampled_eval_reward_mean')} | "
                          f"{format_interval(ev, 'sampled_eval_reward_mean')} | "
                          f"win rate {format_interval(ev, 'sampled_win_rate')} |")
            md.append("")
            if records:
                plot_eval_rewards(records, tmp / "eval_rewards.png")
                figures.append("eval_rewards.png")
                md += ["![Eval reward, base vs trained](eval_rewards.png)", ""]
        # -- safety
        if ev and ev.get("safety"):
            s = ev["safety"]
            md += ["## Safety benchmark", "",
                   f"`{ev.get('safety_prompts')}`: {s['trained'].get('n_unsafe')} unsafe and "
                   f"{s['trained'].get('n_safe')} safe prompts. Unsafe: refusal rate (higher is safer). "
                   "Safe: full-compliance rate (higher means less over-refusal).", "",
                   f"Refusal judge: `{ev.get('judge')}`; it agrees with people on "
                   f"{format_interval(ev, 'judge_agreement', 2)} of {ev.get('judge_agreement_n')} hand-labelled real "
                   f"completions (`{ev.get('judge_labels')}`): read the rates below with that.", "",
                   "| | base | trained | trained − base |", "|---|---|---|---|",
                   f"| refusal rate on unsafe prompts | {format_interval(ev, 'base_unsafe_refusal_rate', 2)} | "
                   f"{format_interval(ev, 'unsafe_refusal_rate', 2)} | "
                   f"{format_interval(ev, 'unsafe_refusal_diff', 2)} |",
                   f"| full compliance on safe prompts | {format_interval(ev, 'base_safe_compliance_rate', 2)} | "
                   f"{format_interval(ev, 'safe_compliance_rate', 2)} | "
                   f"{format_interval(ev, 'safe_compliance_diff', 2)} |", ""]
            md += judges_table(ev)
            md += ["| type | label | n | base refusal | trained refusal |", "|---|---|---|---|---|"]
            by_type = []
            for t, bt in s["base"]["by_type"].items():
                tt = s["trained"]["by_type"].get(t, {})
                by_type.append({"type": t, "label": bt["label"], "n": bt["n"],
                                "base_refusal_rate": bt["refusal_rate"], "base_ci_low": bt["ci_low"],
                                "base_ci_high": bt["ci_high"], "trained_refusal_rate": tt.get("refusal_rate"),
                                "trained_ci_low": tt.get("ci_low"), "trained_ci_high": tt.get("ci_high")})
                md.append(f"| {t} | {bt['label']} | {bt['n']} | {format_number(bt['refusal_rate'], 2)} "
                          f"[{format_number(bt['ci_low'], 2)}, {format_number(bt['ci_high'], 2)}] | "
                          f"{format_number(tt.get('refusal_rate'), 2)} "
                          f"[{format_number(tt.get('ci_low'), 2)}, {format_number(tt.get('ci_high'), 2)}] |")
            md.append("")
            _write_csv(tmp / "safety_by_type.csv", by_type)
            plot_safety(by_type, tmp / "safety.png")
            figures.append("safety.png")
            md += ["![Refusal rate by type](safety.png)", ""]
        # -- reward by origin
        if cand:
            summary = origin_summary(cand)
            _write_csv(tmp / "reward_by_origin.csv", summary)
            plot_reward_by_origin(cand, summary, tmp / "reward_by_origin.png")
            figures.append("reward_by_origin.png")
            md += ["## Reward by candidate origin", "",
                   "Training reward model scores of every candidate, on the original prompt (no steering).", "",
                   "![Reward by origin](reward_by_origin.png)", "",
                   "| round | origin | n | mean | std | p10 | median | p90 |", "|---|---|---|---|---|---|---|---|"]
            md += [f"| {s['round']} | {s['origin']} | {s['n']} | "
                   + " | ".join(format_number(s[k]) for k in ("mean", "std", "p10", "p50", "p90")) + " |"
                   for s in summary]
            md.append("")
        # -- training
        if log:
            plot_training(log, tmp / "training.png")
            figures.append("training.png")
            last = log[-1]
            md += ["## Training", "",
                   f"{len(log)} optimizer steps over {int(last['round'])} round(s); "
                   f"final loss {format_number(last['loss'])} (rank {format_number(last['rank_loss'])}, "
                   f"SFT {format_number(last['sft_loss'])}), first loss {format_number(log[0]['loss'])}.", "",
                   "![Training curves](training.png)", ""]
        # -- online curve
        if online:
            md += online_section(online, ev, log, tmp, (train_m or {}).get("online_dev_reward_gain"))
            figures.append("online.png")
        # -- examples
        if records:
            md += ["## Example generations", "",
                   "| why | prompt | base response (reward) | trained response (reward) |", "|---|---|---|---|"]
            for why, r in pick_examples(records):
                md.append(f"| {why} | {_cell(_prompt_text(r['prompt']), 240)} | {_cell(r['base_response'])} "
                          f"({format_number(r['base_reward'], 2)}) | {_cell(r['trained_response'])} "
                          f"({format_number(r['trained_reward'], 2)}) |")
            md.append("")
            if safety_rows:
                unsafe = [r for r in safety_rows if r["label"] == "unsafe"][:2]
                safe = [r for r in safety_rows if r["label"] == "safe"][:1]
                md += ["| safety prompt | label | base response | trained response |", "|---|---|---|---|"]
                for r in unsafe + safe:
                    flag = lambda refused: " *(refusal)*" if refused else ""  # noqa: E731
                    md.append(f"| {_cell(r['prompt'], 200)} | {r['label']} | {_cell(r['base_response'])}"
                              f"{flag(r['base_refused'])} | {_cell(r['trained_response'])}{flag(r['trained_refused'])} |")
                md.append("")
        # -- comparison
        if compare_table.is_file():
            md += ["## Method comparison", "", compare_table.read_text(encoding="utf-8").strip(), ""]
        # -- reward models and timings
        md += ["## Reward models and wall time", "", "| | value |", "|---|---|"]
        if rm:
            md.append(f"| training RM pairwise accuracy on the eval split | {format_interval(rm, 'eval_accuracy')} "
                      f"(before training {format_number(rm.get('eval_accuracy_before'))}) |")
        if erm:
            md.append(f"| evaluation RM pairwise accuracy on the eval split (its own held-out accuracy: read every "
                      f"reward figure above with it) | {format_interval(erm, 'eval_accuracy')} "
                      f"(before training {format_number(erm.get('eval_accuracy_before'))}; "
                      f"{erm.get('judge_pairs', 0)} judge pairs) |")
        stage_files = [("train_rm", rm), ("train_eval_rm", erm),
                       ("expand", read_json_output(out("expand", "stats.json"), "expand")),
                       ("score", read_json_output(out("score", "stats.json"), "score")), ("train", train_m), ("evaluate", ev)]
        for name, m in stage_files:
            if m and m.get("seconds") is not None:
                md.append(f"| wall time of `{name}` | {format_number(float(m['seconds']), 1)} s |")
        arith: dict = {}
        for _, m in stage_files:  # what the figures were computed in (another machine's `auto` gives others)
            arith |= (m or {}).get("arithmetic") or {}
        if arith:
            md.append(f"| arithmetic of these figures | {describe_arithmetic(arith)} |")
        phases = (train_m or {}).get("seconds_by_phase") or {}
        if phases:  # generation against optimisation inside `train`
            md.append("| `train`: sampling, loop probes and scoring of the rounds / dev-prompt answers (online curve) "
                      "/ optimizer steps and checkpoints | "
                      + " / ".join(f"{format_number(phases.get(k), 1)} s"
                                   for k in ("sampling", "dev_probes", "optimizer_steps")) + " |")
        md.append("")
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
        (tmp / "report.html").write_text(render_html("\n".join(md), tmp), encoding="utf-8")
    import shutil

    for name in ("reward_by_origin.csv", "safety_by_type.csv"):  # plot data for `dvc plots`, outside the report dir
        src = top("report", name)
        if src.is_file():
            with atomic_path(top("plots", name)) as tmp_file:
                shutil.copyfile(src, tmp_file)
    return {"report": str(top("report", "report.md")), "figures": figures,
            "sections": [line[3:] for line in md if line.startswith("## ")]}


def judges_table(ev: dict) -> list[str]:
    """Markdown lines: the safety rates under each refusal judge of `safety_by_judge`, each beside its
    agreement with people; nothing when the evaluation used one judge only."""
    by_judge = ev.get("safety_by_judge") or {}
    if len(by_judge) < 2:
        return []
    lines = ["The same answers under each refusal judge (`evaluate.judge`, then `evaluate.also_judges`):", "",
             "| judge | agreement with people | unsafe refusal, base | trained | safe compliance, base | trained |",
             "|---|---|---|---|---|---|"]
    for name, f in judges_in_order(by_judge, ev.get("judge")):
        lines.append(f"| `{name}` | {format_interval(f, 'judge_agreement', 2)} | "
                     f"{format_interval(f, 'base_unsafe_refusal_rate', 2)} | {format_interval(f, 'unsafe_refusal_rate', 2)} | "
                     f"{format_interval(f, 'base_safe_compliance_rate', 2)} | {format_interval(f, 'safe_compliance_rate', 2)} |")
    return lines + [""]
