"""Import rules of the layout (issue 14), read from the code's own imports (AST, lazy imports included).

- evaluation does not import the trainer: it tokenises through `neat.encoding`, like training does;
- the benchmarks import from `neat.train` only the trainer they measure, never what `neat.encoding` provides;
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
# what the training benchmarks (throughput, multi-process, GPU check, training-target probe) measure
TRAINER_NAMES = {"Trainer", "step_loss", "batch_logps", "load_trainable_policy", "make_scheduler"}


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
            if rel.startswith("flows/") and (module in ("neat.evaluate", "neat.train")
                                             or (module == "neat" and name in ("evaluate", "train"))):
                found.append(f"{where}: a flow imports {module if module != 'neat' else 'neat.' + name}; flows only "
                             "orchestrate (call a stage or a library function such as neat.promotion)")
            if rel == "neat/evaluate.py" and (module == "neat.train" or (module, name) == ("neat", "train")):
                found.append(f"{where}: evaluation imports the trainer (tokenise with neat.encoding)")
            if name is None:
                continue
            if rel.startswith("benchmarks/") and module == "neat.train" and name not in TRAINER_NAMES:
                found.append(f"{where}: a benchmark imports {name} from neat.train; only the trainer it measures "
                             f"({', '.join(sorted(TRAINER_NAMES))}) may come from there")
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
    assert not {x for x in evaluate if x[0] == "neat.train" or x == ("neat", "train")}
    assert ("neat.encoding", "collate") in evaluate and ("neat.encoding", "fit_turns") in evaluate
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert {n for _, m, n in imports(path) if m == "neat.train"} <= TRAINER_NAMES, path.name


@pytest.mark.parametrize("text, wanted", [
    ("from neat.train import Trainer\n", None),
    ("def f():\n    from neat.train import collate\n", "a benchmark imports collate from neat.train"),
    ("from neat.models import _resolve\n", "private name neat.models._resolve"),
    ("from neat.train import helper\n", "helper is imported from neat.train, which does not define it"),
])
def test_each_rule_catches_its_violation(tmp_path, text, wanted):
    (tmp_path / "neat").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "neat/__init__.py").write_text("")
    (tmp_path / "neat/models.py").write_text("def _resolve():\n    pass\n")
    (tmp_path / "neat/encoding.py").write_text("def collate():\n    pass\n")
    (tmp_path / "neat/train.py").write_text("from neat.encoding import collate\nfrom os import path as helper\n\n"
                                            "class Trainer:\n    pass\n")
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


def test_evaluation_importing_the_trainer_is_caught(tmp_path):
    (tmp_path / "neat").mkdir()
    (tmp_path / "neat/train.py").write_text("def fit_turns():\n    pass\n")
    (tmp_path / "neat/evaluate.py").write_text("def f():\n    from neat.train import fit_turns\n")
    assert any("evaluation imports the trainer" in v for v in violations(tmp_path))
