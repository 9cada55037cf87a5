"""kubelet's pod-resources answers as frozen values.

The same shapes as the API's messages (``proto/podresources.proto``), with
kubelet's words, minus protobuf: ``wire`` converts. NUMA nodes are tuples of
node ids; an empty tuple is "no topology" (kubelet sends no ``topology`` for a
device whose plugin reported none).
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY = "memory"  # kubelet's memory type for regular memory; hugepages are "hugepages-<size>"


@dataclass(frozen=True, slots=True)
class ContainerDevices:
    """Devices of one resource, as kubelet reports them.

    kubelet sends one entry per device and NUMA node, so a device on two nodes
    appears in two entries; ``devicehints.device_topology`` merges them.
    """

    resource_name: str
    device_ids: tuple[str, ...]
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MemoryBlock:
    """One memory block: type, size in bytes, NUMA affinity (kubelet's ``ContainerMemory``)."""

    memory_type: str
    size: int
    numa_nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ContainerResources:
    name: str
    devices: tuple[ContainerDevices, ...] = ()
    cpu_ids: tuple[int, ...] = ()
    memory: tuple[MemoryBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class PodResources:
    """One pod as kubelet lists it: sidecars and app containers, never regular init containers."""

    name: str
    namespace: str
    containers: tuple[ContainerResources, ...] = ()
    # pod-level exclusive allocations (PodLevelResourceManagers), overlapping the containers'
    cpu_ids: tuple[int, ...] = ()
    memory: tuple[MemoryBlock, ...] = ()

    def container(self, name: str) -> ContainerResources | None:
        for c in self.containers:
            if c.name == name:
                return c
        return None

    def container_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.containers)


@dataclass(frozen=True, slots=True)
class AllocatableResources:
    """The node's inventory: healthy devices, allocatable CPUs and memory."""

    devices: tuple[ContainerDevices, ...] = ()
    cpu_ids: tuple[int, ...] = ()
    memory: tuple[MemoryBlock, ...] = ()

    def device_keys(self) -> frozenset[tuple[str, str]]:
        """Every (resource name, device id) of the inventory."""
        return device_keys(self.devices)


def device_keys(devices: tuple[ContainerDevices, ...]) -> frozenset[tuple[str, str]]:
    return frozenset((d.resource_name, i) for d in devices for i in d.device_ids)
