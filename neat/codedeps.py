"""The code each DVC stage runs, computed from the code itself, and kept in dvc.yaml's `deps`.

A stage's code dependencies are the static import closure of its entry point's module (neat.stages)
plus neat/config.py (which builds the params object every stage receives): every `neat.*` module
named by an `import`/`from … import` statement anywhere in a module — at the top or lazily inside a
function — followed transitively, with the packages' `__init__.py` files. The dispatch layer
(neat/cli.py, neat/stages.py) is left out on purpose: it picks the stage to run, not what it computes,
so editing a help text does not retrain the model.

`neat dvc-deps` rewrites the `neat/…` lines of each stage's `deps` in dvc.yaml from this closure;
`neat dvc-deps --check` (and the test suite) fails when dvc.yaml lists less or more than the code
imports, so a new import can never leave a stage's cached outputs looking up to date.

It also writes the data source dep, `${paths.data}`, of the stage that reads it, from the params.yaml
beside dvc.yaml: a local file is a dep (DVC hashes it); a `hub:<dataset id>` has no file, so the stage
depends on it through its params alone (`paths.data`, `data.hub_revision`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

PACKAGE = "neat"
ROOT = Path(__file__).resolve().parents[1]
ALWAYS = ("neat.config",)  # every stage's params object is built and validated there
DATA_DEP = "${paths.data}"


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a `neat.*` module (a package's `__init__.py`), or None if there is none."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module an `import` statement in `path` may name, wherever the statement sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .io import y
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            # `from neat import registry` imports the submodule neat.registry
            found.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def import_closure(modules: list[str] | tuple[str, ...], root: Path = ROOT) -> list[str]:
    """Files (relative to `root`, sorted) of the `neat.*` modules `modules` can import, themselves included."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        path = module_file(name, root)
        if path is None:  # `from neat.io import atomic_path` also names neat.io.atomic_path: not a module
            continue
        seen[name] = path
        if name == PACKAGE + ".metrics":  # its metric scripts are loaded by path (evaluate.load), not imported
            todo.extend(f"{name}.{d.name}.{d.name}" for d in sorted(path.parent.iterdir())
                        if (d / f"{d.name}.py").is_file())
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__
        todo.extend(_imported_modules(path, name))
    return sorted(str(p.relative_to(root)) for p in seen.values())


def stage_code_deps(neat_name: str, root: Path = ROOT) -> list[str]:
    """The source files `neat <neat_name>` runs: its entry module's closure plus neat/config.py."""
    from neat.stages import STAGES

    module = STAGES[neat_name].target.split(":")[0]
    return import_closure([module, *ALWAYS], root)


# ---------------------------------------------------------------- dvc.yaml


_CODE_DEP = re.compile(r"^(?P<indent>\s+)- (?P<path>neat/\S+\.py)\s*$")


def _managed(dep: str) -> bool:
    """A dep line `neat dvc-deps` writes: a code file or the data source."""
    return dep == DATA_DEP or bool(_CODE_DEP.match(f"  - {dep}"))


def data_source_is_hub(params_file: Path) -> bool:
    """Whether `paths.data` in `params_file` (absent: the schema's default, a local file) is a hub dataset."""
    if not params_file.is_file():
        return False
    from neat.params_yaml import parse_yaml

    params = parse_yaml(params_file.read_text(encoding="utf-8"), str(params_file)) or {}
    data = (params.get("paths") or {}).get("data") if isinstance(params, dict) else None
    return isinstance(data, str) and data.startswith("hub:")


def sync_dvc_yaml(path: Path = ROOT / "dvc.yaml", root: Path = ROOT, write: bool = True) -> dict[str, dict]:
    """Make each stage's `neat/*.py` deps exactly its code closure. Returns {stage: {"add": [...], "remove": [...]}}
    for the stages that differed (empty: dvc.yaml was already complete); writes the file unless `write=False`.

    Only the `neat/…py` lines of a stage's `deps` are replaced (placed first, sorted), then the data
    source `${paths.data}` of the stage that reads it unless params.yaml (beside dvc.yaml) names a
    `hub:` dataset; other data deps, params, outs and comments stay as they are.
    """
    from neat.stages import STAGES

    text = path.read_text(encoding="utf-8")
    stages = yaml.safe_load(text)["stages"]
    hub = data_source_is_hub(path.parent / "params.yaml")
    wanted: dict[str, list[str]] = {}
    for name, spec in stages.items():
        words = spec["cmd"].split()
        wanted[name] = stage_code_deps(words[1], root)
        if STAGES[words[1]].reads_data_source and not hub:
            wanted[name].append(DATA_DEP)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    changes: dict[str, dict] = {}
    stage = None
    in_deps = False
    for line in lines:
        stripped = line.rstrip("\n")
        m_stage = re.match(r"^  (\w[\w-]*):\s*$", stripped)
        if m_stage and m_stage[1] in stages:
            stage, in_deps = m_stage[1], False
        elif stage and re.match(r"^    deps:\s*$", stripped):
            in_deps = True
            out.append(line)
            out.extend(f"      - {dep}\n" for dep in wanted[stage])
            have = [d for d in stages[stage].get("deps", []) if _managed(d)]
            add, remove = sorted(set(wanted[stage]) - set(have)), sorted(set(have) - set(wanted[stage]))
            if add or remove:
                changes[stage] = {"add": add, "remove": remove}
            continue
        elif in_deps and not stripped.startswith("      -"):
            in_deps = False
        if in_deps and stripped.startswith("      - ") and _managed(stripped[len("      - "):].strip()):
            continue  # replaced by the computed list above
        out.append(line)
    for name in stages:
        if "deps" not in stages[name]:
            raise ValueError(f"{path}: stage '{name}' has no deps section; add one (its data inputs) first")
    new_text = "".join(out)
    if write and new_text != text:
        path.write_text(new_text, encoding="utf-8")
    return changes
