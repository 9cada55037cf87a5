"""Configuration: memory manager and topology manager settings, validated as kubelet does.

Three stages, as in kubelet: parsing (``--reserved-memory`` flag syntax or the
KubeletConfiguration list), per-entry validation (KubeletConfiguration
validation) and the checks against the machine made when the memory and
topology managers are constructed (:func:`validate_for_machine`).

About 700 lines: kubelet's validation rules and messages for every key of the
one config file, kept beside the parsing of that key so that a rule and its
message are read together.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from nri_plugin.engine.config import (
    DEFAULT_EVICTION_HARD,
    DEFAULT_MAX_ALLOWABLE_NUMA_NODES,
    DEFAULT_MEMORY_DRIFT_TOLERANCE,
    DRIFT_BEYOND_MODES,
    DRIFT_BEYOND_REFUSE,
    DRIFT_TOLERANCE_AUTO,
    DRIFT_TOLERANCE_OFF,
    OPTION_MAX_ALLOWABLE,
    OPTION_MEMORY_DRIFT_TOLERANCE,
    OPTION_PREFER_CLOSEST,
    POD_LEVEL_IGNORE,
    POD_LEVEL_MODES,
    RESIZE_ACCOUNT,
    RESIZE_MODES,
    SIGNAL_MEMORY_AVAILABLE,
    TOPOLOGY_POLICIES,
    TOPOLOGY_SCOPES,
    Config,
    ReservedMemory,
)
from nri_plugin.engine.state import HUGEPAGES_PREFIX, MEMORY, POLICY_NONE, POLICY_STATIC
from nri_plugin.engine.topology import Topology, hugepage_resource_name
from nri_plugin.errors import ConfigError, QuantityError, quote
from nri_plugin.inputs.reader import check_keys, describe, read_document
from nri_plugin.quantity import (
    INT64_MAX,
    bounded_int,
    format_quantity,
    parse_bytes,
    parse_cpu_millis,
    parse_quantity,
    short,
)

_EVICTION_SIGNALS = (
    "memory.available",
    "allocatableMemory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
)
# Resources kubelet lets kube-reserved/system-reserved name, plus hugepages-*,
# which the simulator accepts so that hugepage reservations can pass the sum check.
_RESERVABLE = ("cpu", "memory", "ephemeral-storage", "pid")
_CONFIG_KEYS = (
    "policy",
    "topologyManagerPolicy",
    "topologyManagerScope",
    "topologyManagerPolicyOptions",
    "reservedMemory",
    "kubeReserved",
    "systemReserved",
    "evictionHard",
    "memoryManagerPolicyOptions",
    "memoryDriftTolerance",
    "memoryDriftBeyondTolerance",
    "inPlaceResize",
    "podLevelResources",
    "hostNodeMap",
)
TOPOLOGY_OPTIONS = (OPTION_PREFER_CLOSEST, OPTION_MAX_ALLOWABLE)
MEMORY_OPTIONS = (OPTION_MEMORY_DRIFT_TOLERANCE,)
# memoryDriftTolerance: the older name of memoryManagerPolicyOptions.memory-drift-tolerance
DRIFT_ALIAS = "memoryDriftTolerance"
_RESERVATION_KEYS = ("numaNode", "limits")
# Config files (ours and kubelet's) are a few hundred bytes; 1 MiB refuses garbage
# before YAML spends seconds on it.
CONFIG_FILE_LIMIT = 1 << 20
_FLAG_FORMAT = "numaNodeID:type=quantity[,type=quantity...]"
# Go's strconv.Atoi: optional sign, ASCII digits, nothing else.
_ATOI_RE = re.compile(r"[+-]?[0-9]+")
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_PERCENT_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)%")


def _plain(text: str) -> str:
    """``text`` for kubelet's unquoted ``%s`` messages, kept on one line and short."""
    return quote(text)[1:-1]


def _nodes_text(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in ids)


