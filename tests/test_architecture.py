"""The layering the project promises: a pure engine, a transport that knows nothing of NUMA."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nri_plugin"

ENGINE = [
    "hint",
    "pod",
    "state",
    "topology",
    "quantity",
    "config",
    "checkpoint",
    "topologymanager",
    "manager",
    "simulate",
    "policy.static",
    "policy.none",
    "policy.machine",
    "policy.base",
]
FORBIDDEN_IN_ENGINE = ("asyncio", "grpc", "nri_plugin.nri", "socket", "threading", "subprocess")


def module_path(name: str) -> Path:
    p = PACKAGE.joinpath(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def imports_of(name: str) -> set[str]:
    tree = ast.parse(module_path(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def closure(start: str) -> set[str]:
    """Every module imported, directly or through our own modules, from ``start``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        for imp in imports_of(name):
            if imp in seen:
                continue
            seen.add(imp)
            if imp.startswith("nri_plugin.") and module_path(imp[len("nri_plugin.") :]).exists():
                todo.append(imp[len("nri_plugin.") :])
    return seen


@pytest.mark.parametrize("module", ENGINE)
def test_engine_does_no_io_and_knows_no_transport(module: str) -> None:
    bad = sorted(
        imp
        for imp in closure(module)
        if any(imp == f or imp.startswith(f + ".") for f in FORBIDDEN_IN_ENGINE)
    )
    assert bad == [], f"nri_plugin.{module} reaches {bad}"


@pytest.mark.parametrize("module", ["nri.mux", "nri.ttrpc", "nri.connection", "nri.stub"])
def test_transport_imports_nothing_of_the_policy(module: str) -> None:
    ours = {
        imp
        for imp in closure(module)
        if imp.startswith("nri_plugin.") and not imp.startswith("nri_plugin.nri")
    }
    assert ours <= {
        "nri_plugin.errors",
        "nri_plugin.errors.ConfigError",
        "nri_plugin.errors.InputError",
    }, ours
