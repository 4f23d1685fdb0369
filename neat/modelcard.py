"""Model cards: the `README.md` every saved policy and every published registry version carries.

A card says what the checkpoint is and where it came from, in the Hugging Face convention (YAML front
matter, then Markdown): the base model, the training data and its fingerprint, the parameters that
shaped the policy (`policy`, `expand`, `train`), the training figures (`metrics/train.json`) and the
arithmetic the stages ran in (float32 or bf16, as `auto` resolved on the machine), the
evaluation figures with their 95 % intervals and the judges that produced them
(`metrics/evaluate.json`, when the evaluation has run), and the lineage (git revision, `dvc.lock` hash).

`neat train` writes a card into `<out>/policy/` (evaluation not yet run, so none is shown); publishing
to the registry writes a fresh card into the version, with the evaluation and the gate's verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from neat.formatting import describe_arithmetic
from neat.io import file_digest

CARD_NAME = "README.md"
PARAM_SECTIONS = ("policy", "expand", "train")
# evaluation figures shown with their interval: (key in evaluate.json, label)
EVAL_ROWS = (
    ("eval_reward_mean", "eval reward (mean)"),
    ("eval_reward_diff", "eval reward, trained − base (paired)"),
    ("win_rate", "win rate vs base"),
    ("sampled_eval_reward_mean", "eval reward, sampled responses"),
    ("perplexity", "perplexity on chosen responses"),
    ("perplexity_ratio", "perplexity ratio trained / base"),
    ("unsafe_refusal_rate", "XSTest unsafe prompts refused"),
    ("safe_compliance_rate", "XSTest safe prompts complied with"),
    ("unsafe_refusal_diff", "unsafe refusal, trained − base"),
    ("safe_compliance_diff", "safe compliance, trained − base"),
)


def file_fingerprint(path: str | Path) -> str | None:
    """sha256 (first 16 hex) of a data file's bytes; None for a hub dataset or a missing file."""
    path = Path(path)
    return file_digest(path) if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def card_facts(params, project: str | Path = ".", *, evaluation: dict | None = None,
               extra: dict | None = None) -> dict[str, Any]:
    """What a card says, gathered from params, the run's metrics and the checkout (paths relative to `project`)."""
    from neat.workspace import revision

    project = Path(project)
    out = project / params.paths.out
    data = params.paths.data
    facts: dict[str, Any] = {
        "base_model": params.policy.model,
        "lora": params.policy.lora.model_dump(mode="json") if params.policy.lora.enabled else None,
        "data": {"path": data, "format": params.data.format,
                 "sha256": None if data.startswith("hub:") else file_fingerprint(project / data),
                 "hub_split": params.data.hub_split if data.startswith("hub:") else None,
                 "hub_revision": params.data.hub_revision if data.startswith("hub:") else None,
                 "splits": (_read_json(out / "data" / "stats.json") or {}).get("splits")},
        "params": {k: getattr(params, k).model_dump(mode="json") for k in PARAM_SECTIONS},
        "training": _read_json(out / "metrics" / "train.json"),
        "evaluation": evaluation if evaluation is not None else _read_json(out / "metrics" / "evaluate.json"),
        "judges": {"refusal": params.evaluate.judge,
                   "reward": params.evaluate.reward_model + (" (trained on the judge split)"
                                                             if params.evaluate.train_reward_model else "")},
        "lineage": revision(project),
    }
    arithmetic: dict = {}  # the stages' number formats (bf16 where `auto` found native bf16): other figures
    for part in ((_read_json(out / "metrics" / "reward_model.json") or {}), facts["training"] or {},
                 facts["evaluation"] or {}):
        arithmetic |= part.get("arithmetic") or {}
    facts["arithmetic"] = arithmetic or None
    if extra:
        facts.update(extra)
    return facts


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(facts: dict[str, Any]) -> str:
    """The card's text: YAML front matter and Markdown sections."""
    base = facts["base_model"]
    front: dict[str, Any] = {"library_name": "transformers", "tags": ["neat", "rrhf", "alignment"]}
    if not base.startswith("builtin:") and "/" in base and not Path(base).exists():
        front["base_model"] = base  # a hub id: the hub links the card to its base model
    if facts.get("lora"):
        front["tags"].append("lora")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             "# NEAT policy", "",
             "A causal language model aligned with NEAT (negative-prompt-driven alignment, arXiv 2410.12194): "
             "online rounds of ranking-loss training on candidates sampled under positive and negative steering "
             "prompts and ranked by a reward model.", "",
             "## Base model", "", f"- `{base}`"]
    if facts.get("lora"):
        lora = facts["lora"]
        lines.append(f"- trained with LoRA (r={lora['r']}, alpha={lora['alpha']}, targets "
                     f"{', '.join(lora['target_modules'])}); this folder holds the merged weights, "
                     "`adapter/` the adapter alone")
    data = facts["data"]
    lines += ["", "## Training data", "", f"- path: `{data['path']}` (format {data['format']})",
              f"- fingerprint (sha256, first 16 hex): `{data['sha256']}`" if data.get("sha256")
              else f"- hub dataset, split `{data.get('hub_split')}`, revision `{data.get('hub_revision') or 'latest'}` "
                   "(no local file to fingerprint)"]
    for name, split in (data.get("splits") or {}).items():
        lines.append(f"- {name} split: {split.get('pairs')} pairs, {split.get('prompts')} prompts")
    lines += ["", "## Parameters", "", "The `policy`, `expand` and `train` sections of params.yaml:", "", "```yaml",
              yaml.safe_dump(facts["params"], sort_keys=False).strip(), "```"]
    lines += ["", "## Training", ""]
    training = facts.get("training")
    if training:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_num(v)} |" for k, v in training.items() if not isinstance(v, (dict, list))]
    else:
        lines.append("No training figures (metrics/train.json) were found.")
    if facts.get("arithmetic"):
        lines += ["", f"Arithmetic: {describe_arithmetic(facts['arithmetic'])}. The same parameters give other "
                      "figures in another arithmetic."]
    lines += ["", "## Evaluation", ""]
    ev = facts.get("evaluation")
    if ev:
        lines += [f"Held-out prompts: {ev.get('prompts')}; 95 % bootstrap intervals.", "",
                  "| metric | trained | 95 % interval | base | 95 % interval |", "|---|---|---|---|---|"]
        for key, label in EVAL_ROWS:
            if ev.get(key) is None:
                continue
            row = [label, _num(ev[key]), f"[{_num(ev.get(f'{key}_ci_low'))}, {_num(ev.get(f'{key}_ci_high'))}]"]
            if f"base_{key}" in ev:
                row += [_num(ev[f"base_{key}"]),
                        f"[{_num(ev.get(f'base_{key}_ci_low'))}, {_num(ev.get(f'base_{key}_ci_high'))}]"]
            else:
                row += ["", ""]
            lines.append("| " + " | ".join(row) + " |")
        judges = facts["judges"]
        lines += ["", f"Judges: rewards from the evaluation reward model `{judges['reward']}`; refusals judged by "
                      f"`{ev.get('judge') or judges['refusal']}`. Both are small and heuristic: read differences "
                      "within the intervals as noise."]
    else:
        lines.append("Not evaluated yet (metrics/evaluate.json absent when this card was written).")
    if facts.get("gate"):
        lines += ["", "## Promotion gate", "", f"- {facts['gate']}"]
    lineage = facts["lineage"]
    lines += ["", "## Lineage", "",
              f"- git revision: `{lineage.get('git_commit')}`" + (" (uncommitted changes)" if lineage.get("git_dirty") else ""),
              f"- dvc.lock sha256 (first 16 hex): `{lineage.get('dvc_lock_sha256')}`"]
    if facts.get("version"):
        lines.append(f"- registry version: `{facts['version']}`")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("<this folder>")',
              'tokenizer = AutoTokenizer.from_pretrained("<this folder>")', "```", ""]
    return "\n".join(lines)


def write_model_card(policy_dir: str | Path, params, project: str | Path = ".", **kwargs: Any) -> Path:
    """Write `<policy_dir>/README.md` from the run's params, metrics and lineage."""
    from neat.io import write_text_atomic

    path = Path(policy_dir) / CARD_NAME
    write_text_atomic(path, render(card_facts(params, project, **kwargs)))
    return path
