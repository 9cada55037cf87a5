"""``nri-memory-manager simulate``: run a scenario through the policy engine.

The scenario/report contract is ``spec/simulate.md``. Parsing turns every
malformed value into a :class:`ScenarioError` naming its key path; running
is the same :class:`MemoryManager` the live plugin uses.
"""

from __future__ import annotations

from nri_plugin.engine.bitmask import nodes_of
from nri_plugin.engine.hint import ProviderHints
from nri_plugin.engine.manager import AdmissionResult, ContainerDecision, MemoryManager
from nri_plugin.inputs.scenario import AdmitStep, Scenario, StartStep, Step, load_scenario_text
from nri_plugin.persist.format import to_checkpoint

# -- loading -------------------------------------------------------------------


# -- running -------------------------------------------------------------------


def apply_step(manager: MemoryManager, step: Step) -> AdmissionResult | list[str] | bool | None:
    """Run one step on ``manager`` as ``simulate`` does. Returns the admission's result, the
    init containers a start released (None: the pod is not admitted), or whether a removal
    found what it names."""
    if isinstance(step, AdmitStep):
        return manager.admit(step.pod)
    if isinstance(step, StartStep):
        return manager.start(step.pod_uid)
    if step.container is None:
        return manager.remove_pod(step.pod_uid)
    return manager.remove_container(step.pod_uid, step.container)


def run_scenario(scenario: Scenario) -> dict[str, object]:
    """Apply every step; return the report (spec/simulate.md)."""
    manager = MemoryManager(scenario.topology, scenario.config, scenario.initial_state)
    report_steps: list[dict[str, object]] = []
    for step in scenario.steps:
        if isinstance(step, AdmitStep):
            report_steps.append(_admit_report(manager.admit(step.pod)))
        elif isinstance(step, StartStep):
            released = manager.start(step.pod_uid)
            report_steps.append(
                {
                    "action": "start",
                    "pod": step.pod_uid,
                    "started": released is not None,
                    "released": released or [],
                }
            )
        else:
            entry: dict[str, object] = {"action": "remove", "pod": step.pod_uid}
            if step.container is None:
                removed = manager.remove_pod(step.pod_uid)
            else:
                entry["container"] = step.container
                removed = manager.remove_container(step.pod_uid, step.container)
            entry["removed"] = removed
            report_steps.append(entry)
    return {"steps": report_steps, "state": to_checkpoint(manager.state)}


def _admit_report(result: AdmissionResult) -> dict[str, object]:
    out: dict[str, object] = {
        "action": "admit",
        "pod": result.pod_uid,
        "admitted": result.admitted,
        "qosClass": result.qos_class,
    }
    if not result.admitted:
        out["reason"] = result.reason
        out["message"] = result.message
    out["containers"] = [_container_report(c) for c in result.containers]
    return out


def hints_to_json(hints: ProviderHints) -> dict[str, list[dict[str, object]]]:
    if not hints:
        return {}
    out: dict[str, list[dict[str, object]]] = {}
    for resource in sorted(hints, key=str.encode):
        lst = hints[resource] or []
        ordered = sorted(
            lst,
            key=lambda h: (-1, []) if h.mask is None else (h.mask.bit_count(), nodes_of(h.mask)),
        )
        out[resource] = [h.to_json() for h in ordered]
    return out


def _container_report(c: ContainerDecision) -> dict[str, object]:
    return {
        "name": c.name,
        "init": c.init,
        "hints": hints_to_json(c.hints),
        "affinity": c.affinity.to_json(),
        "cpusetMems": c.cpuset_mems,
        "allocations": [
            {"type": b.type, "size": b.size, "numaAffinity": list(b.numa_affinity)}
            for b in c.allocations
        ],
    }


def simulate_text(text: str, *, source: str = "scenario") -> dict[str, object]:
    return run_scenario(load_scenario_text(text, source=source))
