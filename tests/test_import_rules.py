"""Import rules of the layout (issue 14), read from the code's own imports (AST, lazy imports included).

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
- the flows only orchestrate: they do not import evaluation or training (the gate is `neat.promotion`).
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
OTHER_STAGES = ("neat.expand", "neat.reward", "neat.evaluate", "neat.report", "neat.data")


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


def private_members(path: Path) -> list[tuple[int, str]]:
    """(line, expression) of every `x._name` whose `x` is not `self` or `cls`."""
    return [(n.lineno, ast.unparse(n)) for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
            and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))]


def violations(root: Path) -> list[str]:
    found = []
    for path in sources(root):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("neat/", "flows/")):
            found += [f"{rel}:{line}: uses the private member {expr}; give it a public interface"
                      for line, expr in private_members(path)]
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
