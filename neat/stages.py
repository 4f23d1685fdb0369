"""The stage entry points, named once. `neat <stage>`, dvc.yaml and the Prefect flow all call these."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", imported lazily so `neat --help` stays fast
    help: str
    in_pipeline: bool = True  # part of dvc.yaml's graph (compare is a separate benchmark command)
    reads_data_source: bool = False  # reads `paths.data`: a file dep in dvc.yaml unless it is hub:<dataset id>

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


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("prepare", "neat.data:prepare", "read preference data, check rows, split train/eval/judge",
              reads_data_source=True),
        Stage("train-rm", "neat.reward:train_rm", "train the reward model (Bradley-Terry) on the train split"),
        Stage("expand", "neat.expand:expand", "sample positive/negative-steered candidates from the policy"),
        Stage("score", "neat.reward:score", "score and rank every candidate on the original prompt"),
        Stage("train", "neat.train:train", "online ranking-loss training (RRHF/PRO + SFT), several rounds"),
        Stage("train-eval-rm", "neat.evaluate:train_eval_rm", "train the evaluation reward model on the judge split"),
        Stage("evaluate", "neat.evaluate:evaluate", "base vs trained: eval reward, win rate, perplexity, safety"),
        Stage("report", "neat.report:report", "report.md with figures, tables and example generations"),
        Stage("compare", "neat.compare:compare", "train and evaluate NEAT, RRHF and SFT at equal steps; table",
              in_pipeline=False),
    ]
}


def run_stage(name: str, params, **options) -> dict:
    """Run one stage; `options` are stage-specific flags (e.g. `resume=True` for train)."""
    import logging
    import time

    start = time.monotonic()
    summary = STAGES[name].load()(params, **options)
    # on success only: a failing stage's stderr stays its one `neat: error:` line
    logging.getLogger(__name__).info("neat %s: done in %.1f s", name, time.monotonic() - start)
    return summary
