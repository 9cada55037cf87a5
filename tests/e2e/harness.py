"""Drive a private, real containerd with NRI over CRI, the way kubelet would.

Everything lives under the directory prepared by `hack/e2e-setup.sh` (`E2EPaths`). One
`Containerd` is one private daemon (flavor "2.x" or "1.7") with its own run directory
`<dir>/run-<instance>` (root, state, sockets) and its own cgroup prefix
`/nmm-e2e-<instance>-<dir hash>`, so several instances (and runs in other directories)
can run side by side and each can be torn down without trace.
`CRIClient` talks CRI to it; `PluginProcess` runs an NRI plugin next to it.

Usable outside pytest (benchmarks, demos): nothing here imports pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Literal, Self

import grpc  # type: ignore[import-untyped]

Flavor = Literal["2.x", "1.7"]
QoS = Literal["Guaranteed", "Burstable", "BestEffort"]
CgroupDriver = Literal["cgroupfs", "systemd"]

FLAVORS: tuple[Flavor, ...] = ("2.x", "1.7")
DEFAULT_DIR = Path("/tmp/nmm-e2e")
SANDBOX_IMAGE = "localhost/e2e/pause:1"
WORKLOAD_IMAGE = "localhost/e2e/busybox:1"
REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "hack" / "e2e-setup.sh"

# Per flavor: the setup's install directory and the short tag used in run dirs and cgroups.
_INSTALL = {"2.x": "ctrd2", "1.7": "ctrd17"}
FLAVOR_TAG = {"2.x": "2x", "1.7": "17"}

# kubelet's constants (pkg/kubelet/cm, pkg/kubelet/qos).
CFS_PERIOD_US = 100_000
MIN_SHARES = 2
MIN_QUOTA_US = 1000
GUARANTEED_OOM_SCORE_ADJ = -997
BESTEFFORT_OOM_SCORE_ADJ = 1000

CRI_TIMEOUT_S = 60.0
# the annotation naming the fake NUMA nodes a container got (nri_plugin/tracker/nodemap.py)
NUMA_NODES_ANNOTATION = "nri-memory-manager.io/numa-nodes"
_CGROUP_FS = "/sys/fs/cgroup"

# Instances started and not yet torn down. Whatever a process leaves here when it
# exits (its teardown was cut short, or never ran) is swept at exit.
_LIVE: set[Containerd] = set()


def sweep_live_instances() -> None:
    """Remove every instance this process started and did not close (an atexit hook)."""
    for ctrd in list(_LIVE):
        with contextlib.suppress(Exception):
            for plugin in ctrd._plugins:
                plugin.stop()
        with contextlib.suppress(Exception):
            ctrd._sweep()
        _LIVE.discard(ctrd)


atexit.register(sweep_live_instances)


class HarnessError(RuntimeError):
    """The test environment misbehaved (not a finding about the code under test)."""


class CRIError(Exception):
    """A CRI call failed; the text carries containerd's own message."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


# --------------------------------------------------------------------------------------------
# Installed files


@dataclass(frozen=True)
class E2EPaths:
    """The files `hack/e2e-setup.sh` installs under one directory."""

    root: Path

    @classmethod
    def from_env(cls) -> E2EPaths:
        return cls(Path(os.environ.get("NMM_E2E_DIR") or DEFAULT_DIR).absolute())

    def containerd_root(self, flavor: Flavor) -> Path:
        return self.root / _INSTALL[flavor] / "root"

    def containerd_bin(self, flavor: Flavor, name: str = "containerd") -> Path:
        return self.containerd_root(flavor) / "usr" / "bin" / name

    @property
    def runc(self) -> Path:
        return self.root / "base" / "root" / "usr" / "sbin" / "runc"

    @property
    def image_tar(self) -> Path:
        return self.root / "e2e-image.tar"

    @property
    def kubectl(self) -> Path:
        return self.root / "k8s" / "root" / "usr" / "bin" / "kubectl"

    @property
    def kustomize(self) -> Path:
        return self.root / "k8s" / "root" / "usr" / "bin" / "kustomize"

    @property
    def schema_validator(self) -> Path:
        """The python of the venv holding kubernetes-validate (Kubernetes' JSON schemas)."""
        return self.root / "validate" / "bin" / "python"

    @property
    def manifest_tools(self) -> list[Path]:
        return [self.kubectl, self.kustomize, self.schema_validator]

    @property
    def plugin_image_archive(self) -> Path:
        """The plugin's image as an OCI archive, built by hack/image-build.sh (not by the
        setup: it takes a minute, and only tests/e2e/test_image.py needs it)."""
        return self.root / "image" / "nri-memory-manager-oci.tar"

    @property
    def stubs_dir(self) -> Path:
        return self.root / "stubs"

    @property
    def logs_dir(self) -> Path:
        """Logs outlive an instance's teardown, so a failure can still be read afterwards."""
        return self.root / "logs"

    @property
    def ready_marker(self) -> Path:
        return self.root / "setup.done"

    def missing(self) -> list[Path]:
        """Files a test needs that are absent (empty: the setup is complete)."""
        needed = [self.ready_marker, self.runc, self.image_tar, *self.manifest_tools]
        needed += [self.stubs_dir / "k8s_cri" / f for f in ("api_pb2.py", "api_pb2_grpc.py")]
        for flavor in FLAVORS:
            needed += [
                self.containerd_bin(flavor, b)
                for b in ("containerd", "ctr", "containerd-shim-runc-v2")
            ]
        return [p for p in needed if not p.exists()]