def _atoi(text: str) -> int | None:
    """Go's strconv.Atoi on a 64-bit machine: None for bad syntax or out of range."""
    if not _ATOI_RE.fullmatch(text):
        return None
    digits = text.lstrip("+-")
    if text.startswith("-"):
        value = bounded_int(digits, INT64_MAX + 1)
        return None if value is None else -value
    return bounded_int(digits, INT64_MAX)


def _is_memory_type(name: str) -> bool:
    # A prefix check, as kubelet's: "hugepages-" alone passes.
    return name == MEMORY or name.startswith(HUGEPAGES_PREFIX)


def _bytes(value: object, what: str) -> int:
    try:
        return parse_bytes(value, what=what)
    except QuantityError as e:
        raise ConfigError(str(e)) from None


# -- reservedMemory ----------------------------------------------------------


def parse_reserved_memory_flag(text: str) -> list[ReservedMemory]:
    """The reservations of one ``--reserved-memory`` occurrence, parsed as kubelet does.

    ``0:memory=1Gi,hugepages-1Gi=2Gi;1:memory=2Gi``; an empty string means none.
    The error texts are kubelet's, misspellings included.
    """
    if text == "":
        return []
    entries: list[ReservedMemory] = []
    for part in text.split(";"):
        pieces = part.split(":")
        if len(pieces) != 2:
            raise ConfigError(
                f"the reserved memory has incorrect format, expected {_FLAG_FORMAT},"
                f" got {_plain(part)}"
            )
        raw_node, raw_limits = pieces
        numa_node = _atoi(raw_node)
        if numa_node is None:
            raise ConfigError(
                "failed to convert the NUMA node ID, exptected integer, got"
                f" {_plain(short(raw_node))}"
            )
        for item in raw_limits.split(","):
            limit = item.split("=")
            if len(limit) != 2:
                raise ConfigError(
                    "the reserved limit has incorrect value, expected type=quantatity,"
                    f" got {_plain(item)}"
                )
            type_, raw_size = limit
            if not _is_memory_type(type_):
                raise ConfigError(f"memory type conversion error, unknown type: {quote(type_)}")
            try:
                parse_quantity(raw_size, allow_negative=True)
            except QuantityError:
                raise ConfigError(
                    f"failed to parse the quantatity, expected quantatity, got {_plain(raw_size)}"
                ) from None
            size = _bytes(raw_size, f"reserved {type_} of NUMA node {numa_node}")
            entries.append(ReservedMemory(numa_node=numa_node, type=type_, size=size))
    return entries


def _reservations_from_mapping(data: dict[object, object], where: str) -> list[ReservedMemory]:
    """One KubeletConfiguration ``{numaNode, limits}`` item."""
    _check_keys(data, _RESERVATION_KEYS, where)
    if "numaNode" not in data:
        raise ConfigError(f'{where}: missing key "numaNode"')
    numa_node = data["numaNode"]
    if isinstance(numa_node, bool) or not isinstance(numa_node, int):
        raise ConfigError(f"{where}.numaNode: expected an integer, got {describe(numa_node)}")
    limits = data.get("limits")
    if not isinstance(limits, dict):
        raise ConfigError(
            f"{where}.limits: expected a mapping type -> quantity, got {describe(limits)}"
        )
    entries: list[ReservedMemory] = []
    for type_, raw_size in limits.items():
        type_ = str(type_)
        if not _is_memory_type(type_):
            raise ConfigError(f"{where}.limits: {_unsupported_type(numa_node, type_)}")
        size = _bytes(raw_size, f"{where}.limits.{type_}")
        entries.append(ReservedMemory(numa_node=numa_node, type=type_, size=size))
    return entries


def _unsupported_type(numa_node: int, type_: str) -> str:
    return (
        f"invalid configuration: the limit type {quote(type_)} for NUMA node {numa_node} is not"
        " supported, only [memory hugepages-<HugePageSize>] is accepted"
    )


