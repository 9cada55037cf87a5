"""``nri-memory-manager run``: the plugin on a live node."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import structlog

from nri_plugin.engine.config import Config
from nri_plugin.engine.topology import Topology
from nri_plugin.errors import InputError
from nri_plugin.frontends.nri import MemoryPlugin
from nri_plugin.inputs.config import load_config_file, validate_for_machine
from nri_plugin.inputs.topology import discover_sysfs, load_topology_file
from nri_plugin.logs import configure_logging
from nri_plugin.metrics import Metrics, serve_http
from nri_plugin.nri.stub import Stub
from nri_plugin.persist.recovery import recover
from nri_plugin.persist.writer import CheckpointWriter

STATE_FILE_NAME = "memory_manager_state"


def load_machine(args: argparse.Namespace) -> tuple[Topology, Config]:
    topology = (
        load_topology_file(args.topology_file)
        if args.topology_file
        else discover_sysfs(args.sysfs_root or "/sys")
    )
    config = load_config_file(args.config) if args.config else Config()
    if getattr(args, "kubelet_config", None):
        from nri_plugin.inputs.kubeletconfig import align_with_kubelet

        config = align_with_kubelet(
            config, args.kubelet_config, structlog.get_logger("config"), config_source=args.config
        )
    validate_for_machine(config, topology, source=args.config or "config")
    return topology, config


async def serve(args: argparse.Namespace) -> int:
    log = structlog.get_logger("nri-memory-manager")
    topology, config = load_machine(args)
    state_path = Path(args.state_dir) / STATE_FILE_NAME
    recovery = recover(topology, config, state_path, log)
    manager = recovery.manager
    writer = CheckpointWriter(state_path, log)
    writer.write_now(manager.state)
    metrics = Metrics()
    metrics.restored(
        conflicts=len(recovery.report.conflicts),
        set_aside=recovery.report.set_aside_as is not None,
    )
    plugin = MemoryPlugin(
        manager, persist=lambda: writer.request(manager.state), observer=metrics, logger=log
    )
    metrics.state_changed(manager)
    stub = Stub(
        plugin,
        plugin_name=args.plugin_name,
        plugin_idx=args.plugin_index,
        socket_path=args.socket,
        logger=structlog.get_logger("nri"),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stub.stop)
    server = None
    if args.metrics_address:

        def health() -> tuple[bool, str]:
            if not stub.connected:
                return False, "not connected to the runtime"
            return writer.writable()

        server = await serve_http(args.metrics_address, metrics, health)
        log.info("metrics listening", address=args.metrics_address)
    log.info(
        "starting",
        socket=args.socket,
        plugin=f"{args.plugin_index}-{args.plugin_name}",
        numa_nodes=len(topology.nodes),
        state=str(state_path),
        policy=config.policy,
        topology_manager_policy=config.topology_manager_policy,
    )
    try:
        await stub.run()
    finally:
        if server is not None:
            server.close()
        await writer.flush()
        writer.write_now(manager.state)
        log.info("stopped")
    return 0


def main(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if args.metrics_address:
        port = args.metrics_address.rpartition(":")[2]
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
            raise InputError(
                f"--metrics-address {args.metrics_address!r}: expected HOST:PORT, PORT 1-65535"
            )
    return asyncio.run(serve(args))
