"""A container's allocated devices as topology hints, as kubelet's device manager makes them.

When kubelet's device manager is asked for the hints of a container that
already holds devices (``GetTopologyHints`` in
``pkg/kubelet/cm/devicemanager/topology_hints.go``, "Regenerating
TopologyHints for resource already allocated"), it calls
``generateDeviceTopologyHints(resource, allocated, reusable=∅,
request=len(allocated))``:

* every NUMA mask, in ``bitmask.IterateBitMasks`` order (by width, then the
  node combinations in order), that holds enough of the *available* devices
  (here: the allocated ones) is a hint; a device is in a mask when any of its
  NUMA nodes is (``AnySet``), and a device without topology is in none;
* a hint is preferred when its width equals the narrowest width at which the
  resource's *whole inventory* holds ``request`` devices (the whole machine
  when none does);
* a resource none of whose devices reports a NUMA node gives no preference
  (``deviceHasTopologyAlignment``: the hints are ``nil``, "don't care").

The pod-resources API gives us both sides: a container's devices (``Get`` /
``List``) and the node's inventory (``GetAllocatableResources``). The
inventory there holds healthy devices only, where kubelet's ``allDevices``
also holds unhealthy ones; the container's own devices are added to it so
that a device that turned unhealthy still counts. Pure functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import combinations

from nri_plugin.engine.bitmask import mask_of
from nri_plugin.engine.hint import ProviderHints, TopologyHint
from nri_plugin.podresources.resources import ContainerDevices

# device id -> the NUMA nodes its plugin reported (empty: no topology)
DeviceTopology = Mapping[str, frozenset[int]]


def device_topology(entries: Iterable[ContainerDevices]) -> dict[str, dict[str, frozenset[int]]]:
    """Resource name -> device id -> NUMA nodes, merging kubelet's one-entry-per-node form."""
    out: dict[str, dict[str, frozenset[int]]] = {}
    for entry in entries:
        if not entry.device_ids:
            continue
        devices = out.setdefault(entry.resource_name, {})
        nodes = frozenset(entry.numa_nodes)
        for device_id in entry.device_ids:
            devices[device_id] = devices.get(device_id, frozenset()) | nodes
    return out


def iterate_masks(numa_nodes: Sequence[int]) -> Iterator[int]:
    """kubelet's ``bitmask.IterateBitMasks``: every non-empty subset, narrowest first."""
    for width in range(1, len(numa_nodes) + 1):
        for combo in combinations(numa_nodes, width):
            yield mask_of(combo)


def has_topology_alignment(devices: DeviceTopology) -> bool:
    """kubelet's ``deviceHasTopologyAlignment``: some device reports a NUMA node."""
    return any(nodes for nodes in devices.values())


def generate_device_hints(
    numa_nodes: Sequence[int],
    inventory: DeviceTopology,
    available: Iterable[str],
    request: int,
) -> list[TopologyHint]:
    """kubelet's ``generateDeviceTopologyHints`` with no reusable devices.

    ``inventory`` is the resource's every device (kubelet's ``allDevices``);
    ``available`` the device ids a hint must find ``request`` of. An id missing
    from ``inventory`` has no topology, as a missing map key has none in kubelet.
    """
    machine = frozenset(numa_nodes)

    def device_mask(nodes: Iterable[int]) -> int:
        # AnySet never matches a node the machine does not have: masks hold only machine nodes
        return mask_of(n for n in nodes if n in machine)

    # devices grouped by their mask: kubelet counts them one by one, the counts are the same
    every = Counter(device_mask(nodes) for nodes in inventory.values())
    wanted = Counter(device_mask(inventory.get(d, frozenset())) for d in set(available))
    min_affinity = len(numa_nodes)
    masks: list[int] = []
    for mask in iterate_masks(numa_nodes):
        width = mask.bit_count()
        if width < min_affinity and sum(n for m, n in every.items() if m & mask) >= request:
            min_affinity = width
        if sum(n for m, n in wanted.items() if m & mask) >= request:
            masks.append(mask)
    return [TopologyHint(mask, mask.bit_count() == min_affinity) for mask in masks]


def allocated_device_hints(
    numa_nodes: Sequence[int],
    allocated: Iterable[ContainerDevices],
    inventory: Iterable[ContainerDevices] = (),
) -> ProviderHints:
    """One provider's hints for a container's allocated devices: resource name -> hints.

    ``allocated`` are the container's devices (its ``ContainerResources.devices``),
    ``inventory`` the node's (``AllocatableResources.devices``; empty when
    unknown, then only the container's own devices make the inventory).
    ``None`` when the container holds no device; a resource whose devices
    report no NUMA node maps to ``None`` ("don't care"), and one whose
    allocated devices fit no mask (they lack topology while others have it)
    to ``[]``, as in kubelet.
    """
    mine = device_topology(allocated)
    if not mine:
        return None
    everything = device_topology(inventory)
    hints: dict[str, list[TopologyHint] | None] = {}
    for resource in sorted(mine):
        devices = {**everything.get(resource, {}), **mine[resource]}
        if not has_topology_alignment(devices):
            hints[resource] = None
            continue
        hints[resource] = generate_device_hints(
            numa_nodes, devices, mine[resource], len(mine[resource])
        )
    return hints