def validate_reserved_memory(entries: Iterable[ReservedMemory]) -> None:
    """KubeletConfiguration validation of reservations: type, non-zero, no duplicates.

    Entries of several list items or flag occurrences are checked together.
    """
    seen: set[tuple[int, str]] = set()
    for r in entries:
        if not _is_memory_type(r.type):
            raise ConfigError(_unsupported_type(r.numa_node, r.type))
        if r.size == 0:
            raise ConfigError(
                "invalid configuration: reserved memory may not be zero for NUMA node"
                f" {r.numa_node} and resource {quote(r.type)}"
            )
        if (r.numa_node, r.type) in seen:
            raise ConfigError(
                "invalid configuration: the reserved memory has a duplicate value for NUMA node"
                f" {r.numa_node} and resource {quote(r.type)}"
            )
        seen.add((r.numa_node, r.type))


def _parse_reserved_memory(data: object, where: str) -> tuple[ReservedMemory, ...]:
    if data is None:
        return ()
    if isinstance(data, str):
        items: list[tuple[str, object]] = [(where, data)]
    elif isinstance(data, list):
        items = [(f"{where}[{i}]", item) for i, item in enumerate(data)]
    else:
        raise ConfigError(
            f"{where}: expected a list of {{numaNode, limits}} or of --reserved-memory strings,"
            f" got {describe(data)}"
        )
    entries: list[ReservedMemory] = []
    for item_where, item in items:
        if isinstance(item, str):
            try:
                entries.extend(parse_reserved_memory_flag(item))
            except ConfigError as e:
                raise ConfigError(f"{item_where}: {e}") from None
        elif isinstance(item, dict):
            entries.extend(_reservations_from_mapping(item, item_where))
        else:
            raise ConfigError(
                f"{item_where}: expected {{numaNode, limits}} or a string such as"
                f' "0:memory=1Gi", got {describe(item)}'
            )
    try:
        validate_reserved_memory(entries)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return tuple(entries)


# -- the other keys ----------------------------------------------------------


def _check_keys(data: Mapping[object, object], known: tuple[str, ...], where: str) -> None:
    check_keys(data, known, where, ConfigError)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {describe(value)}")
    return value


def _parse_policy(value: object, where: str) -> str:
    name = _string(value, where)
    by_lower = {POLICY_STATIC.lower(): POLICY_STATIC, POLICY_NONE.lower(): POLICY_NONE}
    if name.lower() not in by_lower:
        raise ConfigError(f"{where}: unknown policy: {quote(name)} (expected static or none)")
    return by_lower[name.lower()]


def _option_text(value: object, where: str) -> str:
    # Kubelet's options are strings; YAML booleans and ints mean the same text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return _string(value, where)


def _parse_options(data: object, where: str) -> tuple[bool, int]:
    prefer_closest = False
    max_allowable = DEFAULT_MAX_ALLOWABLE_NUMA_NODES
    if data is None:
        return prefer_closest, max_allowable
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping option -> value, got {describe(data)}")
    for raw_name, raw_value in data.items():
        name = str(raw_name)
        value_where = f"{where}.{name}"
        if name == OPTION_PREFER_CLOSEST:
            text = _option_text(raw_value, value_where)
            if text not in _GO_BOOLS:
                raise ConfigError(
                    f"{value_where}: bad value for option {quote(name)}: {quote(text)}"
                    " is not a boolean"
                )
            prefer_closest = _GO_BOOLS[text]
        elif name == OPTION_MAX_ALLOWABLE:
            text = _option_text(raw_value, value_where)
            parsed = _atoi(text)
            if parsed is None:
                raise ConfigError(
                    f"{value_where}: bad value for option {quote(name)}:"
                    f" {quote(short(text))} is not an integer"
                )
            max_allowable = parsed
            if max_allowable < DEFAULT_MAX_ALLOWABLE_NUMA_NODES:
                raise ConfigError(
                    f"{value_where}: {quote(text)} is too small: the minimum value of {quote(name)}"
                    f" should not be less than {DEFAULT_MAX_ALLOWABLE_NUMA_NODES}"
                )
        else:
            raise ConfigError(_unknown_option(where, "Topology Manager", name, TOPOLOGY_OPTIONS))
    return prefer_closest, max_allowable