def run_setup(paths: E2EPaths) -> None:
    """Run `hack/e2e-setup.sh` for `paths`; raises HarnessError with its output on failure."""
    proc = subprocess.run(
        [str(SETUP_SCRIPT), str(paths.root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(
            f"{SETUP_SCRIPT} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


def load_cri_stubs(paths: E2EPaths) -> tuple[ModuleType, ModuleType]:
    """The generated `api_pb2` and `api_pb2_grpc` modules (generated at setup, never committed)."""
    stubs = str(paths.stubs_dir)
    if stubs not in sys.path:
        sys.path.insert(0, stubs)
    return (
        importlib.import_module("k8s_cri.api_pb2"),
        importlib.import_module("k8s_cri.api_pb2_grpc"),
    )


# --------------------------------------------------------------------------------------------
# kubelet's arithmetic


def cpu_shares(request_millis: int) -> int:
    """kubelet's MilliCPUToShares."""
    if request_millis == 0:
        return MIN_SHARES
    return max(MIN_SHARES, request_millis * 1024 // 1000)


def cpu_quota(limit_millis: int, period_us: int = CFS_PERIOD_US) -> int:
    """kubelet's MilliCPUToQuota: 0 means no limit."""
    if limit_millis == 0:
        return 0
    return max(MIN_QUOTA_US, limit_millis * period_us // 1000)


def oom_score_adj(qos: QoS, memory_request: int, memory_capacity: int) -> int:
    """kubelet's GetContainerOOMScoreAdjust (containerd clamps it: restrict_oom_score_adj)."""
    if qos == "Guaranteed":
        return GUARANTEED_OOM_SCORE_ADJ
    if qos == "BestEffort":
        return BESTEFFORT_OOM_SCORE_ADJ
    adj = 1000 - (1000 * memory_request) // max(memory_capacity, 1)
    return min(max(adj, 2), BESTEFFORT_OOM_SCORE_ADJ - 1)


def cgroup_parent(prefix: str, uid: str, qos: QoS, driver: CgroupDriver = "cgroupfs") -> str:
    """kubelet's pod cgroup (--cgroups-per-qos) under cgroup root `prefix`.

    With the systemd driver the names are the slice names kubelet uses; runc here still runs
    with cgroupfs, so they are plain directories, which is all the QoS rule needs to read.
    """
    if driver == "cgroupfs":
        tier = {"Guaranteed": "", "Burstable": "/burstable", "BestEffort": "/besteffort"}[qos]
        return f"{prefix}/kubepods{tier}/pod{uid}"
    uid_ = uid.replace("-", "_")
    if qos == "Guaranteed":
        return f"{prefix}/kubepods.slice/kubepods-pod{uid_}.slice"
    tier = qos.lower()
    return f"{prefix}/kubepods.slice/kubepods-{tier}.slice/kubepods-{tier}-pod{uid_}.slice"


def host_hugepage_sizes() -> list[str]:
    """Hugepage sizes the host supports, in CRI's spelling ("2MB", "1GB")."""
    sizes = []
    for entry in sorted(Path("/sys/kernel/mm/hugepages").glob("hugepages-*kB")):
        kib = int(entry.name.removeprefix("hugepages-").removesuffix("kB"))
        if kib % (1 << 20) == 0:
            sizes.append(f"{kib >> 20}GB")
        elif kib % (1 << 10) == 0:
            sizes.append(f"{kib >> 10}MB")
        else:
            sizes.append(f"{kib}KB")
    return sizes


def memory_capacity() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise HarnessError("MemTotal missing from /proc/meminfo")


@dataclass(frozen=True)
class PodResources:
    """Pod-level totals kubelet >= 1.23 sends in LinuxPodSandboxConfig.resources."""

    cpu_millis: int = 0
    memory_limit: int = 0
    cpu_limit_millis: int | None = None  # None: same as the request (Guaranteed)


# --------------------------------------------------------------------------------------------
# CRI client


@dataclass(frozen=True)
class RuntimeVersion:
    runtime_name: str
    runtime_version: str
    runtime_api_version: str


@dataclass(frozen=True)
class Pod:
    """A pod sandbox as created by `CRIClient.run_pod`; `config` is its PodSandboxConfig."""

    id: str
    uid: str
    name: str
    namespace: str
    qos: QoS
    cgroup_parent: str
    config: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    pod_id: str
    name: str
    attempt: int
    state: str  # CRI ContainerState name, e.g. "CONTAINER_RUNNING"
    labels: Mapping[str, str] = field(compare=False)
    annotations: Mapping[str, str] = field(compare=False)


class CRIClient:
    """Thin CRI RuntimeService client that sends what kubelet sends."""

    def __init__(
        self,
        paths: E2EPaths,
        socket: Path,
        pod_log_root: Path,
        cgroup_prefix: str,
    ) -> None:
        self.api, grpc_mod = load_cri_stubs(paths)
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._runtime = grpc_mod.RuntimeServiceStub(self._channel)
        self._images = grpc_mod.ImageServiceStub(self._channel)
        self.pod_log_root = pod_log_root
        self.cgroup_prefix = cgroup_prefix
        self._memory_capacity = memory_capacity()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float = CRI_TIMEOUT_S) -> Any:
        stub = self._images if method.startswith("Image") else self._runtime
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise CRIError(method, e.code().name, e.details() or "") from None

    # -- runtime ---------------------------------------------------------------------------

    def version(self, timeout: float = CRI_TIMEOUT_S) -> RuntimeVersion:
        r = self._call("Version", self.api.VersionRequest(), timeout)
        return RuntimeVersion(r.runtime_name, r.runtime_version, r.runtime_api_version)

    def image_present(self, image: str) -> bool:
        r = self._call(
            "ImageStatus", self.api.ImageStatusRequest(image=self.api.ImageSpec(image=image))
        )
        return bool(r.image.id)

    # -- pods ------------------------------------------------------------------------------

    def run_pod(
        self,
        uid: str,
        name: str | None = None,
        qos: QoS = "Guaranteed",
        *,
        namespace: str = "e2e",
        cgroup_driver: CgroupDriver = "cgroupfs",
        resources: PodResources | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        attempt: int = 0,
    ) -> Pod:
        """RunPodSandbox with host networking, in kubelet's cgroup for `qos`.

        `resources` None leaves LinuxPodSandboxConfig.resources unset, as kubelet < 1.23 did.
        """
        api = self.api
        name = name or f"pod-{uid[:8]}"
        parent = cgroup_parent(self.cgroup_prefix, uid, qos, cgroup_driver)
        log_dir = self.pod_log_root / f"{namespace}_{name}_{uid}"
        log_dir.mkdir(parents=True, exist_ok=True)  # kubelet creates it before the sandbox
        linux = api.LinuxPodSandboxConfig(
            cgroup_parent=parent,
            security_context=api.LinuxSandboxSecurityContext(
                # No CNI network here: pods share the host's; hostname must then stay empty.
                namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER),
            ),
        )
        if resources is not None:
            limit = resources.cpu_limit_millis
            linux.resources.CopyFrom(
                self._resources(
                    resources.cpu_millis,
                    resources.cpu_millis if limit is None else limit,
                    resources.memory_limit,
                )
            )
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(
                name=name, uid=uid, namespace=namespace, attempt=attempt
            ),
            log_directory=str(log_dir),
            labels={
                **(labels or {}),
                "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid,
            },
            annotations={
                "kubernetes.io/config.seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "kubernetes.io/config.source": "api",
                **(annotations or {}),
            },
            linux=linux,
        )
        r = self._call("RunPodSandbox", api.RunPodSandboxRequest(config=config))
        return Pod(r.pod_sandbox_id, uid, name, namespace, qos, parent, config)

    def stop_pod(self, pod_id: str) -> None:
        self._call("StopPodSandbox", self.api.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        self._call("RemovePodSandbox", self.api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def list_pods(self) -> list[str]:
        return [p.id for p in self._call("ListPodSandbox", self.api.ListPodSandboxRequest()).items]

    def remove_all_pods(self) -> None:
        """Stop and remove every pod (containerd takes their containers and shims with them)."""
        for pod_id in self.list_pods():
            self.stop_pod(pod_id)
            self.remove_pod(pod_id)

    # -- containers ------------------------------------------------------------------------

    def _resources(
        self,
        cpu_millis: int,
        cpu_limit_millis: int,
        memory_limit: int,
        *,
        qos: QoS | None = None,
        cpuset_cpus: str | None = None,
        cpuset_mems: str | None = None,
        hugepages: Mapping[str, int] | None = None,
    ) -> Any:
        """kubelet's LinuxContainerResources (CFS quota enabled, the default)."""
        api = self.api
        request = cpu_millis or cpu_limit_millis  # the API server defaults request to limit
        res = api.LinuxContainerResources(
            cpu_period=CFS_PERIOD_US,
            cpu_quota=cpu_quota(cpu_limit_millis),
            cpu_shares=cpu_shares(request),
            memory_limit_in_bytes=memory_limit,
            cpuset_cpus=cpuset_cpus or "",
            cpuset_mems=cpuset_mems or "",
        )
        if qos is not None:
            res.oom_score_adj = oom_score_adj(qos, memory_limit, self._memory_capacity)
            # kubelet lists every size the host has, limit 0 unless the container asks.
            sizes = dict.fromkeys(host_hugepage_sizes(), 0) | dict(hugepages or {})
            res.hugepage_limits.extend(
                api.HugepageLimit(page_size=size, limit=limit) for size, limit in sizes.items()
            )
        return res

    def create_container(
        self,
        pod: Pod,
        name: str,
        *,
        memory_limit: int = 0,
        cpu_millis: int = 0,
        cpu_limit_millis: int | None = None,
        cpuset_cpus: str | None = None,
        cpuset_mems: str | None = None,
        hugepages: Mapping[str, int] | None = None,
        command: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        attempt: int = 0,
        image: str = WORKLOAD_IMAGE,
        args: Sequence[str] | None = None,
        mounts: Sequence[Any] = (),
        security_context: Any | None = None,
    ) -> str:
        """CreateContainer as kubelet sends it; returns the container ID.

        `cpu_limit_millis` None means "limit = request" (Guaranteed); 0 means no limit.
        `hugepages` maps CRI page sizes ("2MB", "1GB") to limits in bytes.
        `command` None runs the image's `sleep 2147483647` (its ENTRYPOINT with `args`).
        `mounts` are CRI Mounts; `security_context` a LinuxContainerSecurityContext merged
        over the host-network namespace options every container here gets.
        """
        api = self.api
        limit = cpu_millis if cpu_limit_millis is None else cpu_limit_millis
        log_dir = Path(pod.config.log_directory) / name
        log_dir.mkdir(parents=True, exist_ok=True)  # kubelet creates it
        security = api.LinuxContainerSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER),
        )
        if security_context is not None:
            security.MergeFrom(security_context)
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name, attempt=attempt),
            image=api.ImageSpec(image=image),
            command=list(command or []),
            args=list(args or []),
            mounts=list(mounts),
            log_path=f"{name}/{attempt}.log",
            labels={
                **(labels or {}),
                "io.kubernetes.container.name": name,
                "io.kubernetes.pod.name": pod.name,
                "io.kubernetes.pod.namespace": pod.namespace,
                "io.kubernetes.pod.uid": pod.uid,
            },
            annotations={
                "io.kubernetes.container.hash": f"{zlib.crc32(f'{pod.uid}/{name}'.encode()):08x}",
                "io.kubernetes.container.restartCount": str(attempt),
                "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
                "io.kubernetes.container.terminationMessagePolicy": "File",
                "io.kubernetes.pod.terminationGracePeriod": "30",
                **(annotations or {}),
            },
            linux=api.LinuxContainerConfig(
                resources=self._resources(
                    cpu_millis,
                    limit,
                    memory_limit,
                    qos=pod.qos,
                    cpuset_cpus=cpuset_cpus,
                    cpuset_mems=cpuset_mems,
                    hugepages=hugepages,
                ),
                security_context=security,
            ),
        )
        r = self._call(
            "CreateContainer",
            api.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
        )
        return str(r.container_id)

    def update_container_resources(
        self,
        container_id: str,
        *,
        memory_limit: int = 0,
        cpu_millis: int = 0,
        cpu_limit_millis: int | None = None,
        cpuset_cpus: str | None = None,
        cpuset_mems: str | None = None,
    ) -> None:
        """UpdateContainerResources (kubelet's in-place resize / CPU manager reconcile)."""
        limit = cpu_millis if cpu_limit_millis is None else cpu_limit_millis
        res = self._resources(
            cpu_millis, limit, memory_limit, cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems
        )
        self._call(
            "UpdateContainerResources",
            self.api.UpdateContainerResourcesRequest(container_id=container_id, linux=res),
        )

    def start_container(self, container_id: str) -> None:
        self._call("StartContainer", self.api.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout_s: int = 0) -> None:
        self._call(
            "StopContainer",
            self.api.StopContainerRequest(container_id=container_id, timeout=timeout_s),
        )

    def remove_container(self, container_id: str) -> None:
        self._call("RemoveContainer", self.api.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, pod_id: str | None = None) -> list[ContainerInfo]:
        api = self.api
        request = api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=pod_id or ""))
        return [
            ContainerInfo(
                id=c.id,
                pod_id=c.pod_sandbox_id,
                name=c.metadata.name,
                attempt=c.metadata.attempt,
                state=api.ContainerState.Name(c.state),
                labels=dict(c.labels),
                annotations=dict(c.annotations),
            )
            for c in self._call("ListContainers", request).containers
        ]

    def container_log(self, pod: Pod, name: str, attempt: int = 0) -> Path:
        """The container's CRI log file (kubelet's layout: <pod log dir>/<name>/<attempt>.log)."""
        return Path(pod.config.log_directory) / name / f"{attempt}.log"

    def container_exit_code(self, container_id: str) -> int:
        r = self._call(
            "ContainerStatus", self.api.ContainerStatusRequest(container_id=container_id)
        )
        return int(r.status.exit_code)

    def container_state(self, container_id: str) -> str:
        r = self._call(
            "ContainerStatus", self.api.ContainerStatusRequest(container_id=container_id)
        )
        return str(self.api.ContainerState.Name(r.status.state))

    def container_started(self, container_id: str) -> bool:
        """Whether the container's process ever started (a start that failed leaves it
        EXITED without a start time)."""
        r = self._call(
            "ContainerStatus", self.api.ContainerStatusRequest(container_id=container_id)
        )
        return bool(r.status.started_at)

    def exit_code(self, container_id: str) -> int | None:
        """The exit code of an exited container (None while it has not exited)."""
        r = self._call(
            "ContainerStatus", self.api.ContainerStatusRequest(container_id=container_id)
        )
        if r.status.state != self.api.CONTAINER_EXITED:
            return None
        return int(r.status.exit_code)

    def info(self, container_id: str) -> dict[str, Any]:
        """containerd's verbose status: runtimeSpec, pid, sandboxID, snapshotter, ..."""
        r = self._call(
            "ContainerStatus",
            self.api.ContainerStatusRequest(container_id=container_id, verbose=True),
        )
        info: dict[str, Any] = json.loads(r.info["info"])
        return info

    def spec(self, container_id: str) -> dict[str, Any]:
        """The container's OCI runtime spec as containerd stored it (after NRI adjustments)."""
        spec: dict[str, Any] = self.info(container_id)["runtimeSpec"]
        return spec

    def mems(self, container_id: str) -> str:
        """`linux.resources.cpu.mems` of the stored spec ("" when unset)."""
        cpu = self.spec(container_id).get("linux", {}).get("resources", {}).get("cpu", {})
        return str(cpu.get("mems", ""))

    def numa_nodes(self, container_id: str) -> str:
        """The NUMA nodes the plugin gave the container, as it decided them.

        With a fake topology the plugin writes the host's nodes into cpuset.mems and
        names the fake ones in the annotation `nri-memory-manager.io/numa-nodes`;
        without a mapping the two are the same.
        """
        info = self.info(container_id)
        spec = info["runtimeSpec"]
        # NRI's annotation lands in the OCI spec; the CRI proxy's in the container's config
        for given in (spec.get("annotations"), info.get("config", {}).get("annotations")):
            if given and NUMA_NODES_ANNOTATION in given:
                return str(given[NUMA_NODES_ANNOTATION])
        cpu = spec.get("linux", {}).get("resources", {}).get("cpu", {})
        return str(cpu.get("mems", ""))

    def running_pid(self, container_id: str, timeout: float = 10.0) -> int:
        """The container's process, once it runs its own program: StartContainer may
        return while runc's init is still about to exec it (an empty cmdline)."""
        deadline = time.monotonic() + timeout
        while True:
            pid = int(self.info(container_id).get("pid") or 0)
            if pid > 0:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/cmdline").read_bytes().strip(b"\0"):
                        return pid
            if time.monotonic() > deadline:
                raise HarnessError(f"container {container_id} runs no program ({timeout} s)")
            time.sleep(0.01)

    def process_mems(self, container_id: str) -> str:
        """The NUMA nodes the running container's process may allocate from, as the
        kernel reports them (`Mems_allowed_list` in /proc/PID/status)."""
        pid = self.running_pid(container_id)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Mems_allowed_list:"):
                return line.split(":", 1)[1].strip()
        raise HarnessError(f"/proc/{pid}/status has no Mems_allowed_list")

    def host_cpuset_mems(self, container_id: str) -> str:
        """What the kernel enforces: the container cgroup's cpuset.mems (cgroup v1 or v2)."""
        path: str = self.spec(container_id)["linux"]["cgroupsPath"].lstrip("/")
        for base in (Path(_CGROUP_FS, "cpuset"), Path(_CGROUP_FS)):
            for name in ("cpuset.mems", "cpuset.mems.effective"):
                f = base / path / name
                if f.exists():
                    return f.read_text().strip()
        raise HarnessError(f"no cpuset.mems for cgroup {path} (container not started?)")


