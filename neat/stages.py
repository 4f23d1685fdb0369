"""The stage manifest: every stage named, wired and described once.

`neat <stage>` dispatches through `STAGES`; `dvc.yaml` (the pipeline) and `compare/dvc.yaml` (the
comparison of variants, one stage instance per variant) are generated from it (`neat dvc-yaml`, checked by
the tests); the Prefect flows run `pipeline()` in its order with each stage's own options; `neat compare`
and the tests take their chains from it. A stage's code deps are not written here: they are its entry
module's import closure (neat/codedeps.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

OUT = "${paths.out}"
DVC_YAML = "dvc.yaml"  # the pipeline: what `dvc repro` (and `make all`) runs
COMPARE_DVC_YAML = "compare/dvc.yaml"  # the comparison: `dvc repro compare/dvc.yaml`, only when asked for
EACH = "${key}"  # in a foreach stage's paths: the instance's key (a variant name)
DATA_SOURCE = "${paths.data}"  # the data source dep: a file dep in dvc.yaml unless params name hub:<dataset id>

# an output as dvc.yaml writes it: a path, or (path, its options)
Output = Union[str, tuple[str, dict]]
UNCACHED = {"cache": False}  # kept in git/the workspace, not the DVC cache; `dvc checkout` cannot restore it


def out(rel: str) -> str:
    return f"{OUT}/{rel}"


def output_path(entry: Output) -> str:
    return entry if isinstance(entry, str) else entry[0]


def output_options(entry: Output) -> dict:
    return {} if isinstance(entry, str) else entry[1]


@dataclass(frozen=True)
class Stage:
    name: str  # `neat <name>`
    target: str  # "module:function", imported lazily so `neat --help` stays fast
    help: str
    dvc_file: Optional[str] = DVC_YAML  # the dvc.yaml it is a stage of; None: a command only (`neat compare`)
    # (params key of a mapping, the entry point's option): one DVC stage instance per key of that mapping,
    # its cmd given `<option> ${key}` and `${key}` (EACH) in its paths
    foreach: Optional[tuple[str, str]] = None
    reads_data_source: bool = False  # reads `paths.data`: a file dep in dvc.yaml unless it is hub:<dataset id>
    resumable: bool = False  # takes `--resume`; the pipeline (dvc.yaml, the flows) always passes it
    deps: tuple[str, ...] = ()  # data deps (the code deps are computed, see neat/codedeps.py)
    params: tuple[str, ...] = ()  # params.yaml keys/sections whose change reruns the stage
    outs: tuple[Output, ...] = ()
    metrics: tuple[Output, ...] = ()
    plots: tuple[Output, ...] = ()
    notes: dict = field(default_factory=dict)  # {output path: comment} written beside it in dvc.yaml

    @property
    def dvc_name(self) -> str:
        """The stage's name in dvc.yaml (and the flows' `stages` parameter)."""
        return self.name.replace("-", "_")

    @property
    def in_pipeline(self) -> bool:
        """Part of dvc.yaml's graph, which `dvc repro` and the flows run."""
        return self.dvc_file == DVC_YAML

    @property
    def options(self) -> dict:
        """The keyword options the pipeline runs the entry point with (as dvc.yaml's cmd passes them)."""
        return {"resume": True} if self.resumable else {}

    @property
    def cmd(self) -> str:
        each = f" {self.foreach[1]} {EACH}" if self.foreach else ""
        return f"neat {self.name}" + (" --resume" if self.resumable else "") + each

    def produces(self) -> list[Output]:
        """Everything the stage writes that DVC tracks: outs, metrics, plots."""
        return [*self.outs, *self.metrics, *self.plots]

    def describe(self) -> str:
        """`help` plus the entry point's docstring, read from the source (no import: `--help` stays fast)."""
        import ast
        import inspect
        from pathlib import Path

        module, func = self.target.split(":")
        path = Path(__file__).resolve().parents[1].joinpath(*module.split(".")).with_suffix(".py")
        doc = None
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name == func:
                doc = ast.get_docstring(node)
        return f"{self.help}." + (f"\n\n{inspect.cleandoc(doc)}" if doc else "")

    def load(self) -> Callable:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


# batch_tokens and decode_tokens set the lean loop's batches and so its per-batch seeds (other samples);
# merge_lora rounds the weights a LoRA policy generates with
GENERATION = ("generation.backend", "generation.engine", "generation.cpu_dtype", "generation.batch_tokens",
              "generation.decode_tokens", "generation.merge_lora")

STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("prepare", "neat.prepare:prepare", "read preference data, check rows, split train/eval/judge",
              reads_data_source=True,
              params=("paths.data", "data"),
              outs=(out("data/train.jsonl"), out("data/eval.jsonl"), out("data/judge.jsonl")),
              metrics=((out("data/stats.json"), UNCACHED),)),
        Stage("train-rm", "neat.reward:train_rm", "train the reward model (Bradley-Terry) on the train split",
              deps=(out("data/train.jsonl"), out("data/eval.jsonl")),
              params=("reward",),
              outs=(out("reward_model"),),
              metrics=((out("metrics/reward_model.json"), UNCACHED),)),
        Stage("expand", "neat.expand:expand", "sample positive/negative-steered candidates from the policy",
              deps=(out("data/train.jsonl"), "${paths.benign_prompts}", "${paths.harmful_requests}"),
              params=("seed", "policy", "expand", *GENERATION, "data.max_train_prompts", "data.max_benign_prompts",
                      "data.max_harmful_prompts", "paths.benign_prompts", "paths.harmful_requests",
                      "train.include_dataset_responses"),
              outs=(out("expand/candidates.parquet"), out("expand/benign.jsonl"), out("expand/harmful.jsonl")),
              metrics=((out("expand/stats.json"), UNCACHED),)),
        Stage("score", "neat.reward:score", "score and rank every candidate on the original prompt",
              deps=(out("expand/candidates.parquet"), out("reward_model")),
              params=("reward",),
              outs=(out("score/candidates.parquet"),),
              metrics=((out("score/stats.json"), UNCACHED),)),
        Stage("train", "neat.train:train", "online ranking-loss training (RRHF/PRO + SFT), several rounds",
              resumable=True,
              deps=(out("score/candidates.parquet"), out("reward_model"), out("data/train.jsonl"),
                    out("expand/benign.jsonl"), out("expand/harmful.jsonl")),
              params=("seed", "policy", "expand", *GENERATION, "train", "data.max_train_prompts"),
              outs=(out("policy"), out("train/rounds"), (out("train/online.json"), UNCACHED),
                    (out("train/log.csv"), UNCACHED)),
              metrics=((out("metrics/train.json"), UNCACHED),),
              notes={out("train/log.csv"): "drawn once, by the top-level `training` plot (x = step)"}),
        Stage("train-eval-rm", "neat.evaluate:train_eval_rm", "train the evaluation reward model on the judge split",
              deps=(out("data/judge.jsonl"), out("data/eval.jsonl")),
              params=("reward", "evaluate.reward_model", "evaluate.train_reward_model", "evaluate.reward_seed"),
              outs=(out("eval_reward_model"),),
              metrics=((out("metrics/eval_reward_model.json"), UNCACHED),)),
        Stage("evaluate", "neat.evaluate:evaluate", "base vs trained: eval reward, win rate, perplexity, safety",
              deps=(out("policy"), out("train/online.json"), out("eval_reward_model"),
                    out("metrics/eval_reward_model.json"), out("data/eval.jsonl"), "${paths.safety_prompts}",
                    "${paths.refusal_examples}", "${paths.judge_labels}"),
              params=("seed", "policy", "evaluate", *GENERATION, "paths.safety_prompts", "paths.refusal_examples",
                      "paths.judge_labels", "train.max_prompt_tokens", "train.max_response_tokens",
                      "train.logprob_chunk", "reward.batch_size", "reward.max_length", "reward.device"),
              outs=(out("evaluate/generations.jsonl"), out("evaluate/safety.jsonl")),
              metrics=((out("metrics/evaluate.json"), UNCACHED),),
              plots=((out("evaluate/rewards.csv"),
                      UNCACHED | {"template": "scatter", "x": "base_reward", "y": "trained_reward"}),)),
        Stage("report", "neat.report:report", "report.md with figures, tables and example generations",
              deps=(out("metrics/evaluate.json"), out("metrics/reward_model.json"),
                    out("metrics/eval_reward_model.json"), out("metrics/train.json"),
                    out("evaluate/generations.jsonl"), out("evaluate/safety.jsonl"), out("score/candidates.parquet"),
                    out("train/log.csv"), out("train/rounds")),
              outs=((out("report"), UNCACHED),),
              plots=((out("plots/reward_by_origin.csv"),
                      UNCACHED | {"template": "bar_horizontal", "x": "mean", "y": "origin"}),
                     (out("plots/safety_by_type.csv"),
                      UNCACHED | {"template": "bar_horizontal", "x": "trained_refusal_rate", "y": "type"})),
              notes={out("plots/safety_by_type.csv"):
                     "one bar per XSTest prompt type, not a line over row index"}),
    ]
}

