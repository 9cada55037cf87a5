"""Prometheus metrics and the health endpoint of the live plugin.

The counters carry kubelet's names for the same events, so dashboards built
for kubelet's memory and topology managers work unchanged; the per-NUMA
gauges show each node's memory map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nri_plugin.engine.manager import MemoryManager
from nri_plugin.frontends.nri import Observer

# kubelet's buckets for topology_manager_admission_duration_ms
_DURATION_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)


class Metrics(Observer):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.pinning_requests = Counter(
            "memory_manager_pinning_requests_total",
            "Memory pinning requests (admissions of Guaranteed containers)",
            registry=r,
        )
        self.pinning_errors = Counter(
            "memory_manager_pinning_errors_total",
            "Memory pinning requests that could not be satisfied",
            registry=r,
        )
        self.admission_requests = Counter(
            "topology_manager_admission_requests_total",
            "Topology manager admission requests",
            registry=r,
        )
        self.admission_errors = Counter(
            "topology_manager_admission_errors_total",
            "Topology manager admission requests refused",
            registry=r,
        )
        self.admission_duration = Histogram(
            "topology_manager_admission_duration_ms",
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
            "Containers whose recorded blocks no longer fit the configuration at the last start",
            registry=r,
        )
        self.checkpoint_set_aside = Gauge(
            "nri_memory_manager_checkpoint_set_aside",
            "1 when the checkpoint could not be trusted at the last start and was set aside",
            registry=r,
        )

    def restored(self, *, conflicts: int, set_aside: bool) -> None:
        self.restore_conflicts.set(conflicts)
        self.checkpoint_set_aside.set(1 if set_aside else 0)

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

    def state_changed(self, manager: MemoryManager) -> None:
        state = manager.state
        for node_id, node in state.machine.items():
            n = str(node_id)
            self.assignments.labels(n).set(node.number_of_assignments)
            for type_, t in node.memory_map.items():
                self.memory_bytes.labels(n, type_, "allocatable").set(t.allocatable)
                self.memory_bytes.labels(n, type_, "reserved").set(t.reserved)
                self.memory_bytes.labels(n, type_, "free").set(t.free)
        self.containers.set(sum(len(c) for c in state.entries.values()))

    def connection(self, connected: bool) -> None:
        self.connected.set(1 if connected else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve_http(
    address: str, metrics: Metrics, health: Callable[[], tuple[bool, str]]
) -> asyncio.Server:
    """A tiny HTTP/1.0 server on ``HOST:PORT``: /metrics, /healthz (and /readyz, same check)."""
    host, _, port = address.rpartition(":")

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

    return await asyncio.start_server(handle, host or "0.0.0.0", int(port))