# --------------------------------------------------------------------------------------------
# Log files


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def search_file(path: Path, pattern: str | re.Pattern[str], since: int = 0) -> re.Match[str] | None:
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    return re.search(pattern, text)


def registered_pattern(name: str | None) -> str:
    """containerd's line for a registered plugin (2.x adds "and synchronized").

    logrus escapes the quotes inside msg="...", so both spellings are accepted.
    """
    plugin = re.escape(name) if name else r"[^\"\\]+"
    return rf'plugin \\?"{plugin}\\?" connected'


# --------------------------------------------------------------------------------------------
# Plugin subprocess


class PluginExited(HarnessError):
    pass


class PluginProcess:
    """An NRI plugin (any argv) run as a subprocess, its output captured to `log_path`.

    `env` is added to this process's environment. `name` ("90-memory-manager") is what
    containerd logs on registration; None accepts any plugin registering after `start`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._containerd_log_offset = 0

    def start(self, containerd: Containerd | None = None) -> Self:
        """Start the plugin; with `containerd`, only later registrations count for it."""
        if self.running:
            raise HarnessError(f"plugin {self.argv} already running")
        if containerd is not None:
            self._containerd_log_offset = containerd.log_offset()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # a Ctrl-C of the test run goes through our teardown
            )
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise HarnessError("plugin not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` (no wait): SIGKILL simulates a crash, SIGTERM a shutdown."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        if self._proc is None:
            raise HarnessError("plugin not started")
        return self._proc.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        return self._proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_registered(self, containerd: Containerd, timeout: float = 10.0) -> re.Match[str]:
        """Wait until containerd logs this plugin's registration; fail early if it exits."""
        pattern = registered_pattern(self.name)
        deadline = time.monotonic() + timeout
        while True:
            match = containerd.search_log(pattern, since=self._containerd_log_offset)
            if match:
                return match
            if self._proc is not None and self._proc.poll() is not None:
                raise PluginExited(
                    f"plugin {self.argv} exited ({self._proc.returncode}) before registering;"
                    f" its log:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"plugin {self.name or self.argv} not registered within {timeout} s;"
                    f" containerd log:\n{_tail(containerd.log_path)}\nplugin log:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# containerd


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with space, tab, newline and \ octal-escaped.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup (v1 or v2) hierarchy."""
    roots = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] in ("cgroup", "cgroup2"):
                roots.append(Path(fields[1]))
    return roots


class Containerd:
    """A private containerd with CRI and NRI, in `<paths.root>/run-<instance>`.

    `instance` defaults to the flavor's tag ("2x", "17"); give distinct ones to run several
    instances at once. Timeouts are containerd duration strings ("2s"); None keeps the default.
    `nri` False disables NRI (a runtime without it, as the CRI proxy serves).
    """

    def __init__(
        self,
        paths: E2EPaths,
        flavor: Flavor,
        instance: str | None = None,
        *,
        request_timeout: str | None = None,
        registration_timeout: str | None = None,
        debug: bool = False,
        nri: bool = True,
    ) -> None:
        if flavor not in _INSTALL:
            raise ValueError(f"flavor {flavor!r} is not one of {FLAVORS}")
        self.paths = paths
        self.flavor = flavor
        self.instance = instance or FLAVOR_TAG[flavor]
        self.run_dir = paths.root / f"run-{self.instance}"
        # cgroups are global: another e2e directory's instance of the same name (a parallel
        # run) gets its own prefix
        root_tag = hashlib.sha256(str(paths.root).encode()).hexdigest()[:6]
        self.cgroup_prefix = f"/nmm-e2e-{self.instance}-{root_tag}"
        self.log_path = paths.logs_dir / f"containerd-{self.instance}.log"
        self.request_timeout = request_timeout
        self.registration_timeout = registration_timeout
        self.debug = debug
        self.nri = nri
        self._proc: subprocess.Popen[bytes] | None = None
        self._cri: CRIClient | None = None
        self._plugins: list[PluginProcess] = []
        self._image_imported = False
        self._created_run_containerd = False
        self._started_once = False
        if len(str(self.run_dir / "containerd.sock.ttrpc")) >= 108:
            raise HarnessError(f"run dir {self.run_dir} too long for unix socket paths")

    # -- paths -----------------------------------------------------------------------------

    @property
    def cri_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def nri_socket(self) -> Path:
        return self.run_dir / "nri.sock"

    @property
    def nri_plugin_path(self) -> Path:
        """Executables named NN-name here are launched by containerd itself."""
        return self.run_dir / "nri-plugins"

    @property
    def nri_plugin_config_path(self) -> Path:
        return self.run_dir / "nri-conf.d"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.toml"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- config ----------------------------------------------------------------------------

    def config_toml(self) -> str:
        r = self.run_dir
        nri = [
            f"disable = {'false' if self.nri else 'true'}",
            f"socket_path = '{self.nri_socket}'",
            f"plugin_path = '{self.nri_plugin_path}'",
            f"plugin_config_path = '{self.nri_plugin_config_path}'",
        ]
        if self.request_timeout:
            nri.append(f"plugin_request_timeout = '{self.request_timeout}'")
        if self.registration_timeout:
            nri.append(f"plugin_registration_timeout = '{self.registration_timeout}'")
        runc_options = [f"BinaryName = '{self.paths.runc}'", f"Root = '{r}/runc'"]
        if self.flavor == "2.x":
            cri_rt = "plugins.'io.containerd.cri.v1.runtime'"
            cri_img = "plugins.'io.containerd.cri.v1.images'"
            sections: list[tuple[str, list[str]]] = [
                (cri_img, ["snapshotter = 'overlayfs'"]),
                (f"{cri_img}.pinned_images", [f"sandbox = '{SANDBOX_IMAGE}'"]),
                # The machine withholds CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
                (cri_rt, ["restrict_oom_score_adj = true", "enable_cdi = false"]),
                (f"{cri_rt}.containerd.runtimes.runc.options", runc_options),
                (f"{cri_rt}.cni", [f"bin_dirs = ['{r}/cni/bin']", f"conf_dir = '{r}/cni/net.d'"]),
            ]
            version = 3
        else:
            cri = "plugins.'io.containerd.grpc.v1.cri'"
            sections = [
                (cri, [f"sandbox_image = '{SANDBOX_IMAGE}'", "restrict_oom_score_adj = true"]),
                (f"{cri}.containerd", ["snapshotter = 'overlayfs'"]),
                (f"{cri}.containerd.runtimes.runc", ["runtime_type = 'io.containerd.runc.v2'"]),
                (f"{cri}.containerd.runtimes.runc.options", runc_options),
                (f"{cri}.cni", [f"bin_dir = '{r}/cni/bin'", f"conf_dir = '{r}/cni/net.d'"]),
            ]
            version = 2
        sections += [
            ("plugins.'io.containerd.internal.v1.opt'", [f"path = '{r}/opt'"]),
            ("plugins.'io.containerd.nri.v1.nri'", nri),
            ("grpc", [f"address = '{self.cri_socket}'"]),
            ("ttrpc", [f"address = '{self.cri_socket}.ttrpc'"]),
        ]
        if self.debug:
            sections.append(("debug", ["level = 'debug'"]))
        lines = [f"version = {version}", f"root = '{r}/root'", f"state = '{r}/state'"]
        for header, body in sections:
            lines += ["", f"[{header}]", *body]
        return "\n".join(lines) + "\n"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start containerd; the first start also clears leftovers and imports the image."""
        if self.running:
            raise HarnessError(f"containerd {self.instance} already running")
        _LIVE.add(self)
        if not self._started_once:
            self._created_run_containerd = not Path("/run/containerd").exists()
            self._sweep()  # a crashed earlier run may have left this instance's traces
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_bytes(b"")
            self._started_once = True
        for sub in ("cni/bin", "cni/net.d", "opt", "nri-plugins", "nri-conf.d", "pods"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_toml())
        bin_dir = self.paths.containerd_bin(self.flavor).parent
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(bin_dir / "containerd"), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,  # the shim is found on PATH
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        self._wait_until(
            lambda: self.cri_socket.exists() and Path(f"{self.cri_socket}.ttrpc").exists(),
            deadline,
            "its sockets",
        )
        if not self._image_imported:
            self._import_image(deadline - time.monotonic())
            self._image_imported = True
        cri = self.cri()
        self._wait_until(lambda: self._answers(cri), deadline, "CRI Version")
        for image in (SANDBOX_IMAGE, WORKLOAD_IMAGE):
            # under load containerd 2.x may list an imported image a moment later
            self._wait_until(
                lambda image=image: cri.image_present(image),  # type: ignore[misc]
                deadline,
                f"image {image} visible over CRI after import",
            )
        return self

    def _answers(self, cri: CRIClient) -> bool:
        try:
            cri.version(timeout=1.0)
        except CRIError:
            return False
        return True

    def _wait_until(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            if not self.running:
                raise HarnessError(
                    f"containerd {self.instance} exited ({self.returncode}) before {what};"
                    f" log:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"containerd {self.instance}: no {what} in time; log:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _import_image(self, timeout: float) -> None:
        self.import_image(self.paths.image_tar, timeout)

    def import_image(self, archive: Path, timeout: float = 120.0) -> None:
        """`ctr images import` of an image archive (OCI or Docker) for CRI to use."""
        ctr = self.paths.containerd_bin(self.flavor, "ctr")
        # CRI only sees namespace k8s.io; ctr needs an absolute socket path.
        cmd = [str(ctr), "--address", str(self.cri_socket), "-n", "k8s.io", "images", "import"]
        cmd.append(str(archive))
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=max(timeout, 1.0), check=False
        )
        if proc.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Send `sig` and wait for exit (SIGKILL after `timeout`). Shims and pods survive."""
        if self._cri is not None:
            self._cri.close()
            self._cri = None
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)

    def restart(self, timeout: float = 30.0) -> Self:
        """Stop and start again on the same root and state, as a containerd restart does."""
        self.stop()
        return self.start(timeout)

    def cri(self) -> CRIClient:
        """The shared CRI client of this instance (recreated after a restart)."""
        if self._cri is None:
            self._cri = CRIClient(
                self.paths, self.cri_socket, self.run_dir / "pods", self.cgroup_prefix
            )
        return self._cri

    # -- log -------------------------------------------------------------------------------

    def log_offset(self) -> int:
        """Current end of the log: pass as `since` to only see what comes next."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def search_log(self, pattern: str | re.Pattern[str], since: int = 0) -> re.Match[str] | None:
        return search_file(self.log_path, pattern, since)

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, since: int = 0
    ) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (match := self.search_log(pattern, since)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"containerd {self.instance}: no log line matching {pattern!r} within"
                    f" {timeout} s; log:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)
        return match

    # -- plugins ---------------------------------------------------------------------------

    def start_plugin(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> PluginProcess:
        """Start a plugin subprocess that teardown stops before containerd."""
        log = self.paths.logs_dir / f"plugin-{self.instance}-{len(self._plugins)}.log"
        log.unlink(missing_ok=True)
        plugin = PluginProcess(argv, log, env, name).start(self)
        self._plugins.append(plugin)
        return plugin

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Leave nothing behind: pods over CRI, plugins, containerd, then leftovers."""
        errors: list[str] = []
        if self.running:
            try:
                self.cri().remove_all_pods()
            except (CRIError, HarnessError) as e:
                errors.append(f"removing pods: {e}")
        for plugin in self._plugins:
            plugin.stop()
        self.stop()
        self._sweep()
        _LIVE.discard(self)
        if errors:
            raise HarnessError(f"containerd {self.instance} teardown: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _cgroup_dirs(self) -> list[Path]:
        rel = self.cgroup_prefix.lstrip("/")
        return [root / rel for root in cgroup_hierarchies() if (root / rel).is_dir()]

    def _processes(self) -> dict[int, str]:
        """Live processes of this instance: by command line (containerd, shims, plugins
        given our sockets) or by cgroup (the containers)."""
        # Trailing slashes: instance "2x" must not match "2xf1"'s paths.
        run_dir = f"{self.run_dir}/"
        cgroup = f":{self.cgroup_prefix}/"
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                # A zombie holds no resource; the machine's init reaps orphans only slowly.
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cgroups = (entry / "cgroup").read_text()
            except OSError:
                continue  # exited meanwhile
            if run_dir in cmdline or cgroup in cgroups:
                found[int(entry.name)] = cmdline.strip()
        return found

    def leftovers(self) -> list[str]:
        """Everything of this instance still on the machine (empty once torn down)."""
        found = [f"process {pid}: {cmd}" for pid, cmd in sorted(self._processes().items())]
        found += [f"mount {m}" for m in mounts_under(self.run_dir)]
        for top in self._cgroup_dirs():
            found += [f"cgroup {d}" for d, _, _ in os.walk(top)]
        if self.run_dir.exists():
            found.append(f"directory {self.run_dir}")
        return found

    def assert_clean(self) -> None:
        left = self.leftovers()
        assert not left, f"containerd {self.instance} left behind:\n" + "\n".join(left)

    def _sweep(self) -> None:
        """Remove whatever a crash or failed teardown left: processes, mounts, cgroups, dirs."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not self._processes(), 10.0)
        for point in mounts_under(self.run_dir):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        if mounts := mounts_under(self.run_dir):
            raise HarnessError(f"cannot unmount {mounts}; not removing {self.run_dir}")
        for top in self._cgroup_dirs():
            _remove_cgroup_tree(top)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._created_run_containerd:
            # The shim socket dir is a fixed path; remove it only if it is ours and empty.
            for d in ("/run/containerd/s", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(d)


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _remove_cgroup_tree(top: Path) -> None:
    """rmdir a cgroup subtree bottom-up (its control files go with each directory)."""
    for _ in range(50):  # an exiting task can keep a cgroup busy for a moment
        for d, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(d)
        if not top.exists():
            return
        time.sleep(0.05)
