"""The plugin's image run by a real containerd (2.x and 1.7) as kubelet runs deploy/'s DaemonSet.

The image is the one hack/image-build.sh builds from the Dockerfile. deploy/ is rendered by
kubectl's kustomize through an overlay that sets that image, as the README tells a user to do;
the container's args, security context, volumes, mounts, resources and probes are read from
the rendered DaemonSet and turned into CRI requests the way kubelet turns them. Only the host
paths are swapped for private ones, and two things differ from a node, both because there is
no CNI here: the pod shares the host's network (so the probe's port is the host's) and the
probe is sent by the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.manifests import render

from .conftest import FLAVOR_IDS
from .harness import (
    FLAVOR_TAG,
    FLAVORS,
    REPO,
    Containerd,
    CRIClient,
    E2EPaths,
    Flavor,
    Pod,
    PodResources,
    QoS,
    registered_pattern,
)

MI = 1 << 20
PLUGIN = "nri-memory-manager"

# kubelet's default /proc and /sys masks (pkg/securitycontext/util.go, ProcMount "Default").
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# What kubelet translates; anything else in the manifest fails the test instead of being
# silently left out.
_CONTAINER_SECURITY_FIELDS = {
    "runAsUser",
    "runAsGroup",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "seccompProfile",
}
_POD_SECURITY_FIELDS = {"seccompProfile"}
# A kubeadm node's kubelet config, reduced to what a node that reserves nothing has.
KUBELET_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
"""
# reservedMemory must add up to kubelet's reservations (100Mi: the evictionHard default).
BAD_CONFIG = "policy: static\nreservedMemory:\n  - numaNode: 0\n    limits:\n      memory: 300Mi\n"


class NRIDirContainerd(Containerd):
    """containerd with its NRI socket alone in a directory, like /var/run/nri on a node: the
    DaemonSet mounts that directory, and containerd's own run directory must not be mounted.
    containerd makes the directory itself, root's with mode 0700, as on a node."""

    @property
    def nri_socket(self) -> Path:
        return self.run_dir / "nri" / "nri.sock"


# --------------------------------------------------------------------------------------------
# deploy/ as rendered


