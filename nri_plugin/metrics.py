"""Prometheus metrics and the health endpoint of the live plugin.

The counters carry kubelet's full names for the same events (kubelet's
``pkg/kubelet/metrics/metrics.go``: subsystem ``kubelet``), so dashboards built
for kubelet's memory and topology managers work unchanged; the per-NUMA
gauges show each node's memory map. The two drift gauges are KEP-6232's, under
the full names the KEP gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.errors import InputError
from nri_plugin.podresources.client import FAILURE_KINDS
from nri_plugin.tracker.tracker import Observer

# kubelet's buckets for kubelet_topology_manager_admission_duration_ms
_DURATION_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)


class Metrics(Observer):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.pinning_requests = Counter(
            "kubelet_memory_manager_pinning_requests_total",
            "Memory pinning requests (admissions of Guaranteed containers)",
            registry=r,
        )
        self.pinning_errors = Counter(
            "kubelet_memory_manager_pinning_errors_total",
            "Memory pinning requests that could not be satisfied",
            registry=r,
        )
        self.admission_requests = Counter(
            "kubelet_topology_manager_admission_requests_total",
            "Topology manager admission requests",
            registry=r,
        )
        self.admission_errors = Counter(
            "kubelet_topology_manager_admission_errors_total",
            "Topology manager admission requests refused",
            registry=r,
        )
        self.admission_duration = Histogram(
            "kubelet_topology_manager_admission_duration_ms",
            "Duration of one admission decision in milliseconds",
            buckets=_DURATION_BUCKETS_MS,
            registry=r,
        )
        self.memory_bytes = Gauge(
            "nri_memory_manager_memory_bytes",
            "Memory per NUMA node and type: allocatable, reserved (by containers), free",
            ["numa_node", "type", "state"],
            registry=r,
        )
        self.assignments = Gauge(
            "nri_memory_manager_numa_assignments",
            "Blocks assigned per NUMA node (kubelet's numberOfAssignments)",
            ["numa_node"],
            registry=r,
        )
        self.containers = Gauge(
            "nri_memory_manager_pinned_containers",
            "Containers holding memory blocks",
            registry=r,
        )
        self.connected = Gauge(
            "nri_memory_manager_runtime_connected",
            "1 when registered and synchronized with the runtime",
            registry=r,
        )

        self.restore_conflicts = Gauge(
            "nri_memory_manager_restore_conflicts",
            "Containers still holding blocks that no longer fitted the configuration at the"
            " last start",
            registry=r,
        )
        self.waiting_containers = Gauge(
            "nri_memory_manager_refused_containers",
            "Containers of a pod whose last creation was refused (they wait in"
            " CreateContainerError while kubelet retries them)",
            ["namespace", "pod"],
            registry=r,
        )
        self.resizes = Counter(
            "nri_memory_manager_resizes_total",
            "In-place resizes of containers holding blocks, by result",
            ["result"],
            registry=r,
        )
        # KEP-6232's gauges, set at start from the recovery report
        self.drift_tolerance = Gauge(
            "kubelet_memory_manager_drift_tolerance_bytes",
            "The memory drift tolerance in effect, in bytes (0: the memory totals of the"
            " checkpoint must match exactly)",
            registry=r,
        )
        self.memory_drift = Gauge(
            "kubelet_memory_manager_memory_drift_bytes",
            "How far each NUMA node's memory total moved from the checkpoint at the last start,"
            " in bytes, either way",
            ["numa_node"],
            registry=r,
        )
        self.checkpoint_set_aside = Gauge(
            "nri_memory_manager_checkpoint_set_aside",
            "1 when the checkpoint could not be trusted at the last start and was set aside",
            registry=r,
        )

        self.pod_resources_failures = Counter(
            "nri_memory_manager_pod_resources_failures_total",
            "Lookups and calls of kubelet's pod-resources API that brought no answer, by kind"
            " (each lookup then behaves as without the API)",
            ["kind"],
            registry=r,
        )
        for kind in FAILURE_KINDS:
            self.pod_resources_failures.labels(kind)

        self.relist_failures = Counter(
            "nri_memory_manager_relist_failures_total",
            "ListPodSandbox calls to the runtime's CRI, for pods whose end it may not announce,"
            " that brought no answer (nothing is released on them; asked again)",
            registry=r,
        )
        self.unannounced_releases = Counter(
            "nri_memory_manager_unannounced_pod_releases_total",
            "Pods released because the runtime's CRI no longer lists a ready sandbox for them,"
            " their StopPodSandbox or RemovePodSandbox never announced (after a runtime restart)",
            registry=r,
        )

        # (pod uid, container) of restore conflicts still holding blocks
        self._conflicts: set[tuple[str, str]] = set()
        # node -> type -> the (allocatable, reserved, free) published last; (node, type) ->
        # its children
        self._published: dict[int, dict[str, tuple[int, int, int]]] = {}
        self._assignments: dict[int, int] = {}
        # the labelled children, looked up once: labels() validates and locks on every call,
        # and state_changed runs after every change
        self._memory_children: dict[tuple[int, str], tuple[Gauge, Gauge, Gauge]] = {}
        self._assignment_children: dict[int, Gauge] = {}

    def restored(
        self,
        *,
        conflicts: set[tuple[str, str]],
        set_aside: bool,
        drift_tolerance: int = 0,
        memory_drift: Mapping[int, int] | None = None,
    ) -> None:
        self._conflicts = set(conflicts)
        self.restore_conflicts.set(len(self._conflicts))
        self.checkpoint_set_aside.set(1 if set_aside else 0)
        self.drift_tolerance.set(drift_tolerance)
        for node, moved in sorted((memory_drift or {}).items()):
            self.memory_drift.labels(str(node)).set(moved)

    # -- Observer ----------------------------------------------------------

    def admission(
        self, *, admitted: bool, pinned: bool, topology_error: bool, seconds: float
    ) -> None:
        self.admission_requests.inc()
        self.admission_duration.observe(seconds * 1000)
        if not admitted:
            self.admission_errors.inc()
        if pinned or not admitted:
            self.pinning_requests.inc()
        if not admitted:
            self.pinning_errors.inc()

    def waiting(self, namespace: str, pod: str, containers: int) -> None:
        if containers:
            self.waiting_containers.labels(namespace, pod).set(containers)
        else:
            with contextlib.suppress(KeyError):
                self.waiting_containers.remove(namespace, pod)

    def resize(self, *, resized: bool) -> None:
        self.resizes.labels("resized" if resized else "refused").inc()

    def state_changed(self, manager: MemoryManager) -> None:
        """Publish what changed: work per NUMA node and type, never per container."""
        state = manager.state
        for node_id, node in state.machine.items():
            if self._assignments.get(node_id) != node.number_of_assignments:
                self._assignments[node_id] = node.number_of_assignments
                child = self._assignment_children.get(node_id)
                if child is None:
                    child = self._assignment_children[node_id] = self.assignments.labels(
                        str(node_id)
                    )
                child.set(node.number_of_assignments)
            # type -> (allocatable, reserved, free) published last: compared field by field,
            # no tuple built per table when nothing changed (the common case on most nodes)
            published = self._published.get(node_id)
            if published is None:
                published = self._published[node_id] = {}
            for type_, t in node.memory_map.items():
                last = published.get(type_)
                if (
                    last is not None
                    and last[2] == t.free
                    and last[1] == t.reserved
                    and last[0] == t.allocatable
                ):
                    continue
                now = published[type_] = (t.allocatable, t.reserved, t.free)
                key = (node_id, type_)
                children = self._memory_children.get(key)
                if children is None:
                    n = str(node_id)
                    children = self._memory_children[key] = (
                        self.memory_bytes.labels(n, type_, "allocatable"),
                        self.memory_bytes.labels(n, type_, "reserved"),
                        self.memory_bytes.labels(n, type_, "free"),
                    )
                for child, value in zip(children, now, strict=True):
                    child.set(value)
        self.containers.set(state.holders)
        if self._conflicts:
            self._conflicts = {k for k in self._conflicts if state.blocks(*k) is not None}
            self.restore_conflicts.set(len(self._conflicts))

    def connection(self, connected: bool) -> None:
        self.connected.set(1 if connected else 0)

    # -- the pod-resources client's observer --------------------------------

    def on_failure(self, kind: str) -> None:
        self.pod_resources_failures.labels(kind).inc()

    # -- the NRI front end's relist (frontends/relist.py) ----------------------

    def relist_failed(self) -> None:
        self.relist_failures.inc()

    def unannounced_released(self, pods: int) -> None:
        self.unannounced_releases.inc(pods)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def parse_address(address: str, flag: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (HOST may be empty for every address, ``[::1]`` for IPv6); InputError."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise InputError(f"{flag} {address!r}: expected HOST:PORT, PORT 1-65535")
    number = int(port)
    if not 0 < number < 65536:
        raise InputError(f"{flag} {address!r}: expected HOST:PORT, PORT 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(c.isspace() or c in "/[]" for c in host):
        raise InputError(f"{flag} {address!r}: {host!r} is not a host name or address")
    return host, number


async def serve_http(
    address: str, metrics: Metrics, health: Callable[[], tuple[bool, str]]
) -> asyncio.Server:
    """A tiny HTTP/1.0 server on ``HOST:PORT``: /metrics, /healthz (and /readyz, same check)."""
    host, port = parse_address(address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                status, body, ctype = 405, b"method not allowed\n", "text/plain"
            elif path == "/metrics":
                status, body, ctype = 200, metrics.exposition(), CONTENT_TYPE_LATEST
            elif path in ("/healthz", "/readyz"):
                ok, why = health()
                status, body, ctype = (200 if ok else 503), (why + "\n").encode(), "text/plain"
            else:
                status, body, ctype = 404, b"not found\n", "text/plain"
            head = (
                f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    try:
        return await asyncio.start_server(handle, host or "0.0.0.0", port)
    except OSError as exc:
        raise InputError(f"--metrics-address {address}: cannot listen: {exc.strerror}") from None
