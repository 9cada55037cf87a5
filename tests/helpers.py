"""Small builders shared by the policy and simulator tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import yaml

from nri_plugin.frontends.simulate import simulate_text

GI = 1 << 30
MI = 1 << 20


def node(
    id_: int, memory: str, cpus: str = "", hugepages: dict[str, str] | None = None
) -> dict[str, Any]:
    n: dict[str, Any] = {"id": id_, "cpus": cpus, "memory": memory}
    if hugepages:
        n["hugepages"] = hugepages
    return n


def container(
    name: str,
    memory: str,
    cpu: str = "1",
    hugepages: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    res = {"cpu": cpu, "memory": memory, **(hugepages or {})}
    return {"name": name, "resources": {"requests": dict(res), "limits": dict(res)}, **extra}


def admit(
    uid: str, *containers: dict[str, Any], init: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"pod": {"uid": uid}, "containers": list(containers)}
    if init:
        body["initContainers"] = init
    return {"admit": body}


def simulate(scenario: dict[str, Any]) -> dict[str, Any]:
    report = simulate_text(yaml.safe_dump(scenario))
    assert isinstance(report, dict)
    return report


def table(report: dict[str, Any], node_id: int, type_: str = "memory") -> dict[str, int]:
    state = report["state"]
    return state["machineState"][str(node_id)]["memoryMap"][type_]  # type: ignore[no-any-return]


def blocks(report: dict[str, Any], pod: str, name: str) -> list[dict[str, Any]]:
    return report["state"]["entries"][pod][name]  # type: ignore[no-any-return]


async def eventually(condition: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """Wait until ``condition()`` holds, polling; fail after ``within`` seconds.

    The deadline is generous: it is only reached when the condition never comes, so a
    loaded machine slows the test down instead of failing it.
    """
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within} s: {what or condition}")
        await asyncio.sleep(0.005)
