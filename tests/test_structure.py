"""The package's shape: what importing it loads, and the one-way dependencies between its
parts (the engine never imports the explain renderer; telemetry never imports the planner)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "otel_dist"

ENGINE = ("planner", "worker", "exchange", "coordinator")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(part: str) -> list[Path]:
    target = PACKAGE / part
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


def test_importing_the_package_loads_nothing_else() -> None:
    code = (
        "import sys, otel_dist; print(sorted(m for m in sys.modules if m.startswith('otel_dist')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['otel_dist']"
    code = "import otel_dist; print(otel_dist.LocalCluster.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "LocalCluster"


@pytest.mark.parametrize("part", ENGINE)
def test_the_engine_never_imports_the_explain_renderer(part: str) -> None:
    for path in _modules(part):
        offending = {n for n in _imports(path) if n.startswith("otel_dist.explain")}
        assert not offending, f"{path.relative_to(PACKAGE)} imports {sorted(offending)}"


def test_telemetry_never_imports_the_planner() -> None:
    for path in _modules("telemetry"):
        offending = {n for n in _imports(path) if n.startswith("otel_dist.planner")}
        assert not offending, f"{path.relative_to(PACKAGE)} imports {sorted(offending)}"
