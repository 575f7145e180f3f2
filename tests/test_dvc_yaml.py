"""dvc.yaml against the code: every stage depends on exactly the modules it runs (its import closure,
imports inside functions included), and declares the params its code reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from socmap.cli import STAGES

from conftest import ROOT

PACKAGE = ROOT / "src" / "socmap"
DVC_STAGE = {"simulate": "simulate", "sample": "sample", "split": "split", "train": "train",
             "baselines": "baselines", "evaluate": "evaluate", "bundle": "bundle", "map": "map"}


def imported_modules(path: Path) -> set[str]:
    """The socmap modules a module imports anywhere in its text (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("socmap"):
            if node.module == "socmap":
                found |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("socmap.")}
    return found


def closure(module: str) -> set[str]:
    """`module` and every socmap module it imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(PACKAGE / f"{name}.py") - seen)
    return seen


def stage_entry(name: str) -> dict:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entry = stages[name]
    return entry["do"] if "foreach" in entry else entry


@pytest.mark.parametrize("stage", sorted(DVC_STAGE))
def test_a_stage_depends_on_the_modules_it_runs(stage):
    module = STAGES[stage][0].split(".")[1]
    expected = {f"src/socmap/{name}.py" for name in closure(module)}
    declared = {dep for dep in stage_entry(DVC_STAGE[stage])["deps"] if dep.startswith("src/")}
    assert declared == expected, (f"missing {sorted(expected - declared)}", f"extra {sorted(declared - expected)}")


def test_the_closure_sees_imports_inside_functions(tmp_path):
    assert "predict" in imported_modules(PACKAGE / "evaluate.py")  # imported in main() only
    assert "socmap" not in closure("cli")
