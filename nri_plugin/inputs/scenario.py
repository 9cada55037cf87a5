"""A simulate scenario read into values: topology, config, initial state and steps.

The contract is docs/simulate.md; every malformed value is a ScenarioError
naming its key path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nri_plugin.engine.bitmask import mask_of, parse_cpulist
from nri_plugin.engine.config import Config
from nri_plugin.engine.hint import DeviceHints, TopologyHint
from nri_plugin.engine.pod import (
    QOS_CLASSES,
    ContainerSpec,
    PodSpec,
    aggregate_container_resources,
    default_pod_level_resources,
    is_pod_level_resource,
    is_pod_level_resources_set,
)
from nri_plugin.engine.state import HUGEPAGES_PREFIX, MemoryState, is_memory_type
from nri_plugin.engine.topology import Topology
from nri_plugin.errors import InputError, ScenarioError, quote
from nri_plugin.inputs.config import parse_config, validate_for_machine
from nri_plugin.inputs.reader import check_keys, describe, parse_document
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.persist.format import from_checkpoint
from nri_plugin.quantity import parse_quantity

_SCENARIO_KEYS = ("topology", "config", "initialState", "steps")
_STEP_KINDS = ("admit", "start", "resize", "remove")
_ADMIT_KEYS = ("pod", "resources", "initContainers", "containers")
_POD_KEYS = ("uid", "name", "namespace", "qosClass")
_CONTAINER_KEYS = ("name", "resources", "cpuset", "deviceHints", "restartPolicy")
_RESOURCES_KEYS = ("requests", "limits")
_RESIZE_KEYS = ("pod", "container", "resources")
_HINT_KEYS = ("nodes", "preferred")
# the resource of deviceHints' list form: one provider's one list (docs/simulate.md)
DEVICES_RESOURCE = "devices"


@dataclass(frozen=True)
class AdmitStep:
    pod: PodSpec


@dataclass(frozen=True)
class StartStep:
    pod_uid: str


@dataclass(frozen=True)
class ResizeStep:
    pod_uid: str
    container: str
    # the container's new resources (only requests and limits are read)
    resources: ContainerSpec


@dataclass(frozen=True)
class RemoveStep:
    pod_uid: str
    container: str | None


Step = AdmitStep | StartStep | ResizeStep | RemoveStep


@dataclass(frozen=True)
class Scenario:
    topology: Topology
    config: Config
    initial_state: MemoryState | None
    steps: tuple[Step, ...]


def load_scenario_text(text: str, *, source: str = "scenario") -> Scenario:
    """Parse scenario text (YAML, or JSON, which is read with the faster JSON parser).

    Every error names ``source`` first, then the key path in the scenario.
    """
    data = parse_document(text, source, ScenarioError)
    try:
        return parse_scenario(data)
    except InputError as exc:
        raise with_source(exc, source) from None


def with_source(exc: InputError, source: str) -> InputError:
    """``exc`` (of the same class) with the file name in front of its message."""
    return type(exc)(f"{source}: {exc}")


def parse_scenario(data: object) -> Scenario:
    if not isinstance(data, Mapping):
        raise ScenarioError(
            f"scenario: expected a mapping with keys {', '.join(_SCENARIO_KEYS)},"
            f" got {describe(data)}"
        )
    _check_keys(data, _SCENARIO_KEYS, "scenario")
    if "topology" not in data:
        raise ScenarioError('scenario: missing key "topology"')
    topology = topology_from_mapping(data["topology"], source="topology")
    config = parse_config(data.get("config") or {}, source="config")
    validate_for_machine(config, topology, source="config")
    initial: MemoryState | None = None
    if data.get("initialState"):
        initial = from_checkpoint(data["initialState"], source="initialState")
    raw_steps = data.get("steps") or []
    if not isinstance(raw_steps, list):
        raise ScenarioError(f"steps: expected a list of steps, got {describe(raw_steps)}")
    steps = tuple(parse_step(s, topology, f"steps[{i}]") for i, s in enumerate(raw_steps))
    return Scenario(topology, config, initial, steps)


def _check_keys(data: Mapping[Any, Any], known: Sequence[str], where: str) -> None:
    check_keys(data, known, where, ScenarioError)


def _mapping(value: object, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{where}: expected a mapping, got {describe(value)}")
    return value


def _string(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ScenarioError(f"{where}: expected a non-empty string, got {describe(value)}")
    return str(value)


def parse_step(raw: object, topology: Topology, where: str = "step") -> Step:
    """One step of a scenario: ``{"admit"|"start"|"resize"|"remove": ...}``."""
    step = _mapping(raw, where)
    if len(step) != 1:
        raise ScenarioError(
            f"{where}: a step has exactly one of the keys {', '.join(_STEP_KINDS)};"
            f" got {', '.join(sorted(map(str, step))) or 'none'}"
        )
    kind, body = next(iter(step.items()))
    if kind == "admit":
        return AdmitStep(_parse_pod(body, f"{where}.admit", topology))
    if kind == "start":
        b = _mapping(body, f"{where}.start")
        _check_keys(b, ("pod",), f"{where}.start")
        return StartStep(_string(b.get("pod"), f"{where}.start.pod"))
    if kind == "resize":
        b = _mapping(body, f"{where}.resize")
        _check_keys(b, _RESIZE_KEYS, f"{where}.resize")
        container = _string(b.get("container"), f"{where}.resize.container")
        requests, limits = _parse_resources(b.get("resources"), f"{where}.resize.resources")
        _check_container_resources(requests, limits, f"{where}.resize.resources")
        return ResizeStep(
            _string(b.get("pod"), f"{where}.resize.pod"),
            container,
            ContainerSpec(container, requests, limits),
        )
    if kind == "remove":
        b = _mapping(body, f"{where}.remove")
        _check_keys(b, ("pod", "container"), f"{where}.remove")
        named = b.get("container")
        return RemoveStep(
            _string(b.get("pod"), f"{where}.remove.pod"),
            None if named is None else _string(named, f"{where}.remove.container"),
        )
    raise ScenarioError(
        f"{where}: unknown step {quote(str(kind))} (expected one of: {', '.join(_STEP_KINDS)})"
    )


def _parse_pod(raw: object, where: str, topology: Topology) -> PodSpec:
    body = _mapping(raw, where)
    _check_keys(body, _ADMIT_KEYS, where)
    meta = _mapping(body.get("pod"), f"{where}.pod")
    _check_keys(meta, _POD_KEYS, f"{where}.pod")
    uid = _string(meta.get("uid"), f"{where}.pod.uid")
    qos = meta.get("qosClass")
    if qos is not None and qos not in QOS_CLASSES:
        raise ScenarioError(
            f"{where}.pod.qosClass: {describe(qos)} is not one of {', '.join(QOS_CLASSES)}"
        )
    init = _parse_containers(body.get("initContainers"), f"{where}.initContainers", True, topology)
    apps = _parse_containers(body.get("containers"), f"{where}.containers", False, topology)
    if not apps:
        raise ScenarioError(f"{where}.containers: a pod needs at least one container")
    seen: set[str] = set()
    for c in init + apps:
        if c.name in seen:
            raise ScenarioError(f"{where}: container name {quote(c.name)} is used twice")
        seen.add(c.name)
    pod_requests: dict[str, Fraction] = {}
    pod_limits: dict[str, Fraction] = {}
    if body.get("resources") is not None:
        pod_requests, pod_limits = _parse_pod_resources(
            body["resources"], f"{where}.resources", init, apps
        )
    return PodSpec(
        uid=uid,
        name=str(meta.get("name") or uid),
        namespace=str(meta.get("namespace") or "default"),
        init_containers=init,
        containers=apps,
        qos_class=qos,
        pod_level_resources=is_pod_level_resources_set(pod_requests, pod_limits),
        pod_requests=pod_requests,
        pod_limits=pod_limits,
    )


def _parse_pod_resources(
    raw: object, where: str, init: tuple[ContainerSpec, ...], apps: tuple[ContainerSpec, ...]
) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """pod.spec.resources: validated and defaulted as the API server does (KEP-2837)."""
    requests, limits = _parse_resources(raw, where)
    for kind, values in (("requests", requests), ("limits", limits)):
        for name in values:
            if not is_pod_level_resource(name):
                raise ScenarioError(
                    f"{where}.{kind}.{name}: not supported at pod level (only cpu, memory and"
                    " hugepages-<size>; the API server refuses such a pod)"
                )
    _check_container_resources(requests, limits, where)
    requests, limits = default_pod_level_resources(init, apps, requests, limits)
    _check_requests_within_limits(requests, limits, where)
    aggregate = aggregate_container_resources(init, apps)
    for name, value in sorted(requests.items()):
        if aggregate.get(name, Fraction(0)) > value:
            raise ScenarioError(
                f"{where}.requests.{name}: {_fmt(value)} is below the containers' aggregate"
                f" request {_fmt(aggregate[name])} (the API server refuses such a pod)"
            )
    for c in init + apps:
        for name, value in sorted(c.limits.items()):
            if name in limits and value > limits[name]:
                raise ScenarioError(
                    f"{where}.limits.{name}: {_fmt(limits[name])} is below container"
                    f" {c.name}'s limit {_fmt(value)} (the API server refuses such a pod)"
                )
    return requests, limits


def _parse_containers(
    raw: object, where: str, init: bool, topology: Topology
) -> tuple[ContainerSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list of containers, got {describe(raw)}")
    return tuple(_parse_container(c, f"{where}[{i}]", init, topology) for i, c in enumerate(raw))


def _parse_container(raw: object, where: str, init: bool, topology: Topology) -> ContainerSpec:
    body = _mapping(raw, where)
    _check_keys(body, _CONTAINER_KEYS, where)
    name = _string(body.get("name"), f"{where}.name")
    restart = body.get("restartPolicy")
    if restart is not None and (not init or restart != "Always"):
        if not init:
            raise ScenarioError(f"{where}.restartPolicy: only init containers take restartPolicy")
        raise ScenarioError(
            f"{where}.restartPolicy: {describe(restart)} is not supported (only Always)"
        )
    requests, limits = _parse_resources(body.get("resources"), f"{where}.resources")
    _check_container_resources(requests, limits, f"{where}.resources")
    cpuset = None
    if body.get("cpuset") is not None:
        text = body["cpuset"]
        if not isinstance(text, str | int) or isinstance(text, bool):
            raise ScenarioError(f"{where}.cpuset: expected a cpulist string, got {describe(text)}")
        cpuset = parse_cpulist(str(text), what=f"{where}.cpuset")
        known = frozenset().union(*(n.cpus for n in topology.nodes))
        unknown = cpuset - known
        if unknown:
            raise ScenarioError(
                f"{where}.cpuset: CPU {min(unknown)} is not on any NUMA node of the topology"
            )
    device_hints = None
    if "deviceHints" in body:
        device_hints = _parse_device_hints(body["deviceHints"], f"{where}.deviceHints", topology)
    return ContainerSpec(
        name=name,
        requests=requests,
        limits=limits,
        init=init,
        restartable=restart == "Always",
        cpuset=cpuset,
        device_hints=device_hints,
    )


def _parse_resources(raw: object, where: str) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """``{requests: {...}, limits: {...}}`` (both optional) as exact quantities."""
    resources = _mapping(raw or {}, where)
    _check_keys(resources, _RESOURCES_KEYS, where)
    return (
        _parse_resource_list(resources.get("requests"), f"{where}.requests"),
        _parse_resource_list(resources.get("limits"), f"{where}.limits"),
    )


def _check_requests_within_limits(
    requests: Mapping[str, Fraction], limits: Mapping[str, Fraction], where: str
) -> None:
    for name, request in requests.items():
        limit = limits.get(name)
        if limit is not None and request > limit:
            raise ScenarioError(
                f"{where}.requests.{name}: {_fmt(request)} is above its limit {_fmt(limit)}"
                " (the API server refuses such a pod)"
            )


def _check_container_resources(
    requests: Mapping[str, Fraction], limits: Mapping[str, Fraction], where: str
) -> None:
    """The API server's validation of a container's resources (ValidateResourceRequirements)."""
    _check_requests_within_limits(requests, limits, where)
    effective = {**limits, **requests}  # defaulting: a limit without a request is the request
    hugepages = sorted(n for n in set(requests) | set(limits) if n.startswith(HUGEPAGES_PREFIX))
    for name in hugepages:
        if name not in limits:
            raise ScenarioError(
                f"{where}.requests.{name}: hugepages need a limit equal to the request"
                " (the API server refuses such a pod)"
            )
        if effective[name] != limits[name]:
            raise ScenarioError(
                f"{where}.requests.{name}: {_fmt(effective[name])} differs from its limit"
                f" {_fmt(limits[name])} (hugepages requests must equal limits)"
            )
    if hugepages and not any(effective.get(n) for n in ("cpu", "memory")):
        raise ScenarioError(
            f"{where}: {hugepages[0]} without a cpu or memory request"
            " (the API server refuses such a pod)"
        )


def _fmt(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else str(float(q))


def _parse_resource_list(raw: object, where: str) -> dict[str, Fraction]:
    if raw is None:
        return {}
    body = _mapping(raw, where)
    out: dict[str, Fraction] = {}
    for key, value in body.items():
        name = str(key)
        what = f"{where}.{name}"
        q = parse_quantity(value, what=what)
        if q < 0:
            raise ScenarioError(f"{what}: {quote(str(value))} is negative")
        if is_memory_type(name):
            if q.denominator != 1:
                raise ScenarioError(f"{what}: {quote(str(value))} is not a whole number of bytes")
            if q >= 1 << 63:
                raise ScenarioError(f"{what}: {quote(str(value))} cannot be represented as int64")
        out[name] = q
    return out


def _parse_device_hints(raw: object, where: str, topology: Topology) -> DeviceHints:
    """``[hints...]`` (one resource, ``devices``) or ``{resource: [hints...] | null}``."""
    if isinstance(raw, list):
        return {DEVICES_RESOURCE: _parse_hints(raw, where, topology)}
    if not isinstance(raw, Mapping):
        raise ScenarioError(
            f"{where}: expected a list of hints or a mapping of resource name to a list of"
            f" hints, got {describe(raw)}"
        )
    out: dict[str, tuple[TopologyHint, ...] | None] = {}
    for resource, hints in raw.items():
        if not isinstance(resource, str) or not resource:
            raise ScenarioError(
                f"{where}: expected resource names (strings), got {describe(resource)}"
            )
        out[resource] = (
            None if hints is None else _parse_hints(hints, f"{where}.{resource}", topology)
        )
    return out


def _parse_hints(raw: object, where: str, topology: Topology) -> tuple[TopologyHint, ...]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list of hints, got {describe(raw)}")
    ids = set(topology.node_ids)
    hints = []
    for i, h in enumerate(raw):
        w = f"{where}[{i}]"
        body = _mapping(h, w)
        _check_keys(body, _HINT_KEYS, w)
        nodes = body.get("nodes")
        preferred = body.get("preferred", False)
        if not isinstance(preferred, bool):
            raise ScenarioError(f"{w}.preferred: expected true or false, got {describe(preferred)}")
        if nodes is None:
            hints.append(TopologyHint(None, preferred))
            continue
        if not isinstance(nodes, list) or not nodes:
            raise ScenarioError(f"{w}.nodes: expected a non-empty list of NUMA node ids or null")
        for n in nodes:
            if isinstance(n, bool) or not isinstance(n, int) or n not in ids:
                raise ScenarioError(
                    f"{w}.nodes: {describe(n)} is not a NUMA node of the topology "
                    f"(nodes: {','.join(map(str, sorted(ids)))})"
                )
        hints.append(TopologyHint(mask_of(nodes), preferred))
    return tuple(hints)
