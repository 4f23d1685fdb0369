"""dvc.yaml, generated: the stage manifest (neat/stages.py) plus each stage's code, computed from the code itself.

A stage's code dependencies are the static import closure of its entry point's module (neat.stages)
plus neat/config.py (which builds the params object every stage receives): every `neat.*` module
named by an `import`/`from … import` statement anywhere in a module — at the top or lazily inside a
function — followed transitively, with the packages' `__init__.py` files. The dispatch layer
(neat/cli.py, neat/stages.py) is left out on purpose: it picks the stage to run, not what it computes,
so editing a help text does not retrain the model.

`neat dvc-yaml` (alias `neat dvc-deps`) writes the whole of dvc.yaml from the manifest: each stage's cmd,
its code deps (this closure) then its data deps, params, outs, metrics and plots. `neat dvc-yaml --check`
(and the test suite) fails when dvc.yaml differs from what it would write, so neither a new import nor a
hand edit can leave a stage's cached outputs looking up to date or the chain written twice.

The data source dep, `${paths.data}`, of the stage that reads it depends on the params.yaml beside
dvc.yaml: a local file is a dep (DVC hashes it); a `hub:<dataset id>` has no file, so the stage depends
on it through its params alone (`paths.data`, `data.hub_revision`).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from neat.stages import COMPARE_DVC_YAML, DVC_YAML
from neat.stages import DATA_SOURCE as DATA_DEP

PACKAGE = "neat"
ROOT = Path(__file__).resolve().parents[1]
ALWAYS = ("neat.config",)  # every stage's params object is built and validated there


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

HEADER = """\
# GENERATED from the stage manifest (neat/stages.py) by `neat dvc-yaml`: do not edit by hand, edit the
# manifest and rerun it (a test checks this file equals what it writes). Each cmd is a `neat` stage entry
# point; the Prefect flows (flows/) run the same entry points in this order. Paths come from params.yaml.
# The neat/*.py deps of each stage are its code's import closure (neat/codedeps.py). prepare's data dep,
# ${paths.data}, is written for a local file and left out for a `hub:<dataset id>` (tracked through the
# params paths.data and data.hub_revision instead): rerun `neat dvc-yaml` after switching between the two.
"""

COMPARE_HEADER = """\
# GENERATED from the stage manifest (neat/stages.py) by `neat dvc-yaml`, like ../dvc.yaml: do not edit by hand.
# The comparison of variants (`neat compare` runs the same entry points): one compare_variant instance per key
# of `compare.variants` in params.yaml (each trains and evaluates that variant once per seed), then the
# table. Kept out of ../dvc.yaml so that `dvc repro` and `make all` do not train every variant; run it with
#   dvc repro compare/dvc.yaml       (or `dvc exp run compare/dvc.yaml`; `dvc stage list compare/dvc.yaml`)
# Paths and params are the project's (params.yaml one folder up): each stage runs there (wdir).
"""


def data_source_is_hub(params_file: Path) -> bool:
    """Whether `paths.data` in `params_file` (absent: the schema's default, a local file) is a hub dataset."""
    if not params_file.is_file():
        return False
    from neat.params_yaml import parse_yaml

    params = parse_yaml(params_file.read_text(encoding="utf-8"), str(params_file)) or {}
    data = (params.get("paths") or {}).get("data") if isinstance(params, dict) else None
    return isinstance(data, str) and data.startswith("hub:")


def stage_deps(stage, hub: bool = False, root: Path = ROOT) -> list[str]:
    """A stage's deps as dvc.yaml lists them: its code closure, the data source (a local file), its data deps."""
    deps = stage_code_deps(stage.name, root)
    if stage.reads_data_source and not hub:
        deps.append(DATA_DEP)
    return deps + list(stage.deps)


def _up(dvc_file: str) -> str:
    """From the folder of `dvc_file` back to the project root: `..` per level ('' at the root)."""
    return "/".join([".."] * (len(Path(dvc_file).parts) - 1))


def dvc_stage(stage, hub: bool = False, root: Path = ROOT) -> dict:
    """One stage of its dvc.yaml, as `yaml.safe_load` reads it (a `foreach` stage: {foreach:, do: the stage})."""
    from neat.stages import output_options, output_path

    spec: dict = {"wdir": _up(stage.dvc_file)} if _up(stage.dvc_file) else {}
    spec |= {"cmd": stage.cmd, "deps": stage_deps(stage, hub, root)}
    if stage.params:
        spec["params"] = list(stage.params)
    for kind in ("outs", "metrics", "plots"):
        entries = getattr(stage, kind)
        if entries:
            spec[kind] = [output_path(e) if not output_options(e) else {output_path(e): dict(output_options(e))}
                          for e in entries]
    if stage.foreach:
        return {"foreach": "${" + stage.foreach[0] + "}", "do": spec}
    return spec


def dvc_yaml_tree(hub: bool = False, root: Path = ROOT, dvc_file: str = DVC_YAML) -> dict:
    """`dvc_file` (DVC_YAML or COMPARE_DVC_YAML) as a tree: its stages of the manifest, with the pipeline's
    top-level plots, or the comparison's `vars` (the project's params.yaml, for `${...}` in a subfolder)."""
    from neat.stages import TOP_LEVEL_PLOTS, dvc_file_stages

    stages = {s.dvc_name: dvc_stage(s, hub, root) for s in dvc_file_stages(dvc_file)}
    if dvc_file == DVC_YAML:
        return {"stages": stages, "plots": TOP_LEVEL_PLOTS}
    return {"vars": [f"{_up(dvc_file)}/params.yaml"], "stages": stages}


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    plain = (isinstance(value, str) and ": " not in text and " #" not in text and not text.startswith(("[", "{"))
             and yaml.safe_load(text) == text)
    return text if plain or not isinstance(value, str) else json.dumps(text)


def _block(node, indent: int, notes: dict) -> list[str]:
    """Block-style YAML lines for a mapping or a list; lists of scalars under a mapping key stay in flow style
    only where they are the values of a plot's `y` (one line per file, as DVC's docs write them)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict):
                lines += [f"{pad}{_scalar(key)}:", *_block(value, indent + 2, notes)]
            elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value) and key not in (
                    "deps", "params", "outs", "metrics", "plots"):
                lines.append(f"{pad}{_scalar(key)}: [{', '.join(_scalar(v) for v in value)}]")
            elif isinstance(value, list):
                lines += [f"{pad}{_scalar(key)}:", *_block(value, indent + 2, notes)]
            else:
                lines.append(f"{pad}{_scalar(key)}: {_scalar(value)}")
        return lines
    for item in node:
        if isinstance(item, dict):
            ((key, value),) = item.items()
            note = f"  # {notes[key]}" if key in notes else ""
            lines += [f"{pad}- {_scalar(key)}:{note}", *_block(value, indent + 4, notes)]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def render_dvc_yaml(hub: bool = False, root: Path = ROOT, dvc_file: str = DVC_YAML) -> str:
    """The text of `dvc_file`, generated from the manifest (`hub`: the data source is a hub dataset)."""
    from neat.stages import dvc_file_stages

    tree = dvc_yaml_tree(hub, root, dvc_file)
    notes = {k: v for s in dvc_file_stages(dvc_file) for k, v in s.notes.items()}
    lines = [(HEADER if dvc_file == DVC_YAML else COMPARE_HEADER).rstrip("\n")]
    if "vars" in tree:
        lines += ["vars:", *_block(tree["vars"], 2, notes)]
    lines += ["stages:"]
    for i, (name, spec) in enumerate(tree["stages"].items()):
        lines += ([""] if i else []) + [f"  {name}:", *_block(spec, 4, notes)]
    if "plots" in tree:
        lines += ["", "# the training log, once, against the optimiser step (losses and the mean reward of each "
                      "candidate origin)", "plots:", *_block(tree["plots"], 2, notes)]
    return "\n".join(lines) + "\n"


def _differences(have: dict, wanted: dict) -> dict[str, dict]:
    """{stage: {"add": [...], "remove": [...]}} for deps that differ, plus "fields" naming any other key
    that differs; a stage only one side has is listed with "fields": ["<the stage>"]."""
    changes: dict[str, dict] = {}
    have_stages, wanted_stages = (have or {}).get("stages") or {}, wanted["stages"]
    for name in dict.fromkeys([*wanted_stages, *have_stages]):
        a, b = have_stages.get(name), wanted_stages.get(name)
        if a is None or b is None:
            changes[name] = {"add": [], "remove": [], "fields": ["<the stage>"]}
            continue
        deps_a, deps_b = a.get("deps") or [], b.get("deps") or []
        add, remove = sorted(set(deps_b) - set(deps_a)), sorted(set(deps_a) - set(deps_b))
        fields = [k for k in dict.fromkeys([*b, *a]) if k != "deps" and a.get(k) != b.get(k)]
        if add or remove or fields:
            changes[name] = {"add": add, "remove": remove} | ({"fields": fields} if fields else {})
    if (have or {}).get("plots") != wanted.get("plots"):
        changes["plots"] = {"add": [], "remove": [], "fields": ["plots"]}
    return changes


def sync_dvc_yaml(path: Path = ROOT / "dvc.yaml", root: Path = ROOT, write: bool = True,
                  dvc_file: str = DVC_YAML) -> dict[str, dict]:
    """Make `path` the `dvc_file` the manifest generates (for the project's params.yaml). Returns
    {stage: {"add": [...], "remove": [...]}} for the stages whose deps differed (with "fields" naming
    any other key that differed), and {"dvc.yaml": {"layout": ...}} when only its text did (comments,
    order): empty when the file was already the generated one. Writes it unless `write=False`."""
    project = path.parents[len(Path(dvc_file).parts) - 1]
    wanted_text = render_dvc_yaml(data_source_is_hub(project / "params.yaml"), root, dvc_file)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    changes = _differences(yaml.safe_load(text) if text else {}, yaml.safe_load(wanted_text))
    if (have := yaml.safe_load(text) if text else {}) and have.get("vars") != yaml.safe_load(wanted_text).get("vars"):
        changes["vars"] = {"add": [], "remove": [], "fields": ["vars"]}
    if not changes and text != wanted_text:
        changes[dvc_file] = {"layout": "the text differs from the generated file (comments, order or format)"}
    if write and text != wanted_text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted_text, encoding="utf-8")
    return changes


def sync_all(path: Path = ROOT / DVC_YAML, root: Path = ROOT, write: bool = True) -> dict[str, dict]:
    """`sync_dvc_yaml` for both generated files: `path` (the pipeline's dvc.yaml) and compare/dvc.yaml beside
    it; the changes of the second keyed `compare/dvc.yaml:<stage>` (DVC's own address of its stages)."""
    changes = sync_dvc_yaml(path, root, write)
    compare = sync_dvc_yaml(path.parent / COMPARE_DVC_YAML, root, write, COMPARE_DVC_YAML)
    return changes | {(k if k == COMPARE_DVC_YAML else f"{COMPARE_DVC_YAML}:{k}"): v for k, v in compare.items()}