@dataclass(frozen=True)
class Deployment:
    docs: list[dict[str, Any]]

    @property
    def daemonset(self) -> dict[str, Any]:
        (ds,) = [d for d in self.docs if d["kind"] == "DaemonSet"]
        return ds

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.daemonset["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod_spec["containers"]
        assert not self.pod_spec.get("initContainers"), "init containers are not run here"
        return dict(container)

    def config_map(self, name: str) -> dict[str, str]:
        (cm,) = [d for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        return dict(cm["data"])

    def probe_port(self, probe: str) -> int:
        port = self.container[probe]["httpGet"]["port"]
        if isinstance(port, int):
            return port
        (number,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        return int(number)

    @property
    def registered_name(self) -> str:
        """containerd's name for the plugin: "<index>-<name>" from the args."""
        flags = dict(a.removeprefix("--").split("=", 1) for a in self.container["args"])
        return f"{flags['plugin-index']}-{flags['plugin-name']}"


def render_with_image(
    paths: E2EPaths, image: str, work: Path, base: Path = REPO / "deploy"
) -> Deployment:
    """deploy/ (or another kustomization, such as hack/kind) through an overlay that sets
    `image`, as the README's install section says."""
    name, _, tag = image.rpartition(":")
    overlay = work / "overlay"
    overlay.mkdir(parents=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, overlay)],
        "images": [{"name": PLUGIN, "newName": name, "newTag": tag}],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return Deployment(render(paths, overlay))


def image_name(archive: Path) -> str:
    """The reference `ctr images import` gives the image: index.json's ref.name."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    (manifest,) = index["manifests"]
    name: str = manifest["annotations"]["org.opencontainers.image.ref.name"]
    return name


# --------------------------------------------------------------------------------------------
# kubelet's translation of a pod spec into CRI


def cpu_millis(quantity: str | int | float) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def qos_class(container: Mapping[str, Any]) -> QoS:
    """kubelet's GetPodQOS for a one-container pod (requests default to limits)."""
    resources = container.get("resources", {})
    limits = resources.get("limits", {})
    requests = {**limits, **resources.get("requests", {})}
    if not requests and not limits:
        return "BestEffort"
    if all(k in limits and limits[k] == requests.get(k) for k in ("cpu", "memory")):
        return "Guaranteed"
    return "Burstable"


def security_context(api: Any, pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> Any:
    """kubelet's LinuxContainerSecurityContext (determineEffectiveSecurityContext and
    convertToRuntimeSecurityContext): container fields over the pod's."""
    pod_sc = pod_spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    assert set(pod_sc) <= _POD_SECURITY_FIELDS, f"pod securityContext: {set(pod_sc)}"
    assert set(sc) <= _CONTAINER_SECURITY_FIELDS, f"container securityContext: {set(sc)}"
    out = api.LinuxContainerSecurityContext(
        privileged=bool(sc.get("privileged", False)),
        readonly_rootfs=bool(sc.get("readOnlyRootFilesystem", False)),
        # AddNoNewPrivileges: only an explicit allowPrivilegeEscalation: false sets it
        no_new_privs=sc.get("allowPrivilegeEscalation") is False,
        masked_paths=list(MASKED_PATHS),
        readonly_paths=list(READONLY_PATHS),
    )
    caps = sc.get("capabilities", {})
    out.capabilities.CopyFrom(
        api.Capability(
            add_capabilities=list(caps.get("add", [])),
            drop_capabilities=list(caps.get("drop", [])),
        )
    )
    if "runAsUser" in sc:
        out.run_as_user.value = sc["runAsUser"]
    if "runAsGroup" in sc:
        out.run_as_group.value = sc["runAsGroup"]
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
    if seccomp is not None:
        assert seccomp["type"] == "RuntimeDefault", f"seccomp profile {seccomp} not handled"
        out.seccomp.CopyFrom(api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault))
    return out


@dataclass
class HostPaths:
    """Private stand-ins for the DaemonSet's hostPath volumes, by the node path they replace."""

    by_node_path: dict[str, Path]
    work: Path
    made: list[Path] = field(default_factory=list)

    def volume_source(self, deployment: Deployment, volume: Mapping[str, Any]) -> Path:
        """Where kubelet would find (or put) the volume on the node."""
        if "hostPath" in volume:
            node_path = volume["hostPath"]["path"]
            assert node_path in self.by_node_path, f"no private stand-in for hostPath {node_path}"
            path = self.by_node_path[node_path]
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate" and not path.exists():
                path.mkdir(mode=0o755)  # kubelet's mode for a directory it creates
            if kind in ("Directory", "DirectoryOrCreate"):
                assert path.is_dir(), f"hostPath {node_path} ({kind}): {path} is no directory"
            if kind == "File":
                assert path.is_file(), f"hostPath {node_path} (File): {path} is no file"
            return path
        # ConfigMaps: kubelet writes each key as a file of the volume's directory
        if "configMap" in volume:
            names = [volume["configMap"]["name"]]
        else:
            sources = volume["projected"]["sources"]
            assert all(set(s) == {"configMap"} for s in sources), f"volume {volume} not handled"
            names = [s["configMap"]["name"] for s in sources]
        directory: Path = self.work / "volumes" / volume["name"]
        directory.mkdir(parents=True)
        for name in names:
            for key, value in deployment.config_map(name).items():
                (directory / key).write_text(value)
        return directory

    def mounts(self, api: Any, deployment: Deployment) -> list[Any]:
        """kubelet's CRI Mounts for the container: its volumeMounts, then the termination
        message file kubelet adds to every container."""
        volumes = {v["name"]: v for v in deployment.pod_spec["volumes"]}
        mounts = []
        for vm in deployment.container["volumeMounts"]:
            assert "subPath" not in vm, "subPath mounts are not handled"
            source = self.volume_source(deployment, volumes[vm["name"]])
            mounts.append(
                api.Mount(
                    container_path=vm["mountPath"],
                    host_path=str(source),
                    readonly=bool(vm.get("readOnly", False)),
                    propagation=api.PROPAGATION_PRIVATE,
                )
            )
        termination = self.work / "termination-log"
        termination.touch(mode=0o666)
        path = deployment.container.get("terminationMessagePath", "/dev/termination-log")
        mounts.append(api.Mount(container_path=path, host_path=str(termination)))
        return mounts


@dataclass(frozen=True)
class Running:
    """The plugin's pod and container, created as kubelet creates them from the DaemonSet."""

    pod: Pod
    container_id: str
    mounts: list[Any]


def run_daemonset_pod(
    cri: CRIClient, deployment: Deployment, host: HostPaths, image: str
) -> Running:
    api = cri.api
    container = deployment.container
    resources = container["resources"]
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    cpu = cpu_millis(requests.get("cpu", limits.get("cpu", 0)))
    cpu_limit = cpu_millis(limits["cpu"]) if "cpu" in limits else 0
    memory_limit = memory_bytes(limits["memory"]) if "memory" in limits else 0
    qos = qos_class(container)
    template = deployment.daemonset["spec"]["template"]
    uid = str(uuid.uuid4())
    pod = cri.run_pod(
        uid,
        f"{PLUGIN}-{uid[:5]}",
        qos,
        namespace=deployment.daemonset["metadata"]["namespace"],
        resources=PodResources(cpu, memory_limit, cpu_limit),
        labels=template["metadata"].get("labels"),
        annotations=template["metadata"].get("annotations"),
    )
    mounts = host.mounts(api, deployment)
    cid = cri.create_container(
        pod,
        container["name"],
        image=image,
        command=container.get("command"),
        args=container.get("args", []),
        mounts=mounts,
        security_context=security_context(api, deployment.pod_spec, container),
        cpu_millis=cpu,
        cpu_limit_millis=cpu_limit,
        memory_limit=memory_limit,
    )
    cri.start_container(cid)
    return Running(pod, cid, mounts)


def remove_pod(cri: CRIClient, pod: Pod) -> None:
    cri.stop_pod(pod.id)
    cri.remove_pod(pod.id)


def cri_log_lines(path: Path) -> list[tuple[str, str]]:
    """(stream, text) of each line of a CRI log file ("<time> <stream> <F|P> <text>")."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        _, stream, _, text = line.split(" ", 3)
        out.append((stream, text))
    return out


def wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)
    return value


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the plugin's server does
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def host_numa_nodes() -> str:
    online = Path("/sys/devices/system/node/online")
    return online.read_text().strip() if online.exists() else "0"


# --------------------------------------------------------------------------------------------
# Fixtures


@dataclass(frozen=True)
class Deployed:
    ctrd: Containerd
    cri: CRIClient
    deployment: Deployment
    host: HostPaths
    running: Running
    image: str
    port: int

    @property
    def state_dir(self) -> Path:
        return self.host.by_node_path["/var/lib/nri-memory-manager"]

    @property
    def log(self) -> Path:
        return self.cri.container_log(self.running.pod, self.deployment.container["name"])

    def log_text(self) -> str:
        return "\n".join(text for _, text in cri_log_lines(self.log))

    def log_records(self) -> list[dict[str, Any]]:
        """The plugin's structured log lines (one JSON object each), from its CRI log."""
        records = []
        for _, text in cri_log_lines(self.log):
            with contextlib.suppress(ValueError):
                if isinstance(record := json.loads(text), dict):
                    records.append(record)
        return records

    @property
    def pid(self) -> int:
        return int(self.cri.info(self.running.container_id)["pid"])


@contextlib.contextmanager
def daemonset_running(
    e2e_paths: E2EPaths,
    flavor: Flavor,
    archive: Path,
    deployment: Deployment,
    work: Path,
    kubelet_config: str,
    name: str,
) -> Iterator[Deployed]:
    """containerd of `flavor` (instance `name`) with the image imported and the rendered
    DaemonSet's pod running and registered with NRI; everything torn down after."""
    image = image_name(archive)
    assert deployment.container["image"] == image
    port = deployment.probe_port("readinessProbe")
    assert deployment.probe_port("livenessProbe") == port
    if port_in_use(port):
        pytest.fail(
            f"port {port}, the probes' port in the DaemonSet, is in use on this host;"
            " the plugin's container shares the host's network here: free the port first"
        )
    ctrd = NRIDirContainerd(e2e_paths, flavor, name)
    try:
        ctrd.start()
        ctrd.import_image(archive)
        cri = ctrd.cri()
        kubelet_file = work / "kubelet-config.yaml"
        kubelet_file.write_text(kubelet_config)
        host = HostPaths(
            {
                "/var/run/nri": ctrd.nri_socket.parent,
                "/var/lib/nri-memory-manager": work / "state",
                "/sys": Path("/sys"),
                "/var/lib/kubelet/config.yaml": kubelet_file,
                # no kubelet here: its pod-resources directory is empty
                "/var/lib/kubelet/pod-resources": work / "pod-resources",
                "/run/nri-memory-manager": work / "run",
            },
            work,
        )
        since = ctrd.log_offset()
        running = run_daemonset_pod(cri, deployment, host, image)
        deployed = Deployed(ctrd, cri, deployment, host, running, image, port)

        def registered() -> bool:
            if ctrd.search_log(registered_pattern(deployment.registered_name), since):
                return True
            state = cri.container_state(running.container_id)
            assert state == "CONTAINER_RUNNING", f"plugin {state}; its log:\n{deployed.log_text()}"
            return False

        wait_until(registered, 60, f"registration of {deployment.registered_name}")
        yield deployed
    finally:
        try:
            ctrd.close()
        finally:
            ctrd.assert_clean()


@pytest.fixture(scope="module", params=FLAVORS, ids=FLAVOR_IDS)
def deployed(
    request: pytest.FixtureRequest,
    e2e_paths: E2EPaths,
    plugin_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    """containerd of one flavor with the image imported and deploy/'s DaemonSet running."""
    flavor = request.param
    work = tmp_path_factory.mktemp(f"image-{FLAVOR_TAG[flavor]}")
    deployment = render_with_image(e2e_paths, image_name(plugin_image), work)
    name = f"img{FLAVOR_TAG[flavor]}"
    with daemonset_running(
        e2e_paths, flavor, plugin_image, deployment, work, KUBELET_CONFIG, name
    ) as running:
        yield running


# --------------------------------------------------------------------------------------------
# Tests


def test_registers_with_nri_and_answers_the_probe(deployed: Deployed) -> None:
    status, body = wait_until(
        lambda: (r := http_get(deployed.port, "/healthz"))[0] == 200 and r,
        15,
        f"200 from /healthz on port {deployed.port}",
    )
    assert status == 200, body
    _, metrics = http_get(deployed.port, "/metrics")
    assert re.search(r"^nri_memory_manager_runtime_connected 1\.0$", metrics, re.M), metrics
    assert deployed.cri.container_state(deployed.running.container_id) == "CONTAINER_RUNNING"


def test_container_is_what_the_daemonset_describes(deployed: Deployed) -> None:
    spec = deployed.cri.spec(deployed.running.container_id)
    container = deployed.deployment.container
    # no `command`: the image's ENTRYPOINT gets the DaemonSet's args
    args = spec["process"]["args"]
    assert args[-len(container["args"]) :] == container["args"]
    assert Path(args[0]).name == PLUGIN and args[1] == "run"
    assert spec["root"].get("readonly") is True
    assert spec["process"].get("noNewPrivileges") is True
    assert not any(spec["process"].get("capabilities", {}).values())
    assert spec["linux"].get("seccomp"), "no seccomp profile in the OCI spec"
    mounts = {m["destination"]: m for m in spec["mounts"]}
    for vm in container["volumeMounts"]:
        mount = mounts[vm["mountPath"]]
        source = next(
            m.host_path for m in deployed.running.mounts if m.container_path == vm["mountPath"]
        )
        assert mount["source"] == source
        assert ("ro" in mount["options"]) == bool(vm.get("readOnly")), vm


def test_plugin_process_has_no_privilege(deployed: Deployed) -> None:
    status = proc_status(deployed.pid)
    assert status["Uid"].split() == ["0"] * 4  # runAsUser 0: the NRI socket dir is root's
    for caps in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps} {status[caps]}"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # a filter: RuntimeDefault
    (root,) = [
        line.split()
        for line in Path(f"/proc/{deployed.pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    ]
    assert "ro" in root[5].split(","), f"root mounted {root[5]}"
    # and yet registered: owning the socket's 0700 directory is all it takes
    nri_dir = deployed.ctrd.nri_socket.parent.stat()
    assert (stat.S_IMODE(nri_dir.st_mode), nri_dir.st_uid) == (0o700, 0)


def test_pins_a_guaranteed_container_and_checkpoints_it_in_the_state_mount(
    deployed: Deployed,
) -> None:
    cri = deployed.cri
    uid = str(uuid.uuid4())
    pod = cri.run_pod(uid, qos="Guaranteed", resources=PodResources(1000, 256 * MI))
    try:
        cid = cri.create_container(pod, "app", memory_limit=256 * MI, cpu_millis=1000)
        # --sysfs-root through the read-only /sys mount: the host's own NUMA nodes
        assert cri.mems(cid) == host_numa_nodes()
        cri.start_container(cid)
        assert cri.container_state(cid) == "CONTAINER_RUNNING"
        assert cri.host_cpuset_mems(cid) == host_numa_nodes()
        decision = wait_until(
            lambda: next((r for r in deployed.log_records() if r.get("pod_uid") == uid), None),
            10,
            "the plugin's decision in its CRI log",
        )
        assert decision["result"] == "pinned", decision
        assert decision["cpuset_mems"] == host_numa_nodes(), decision

        checkpoint = deployed.state_dir / "memory_manager_state"

        def checkpointed() -> dict[str, Any] | None:
            state: dict[str, Any] = json.loads(checkpoint.read_text())
            return state if uid in state.get("entries", {}) else None

        state = wait_until(checkpointed, 10, f"pod {uid} in {checkpoint}")
        assert set(state["entries"][uid]) == {"app"}
        assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o600
        assert checkpoint.stat().st_uid == 0
        # kubelet made the hostPath 0755 (DirectoryOrCreate); the plugin keeps it private
        assert stat.S_IMODE(deployed.state_dir.stat().st_mode) == 0o700
    finally:
        remove_pod(cri, pod)


def test_serves_pod_resources_through_its_mount_without_kubelet(deployed: Deployed) -> None:
    import grpc  # type: ignore[import-untyped]

    from nri_plugin.podresources.gen import podresources_pb2 as pb
    from nri_plugin.podresources.gen import podresources_pb2_grpc as pb_grpc

    # no kubelet here: its (read-only) pod-resources directory is empty, said once
    absent = [r for r in deployed.log_records() if "pod-resources socket absent" in r["event"]]
    assert len(absent) == 1, absent
    (flag,) = [a for a in deployed.deployment.container["args"] if "--serve-pod-resources" in a]
    served = PurePosixPath(flag.split("=", 1)[1])
    socket_path = deployed.host.by_node_path[str(served.parent)] / served.name
    wait_until(socket_path.is_socket, 10, f"the served socket {socket_path}")
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = pb_grpc.PodResourcesListerStub(channel)
        allocatable = stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=10)
    state = json.loads((deployed.state_dir / "memory_manager_state").read_text())
    assert {(m.memory_type, m.topology.nodes[0].ID): m.size for m in allocatable.memory} == {
        (t, int(node)): table["allocatable"]
        for node, machine in state["machineState"].items()
        for t, table in machine["memoryMap"].items()
        if table["allocatable"]
    }


def test_bad_config_stops_the_container_with_one_line_in_its_log(deployed: Deployed) -> None:
    cri = deployed.cri
    work = deployed.host.work / "bad"
    work.mkdir()
    (config_name,) = deployed.deployment.config_map(f"{PLUGIN}-config")
    docs = [
        {**d, "data": {config_name: BAD_CONFIG}} if d["kind"] == "ConfigMap" else d
        for d in deployed.deployment.docs
    ]
    host = HostPaths(
        {**deployed.host.by_node_path, "/var/lib/nri-memory-manager": work / "state"}, work
    )
    bad = run_daemonset_pod(cri, Deployment(docs), host, deployed.image)
    try:
        wait_until(
            lambda: cri.container_state(bad.container_id) == "CONTAINER_EXITED",
            30,
            "exit of the plugin with a bad config",
        )
        assert cri.container_exit_code(bad.container_id) == 2
        lines = cri_log_lines(cri.container_log(bad.pod, deployed.deployment.container["name"]))
        # the structured log (one JSON object a line), then one plain line: the error
        *logged, (stream, error) = lines
        assert all(json.loads(text) for _, text in logged), logged
        assert stream == "stderr"
        assert error.startswith("nri-memory-manager run: /etc/nri-memory-manager/config.yaml")
        assert '"300Mi"' in error and '"100Mi"' in error, error
        # the plugin that is running is not disturbed
        assert http_get(deployed.port, "/healthz")[0] == 200
    finally:
        with contextlib.suppress(Exception):
            remove_pod(cri, bad.pod)
