"""``--kubelet-config``: align the plugin's settings with the node's KubeletConfiguration.

The scheduler places pods by Node Allocatable, which kubelet computes as
capacity minus ``kubeReserved + systemReserved + evictionHard``; kubelet's own
memory manager insists that ``reservedMemory`` adds up to exactly that. The
plugin makes the same check, so it must use kubelet's reservations, not a
copy that can drift. The topology manager settings are taken from kubelet too
when our config leaves them out, so that memory is placed under the policy
the administrator already chose for CPUs and devices.

Rules (docs/kubelet-alignment.md):

* a key absent from our config takes kubelet's value;
* ``kubeReserved``, ``systemReserved`` and ``evictionHard`` are compared with
  kubelet's *effective* values (an absent ``kubeReserved`` reserves nothing, an
  absent ``evictionHard`` is kubelet's ``memory.available<100Mi``), and only in
  what they withhold of memory and hugepages: a difference there would make
  our sum check disagree with the allocatable the scheduler sees;
* the topology manager keys and ``reservedMemory`` conflict only when both
  files set them: kubelet's topology manager governs kubelet's CPU and device
  managers, ours governs memory, and the plugin is meant to work without
  reconfiguring kubelet;
* a conflict is a :class:`~nri_plugin.errors.ConfigError` naming both values
  and both files;
* ``memoryManagerPolicyOptions.memory-drift-tolerance`` (KEP-6232) is taken
  from kubelet's file only when that file sets it (kubelet's own default, the
  exact comparison, is a choice for kubelet's state, not ours) and conflicts
  like the topology keys when both files set it;
* kubelet's file may be newer than the plugin: a topology manager or memory
  manager policy option the plugin does not know, or a memory manager or CPU
  manager policy name it does not know, is ignored with one warning naming
  it and the file (:attr:`KubeletSettings.ignored`), never a refusal to
  start. Our own config stays strict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from nri_plugin.engine.config import (
    DEFAULT_EVICTION_HARD,
    DRIFT_TOLERANCE_AUTO,
    OPTION_MAX_ALLOWABLE,
    OPTION_MEMORY_DRIFT_TOLERANCE,
    OPTION_PREFER_CLOSEST,
    SIGNAL_MEMORY_AVAILABLE,
    Config,
    ReservedMemory,
)
from nri_plugin.engine.state import HUGEPAGES_PREFIX, MEMORY
from nri_plugin.errors import ConfigError, quote
from nri_plugin.inputs.config import (
    CONFIG_FILE_LIMIT,
    DRIFT_ALIAS,
    MEMORY_OPTIONS,
    TOPOLOGY_OPTIONS,
    parse_config,
)
from nri_plugin.inputs.reader import describe, read_document
from nri_plugin.quantity import format_quantity, parse_quantity

KUBELET_API_VERSION = "kubelet.config.k8s.io/v1beta1"
KUBELET_KIND = "KubeletConfiguration"
DEFAULT_KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"

TOPOLOGY_KEYS = ("topologyManagerPolicy", "topologyManagerScope", "topologyManagerPolicyOptions")
MEMORY_OPTIONS_KEY = "memoryManagerPolicyOptions"
DRIFT_KEY = f"{MEMORY_OPTIONS_KEY}.{OPTION_MEMORY_DRIFT_TOLERANCE}"
# Policy names kubelet knows through 1.37 (memory_manager.go, cpu_manager.go), compared
# in lower case: kubelet's docs write "none" where its code writes "None".
_MEMORY_MANAGER_POLICIES = ("none", "static", "besteffort")
_CPU_MANAGER_POLICIES = ("none", "static")
RESERVATION_KEYS = ("kubeReserved", "systemReserved", "evictionHard")
# The KubeletConfiguration keys that share our config's names and meaning.
SHARED_KEYS = (*TOPOLOGY_KEYS, "reservedMemory", *RESERVATION_KEYS)

_KUBELET_DEFAULT_TOPOLOGY = {"topologyManagerPolicy": "none", "topologyManagerScope": "container"}
# Config attribute(s) behind each shared key.
_FIELDS: Mapping[str, tuple[str, ...]] = {
    "topologyManagerPolicy": ("topology_manager_policy",),
    "topologyManagerScope": ("topology_manager_scope",),
    "topologyManagerPolicyOptions": ("prefer_closest_numa_nodes", "max_allowable_numa_nodes"),
    "reservedMemory": ("reserved_memory",),
    "kubeReserved": ("kube_reserved",),
    "systemReserved": ("system_reserved",),
    "evictionHard": ("eviction_hard",),
}


@dataclass(frozen=True)
class KubeletSettings:
    """What the plugin reads of a KubeletConfiguration, kubelet's defaults filled in.

    ``config`` holds kubelet's effective values for the shared keys;
    ``present`` names the shared keys the file itself sets; ``ignored`` what
    the file sets that the plugin does not know (``key.option: "value"``), in
    the file's order.
    """

    path: str
    config: Config
    present: frozenset[str]
    memory_manager_policy: str
    cpu_manager_policy: str
    ignored: tuple[str, ...] = ()


def _optional_string(data: Mapping[object, object], key: str, default: str, path: str) -> str:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key}: expected a string, got {describe(value)}")
    return value


def _known_options(
    data: Mapping[object, object], key: str, known: tuple[str, ...], ignored: list[str]
) -> dict[object, object] | None:
    """``data[key]`` without the options the plugin does not know (noted in ``ignored``)."""
    options = data.get(key)
    if not isinstance(options, dict):
        return None  # absent, or a shape parse_config refuses as it would in our file
    kept: dict[object, object] = {}
    for name, value in options.items():
        if str(name) in known:
            kept[name] = value
        else:
            ignored.append(f"{key}.{name}: {quote(str(value))}")
    return kept


def read_kubelet_config(path: str | Path) -> KubeletSettings:
    """The shared settings of a KubeletConfiguration file, validated as our config is.

    Options and policy names of a newer kubelet are not errors: they are
    listed in :attr:`KubeletSettings.ignored`.
    """
    data = read_document(path, ConfigError, limit=CONFIG_FILE_LIMIT, what="config files")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a {KUBELET_KIND} mapping, got {describe(data)}")
    for key, want in (("apiVersion", KUBELET_API_VERSION), ("kind", KUBELET_KIND)):
        if data.get(key) != want:
            got = data.get(key)
            shown = quote(got) if isinstance(got, str) else "nothing"
            raise ConfigError(
                f"{path}: {key} is {shown}, expected {quote(want)} (a kubelet --config file)"
            )
    ignored: list[str] = []
    shared: dict[object, object] = {
        key: data[key] for key in SHARED_KEYS if data.get(key) is not None
    }
    topology_options = _known_options(
        data, "topologyManagerPolicyOptions", TOPOLOGY_OPTIONS, ignored
    )
    if topology_options is not None:
        shared["topologyManagerPolicyOptions"] = topology_options
    memory_options = _known_options(data, MEMORY_OPTIONS_KEY, MEMORY_OPTIONS, ignored)
    if memory_options is None and data.get(MEMORY_OPTIONS_KEY) is not None:
        shared[MEMORY_OPTIONS_KEY] = data[MEMORY_OPTIONS_KEY]  # not a mapping: refused
    elif memory_options:
        shared[MEMORY_OPTIONS_KEY] = memory_options
    try:
        parsed = parse_config(shared, source=KUBELET_KIND)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    memory_manager_policy = _optional_string(data, "memoryManagerPolicy", "None", str(path))
    cpu_manager_policy = _optional_string(data, "cpuManagerPolicy", "none", str(path))
    for key, value, known in (
        ("memoryManagerPolicy", memory_manager_policy, _MEMORY_MANAGER_POLICIES),
        ("cpuManagerPolicy", cpu_manager_policy, _CPU_MANAGER_POLICIES),
    ):
        if value.lower() not in known:
            ignored.append(f"{key}: {quote(value)}")
    # Effective values: an absent reservation reserves nothing; an absent
    # evictionHard is kubelet's default threshold.
    effective = dataclasses.replace(
        parsed,
        kube_reserved=parsed.kube_reserved if parsed.kube_reserved is not None else {},
        system_reserved=parsed.system_reserved if parsed.system_reserved is not None else {},
        eviction_hard=(
            parsed.eviction_hard
            if parsed.eviction_hard is not None
            else dict(DEFAULT_EVICTION_HARD)
        ),
    )
    return KubeletSettings(
        path=str(path),
        config=effective,
        present=frozenset(k for k in shared if k in SHARED_KEYS),
        memory_manager_policy=memory_manager_policy,
        cpu_manager_policy=cpu_manager_policy,
        ignored=tuple(ignored),
    )


def _present_in_config(config: Config, config_source: str | None) -> frozenset[str]:
    """The shared keys our config sets.

    From the file when we know it; otherwise a value that differs from the
    default counts as set (exact for the all-defaults Config of a plugin
    started without --config).
    """
    if config_source is not None:
        data = read_document(config_source, ConfigError)
        if isinstance(data, dict):
            return frozenset(k for k in SHARED_KEYS if data.get(k) is not None)
        return frozenset()
    default = Config()
    return frozenset(
        key
        for key, fields in _FIELDS.items()
        if any(getattr(config, f) != getattr(default, f) for f in fields)
    )


# -- comparisons, each yielding (what differs, our text, kubelet's text) -----


def _memory_amounts(reserved: Mapping[str, int] | None) -> dict[str, int]:
    return {
        name: amount
        for name, amount in (reserved or {}).items()
        if (name == MEMORY or name.startswith(HUGEPAGES_PREFIX)) and amount != 0
    }


def _reserved_difference(
    key: str, ours: Mapping[str, int] | None, kubelet: Mapping[str, int] | None
) -> tuple[str, str, str] | None:
    a, b = _memory_amounts(ours), _memory_amounts(kubelet)
    for name in sorted(set(a) | set(b), key=str.encode):
        if a.get(name, 0) != b.get(name, 0):
            return (
                f"{key}.{name}",
                format_quantity(a.get(name, 0)),
                format_quantity(b.get(name, 0)),
            )
    return None


def _threshold_value(text: str | None) -> tuple[str, Fraction] | None:
    """A threshold as a comparable value: "100Mi" equals "104857600"."""
    if text is None:
        return None
    if text.endswith("%"):
        return ("%", Fraction(text[:-1]))
    # Kubelet's Quantity.Value() rounds up.
    return ("bytes", Fraction(math.ceil(parse_quantity(text))))


def _eviction_difference(
    ours: Mapping[str, str] | None, kubelet: Mapping[str, str] | None
) -> tuple[str, str, str] | None:
    a = (ours or {}).get(SIGNAL_MEMORY_AVAILABLE)
    b = (kubelet or {}).get(SIGNAL_MEMORY_AVAILABLE)
    if _threshold_value(a) == _threshold_value(b):
        return None
    return (f"evictionHard.{SIGNAL_MEMORY_AVAILABLE}", a or "none", b or "none")


def _options_text(prefer_closest: bool, max_allowable: int) -> dict[str, str]:
    return {
        OPTION_PREFER_CLOSEST: str(prefer_closest).lower(),
        OPTION_MAX_ALLOWABLE: str(max_allowable),
    }


def _reservations_text(entries: Iterable[ReservedMemory]) -> str:
    by_node: dict[int, list[str]] = {}
    for r in sorted(entries, key=lambda r: (r.numa_node, r.type.encode())):
        by_node.setdefault(r.numa_node, []).append(f"{r.type}={format_quantity(r.size)}")
    return ";".join(f"{node}:{','.join(items)}" for node, items in by_node.items()) or "none"


def _difference(key: str, ours: Config, kubelet: Config) -> tuple[str, str, str] | None:
    if key == "topologyManagerPolicy":
        a, b = ours.topology_manager_policy, kubelet.topology_manager_policy
        return (key, a, b) if a != b else None
    if key == "topologyManagerScope":
        a, b = ours.topology_manager_scope, kubelet.topology_manager_scope
        return (key, a, b) if a != b else None
    if key == "topologyManagerPolicyOptions":
        oa = _options_text(ours.prefer_closest_numa_nodes, ours.max_allowable_numa_nodes)
        ob = _options_text(kubelet.prefer_closest_numa_nodes, kubelet.max_allowable_numa_nodes)
        for name in oa:
            if oa[name] != ob[name]:
                return (f"{key}.{name}", oa[name], ob[name])
        return None
    if key == "reservedMemory":
        a_text = _reservations_text(ours.reserved_memory)
        b_text = _reservations_text(kubelet.reserved_memory)
        return (key, a_text, b_text) if a_text != b_text else None
    if key == "kubeReserved":
        return _reserved_difference(key, ours.kube_reserved, kubelet.kube_reserved)
    if key == "systemReserved":
        return _reserved_difference(key, ours.system_reserved, kubelet.system_reserved)
    if key == "evictionHard":
        return _eviction_difference(ours.eviction_hard, kubelet.eviction_hard)
    raise AssertionError(key)


def _drift_setting(config: Config) -> tuple[str, int]:
    """The drift tolerance as a comparable value: "off" equals "0", "64Mi" equals "67108864"."""
    if config.memory_drift_tolerance_option == DRIFT_TOLERANCE_AUTO:
        return (DRIFT_TOLERANCE_AUTO, 0)
    return ("bytes", config.memory_drift_tolerance)


def _kubelet_default_note(key: str, kubelet: KubeletSettings) -> str:
    if key in kubelet.present:
        return ""
    if key == "evictionHard":
        return " (kubelet's default: the file does not set evictionHard)"
    return f" (the file does not set {key})"


def align_with_kubelet(
    config: Config, path: str, logger: Any, *, config_source: str | None = None
) -> Config:
    """``config`` completed with the KubeletConfiguration at ``path``.

    ``config_source`` is our config file, when there is one: it tells which
    keys our config sets and is named in conflict messages.
    """
    kubelet = read_kubelet_config(path)
    ours_present = _present_in_config(config, config_source)
    ours_name = config_source or "the plugin's config"

    taken: list[str] = []
    changes: dict[str, object] = {}
    for key in SHARED_KEYS:
        if key not in ours_present:
            taken.append(key)
            for field in _FIELDS[key]:
                changes[field] = getattr(kubelet.config, field)
            continue
        if key not in RESERVATION_KEYS and key not in kubelet.present:
            continue  # kubelet's default never overrides a value we set
        diff = _difference(key, config, kubelet.config)
        if diff is not None:
            what, ours_text, kubelet_text = diff
            raise ConfigError(
                f"{what}: {quote(ours_text)} in {ours_name} but {quote(kubelet_text)} in"
                f" {kubelet.path}{_kubelet_default_note(key, kubelet)}; make them equal or"
                f" remove {key} from {ours_name} to take kubelet's"
            )
    aligned = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    if kubelet.config.memory_drift_tolerance_option is not None:
        if config.memory_drift_tolerance_option is None:
            taken.append(DRIFT_KEY)
            aligned = dataclasses.replace(
                aligned,
                memory_drift_tolerance=kubelet.config.memory_drift_tolerance,
                memory_drift_tolerance_option=kubelet.config.memory_drift_tolerance_option,
            )
        elif _drift_setting(config) != _drift_setting(kubelet.config):
            ours_text = config.memory_drift_tolerance_option
            kubelet_text = kubelet.config.memory_drift_tolerance_option
            raise ConfigError(
                f"{DRIFT_KEY}: {quote(ours_text)} in {ours_name} but {quote(kubelet_text)} in"
                f" {kubelet.path}; make them equal or remove {DRIFT_KEY} (or {DRIFT_ALIAS})"
                f" from {ours_name} to take kubelet's"
            )

    if kubelet.ignored:
        # a newer kubelet's options must not stop the plugin: the node would go unpinned
        logger.warning(
            "kubelet's config sets options the plugin does not know; ignored",
            kubelet_config=kubelet.path,
            ignored=list(kubelet.ignored),
        )

    if kubelet.memory_manager_policy.lower() == "static":
        logger.warning(
            "KUBELET'S MEMORY MANAGER IS ALSO STATIC: kubelet and nri-memory-manager will"
            " both set cpuset.mems of Guaranteed containers and overwrite each other; set"
            " memoryManagerPolicy: None in the kubelet config",
            kubelet_config=kubelet.path,
            memory_manager_policy=kubelet.memory_manager_policy,
        )
    tm_kubelet = kubelet.config.topology_manager_policy
    if aligned.topology_manager_policy != tm_kubelet:
        # Only possible when kubelet's file leaves the policy at its default.
        event = "topology manager policies differ: memory and CPUs follow different rules"
        fields = {
            "kubelet_config": kubelet.path,
            "kubelet_topology_manager_policy": tm_kubelet,
            "topology_manager_policy": aligned.topology_manager_policy,
            "cpu_manager_policy": kubelet.cpu_manager_policy,
        }
        if kubelet.cpu_manager_policy.lower() == "static":
            # kubelet pins exclusive CPUs without regard to our memory placement
            logger.warning(event, **fields)
        else:
            logger.info(event, **fields)
    logger.info(
        "aligned with kubelet",
        kubelet_config=kubelet.path,
        taken_from_kubelet=taken,
        topology_manager_policy=aligned.topology_manager_policy,
        topology_manager_scope=aligned.topology_manager_scope,
        kube_reserved_memory=format_quantity((aligned.kube_reserved or {}).get(MEMORY, 0)),
        system_reserved_memory=format_quantity((aligned.system_reserved or {}).get(MEMORY, 0)),
        eviction_hard_memory=(aligned.eviction_hard or {}).get(SIGNAL_MEMORY_AVAILABLE, "none"),
        memory_manager_policy=kubelet.memory_manager_policy,
        cpu_manager_policy=kubelet.cpu_manager_policy,
        memory_drift_tolerance=(
            aligned.memory_drift_tolerance_option or format_quantity(aligned.memory_drift_tolerance)
        ),
    )
    return aligned
