"""The pod-resources messages on the wire, and their conversion to our values.

The messages are generated from ``proto/podresources.proto`` (``gen/``). The
method paths come from the file's own service descriptor, so they are the
ones the generated stubs (and kubelet) use; the client and the served socket
call ``grpc`` with them directly rather than through the generated
``*_pb2_grpc`` module, which refuses to load under a grpcio older than the
grpcio-tools that generated it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.resources import (
    AllocatableResources,
    ContainerDevices,
    ContainerResources,
    MemoryBlock,
    PodResources,
)

SERVICE: str = pb.DESCRIPTOR.services_by_name["PodResourcesLister"].full_name
LIST = f"/{SERVICE}/List"
GET = f"/{SERVICE}/Get"
GET_ALLOCATABLE_RESOURCES = f"/{SERVICE}/GetAllocatableResources"

# method path -> (request type, response type)
METHODS: dict[str, tuple[Any, Any]] = {
    LIST: (pb.ListPodResourcesRequest, pb.ListPodResourcesResponse),
    GET: (pb.GetPodResourcesRequest, pb.GetPodResourcesResponse),
    GET_ALLOCATABLE_RESOURCES: (pb.AllocatableResourcesRequest, pb.AllocatableResourcesResponse),
}


def _nodes(topology: Any) -> tuple[int, ...]:
    return tuple(n.ID for n in topology.nodes)


def devices_from_pb(messages: Iterable[Any]) -> tuple[ContainerDevices, ...]:
    return tuple(
        ContainerDevices(m.resource_name, tuple(m.device_ids), _nodes(m.topology)) for m in messages
    )


def memory_from_pb(messages: Iterable[Any]) -> tuple[MemoryBlock, ...]:
    return tuple(MemoryBlock(m.memory_type, m.size, _nodes(m.topology)) for m in messages)


def container_from_pb(message: Any) -> ContainerResources:
    return ContainerResources(
        name=message.name,
        devices=devices_from_pb(message.devices),
        cpu_ids=tuple(message.cpu_ids),
        memory=memory_from_pb(message.memory),
    )


def pod_from_pb(message: Any) -> PodResources:
    return PodResources(
        name=message.name,
        namespace=message.namespace,
        containers=tuple(container_from_pb(c) for c in message.containers),
        cpu_ids=tuple(message.cpu_ids),
        memory=memory_from_pb(message.memory),
    )


def allocatable_from_pb(message: Any) -> AllocatableResources:
    return AllocatableResources(
        devices=devices_from_pb(message.devices),
        cpu_ids=tuple(message.cpu_ids),
        memory=memory_from_pb(message.memory),
    )


def _topology_pb(nodes: Iterable[int]) -> Any:
    return pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in nodes])


def memory_to_pb(blocks: Iterable[MemoryBlock]) -> list[Any]:
    """kubelet's ``containerMemoryFromBlock``: a topology on every block, even an empty one."""
    return [
        pb.ContainerMemory(
            memory_type=b.memory_type, size=b.size, topology=_topology_pb(b.numa_nodes)
        )
        for b in blocks
    ]


def devices_to_pb(devices: Iterable[ContainerDevices]) -> list[Any]:
    out = []
    for d in devices:
        message = pb.ContainerDevices(resource_name=d.resource_name, device_ids=list(d.device_ids))
        if d.numa_nodes:
            message.topology.CopyFrom(_topology_pb(d.numa_nodes))
        out.append(message)
    return out


def container_to_pb(container: ContainerResources) -> Any:
    return pb.ContainerResources(
        name=container.name,
        devices=devices_to_pb(container.devices),
        cpu_ids=list(container.cpu_ids),
        memory=memory_to_pb(container.memory),
    )


def pod_to_pb(pod: PodResources) -> Any:
    return pb.PodResources(
        name=pod.name,
        namespace=pod.namespace,
        containers=[container_to_pb(c) for c in pod.containers],
        cpu_ids=list(pod.cpu_ids),
        memory=memory_to_pb(pod.memory),
    )


def allocatable_to_pb(allocatable: AllocatableResources) -> Any:
    return pb.AllocatableResourcesResponse(
        devices=devices_to_pb(allocatable.devices),
        cpu_ids=list(allocatable.cpu_ids),
        memory=memory_to_pb(allocatable.memory),
    )
