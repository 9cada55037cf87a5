"""``nri-memory-manager simulate``: run a scenario through the policy engine.

The scenario/report contract is docs/simulate.md. The scenario is read by
:mod:`nri_plugin.inputs.scenario`; running it is the same :class:`MemoryManager`
the live plugin uses, one step at a time (:func:`apply_step`, which the fault
injection's oracle also runs).
"""

from __future__ import annotations

from collections.abc import Iterable

from nri_plugin.engine.bitmask import nodes_of
from nri_plugin.engine.hint import ProviderHints
from nri_plugin.engine.manager import (
    AdmissionResult,
    ContainerDecision,
    MemoryManager,
    ResizeResult,
)
from nri_plugin.engine.pod import ContainerSpec
from nri_plugin.engine.state import Block
from nri_plugin.errors import InputError, ScenarioError
from nri_plugin.inputs.scenario import (
    AdmitStep,
    RemoveStep,
    ResizeStep,
    Scenario,
    StartStep,
    Step,
    load_scenario_text,
    with_source,
)
from nri_plugin.persist.format import to_checkpoint

# What one step returns: an admission, the init containers a start released (None:
# the pod is not admitted), a resize, or whether a removal found what it names.
Outcome = AdmissionResult | list[str] | None | ResizeResult | bool


def apply_step(manager: MemoryManager, step: Step) -> Outcome:
    """Run one step on ``manager`` as ``simulate`` does."""
    if isinstance(step, AdmitStep):
        _check_readmission(manager, step)
        return manager.admit(step.pod)
    if isinstance(step, StartStep):
        return manager.start(step.pod_uid)
    if isinstance(step, ResizeStep):
        return manager.resize(step.pod_uid, step.container, step.resources)
    if step.container is None:
        return manager.remove_pod(step.pod_uid)
    return manager.remove_container(step.pod_uid, step.container)


def _check_readmission(manager: MemoryManager, step: AdmitStep) -> None:
    """A second admit of an admitted pod (a kubelet restart) must name the same containers."""
    earlier = manager.pods.get(step.pod.uid)
    if earlier is None:
        return
    for what, before, now in (
        ("initContainers", earlier.init_containers, step.pod.init_containers),
        ("containers", earlier.containers, step.pod.containers),
    ):
        if [c.name for c in before] != [c.name for c in now]:
            raise ScenarioError(
                f"admit: pod {step.pod.uid} is admitted already with {what}"
                f" {_names(before)}; a re-admission must list the same, got {_names(now)}"
            )


def _names(containers: Iterable[ContainerSpec]) -> str:
    return "[" + ", ".join(c.name for c in containers) + "]"


def run_scenario(scenario: Scenario) -> dict[str, object]:
    """Apply every step; return the report (docs/simulate.md)."""
    manager = MemoryManager(scenario.topology, scenario.config, scenario.initial_state)
    report_steps: list[dict[str, object]] = []
    for i, step in enumerate(scenario.steps):
        try:
            outcome = apply_step(manager, step)
        except ScenarioError as exc:
            raise ScenarioError(f"steps[{i}].{exc}") from None
        report_steps.append(step_report(step, outcome))
    return {"steps": report_steps, "state": to_checkpoint(manager.state)}


def step_report(step: Step, outcome: Outcome) -> dict[str, object]:
    """The report of one step (docs/simulate.md, "Report")."""
    if isinstance(step, AdmitStep):
        assert isinstance(outcome, AdmissionResult)
        return _admit_report(outcome)
    if isinstance(step, StartStep):
        assert outcome is None or isinstance(outcome, list)
        return {
            "action": "start",
            "pod": step.pod_uid,
            "started": outcome is not None,
            "released": outcome or [],
        }
    if isinstance(step, ResizeStep):
        assert isinstance(outcome, ResizeResult)
        return _resize_report(outcome)
    assert isinstance(step, RemoveStep) and isinstance(outcome, bool)
    entry: dict[str, object] = {"action": "remove", "pod": step.pod_uid}
    if step.container is not None:
        entry["container"] = step.container
    entry["removed"] = outcome
    return entry


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
        # what a "what if" user needs most: which container, every provider's hints and
        # the merged affinity the policy refused (None: the pod as a whole, pod scope)
        out["refused"] = {
            "container": result.failed_container,
            "hints": {
                provider: None if hints is None else hints_to_json(hints)
                for provider, hints in result.failed_hints.items()
            },
            "affinity": (
                None if result.failed_affinity is None else result.failed_affinity.to_json()
            ),
        }
    if result.pod_allocations:
        # the pod-level reservation (KEP-5526, pod scope), its containers' parts inside it
        out["podAllocations"] = _blocks_json(result.pod_allocations)
    out["containers"] = [_container_report(c) for c in result.containers]
    return out


def _resize_report(result: ResizeResult) -> dict[str, object]:
    out: dict[str, object] = {
        "action": "resize",
        "pod": result.pod_uid,
        "container": result.container,
        "resized": result.resized,
    }
    if result.reason is not None:
        out["reason"] = result.reason
    out["allocations"] = _blocks_json(result.allocations)
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
    out: dict[str, object] = {
        "name": c.name,
        "init": c.init,
        "hints": hints_to_json(c.hints),
        "affinity": c.affinity.to_json(),
        "cpusetMems": c.cpuset_mems,
        "allocations": _blocks_json(c.allocations),
    }
    if c.pool:
        out["sharedPool"] = True  # runs in its pod's shared pool (podAllocations)
    return out


def _blocks_json(blocks: Iterable[Block]) -> list[dict[str, object]]:
    return [{"type": b.type, "size": b.size, "numaAffinity": list(b.numa_affinity)} for b in blocks]


def simulate_text(text: str, *, source: str = "scenario") -> dict[str, object]:
    """The report of the scenario ``text``; errors name ``source`` (the file) first."""
    scenario = load_scenario_text(text, source=source)
    try:
        return run_scenario(scenario)
    except InputError as exc:
        raise with_source(exc, source) from None