def _unknown_option(where: str, manager: str, name: str, known: tuple[str, ...]) -> str:
    import difflib  # only for a typo's suggestion: a running plugin never needs it

    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f"; did you mean {quote(hint[0])}?" if hint else ""
    return (
        f"{where}: unknown {manager} Policy option: {quote(name)} (known:"
        f" {', '.join(known)}){did_you_mean}"
    )


def _parse_drift_tolerance(value: object, where: str) -> tuple[str, int]:
    """``memory-drift-tolerance``: (the setting as written, the bytes it tolerates now).

    ``auto`` tolerates nothing until it is resolved at start (inputs/iomem.py).
    """
    if value is False:
        # YAML 1.1 reads a bare `off` as false; kubelet's options are strings
        return DRIFT_TOLERANCE_OFF, 0
    if value in (DRIFT_TOLERANCE_AUTO, DRIFT_TOLERANCE_OFF):
        return str(value), 0
    expected = 'auto, off or a quantity such as "128Mi"'
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{where}: expected {expected}, got {describe(value)}")
    if isinstance(value, str):
        try:
            parse_quantity(value, allow_negative=True)
        except QuantityError:
            raise ConfigError(f"{where}: {quote(short(value))} is not {expected}") from None
    return str(value), _bytes(value, where)


def _parse_memory_options(data: object, where: str) -> dict[str, object]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping option -> value, got {describe(data)}")
    for raw_name in data:
        if str(raw_name) not in MEMORY_OPTIONS:
            raise ConfigError(
                _unknown_option(where, "Memory Manager", str(raw_name), MEMORY_OPTIONS)
            )
    return {str(k): v for k, v in data.items()}


def _parse_drift(data: dict[object, object], source: str) -> tuple[str | None, int]:
    """The drift tolerance of memoryManagerPolicyOptions or of its older name (not both)."""
    options_key = "memoryManagerPolicyOptions"
    options = _parse_memory_options(data.get(options_key), f"{source}.{options_key}")
    spelled = options.get(OPTION_MEMORY_DRIFT_TOLERANCE)
    alias = data.get(DRIFT_ALIAS)
    if spelled is not None and alias is not None:
        raise ConfigError(
            f"{source}: {DRIFT_ALIAS} and {options_key}.{OPTION_MEMORY_DRIFT_TOLERANCE} are both"
            f" set; {DRIFT_ALIAS} is the older name of the same setting: keep one"
        )
    if spelled is not None:
        where = f"{source}.{options_key}.{OPTION_MEMORY_DRIFT_TOLERANCE}"
        return _parse_drift_tolerance(spelled, where)
    if alias is not None:
        return _parse_drift_tolerance(alias, f"{source}.{DRIFT_ALIAS}")
    return None, DEFAULT_MEMORY_DRIFT_TOLERANCE


def _parse_reserved_resources(data: object, where: str) -> dict[str, int] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping resource -> quantity, got {describe(data)}")
    result: dict[str, int] = {}
    for raw_name, raw_value in data.items():
        name = str(raw_name)
        value_where = f"{where}.{name}"
        if name == "cpu":
            try:
                result[name] = parse_cpu_millis(raw_value, what=value_where)
            except QuantityError as e:
                raise ConfigError(str(e)) from None
        elif name in _RESERVABLE or name.startswith(HUGEPAGES_PREFIX):
            result[name] = _bytes(raw_value, value_where)
        else:
            raise ConfigError(
                f"{where}: cannot reserve {quote(name)} resource (only"
                f" {', '.join(_RESERVABLE)}, hugepages-<size>)"
            )
    return result


