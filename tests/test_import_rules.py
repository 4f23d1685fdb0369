"""Rules of the layout (issue 14): the import rules, read from the code's own imports (AST, lazy imports
included), and a test module for every module.

- evaluation does not import the trainer (`neat.train`, `neat.training`): it tokenises through
  `neat.encoding`, like training does;
- the `train` stage module is thin and nothing below it imports it: the benchmarks take the trainer
  they measure from the training library (`neat.training`), and the library never imports the stage;
- the training library imports no other stage module either (`expand`, `reward`, ...): it samples
  through `neat.steering` and reads and writes candidates through `neat.candidates`;
- a name is imported from the module that defines it, not from one that merely imports it (so
  `from neat.train import collate` cannot come back through a stray re-export);
- no module reaches into another neat module's private names (`_x`), and no file of `neat/` or `flows/`
  into another object's private members (`store._call`: a public interface instead);
- the flows only orchestrate: they do not import evaluation or training (the gate is `neat.promotion`);
- the tests mirror the layout: `neat/<name>.py` is tested in `tests/test_<name>.py`, `neat/<pkg>/<name>.py`
  in `tests/test_<pkg>_<name>.py` or `tests/test_<name>.py`, unless `COVERED_ELSEWHERE` names the
  cross-cutting tests that cover it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCANNED = ("neat/**/*.py", "benchmarks/*.py", "flows/*.py", "scripts/*.py")


def is_trainer(module: str, name: str | None) -> bool:
    """`module` (and `name`, for `from neat import x`) names the train stage or the training library."""
    full = f"{module}.{name}" if module == "neat" and name else module
    return full == "neat.train" or full == "neat.training" or full.startswith("neat.training.")


# stage modules the training library must not lean on besides `neat.train` (its online rounds sample
# through neat.steering and read and write candidates through neat.candidates)
OTHER_STAGES = ("neat.expand", "neat.reward", "neat.evaluate", "neat.report", "neat.prepare")


def is_train_stage(module: str, name: str | None) -> bool:
    return module == "neat.train" or (module, name) == ("neat", "train")


def sources(root: Path) -> list[Path]:
    return sorted({p for pattern in SCANNED for p in root.glob(pattern)})


def imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every absolute `neat` import in `path`; name None for `import neat.x`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "neat"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "neat":
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def module_path(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defined_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments), not the ones it imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                names.add(sub.id)
    return names


# Private members of other projects that have no public name and that neat uses knowingly, each where it is
# checked before use: torch's oneDNN packed-linear ops (neat/packed_linear.py compares them with F.linear).
THIRD_PARTY_PRIVATE = {("neat/packed_linear.py", "torch.ops.mkldnn._reorder_linear_weight"),
                       ("neat/packed_linear.py", "torch.ops.mkldnn._linear_pointwise")}


def private_members(path: Path, rel: str = "") -> list[tuple[int, str]]:
    """(line, expression) of every `x._name` whose `x` is not `self` or `cls` (nor in THIRD_PARTY_PRIVATE)."""
    return [(n.lineno, ast.unparse(n)) for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
            and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
            and (rel, ast.unparse(n)) not in THIRD_PARTY_PRIVATE]


def violations(root: Path) -> list[str]:
    found = []
    for path in sources(root):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("neat/", "flows/")):
            found += [f"{rel}:{line}: uses the private member {expr}; give it a public interface"
                      for line, expr in private_members(path, rel)]
        for line, module, name in imports(path):
            where = f"{rel}:{line}"
            if rel.startswith("flows/") and (module == "neat.evaluate" or (module, name) == ("neat", "evaluate")
                                             or is_trainer(module, name)):
                found.append(f"{where}: a flow imports {module if module != 'neat' else 'neat.' + name}; flows only "
                             "orchestrate (call a stage or a library function such as neat.promotion)")
            if rel == "neat/evaluate.py" and is_trainer(module, name):
                found.append(f"{where}: evaluation imports the trainer (tokenise with neat.encoding)")
            if rel.startswith("benchmarks/") and is_train_stage(module, name):
                found.append(f"{where}: a benchmark imports the train stage; take the trainer from neat.training")
            if rel.startswith("neat/training/") and is_train_stage(module, name):
                found.append(f"{where}: the training library imports the train stage above it")
            if rel.startswith("neat/training/") and (module in OTHER_STAGES
                                                     or (module == "neat" and f"neat.{name}" in OTHER_STAGES)):
                stage = module if module != "neat" else f"neat.{name}"
                found.append(f"{where}: the training library imports the stage {stage}; take the piece from a "
                             "library module (encoding, diagnostics, steering, candidates)")
            if name is None:
                continue
            if name.startswith("_") and not name.startswith("__"):
                found.append(f"{where}: imports the private name {module}.{name}; give it a public name")
                continue
            target = module_path(root, module)
            if target is None or module_path(root, f"{module}.{name}") is not None:
                continue  # not a neat source file, or a submodule (`from neat import registry`)
            if name != "*" and name not in defined_names(target):
                found.append(f"{where}: {name} is imported from {module}, which does not define it; "
                             "import it from the module that does")
    return found


def test_the_project_keeps_its_import_rules():
    found = violations(ROOT)
    assert not found, "import rules broken:\n" + "\n".join(found)


def test_evaluation_and_benchmarks_tokenise_without_the_trainer():
    evaluate = {(m, n) for _, m, n in imports(ROOT / "neat/evaluate.py")}
    assert not {x for x in evaluate if is_trainer(*x)}
    assert ("neat.encoding", "collate") in evaluate and ("neat.encoding", "fit_turns") in evaluate
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert not {x for _, *x in imports(path) if is_train_stage(*x)}, path.name


def test_the_train_stage_is_thin_and_the_trainer_is_library():
    """The stage reads, calls the library and writes: no class, no loss, no checkpoint code of its own."""
    stage = ast.parse((ROOT / "neat/train.py").read_text(encoding="utf-8"))
    assert not [n.name for n in stage.body if isinstance(n, ast.ClassDef)]
    assert {"Trainer", "step_loss", "save_checkpoint", "load_checkpoint"}.isdisjoint(defined_names(ROOT / "neat/train.py"))
    assert ("neat.training.trainer", "Trainer") in {(m, n) for _, m, n in imports(ROOT / "neat/train.py")}


@pytest.mark.parametrize("text, wanted", [
    ("from neat.training.trainer import Trainer\n", None),
    ("def f():\n    from neat.train import train\n", "a benchmark imports the train stage"),
    ("from neat import train\n", "a benchmark imports the train stage"),
    ("from neat.models import _resolve\n", "private name neat.models._resolve"),
    ("from neat.training.trainer import helper\n",
     "helper is imported from neat.training.trainer, which does not define it"),
])
def test_each_rule_catches_its_violation(tmp_path, text, wanted):
    (tmp_path / "neat").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "neat/__init__.py").write_text("")
    (tmp_path / "neat/models.py").write_text("def _resolve():\n    pass\n")
    (tmp_path / "neat/encoding.py").write_text("def collate():\n    pass\n")
    (tmp_path / "neat/training").mkdir()
    (tmp_path / "neat/training/__init__.py").write_text("")
    (tmp_path / "neat/training/trainer.py").write_text("from neat.encoding import collate\n"
                                                       "from os import path as helper\n\nclass Trainer:\n    pass\n")
    (tmp_path / "neat/train.py").write_text("def train():\n    pass\n")
    (tmp_path / "benchmarks/b.py").write_text(text)
    found = violations(tmp_path)
    assert (found == []) if wanted is None else any(wanted in v for v in found), found


def test_a_flow_evaluating_or_reaching_into_a_store_is_caught(tmp_path):
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows/pipeline.py").write_text("def gate(store):\n    from neat.evaluate import evaluate\n"
                                                "    return store._call('x', evaluate)\n")
    found = violations(tmp_path)
    assert any("a flow imports neat.evaluate" in v for v in found), found
    assert any("private member store._call" in v for v in found), found


def test_a_third_party_private_member_is_allowed_only_where_it_is_listed(tmp_path):
    (tmp_path / "neat").mkdir()
    use = "import torch\n\ndef f(x, w):\n    return torch.ops.mkldnn._linear_pointwise(x, w, None, 'none', [], '')\n"
    (tmp_path / "neat/packed_linear.py").write_text(use)
    (tmp_path / "neat/other.py").write_text(use + "\ndef g(x):\n    return torch.ops.mkldnn._other_op(x)\n")
    found = violations(tmp_path)
    assert not any(v.startswith("neat/packed_linear.py") for v in found), found
    assert any(v.startswith("neat/other.py:4: uses the private member torch.ops.mkldnn._linear_pointwise") for v in found)
    assert any("torch.ops.mkldnn._other_op" in v for v in found), found


@pytest.mark.parametrize("text", ["def f():\n    from neat.train import fit_turns\n",
                                  "from neat.training.objective import batch_logps\n"])
def test_evaluation_importing_the_trainer_is_caught(tmp_path, text):
    (tmp_path / "neat/training").mkdir(parents=True)
    (tmp_path / "neat/train.py").write_text("def fit_turns():\n    pass\n")
    (tmp_path / "neat/training/objective.py").write_text("def batch_logps():\n    pass\n")
    (tmp_path / "neat/evaluate.py").write_text(text)
    assert any("evaluation imports the trainer" in v for v in violations(tmp_path))


def test_the_training_library_importing_the_stage_is_caught(tmp_path):
    (tmp_path / "neat/training").mkdir(parents=True)
    (tmp_path / "neat/train.py").write_text("def dev_prompts():\n    pass\n")
    (tmp_path / "neat/training/trainer.py").write_text("def f():\n    from neat.train import dev_prompts\n")
    assert any("training library imports the train stage" in v for v in violations(tmp_path))


@pytest.mark.parametrize("text, stage", [
    ("def f():\n    from neat.reward import separation\n", "neat.reward"),
    ("from neat.expand import build_candidates\n", "neat.expand"),
    ("from neat import expand\n", "neat.expand"),
])
def test_the_training_library_importing_another_stage_is_caught(tmp_path, text, stage):
    (tmp_path / "neat/training").mkdir(parents=True)
    (tmp_path / "neat/reward.py").write_text("def separation():\n    pass\n")
    (tmp_path / "neat/expand.py").write_text("def build_candidates():\n    pass\n")
    (tmp_path / "neat/training/trainer.py").write_text(text)
    assert any(f"training library imports the stage {stage}" in v for v in violations(tmp_path))


# Modules without a test module of their own, each with the tests that cover it. Keep it short and true:
# a module that grows logic of its own gets its own test module instead of an entry here.
COVERED_ELSEWHERE = {
    "neat/compare_table.py": "tests/test_compare.py (the table from hand-made results, and end to end)",
    "neat/errors.py": "exception classes: every bad-input test checks their one-line messages",
    "neat/expand.py": "the stage: test_pipeline (end to end), test_interruptions (resume), test_vllm_backend",
    "neat/failures.py": "tests/test_flow_stage_failures.py (how the flows classify a stage's outcome)",
    "neat/input_files.py": "tests/test_data.py and benchmarks/bad_inputs.py via tests/test_bad_inputs.py",
    "neat/logs.py": "tests/test_cli_logging.py",
    "neat/params_yaml.py": "tests/test_params_strict.py and tests/test_config.py (strict YAML of params)",
    "neat/prepare.py": "the stage: tests/test_pipeline.py (end to end), tests/test_hub_data.py, tests/test_bad_inputs.py",
    "neat/prompt_mix.py": "tests/test_benign.py and tests/test_harmful.py (the two mixes that read and answer through it)",
    "neat/promotion.py": "tests/test_orchestration.py and tests/test_registry.py (the gate)",
    "neat/stage_inputs.py": "damaged stage outputs: benchmarks/bad_inputs.py via tests/test_bad_inputs.py",
    "neat/training/checkpoint.py": "tests/test_interruptions.py and tests/test_training_strategy.py (resume)",
    "neat/training/groups.py": "tests/test_train.py and tests/test_packing.py",
    "neat/training/objective.py": "tests/test_train.py and tests/test_packing.py (the loss of a batch)",
    "neat/training/records.py": "tests/test_report.py and tests/test_dvc_plots.py (log.csv, online.json)",
    "neat/training/trainer.py": "tests/test_train.py, tests/test_distributed.py, tests/test_interruptions.py",
    # the local `evaluate` metric scripts, loaded by name: tests/test_metrics.py loads and checks each
    "neat/metrics/pairwise_accuracy/pairwise_accuracy.py": "tests/test_metrics.py",
    "neat/metrics/refusal_rate/refusal_rate.py": "tests/test_metrics.py",
    "neat/metrics/win_rate/win_rate.py": "tests/test_metrics.py",
}


def candidate_test_modules(root: Path, module: Path) -> list[str]:
    """The test modules that may test `module` (a path under `root/neat`)."""
    parts = module.relative_to(root / "neat").with_suffix("").parts
    names = [f"test_{parts[-1]}.py"]
    if len(parts) > 1:
        names.insert(0, f"test_{'_'.join(parts)}.py")
    return names


def untested_modules(root: Path) -> list[str]:
    found = []
    for module in sorted((root / "neat").rglob("*.py")):
        rel = module.relative_to(root).as_posix()
        if module.name == "__init__.py" or rel in COVERED_ELSEWHERE:
            continue
        names = candidate_test_modules(root, module)
        if not any((root / "tests" / name).is_file() for name in names):
            found.append(f"{rel}: no tests/{names[0]} (add one, or name the tests that cover it in COVERED_ELSEWHERE)")
    return found


def test_every_module_has_a_test_module():
    found = untested_modules(ROOT)
    assert not found, "\n".join(found)


def test_the_allow_list_names_only_modules_that_exist_and_lack_their_own_test_module():
    stale = [rel for rel in COVERED_ELSEWHERE if not (ROOT / rel).is_file()
             or any((ROOT / "tests" / name).is_file() for name in candidate_test_modules(ROOT, ROOT / rel))]
    assert not stale, f"COVERED_ELSEWHERE entries to remove: {stale}"


def test_a_module_without_tests_is_caught(tmp_path):
    (tmp_path / "neat/training").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    for rel in ("neat/__init__.py", "neat/sampling.py", "neat/training/strategy.py", "neat/training/loop.py",
                "tests/test_sampling.py", "tests/test_training_strategy.py"):
        (tmp_path / rel).write_text("")
    assert untested_modules(tmp_path) == ["neat/training/loop.py: no tests/test_training_loop.py (add one, or name "
                                          "the tests that cover it in COVERED_ELSEWHERE)"]
