"""Command line: ``nri-memory-manager run | simulate | state | topology | check-config``.

Bad input of any kind ends with one line on stderr and exit status 2; no
traceback is shown for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nri_plugin import __version__
from nri_plugin.errors import InputError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

DEFAULT_STATE_DIR = "/var/lib/nri-memory-manager"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _add_machine_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--topology-file", metavar="FILE", help="fake NUMA topology (YAML/JSON)")
    g.add_argument("--sysfs-root", metavar="DIR", help="discover the topology under DIR (/sys)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nri-memory-manager",
        description="The Kubernetes Memory Manager static policy as a containerd NRI plugin.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="run a scenario through the policy; JSON report")
    sim.add_argument("scenario", help="scenario file (YAML or JSON), or - for stdin")
    sim.add_argument("--compact", action="store_true", help="print the report on one line")

    chk = sub.add_parser("check-config", help="validate a config file against a machine")
    chk.add_argument("--config", required=True, metavar="FILE")
    _add_machine_args(chk)

    topo = sub.add_parser("topology", help="show the NUMA topology")
    _add_machine_args(topo, required=False)
    topo.add_argument("--json", action="store_true", help="print the fake-topology schema")

    st = sub.add_parser("state", help="show a checkpoint file (ours or kubelet's)")
    g = st.add_mutually_exclusive_group()
    g.add_argument("--state-dir", metavar="DIR", default=None)
    g.add_argument("--state-file", metavar="FILE", default=None)
    st.add_argument("--json", action="store_true", help="print the checkpoint as JSON")

    _add_run_arguments(sub.add_parser("run", help="run the NRI plugin on this node"))
    proxy = sub.add_parser("cri-proxy", help="run the policy as a CRI proxy (runtimes without NRI)")
    proxy.add_argument("--listen", required=True, metavar="PATH", help="unix socket for kubelet")
    proxy.add_argument(
        "--runtime-endpoint", required=True, metavar="PATH", help="the real runtime's CRI socket"
    )
    proxy.add_argument("--config", metavar="FILE")
    proxy.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR")
    _add_machine_args(proxy, required=False)
    proxy.add_argument("--kubelet-config", metavar="PATH", default=None)
    proxy.add_argument("--metrics-address", metavar="HOST:PORT", default=None)
    proxy.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        default="/var/run/nri/nri.sock",
        metavar="PATH",
        help="containerd's NRI socket (ignored when started by containerd)",
    )
    p.add_argument("--plugin-name", default="memory-manager", metavar="NAME")
    p.add_argument("--plugin-index", default="90", metavar="NN")
    p.add_argument("--config", metavar="FILE", help="config file (YAML)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR")
    _add_machine_args(p, required=False)
    p.add_argument(
        "--kubelet-config",
        metavar="PATH",
        default=None,
        help="the node's KubeletConfiguration file: align reservations and policies",
    )
    p.add_argument("--metrics-address", metavar="HOST:PORT", default=None)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _load_topology(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from nri_plugin.inputs.topology import discover_sysfs, load_topology_file

    if getattr(args, "topology_file", None):
        return load_topology_file(args.topology_file)
    return discover_sysfs(getattr(args, "sysfs_root", None) or "/sys")


def cmd_simulate(args: argparse.Namespace) -> int:
    from nri_plugin.frontends.simulate import simulate_text

    source = "stdin" if args.scenario == "-" else args.scenario
    try:
        if args.scenario == "-":
            text = sys.stdin.read()
        else:
            text = Path(args.scenario).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{source}: cannot read scenario: {reason}") from None
    report = simulate_text(text, source=source)
    if args.compact:
        out = json.dumps(report, separators=(",", ":"))
    else:
        out = json.dumps(report, indent=2)
    sys.stdout.write(out + "\n")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from nri_plugin.engine.manager import MemoryManager
    from nri_plugin.inputs.config import load_config_file, validate_for_machine

    topology = _load_topology(args)
    config = load_config_file(args.config)
    validate_for_machine(config, topology, source=args.config)
    manager = MemoryManager(topology, config)
    print(f"{args.config}: valid for this machine ({len(topology.nodes)} NUMA nodes)")
    print(f"  memory manager policy: {config.policy}")
    print(
        f"  topology manager: policy {config.topology_manager_policy},"
        f" scope {config.topology_manager_scope}"
    )
    from nri_plugin.display import format_machine_table

    print(format_machine_table(manager.state))
    return EXIT_OK


def cmd_topology(args: argparse.Namespace) -> int:
    from nri_plugin.inputs.topology import topology_to_mapping

    topology = _load_topology(args)
    if args.json:
        print(json.dumps(topology_to_mapping(topology), indent=2))
        return EXIT_OK
    from nri_plugin.display import format_topology_table

    print(format_topology_table(topology))
    return EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    from nri_plugin.display import format_checkpoint
    from nri_plugin.persist.file import load_checkpoint
    from nri_plugin.persist.format import checkpoint_to_json

    if args.state_file:
        path = Path(args.state_file)
    else:
        from nri_plugin.persist.file import STATE_FILE_NAME

        path = Path(args.state_dir or DEFAULT_STATE_DIR) / STATE_FILE_NAME
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        raise InputError(f"{path}: no checkpoint file")
    if args.json:
        print(json.dumps(checkpoint_to_json(checkpoint), indent=2))
    else:
        print(f"checkpoint: {path}")
        print(format_checkpoint(checkpoint))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "simulate": cmd_simulate,
        "check-config": cmd_check_config,
        "topology": cmd_topology,
        "state": cmd_state,
    }
    try:
        if args.command in ("run", "cri-proxy"):
            from nri_plugin import daemon

            mode = daemon.MODE_NRI if args.command == "run" else daemon.MODE_CRI_PROXY
            return daemon.main(args, mode)
        return handlers[args.command](args)
    except InputError as exc:
        sys.stderr.write(f"nri-memory-manager {args.command}: {_one_line(str(exc))}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).strip()


if __name__ == "__main__":
    sys.exit(main())