def _parse_percentage(text: str) -> float:
    """Kubelet's percentage: a float32 fraction, float32(value) / 100."""
    return _float32(_float32(float(text[:-1])) / 100)


def _float32(x: float) -> float:
    value: float = struct.unpack("f", struct.pack("f", x))[0]
    return value


def _parse_eviction(data: object, where: str) -> dict[str, str] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping signal -> threshold, got {describe(data)}")
    result: dict[str, str] = {}
    for raw_signal, raw_value in data.items():
        signal = str(raw_signal)
        value_where = f"{where}.{signal}"
        if signal not in _EVICTION_SIGNALS:
            raise ConfigError(f"{where}: unsupported eviction signal {quote(signal)}")
        if isinstance(raw_value, bool) or not isinstance(raw_value, str | int):
            raise ConfigError(
                f'{value_where}: expected a threshold such as "100Mi" or "10%", got'
                f" {describe(raw_value)}"
            )
        text = str(raw_value)
        if text.endswith("%"):
            if not _PERCENT_RE.fullmatch(text):
                raise ConfigError(f"{value_where}: {quote(text)} is not a valid percentage")
            if float(text[:-1]) > 100:
                raise ConfigError(
                    f"{value_where}: eviction percentage threshold {text} must be <= 100%"
                )
        else:
            try:
                parse_quantity(text, what=value_where)
            except QuantityError as e:
                raise ConfigError(str(e)) from None
        result[signal] = text
    return result


def parse_config(data: object, *, source: str = "config") -> Config:
    """The :class:`Config` of the spec's ``config:`` block (``None`` = all defaults)."""
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {describe(data)}")
    _check_keys(data, _CONFIG_KEYS, source)

    def at(key: str) -> str:
        return f"{source}.{key}"

    policy = POLICY_STATIC
    if data.get("policy") is not None:
        policy = _parse_policy(data["policy"], at("policy"))
    tm_policy = "none"
    if data.get("topologyManagerPolicy") is not None:
        tm_policy = _string(data["topologyManagerPolicy"], at("topologyManagerPolicy"))
        if tm_policy not in TOPOLOGY_POLICIES:
            raise ConfigError(
                f"{at('topologyManagerPolicy')}: unknown policy: {quote(tm_policy)} (expected"
                f" {', '.join(TOPOLOGY_POLICIES)})"
            )
    tm_scope = "container"
    if data.get("topologyManagerScope") is not None:
        tm_scope = _string(data["topologyManagerScope"], at("topologyManagerScope"))
        if tm_scope not in TOPOLOGY_SCOPES:
            raise ConfigError(
                f"{at('topologyManagerScope')}: unknown scope: {quote(tm_scope)} (expected"
                f" {', '.join(TOPOLOGY_SCOPES)})"
            )
    prefer_closest, max_allowable = _parse_options(
        data.get("topologyManagerPolicyOptions"), at("topologyManagerPolicyOptions")
    )
    drift_option, drift = _parse_drift(data, source)
    beyond = DRIFT_BEYOND_REFUSE
    if data.get("memoryDriftBeyondTolerance") is not None:
        beyond = _string(data["memoryDriftBeyondTolerance"], at("memoryDriftBeyondTolerance"))
        if beyond not in DRIFT_BEYOND_MODES:
            raise ConfigError(
                f"{at('memoryDriftBeyondTolerance')}: unknown choice: {quote(beyond)} (expected"
                f" {', '.join(DRIFT_BEYOND_MODES)})"
            )
    resize = RESIZE_ACCOUNT
    if data.get("inPlaceResize") is not None:
        resize = _string(data["inPlaceResize"], at("inPlaceResize"))
        if resize not in RESIZE_MODES:
            raise ConfigError(
                f"{at('inPlaceResize')}: unknown mode: {quote(resize)} (expected"
                f" {', '.join(RESIZE_MODES)})"
            )
    pod_level = POD_LEVEL_IGNORE
    if data.get("podLevelResources") is not None:
        pod_level = _string(data["podLevelResources"], at("podLevelResources"))
        if pod_level not in POD_LEVEL_MODES:
            raise ConfigError(
                f"{at('podLevelResources')}: unknown mode: {quote(pod_level)} (expected"
                f" {', '.join(POD_LEVEL_MODES)})"
            )
    host_map = _parse_host_node_map(data.get("hostNodeMap"), at("hostNodeMap"))
    return Config(
        policy=policy,
        topology_manager_policy=tm_policy,
        topology_manager_scope=tm_scope,
        prefer_closest_numa_nodes=prefer_closest,
        max_allowable_numa_nodes=max_allowable,
        reserved_memory=_parse_reserved_memory(data.get("reservedMemory"), at("reservedMemory")),
        kube_reserved=_parse_reserved_resources(data.get("kubeReserved"), at("kubeReserved")),
        system_reserved=_parse_reserved_resources(data.get("systemReserved"), at("systemReserved")),
        eviction_hard=_parse_eviction(data.get("evictionHard"), at("evictionHard")),
        memory_drift_tolerance=drift,
        memory_drift_tolerance_option=drift_option,
        memory_drift_beyond_tolerance=beyond,
        in_place_resize=resize,
        pod_level_resources=pod_level,
        host_node_map=host_map,
    )


