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

    def load(self) -> Callable:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("prepare", "neat.data:prepare", "read preference data, check rows, split train/eval/judge"),
    ]
}


def run_stage(name: str, params) -> dict:
    return STAGES[name].load()(params)
