"""One daemon for ``run`` (the NRI plugin) and ``cri-proxy``: the same start, books and stop.

Both commands go through the same steps, in this order:

1. every flag is checked (:func:`check_flags`); a bad one ends the command with
   one line and exit status 2 before anything is read or written;
2. the machine and the configuration are read and validated (kubelet's checks);
3. the checkpoint is recovered (docs/recovery.md) into the engine's state;
4. kubelet's pod-resources socket is looked for (said once when absent), the
   served pod-resources socket starts (``--serve-pod-resources``), and the
   front end starts listening (the CRI proxy's socket) or is set up (NRI);
5. the state is written once, the metrics and health endpoint start, SIGTERM
   and SIGINT are handled;
6. the front end serves until stopped; then every change is flushed to the
   checkpoint.

When a node's memory shrank under the checkpoint's blocks, nothing is written
(step 5 included) until the first Synchronize shows that the blocks of the
containers that still exist fit (:class:`~nri_plugin.persist.recovery.ConservationGate`);
otherwise the start is refused then, with the file as it was.

The front ends differ only in how events arrive: :class:`NRIFrontEnd` (a
containerd NRI plugin) and :class:`CRIFrontEnd` (a CRI proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
from pathlib import Path
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
import structlog

from nri_plugin.engine.config import Config
from nri_plugin.engine.topology import Topology
from nri_plugin.errors import InputError
from nri_plugin.frontends.cri.proxy import (
    CHANNEL_OPTIONS,
    CRIProxy,
    endpoint_target,
    start_server,
    unix_socket_path,
)
from nri_plugin.frontends.exits import ExitCodes
from nri_plugin.frontends.kubelet import KubeletResources, TrackerMemory
from nri_plugin.frontends.nri import MemoryPlugin
from nri_plugin.frontends.podcgroup import PodCgroups
from nri_plugin.frontends.relist import DEFAULT_INTERVAL_S, Relist
from nri_plugin.inputs.config import load_config_file, validate_for_machine
from nri_plugin.inputs.iomem import IOMEM_PATH, resolve_drift_tolerance
from nri_plugin.inputs.kubeletconfig import align_with_kubelet
from nri_plugin.inputs.topology import discover_sysfs, host_node_ids, load_topology_file
from nri_plugin.logs import bound_logger, configure_logging
from nri_plugin.metrics import Metrics, parse_address, serve_http
from nri_plugin.nri.stub import Stub, check_identity, prelaunched_identity
from nri_plugin.persist.exits import load_exit_records
from nri_plugin.persist.file import STATE_FILE_NAME
from nri_plugin.persist.recovery import ConservationGate, recover
from nri_plugin.persist.writer import CheckpointWriter
from nri_plugin.podresources.client import PodResourcesClient
from nri_plugin.podresources.server import PodResourcesServer
from nri_plugin.podresources.server import start_server as start_pod_resources_server
from nri_plugin.tracker.nodemap import ANNOTATION, NodeMap, checked_map, default_map
from nri_plugin.tracker.tracker import NodeTracker

MODE_NRI = "nri"
MODE_CRI_PROXY = "cri-proxy"


def check_flags(args: argparse.Namespace, mode: str) -> None:
    """Refuse a flag value that cannot work, before anything touches the disk (InputError)."""
    if args.metrics_address:
        parse_address(args.metrics_address, "--metrics-address")
    own_sockets = {}
    if mode == MODE_NRI:
        name, idx = prelaunched_identity(os.environ, args.plugin_name, args.plugin_index)
        check_identity(name, idx, args.socket)
        if getattr(args, "runtime_endpoint", None):
            unix_socket_path(args.runtime_endpoint, "--runtime-endpoint")
        interval = getattr(args, "relist_interval", 0.0)
        if not interval >= 0 or interval == float("inf"):  # NaN fails the first test
            raise InputError(
                f"--relist-interval {interval}: seconds, a number >= 0 (0 turns it off)"
            )
        own_sockets["--socket"] = args.socket
    else:
        listen = unix_socket_path(args.listen, "--listen")
        runtime = unix_socket_path(args.runtime_endpoint, "--runtime-endpoint")
        if listen.resolve() == runtime.resolve():
            raise InputError(
                f"--listen {args.listen}: is the runtime endpoint; the proxy would call itself"
            )
        own_sockets["--listen"] = args.listen
        own_sockets["--runtime-endpoint"] = args.runtime_endpoint
    kubelet_socket = getattr(args, "pod_resources_socket", "")
    if kubelet_socket:
        unix_socket_path(kubelet_socket, "--pod-resources-socket")
        own_sockets["--pod-resources-socket"] = kubelet_socket
    served = getattr(args, "serve_pod_resources", None)
    if served:
        path = unix_socket_path(served, "--serve-pod-resources")
        for flag, other in own_sockets.items():
            if other and unix_socket_path(other, flag).resolve() == path.resolve():
                raise InputError(f"--serve-pod-resources {served}: is the {flag} socket")
        # a stale socket is replaced at start; anything else there is refused now
        if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise InputError(f"--serve-pod-resources {served}: exists and is not a socket")


def load_machine(args: argparse.Namespace, *, iomem: str = IOMEM_PATH) -> tuple[Topology, Config]:
    """The topology and the validated configuration (kubelet's file aligned when given).

    ``memory-drift-tolerance: auto`` is resolved here, from ``iomem``.
    """
    topology = (
        load_topology_file(args.topology_file)
        if args.topology_file
        else discover_sysfs(args.sysfs_root or "/sys")
    )
    config = load_config_file(args.config) if args.config else Config()
    if getattr(args, "kubelet_config", None):
        config = align_with_kubelet(
            config, args.kubelet_config, structlog.get_logger("config"), config_source=args.config
        )
    validate_for_machine(config, topology, source=args.config or "config")
    config = resolve_drift_tolerance(config, structlog.get_logger("config"), iomem)
    return topology, config


def node_map(args: argparse.Namespace, topology: Topology, config: Config, log: Any) -> NodeMap:
    """Fake NUMA nodes onto the host's when the fake topology names nodes the host lacks."""
    if not args.topology_file:
        if config.host_node_map:
            raise InputError(
                f"{args.config or 'config'}: hostNodeMap: only with --topology-file (a fake"
                " topology); with --sysfs-root the topology is the host's"
            )
        return NodeMap()
    host = host_node_ids("/sys")
    fake = list(topology.node_ids)
    if config.host_node_map:
        mapping = checked_map(config.host_node_map, fake, host, f"{args.config}: hostNodeMap")
    else:
        mapping = default_map(fake, host)
    result = NodeMap(mapping)
    if result.active:
        log.info(
            "fake NUMA nodes written as the host's in cpuset.mems",
            host_node_map=result.describe(),
            annotation=ANNOTATION,
        )
    return result


def pod_cgroups(args: argparse.Namespace) -> PodCgroups:
    """Where pods' cgroups are: the cgroup mount under the sysfs root (``/sys``)."""
    return PodCgroups(Path(args.sysfs_root or "/sys") / "fs" / "cgroup")


class FrontEnd(Protocol):
    """How events reach the tracker: an NRI connection, or a CRI proxy."""

    async def start(
        self, tracker: NodeTracker, kubelet: KubeletResources, metrics: Metrics | None = None
    ) -> None:
        """Get ready to serve (a socket to listen on is opened here)."""

    async def run(self) -> None:
        """Serve until :meth:`stop`."""

    def stop(self) -> None: ...

    def health(self) -> tuple[bool, str]:
        """Whether the runtime is connected and its view synchronized, and why not."""

    async def close(self) -> None: ...

    def describe(self) -> dict[str, object]:
        """What the start-up log line says of this front end."""


class NRIFrontEnd:
    """The containerd NRI plugin: events from the runtime through :class:`Stub`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._stub: Stub | None = None
        self._exit_codes: ExitCodes | None = None
        self._relist: Relist | None = None

    async def start(
        self, tracker: NodeTracker, kubelet: KubeletResources, metrics: Metrics | None = None
    ) -> None:
        self._exit_codes = ExitCodes(
            getattr(self._args, "runtime_endpoint", None),
            self._args.socket,
            structlog.get_logger("exits"),
        )
        await self._exit_codes.start()
        plugin = MemoryPlugin(
            tracker.manager,
            tracker=tracker,
            logger=bound_logger(),
            pod_cgroups=pod_cgroups(self._args),
            exit_codes=self._exit_codes,
            kubelet=kubelet,
        )
        self._stub = Stub(
            plugin,
            plugin_name=self._args.plugin_name,
            plugin_idx=self._args.plugin_index,
            socket_path=self._args.socket,
            logger=bound_logger("nri"),
        )
        interval = getattr(self._args, "relist_interval", DEFAULT_INTERVAL_S)
        if interval > 0 and self._exit_codes.connected:
            self._relist = Relist(
                plugin, self._exit_codes, interval, bound_logger("relist"), metrics
            )
        elif interval > 0:
            structlog.get_logger("relist").info(
                "no runtime CRI socket; pods whose end the runtime does not announce are"
                " released at its next Synchronize only"
            )

    async def run(self) -> None:
        assert self._stub is not None
        if self._relist is None:
            await self._stub.run()
            return
        relist = asyncio.get_running_loop().create_task(self._relist.run())
        try:
            await self._stub.run()
        finally:
            relist.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relist

    def stop(self) -> None:
        if self._stub is not None:
            self._stub.stop()

    def health(self) -> tuple[bool, str]:
        if self._stub is None or not self._stub.connected:
            return False, "not connected to the runtime"
        return True, "ok"

    async def close(self) -> None:
        if self._exit_codes is not None:
            await self._exit_codes.close()

    def describe(self) -> dict[str, object]:
        return {
            "mode": MODE_NRI,
            "socket": self._args.socket,
            "plugin": f"{self._args.plugin_index}-{self._args.plugin_name}",
        }


class CRIFrontEnd:
    """The CRI proxy: kubelet's calls relayed to the runtime, the lifecycle ones read."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._channel: Any = None
        self._server: Any = None
        self._proxy: CRIProxy | None = None
        self._stopped = asyncio.Event()

    async def start(
        self, tracker: NodeTracker, kubelet: KubeletResources, metrics: Metrics | None = None
    ) -> None:
        self._channel = grpc.aio.insecure_channel(
            endpoint_target(self._args.runtime_endpoint), options=CHANNEL_OPTIONS
        )
        self._proxy = CRIProxy(
            tracker,
            self._channel,
            logger=bound_logger("cri-proxy"),
            pod_cgroups=pod_cgroups(self._args),
            kubelet=kubelet,
        )
        self._server = await start_server(self._proxy, self._args.listen)

    async def run(self) -> None:
        assert self._proxy is not None
        sync = asyncio.get_running_loop().create_task(self._proxy.synchronize_until_done())
        try:
            await self._stopped.wait()
        finally:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync

    def stop(self) -> None:
        self._stopped.set()

    def health(self) -> tuple[bool, str]:
        if self._proxy is None or not self._proxy.synchronized.is_set():
            return False, "not synchronized with the runtime"
        return True, "ok"

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(5)
        if self._channel is not None:
            await self._channel.close()

    def describe(self) -> dict[str, object]:
        return {
            "mode": MODE_CRI_PROXY,
            "listen": str(unix_socket_path(self._args.listen, "--listen")),
            "runtime_endpoint": self._args.runtime_endpoint,
        }


async def serve(args: argparse.Namespace, front: FrontEnd) -> int:
    log = bound_logger("nri-memory-manager")
    topology, config = load_machine(args)
    nodes = node_map(args, topology, config, log)
    state_path = Path(args.state_dir) / STATE_FILE_NAME
    recovery = recover(topology, config, state_path, log)
    manager = recovery.manager
    gate = ConservationGate(recovery.pending, state_path, log)
    loop = asyncio.get_running_loop()
    writer = CheckpointWriter(state_path, log)
    metrics = Metrics()
    metrics.restored(
        conflicts={(c.pod_uid, c.container) for c in recovery.report.conflicts},
        set_aside=recovery.report.set_aside_as is not None,
        drift_tolerance=recovery.report.drift_tolerance,
        memory_drift=recovery.report.memory_drift,
    )
    tracker = NodeTracker(
        manager,
        persist=lambda: None if gate.holding else writer.request(manager.state),
        observer=metrics,
        logger=log,
        node_map=nodes,
        # a refusal fails Synchronize (no updates answered), then the front end stops
        check_restored=gate.hook(lambda: loop.call_soon(front.stop)) if gate.holding else None,
    )
    tracker.restore_exit_records(load_exit_records(writer.exits_path, log))
    writer.exit_records = tracker.exit_records
    metrics.state_changed(manager)
    metrics.connection(False)
    kubelet_socket = getattr(args, "pod_resources_socket", "")
    client = PodResourcesClient(
        str(unix_socket_path(kubelet_socket)) if kubelet_socket else "",
        observer=metrics,
        logger=bound_logger("pod-resources"),
    )
    await client.start()  # says once when the socket is absent
    kubelet = KubeletResources(client, tracker)
    served = None
    if getattr(args, "serve_pod_resources", None):
        path = str(unix_socket_path(args.serve_pod_resources))
        served = await start_pod_resources_server(
            PodResourcesServer(
                TrackerMemory(tracker), client, logger=bound_logger("pod-resources")
            ),
            path,
        )
        log.info("serving pod-resources", socket=path, kubelet_socket=client.socket_path)
    await front.start(tracker, kubelet, metrics)
    if not gate.holding:
        writer.write_now(manager.state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, front.stop)
    http = None
    if args.metrics_address:

        def health() -> tuple[bool, str]:
            ok, why = front.health()
            return writer.writable() if ok else (ok, why)

        http = await serve_http(args.metrics_address, metrics, health)
        log.info("metrics listening", address=args.metrics_address)
    log.info(
        "starting",
        **front.describe(),
        numa_nodes=len(topology.nodes),
        state=str(state_path),
        policy=config.policy,
        topology_manager_policy=config.topology_manager_policy,
        topology_manager_scope=config.topology_manager_scope,
    )
    try:
        await front.run()
    finally:
        await front.close()
        if served is not None:
            await served.stop(grace=1.0)
        await kubelet.close()
        await client.close()
        if http is not None:
            http.close()
        if not gate.holding:
            await writer.flush()
            writer.write_now(manager.state)
        log.info("stopped")
    if gate.refusal is not None:
        raise gate.refusal
    return 0


def main(args: argparse.Namespace, mode: str = MODE_NRI) -> int:
    """``run`` (mode ``nri``) and ``cri-proxy``: exit status 0 after SIGTERM."""
    check_flags(args, mode)
    configure_logging(args.log_level)
    front: FrontEnd = NRIFrontEnd(args) if mode == MODE_NRI else CRIFrontEnd(args)
    return asyncio.run(serve(args, front))
