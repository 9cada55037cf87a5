"""The layering the project promises (README, "Development").

- ``engine/`` is pure: no I/O, no asyncio, no transport, and it reaches none of the
  other layers (inputs, persistence, front ends, the daemon);
- ``nri/`` (the transport) knows nothing of NUMA, pods or the policy;
- ``inputs/`` and ``persist/`` never reach the front ends or the daemon.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nri_plugin"


def modules_in(package: str) -> list[str]:
    """Dotted names (below nri_plugin) of every module of ``package``, generated code aside."""
    root = PACKAGE / package
    names = []
    for path in sorted(root.rglob("*.py")):
        if "gen" in path.relative_to(PACKAGE).parts:
            continue
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return names


ENGINE = modules_in("engine")
TRANSPORT = modules_in("nri")
INPUTS_AND_PERSISTENCE = modules_in("inputs") + modules_in("persist")

# modules that do I/O or run things concurrently: the engine and the tracker import none
DOING_IO = (
    "asyncio",
    "grpc",
    "socket",
    "threading",
    "subprocess",
    "os",
    "pathlib",
    "shutil",
    "tempfile",
)
FORBIDDEN_IN_ENGINE = (
    *DOING_IO,
    "nri_plugin.nri",
    "nri_plugin.inputs",
    "nri_plugin.persist",
    "nri_plugin.frontends",
    "nri_plugin.tracker",
    "nri_plugin.daemon",
    "nri_plugin.metrics",
    "nri_plugin.cli",
)
FORBIDDEN_BELOW_FRONT_ENDS = (
    "nri_plugin.frontends",
    "nri_plugin.tracker",
    "nri_plugin.daemon",
    "nri_plugin.cli",
    "nri_plugin.metrics",
)


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


def reaches(module: str, forbidden: tuple[str, ...]) -> list[str]:
    def bad(imp: str) -> bool:
        return any(imp == f or imp.startswith(f + ".") for f in forbidden)

    return sorted(imp for imp in closure(module) if bad(imp))


def test_the_layers_are_found() -> None:
    assert "engine.policy.static" in ENGINE and "engine.manager" in ENGINE
    assert "nri.stub" in TRANSPORT
    assert "persist.format" in INPUTS_AND_PERSISTENCE


@pytest.mark.parametrize("module", ENGINE)
def test_engine_does_no_io_and_knows_no_other_layer(module: str) -> None:
    assert reaches(module, FORBIDDEN_IN_ENGINE) == [], f"nri_plugin.{module}"


@pytest.mark.parametrize("module", TRANSPORT)
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


@pytest.mark.parametrize("module", INPUTS_AND_PERSISTENCE)
def test_inputs_and_persistence_do_not_reach_the_front_ends(module: str) -> None:
    assert reaches(module, FORBIDDEN_BELOW_FRONT_ENDS) == [], f"nri_plugin.{module}"


TRACKER = modules_in("tracker")
FORBIDDEN_IN_TRACKER = (
    *DOING_IO,
    "nri_plugin.nri",
    "nri_plugin.inputs",
    "nri_plugin.persist",
    "nri_plugin.frontends",
    "nri_plugin.podresources",
    "nri_plugin.daemon",
    "nri_plugin.metrics",
    "nri_plugin.cli",
)
# The modules that turn what arrives over NRI (pod names, annotations, mounts, cgroup
# paths) into the tracker's facts and back: values only, no file-system module, no
# open() (docs/recovery.md, "Security").
NRI_TRANSLATION = ("frontends.nri", "frontends.nri_convert")
FILE_SYSTEM = ("os", "pathlib", "shutil", "tempfile", "io")


@pytest.mark.parametrize("module", TRACKER)
def test_tracker_does_no_io_and_reaches_no_front_end(module: str) -> None:
    assert reaches(module, FORBIDDEN_IN_TRACKER) == [], f"nri_plugin.{module}"


@pytest.mark.parametrize("module", NRI_TRANSLATION)
def test_nri_translation_opens_nothing(module: str) -> None:
    direct = imports_of(module)
    assert not [i for i in direct if i.split(".")[0] in FILE_SYSTEM], direct
    tree = ast.parse(module_path(module).read_text())
    calls = [
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    assert "open" not in calls
