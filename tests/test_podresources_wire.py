"""The pod-resources proto: generated modules up to date, kubelet's numbers, conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nri_plugin.podresources import wire
from nri_plugin.podresources.gen import podresources_pb2 as pb
from nri_plugin.podresources.gen import podresources_pb2_grpc as pb_grpc
from nri_plugin.podresources.resources import (
    AllocatableResources,
    ContainerDevices,
    ContainerResources,
    MemoryBlock,
    PodResources,
)

REPO = Path(__file__).resolve().parents[1]
GEN = REPO / "nri_plugin" / "podresources" / "gen"


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_proto.py"), "--podresources-out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in GEN.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    assert [n for n in fresh if fresh[n] != committed[n]] == [], "run hack/gen_proto.py"


# kubelet's k8s.io/kubelet/pkg/apis/podresources/v1/api.proto
FIELD_NUMBERS = {
    ("AllocatableResourcesResponse", "devices"): 1,
    ("AllocatableResourcesResponse", "cpu_ids"): 2,
    ("AllocatableResourcesResponse", "memory"): 3,
    ("ListPodResourcesResponse", "pod_resources"): 1,
    ("PodResources", "name"): 1,
    ("PodResources", "namespace"): 2,
    ("PodResources", "containers"): 3,
    ("PodResources", "cpu_ids"): 4,
    ("PodResources", "memory"): 5,
    ("ContainerResources", "name"): 1,
    ("ContainerResources", "devices"): 2,
    ("ContainerResources", "cpu_ids"): 3,
    ("ContainerResources", "memory"): 4,
    ("ContainerMemory", "memory_type"): 1,
    ("ContainerMemory", "size"): 2,
    ("ContainerMemory", "topology"): 3,
    ("ContainerDevices", "resource_name"): 1,
    ("ContainerDevices", "device_ids"): 2,
    ("ContainerDevices", "topology"): 3,
    ("TopologyInfo", "nodes"): 1,
    ("NUMANode", "ID"): 1,
    ("GetPodResourcesRequest", "pod_name"): 1,
    ("GetPodResourcesRequest", "pod_namespace"): 2,
    ("GetPodResourcesResponse", "pod_resources"): 1,
}


@pytest.mark.parametrize(("message", "name"), sorted(FIELD_NUMBERS))
def test_field_numbers_are_kubelets(message: str, name: str) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[name].number == FIELD_NUMBERS[(message, name)]


def test_method_paths_are_those_of_the_generated_stub() -> None:
    assert pb.DESCRIPTOR.package == "v1"
    assert wire.SERVICE == "v1.PodResourcesLister"

    class Recorder:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def unary_unary(self, path: str, **kw: object) -> None:
            self.paths.append(path)

    channel = Recorder()
    pb_grpc.PodResourcesListerStub(channel)
    assert sorted(channel.paths) == sorted(wire.METHODS)


def test_values_round_trip_through_the_wire() -> None:
    pod = PodResources(
        name="web",
        namespace="default",
        containers=(
            ContainerResources(
                name="app",
                devices=(
                    ContainerDevices("example.com/gpu", ("gpu1",), (1,)),
                    ContainerDevices("example.com/qat", ("qat0",)),
                ),
                cpu_ids=(2, 3),
                memory=(
                    MemoryBlock("memory", 1 << 30, (0, 1)),
                    MemoryBlock("hugepages-2Mi", 0, ()),
                ),
            ),
        ),
        cpu_ids=(2, 3),
        memory=(MemoryBlock("memory", 1 << 30, (0,)),),
    )
    message = pb.PodResources.FromString(wire.pod_to_pb(pod).SerializeToString())
    assert wire.pod_from_pb(message) == pod
    # kubelet's containerMemoryFromBlock sets a topology even when it has no node
    assert message.containers[0].memory[1].HasField("topology")
    assert not message.containers[0].devices[1].HasField("topology")
    allocatable = AllocatableResources(
        devices=pod.containers[0].devices,
        cpu_ids=(0, 1),
        memory=(MemoryBlock("memory", 8 << 30, (0,)),),
    )
    assert wire.allocatable_from_pb(wire.allocatable_to_pb(allocatable)) == allocatable