# What each variant of the comparison runs for each of its seeds, under <out>/compare/<variant>/seed<k>, after
# the shared stages (prepare and both reward models, whose outputs under <out> it reads).
VARIANT_CHAIN = ("expand", "score", "train", "evaluate")


def _chain_inputs(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The data deps and params of running `names` in a row: what they read that none of them writes."""
    produced = {output_path(e) for n in names for e in STAGES[n].produces()}
    deps = [d for n in names for d in STAGES[n].deps if d not in produced]
    params = [p for n in names for p in STAGES[n].params]
    covered = [p for p in params if any(p.startswith(q + ".") for q in params)]  # `train` covers `train.lr`
    return tuple(dict.fromkeys(deps)), tuple(p for p in dict.fromkeys(params) if p not in covered)


_VARIANT_DEPS, _VARIANT_PARAMS = _chain_inputs(VARIANT_CHAIN)
STAGES |= {
    s.name: s
    for s in [
        Stage("compare-variant", "neat.compare:compare_variant",
              "train and evaluate one variant of the comparison, once per seed",
              dvc_file=COMPARE_DVC_YAML, foreach=("compare.variants", "--variant"),
              deps=_VARIANT_DEPS, params=(*_VARIANT_PARAMS, f"compare.variants.{EACH}", "compare.dpo_brake"),
              outs=(out(f"compare/{EACH}"), out(f"compare/per_prompt/{EACH}.json")),
              metrics=((out(f"metrics/compare/{EACH}.json"), UNCACHED),)),
        Stage("compare-table", "neat.compare_table:compare_table",
              "the comparison's table and figures from every variant's results",
              dvc_file=COMPARE_DVC_YAML,
              deps=(out("compare/per_prompt"),),
              params=("seed", "evaluate.bootstrap", "compare.variants"),
              # cached: <out>/compare/ is git-ignored (`neat compare` writes there outside DVC as well)
              outs=(out("compare/table.md"), out("compare/compare.json"), out("compare/seeds.png"),
                    out("compare/safety.png")),
              metrics=((out("metrics/compare.json"), UNCACHED),)),
        Stage("compare", "neat.compare:compare",
              "every variant of `compare.variants` (finished ones reused), then the table", dvc_file=None),
    ]
}

# dvc.yaml's top-level plots: the training log, once, against the optimiser step (losses and the mean
# reward of each candidate origin)
TOP_LEVEL_PLOTS: list[dict] = [
    {"training": {"template": "linear", "x": "step",
                  "y": {out("train/log.csv"): ["loss", "rank_loss", "sft_loss", "reward_chosen", "reward_rejected",
                                               "reward_positive", "reward_negative"]}}},
]


def pipeline() -> list[Stage]:
    """The stages of dvc.yaml's graph, in an order where each runs after the stages it reads from (tested)."""
    return [s for s in STAGES.values() if s.in_pipeline]


def dvc_file_stages(dvc_file: str) -> list[Stage]:
    """The stages of one generated dvc.yaml (DVC_YAML or COMPARE_DVC_YAML), in the manifest's order."""
    return [s for s in STAGES.values() if s.dvc_file == dvc_file]


def by_dvc_name(dvc_name: str) -> Stage:
    return next(s for s in pipeline() if s.dvc_name == dvc_name)


def stages_before(name: str) -> list[Stage]:
    """The pipeline stages ordered before `name` (everything a run up to `name` needs, and maybe more)."""
    order = [s.name for s in pipeline()]
    return pipeline()[: order.index(name)]


def uncached_outputs() -> list[str]:
    """The `cache: false` outputs of the pipeline (metrics, plots, report), as dvc.yaml writes them."""
    return [output_path(e) for s in pipeline() for e in s.produces() if output_options(e).get("cache", True) is False]


def run_stage(name: str, params, **options) -> dict:
    """Run one stage; `options` are stage-specific flags (e.g. `resume=True` for train)."""
    import logging
    import time

    start = time.monotonic()
    summary = STAGES[name].load()(params, **options)
    # on success only: a failing stage's stderr stays its one `neat: error:` line
    logging.getLogger(__name__).info("neat %s: done in %.1f s", name, time.monotonic() - start)
    return summary