def _parse_host_node_map(data: object, where: str) -> dict[int, int] | None:
    """``{fake node: host node}``, both NUMA node ids (YAML keys may be strings)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fake NUMA node to host NUMA node")
    out: dict[int, int] = {}
    for key, value in data.items():
        fake = _atoi(str(key)) if not isinstance(key, bool) else None
        host = value if isinstance(value, int) and not isinstance(value, bool) else None
        if fake is None or fake < 0 or fake > 1023:
            raise ConfigError(f"{where}: {quote(str(key))} is not a NUMA node id")
        if host is None or not 0 <= host <= 1023:
            raise ConfigError(f"{where}.{fake}: {describe(value)} is not a NUMA node id")
        out[fake] = host
    return out


def load_config_file(path: str | Path) -> Config:
    """The :class:`Config` of a YAML or JSON file holding the ``config:`` keys."""
    data = read_document(path, ConfigError, limit=CONFIG_FILE_LIMIT, what="config files")
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# -- checks against the machine ---------------------------------------------


def _eviction_memory(config: Config, topology: Topology) -> int:
    """The hard-eviction threshold for memory.available, in bytes."""
    thresholds = DEFAULT_EVICTION_HARD if config.eviction_hard is None else config.eviction_hard
    text = thresholds.get(SIGNAL_MEMORY_AVAILABLE)
    if text is None:
        return 0
    if text.endswith("%"):
        # Kubelet multiplies in float64 by a float32 fraction and truncates;
        # doing the same keeps our sum identical to kubelet's to the byte.
        capacity = sum(n.memory for n in topology.nodes)
        return math.trunc(float(capacity) * _parse_percentage(text))
    # Kubelet's Quantity.Value() rounds up.
    return math.ceil(parse_quantity(text))


def node_allocatable_reservation(config: Config, topology: Topology) -> dict[str, int]:
    """Per memory type, kube-reserved + system-reserved + hard eviction (non-zero only).

    This is what Node Allocatable withholds and what ``reservedMemory`` must add
    up to.
    """
    totals: dict[str, int] = {}
    for part in (config.kube_reserved, config.system_reserved):
        for name, amount in (part or {}).items():
            if _is_memory_type(name):
                totals[name] = totals.get(name, 0) + amount
    totals[MEMORY] = totals.get(MEMORY, 0) + _eviction_memory(config, topology)
    return {name: amount for name, amount in totals.items() if amount != 0}


def _check_topology_manager(config: Config, topology: Topology, source: str) -> None:
    options = f"{source}.topologyManagerPolicyOptions"
    count = len(topology.nodes)
    if config.topology_manager_policy != "none" and count > config.max_allowable_numa_nodes:
        raise ConfigError(
            f"{options}.{OPTION_MAX_ALLOWABLE}: the machine has {count} NUMA nodes, more than"
            f" {OPTION_MAX_ALLOWABLE} {config.max_allowable_numa_nodes} (kubelet: unsupported on"
            f" machines with more than {config.max_allowable_numa_nodes} NUMA Nodes)"
        )
    if config.prefer_closest_numa_nodes and topology.distances is None:
        raise ConfigError(
            f'{options}.{OPTION_PREFER_CLOSEST}: "true" needs the NUMA distance matrix, but the'
            " topology has no distances"
        )


def _check_hugepage_type(r: ReservedMemory, topology: Topology, where: str) -> None:
    names = {hugepage_resource_name(size): size for size in topology.hugepage_sizes}
    if r.type in names:
        return
    present = ", ".join(names) or "none"
    hint = ""
    try:
        size = parse_bytes(r.type[len(HUGEPAGES_PREFIX) :])
    except QuantityError:
        size = None
    if size is not None and size in names.values():
        # Kubelet matches reservations by the canonical resource name only.
        hint = f"; write it as {quote(hugepage_resource_name(size))}"
    raise ConfigError(
        f"{where}: NUMA node {r.numa_node} reserves {quote(r.type)}, a hugepage size this machine"
        f" does not have (sizes: {present}){hint}"
    )


def validate_for_machine(config: Config, topology: Topology, *, source: str = "config") -> None:
    """The checks kubelet makes when it builds its managers on this machine.

    Topology manager first, then (static policy only) the memory manager's:
    NUMA nodes exist, hugepage sizes exist, the Node Allocatable sum, some
    memory reserved, and each reservation within what the node has.
    """
    _check_topology_manager(config, topology, source)
    if config.policy != POLICY_STATIC:
        return
    where = f"{source}.reservedMemory"
    node_ids = topology.node_ids
    for r in config.reserved_memory:
        if r.numa_node not in node_ids:
            raise ConfigError(
                f"{where}: the reserved memory configuration references a NUMA node"
                f" {r.numa_node} that does not exist on this machine (nodes:"
                f" {_nodes_text(node_ids)})"
            )
    for r in config.reserved_memory:
        if r.type != MEMORY:
            _check_hugepage_type(r, topology, where)

    if (
        config.kube_reserved is not None
        or config.system_reserved is not None
        or config.eviction_hard is not None
    ):
        expected = node_allocatable_reservation(config, topology)
        sums: dict[str, int] = {}
        for r in config.reserved_memory:
            sums[r.type] = sums.get(r.type, 0) + r.size
        for type_ in sorted(set(sums) | set(expected), key=str.encode):
            total, want = sums.get(type_, 0), expected.get(type_, 0)
            if total != want:
                raise ConfigError(
                    f"{where}: the total amount {quote(format_quantity(total))} of type"
                    f" {quote(type_)} is not equal to the value {quote(format_quantity(want))}"
                    " determined by Node Allocatable feature"
                )

    if sum(r.size for r in config.reserved_memory if r.type == MEMORY) <= 0:
        raise ConfigError(f"{where}: [memorymanager] you should specify the system reserved memory")

    for r in config.reserved_memory:
        node = topology.node(r.numa_node)
        in_pools = sum(node.hugepages.values())
        if r.type == MEMORY:
            available = node.memory - in_pools
            detail = (
                f" (memory {format_quantity(node.memory)} minus hugepages"
                f" {format_quantity(in_pools)})"
            )
        else:
            pools = {hugepage_resource_name(s): t for s, t in node.hugepages.items()}
            available, detail = pools.get(r.type, 0), ""
        if r.size > available:
            raise ConfigError(
                f"{where}: NUMA node {r.numa_node} reserves {quote(format_quantity(r.size))} of"
                f" {quote(r.type)} but the node has only"
                f" {quote(format_quantity(available))}{detail}"
            )
