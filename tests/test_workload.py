"""Reading kubelet's intent back from NRI data: QoS, requests, pinned CPUs."""

from __future__ import annotations

from fractions import Fraction

import pytest

from nri_plugin.errors import InputError
from nri_plugin.frontends.nri_convert import (
    container_resources,
    page_size_bytes,
    pod_memory_limit,
    pod_qos,
    qos_from_cgroup,
)
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.nri.gen import nri_pb2 as api
from tests.nri_builders import GI, container, pod

UID = "3f5d0c4e-1111-2222-3333-444455556666"
SLICE_UID = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("path", "qos"),
    [
        (f"/kubepods/pod{UID}", "Guaranteed"),
        (f"/kubepods/burstable/pod{UID}", "Burstable"),
        (f"/kubepods/besteffort/pod{UID}", "BestEffort"),
        (f"/kubepods.slice/kubepods-pod{SLICE_UID}.slice", "Guaranteed"),
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SLICE_UID}.slice",
            "Burstable",
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SLICE_UID}.slice",
            "BestEffort",
        ),
        # a non-default --cgroup-root prefixes the path
        (f"/custom/root/kubepods/burstable/pod{UID}", "Burstable"),
        # a container's systemd cgroupsPath
        (f"kubepods-burstable-pod{SLICE_UID}.slice:cri-containerd:abc", "Burstable"),
        (f"kubepods-pod{SLICE_UID}.slice:cri-containerd:abc", "Guaranteed"),
        # not a Kubernetes pod
        ("/system.slice/foo.service", None),
        ("", None),
    ],
)
def test_qos_from_cgroup_paths(path: str, qos: str | None) -> None:
    assert qos_from_cgroup(path) == qos


def test_qos_falls_back_to_the_container_cgroups_path() -> None:
    p = api.PodSandbox(uid=UID)
    c = api.Container(name="c")
    c.linux.cgroups_path = f"kubepods-besteffort-pod{SLICE_UID}.slice:cri-containerd:x"
    assert pod_qos(p, c) == "BestEffort"


@pytest.mark.parametrize(("text", "size"), [("2MB", 2 << 20), ("1GB", 1 << 30), ("64KB", 64 << 10)])
def test_page_sizes(text: str, size: int) -> None:
    assert page_size_bytes(text) == size


@pytest.mark.parametrize("text", ["", "2M", "1gb", "-2MB", "2 MB"])
def test_bad_page_sizes(text: str) -> None:
    with pytest.raises(InputError, match="page size"):
        page_size_bytes(text)


def test_container_resources_read_limits_quota_and_cpuset() -> None:
    p = pod("u")
    c = container(p, "app", "c1", 3 * GI, cpus="2-3", cpu_millis=2500, hugepages={"2MB": 64 << 20})
    r = container_resources(c)
    # zero hugepage limits (every host size is listed) are not requests
    assert r.memory == {"memory": 3 * GI, "hugepages-2Mi": 64 << 20}
    assert r.cpu_limit == Fraction(5, 2)
    assert r.cpus == frozenset({2, 3})


def test_absent_memory_limit_is_no_request() -> None:
    p = pod("u", "BestEffort")
    assert container_resources(container(p, "c", "c1", None)).memory == {}


def test_negative_memory_limit_is_refused() -> None:
    p = pod("u")
    c = container(p, "c", "c1", None)
    c.linux.resources.memory.limit.value = -5
    with pytest.raises(InputError, match="out of range"):
        container_resources(c)


def test_pinned_cpus_ignore_the_shared_pool() -> None:
    topo = topology_from_mapping(
        {
            "nodes": [
                {"id": 0, "cpus": "0-3", "memory": "1Gi"},
                {"id": 1, "cpus": "4-7", "memory": "1Gi"},
            ]
        }
    )
    p = pod("u")

    def cpus(text: str) -> frozenset[int] | None:
        return container_resources(container(p, "c", "c", GI, cpus=text)).pinned_cpus(topo)

    assert cpus("") is None
    assert cpus("0-7") is None  # all CPUs: CPU manager policy none
    assert cpus("0-31") is None  # wider than the machine: still the shared pool
    assert cpus("4-5") == frozenset({4, 5})
    assert cpus("5,40") == frozenset({5})  # CPUs the topology does not know are ignored


def test_pod_memory_limit() -> None:
    assert pod_memory_limit(pod("u", memory_limit=6 * GI)) == 6 * GI
    assert pod_memory_limit(pod("u")) is None
