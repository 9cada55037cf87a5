"""Command line: ``nri-memory-manager run | cri-proxy | simulate | check-config | ...``.

What a user sees, whatever they type:

* bad input (a file, a flag value) ends with one line on stderr,
  ``nri-memory-manager <command>: <file>: <key path>: <problem>``, and status 2;
* a usage error (an unknown flag, a missing argument) prints the usage line, then
  argparse's error line, and status 2;
* a closed pipe on stdout (``... | head -1``) ends quietly with status 141, what a
  shell reports for a tool killed by SIGPIPE (``cat``, ``grep``);
* stdout that cannot be written (a full disk) ends with one line and status 1;
* Ctrl-C ends with status 130; no traceback in any case.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from nri_plugin import __version__
from nri_plugin.errors import InputError
from nri_plugin.podresources import flags as pod_resources_flags

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

PROG = "nri-memory-manager"
DEFAULT_STATE_DIR = "/var/lib/nri-memory-manager"
# frontends/relist.py's DEFAULT_INTERVAL_S, repeated: the command line loads no gRPC
DEFAULT_RELIST_INTERVAL_S = 10.0
# A scenario may embed a whole checkpoint (initialState), so it gets the checkpoint's limit.
SCENARIO_LIMIT = 64 << 20
# Longest usage-error line: argparse quotes the user's value in it.
_MESSAGE_LIMIT = 400


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help (none for flags without one); epilogs as written."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # never break a path such as /var/lib/nri-memory-manager at its hyphen
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are the usage line and one error line, and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split())  # one line, however long
        text = _one_line(message)
        if len(text) > _MESSAGE_LIMIT:
            text = text[: _MESSAGE_LIMIT - 3] + "..."
        sys.stderr.write(f"{usage}\n{self.prog}: error: {text}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _epilog(example: str, doc: str) -> str:
    return f"example:\n  {example}\n\nsee {doc}"


def _add_machine_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument(
        "--topology-file",
        metavar="FILE",
        help="a fake NUMA topology file (YAML or JSON, like the topology: block of a"
        " scenario, docs/simulate.md)",
    )
    g.add_argument(
        "--sysfs-root",
        metavar="DIR",
        help="discover the topology under DIR/devices/system/node (default: /sys when"
        " no --topology-file is given)",
    )


def _add_daemon_args(p: argparse.ArgumentParser) -> None:
    """What ``run`` and ``cri-proxy`` share: the machine, config, state, metrics and logs."""
    p.add_argument("--config", metavar="FILE", help="config file (YAML or JSON; README.md)")
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR", help="where the checkpoint lives"
    )
    _add_machine_args(p, required=False)
    p.add_argument(
        "--kubelet-config",
        metavar="FILE",
        default=None,
        help="the node's KubeletConfiguration file: take its reservations and topology"
        " manager settings and refuse to start when ours contradict them",
    )
    pod_resources_flags.add_arguments(p)
    p.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus /metrics and /healthz there (off when not given)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="lowest level logged (JSON lines on stderr when not a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="The Kubernetes Memory Manager static policy as a containerd NRI plugin.",
        formatter_class=_Formatter,
        epilog=f"run '{PROG} COMMAND --help' for a command's flags; see README.md",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add(
        name: str, summary: str, example: str, doc: str, more: str = ""
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            # the raw formatter keeps the epilog's layout; the description is wrapped here
            description=textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {more}".strip(), 78),
            formatter_class=_Formatter,
            epilog=_epilog(example, doc),
        )

    run = add(
        "run",
        "run the NRI plugin on this node",
        f"{PROG} run --config /etc/nri-memory-manager/config.yaml --kubelet-config"
        " /var/lib/kubelet/config.yaml",
        "docs/deploy.md",
        "Pre-launched by containerd, it takes its socket, name and index from"
        " NRI_PLUGIN_SOCKET, NRI_PLUGIN_NAME and NRI_PLUGIN_IDX. SIGTERM stops it cleanly.",
    )
    run.add_argument(
        "--socket",
        default="/var/run/nri/nri.sock",
        metavar="PATH",
        help="containerd's NRI socket (ignored when containerd starts the plugin itself)",
    )
    run.add_argument(
        "--plugin-name", default="memory-manager", metavar="NAME", help="the NRI plugin name"
    )
    run.add_argument(
        "--plugin-index",
        default="90",
        metavar="NN",
        help="the NRI plugin index, two digits: the order among plugins",
    )
    run.add_argument(
        "--runtime-endpoint",
        metavar="PATH",
        default=None,
        help="the runtime's CRI socket, asked for the exit codes NRI does not carry (default:"
        " containerd.sock beside the NRI socket, else /run/containerd/containerd.sock)",
    )
    run.add_argument(
        "--relist-interval",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_RELIST_INTERVAL_S,
        help="how often the runtime's CRI is asked for the sandboxes of pods whose end"
        " containerd does not announce (pods that ran before its last restart), while such"
        " pods hold memory; their memory is released when their sandbox is gone or not"
        f" ready (default {DEFAULT_RELIST_INTERVAL_S:g}; 0: only at the next Synchronize)",
    )
    _add_daemon_args(run)

    proxy = add(
        "cri-proxy",
        "run the policy as a CRI proxy (for runtimes without NRI)",
        f"{PROG} cri-proxy --listen /run/nri-memory-manager/cri.sock"
        " --runtime-endpoint unix:///run/containerd/containerd.sock"
        " --config /etc/nri-memory-manager/config.yaml",
        "docs/cri-proxy.md",
    )
    proxy.add_argument(
        "--listen",
        required=True,
        metavar="PATH",
        help="the unix socket kubelet calls (a path or unix:///path; no other scheme)",
    )
    proxy.add_argument(
        "--runtime-endpoint",
        required=True,
        metavar="PATH",
        help="the real runtime's CRI unix socket (a path or unix:///path)",
    )
    _add_daemon_args(proxy)

    sim = add(
        "simulate",
        "run a scenario through the policy and print the JSON report",
        f"{PROG} simulate tests/scenarios/seed-150gi-two-nodes.yaml --compact",
        "docs/simulate.md",
    )
    sim.add_argument("scenario", help="the scenario file (YAML or JSON), or - for stdin")
    sim.add_argument("--compact", action="store_true", help="print the report on one line")

    chk = add(
        "check-config",
        "validate a config file against a machine as kubelet would at start",
        f"{PROG} check-config --config /etc/nri-memory-manager/config.yaml --sysfs-root /sys",
        "README.md ('Configuration file') and docs/kubelet-alignment.md",
    )
    chk.add_argument("--config", required=True, metavar="FILE", help="the config file to check")
    _add_machine_args(chk)

    topo = add(
        "topology",
        "show the NUMA topology as discovered",
        f"{PROG} topology --sysfs-root /sys --json > topology.json",
        "docs/simulate.md (the topology: schema)",
    )
    _add_machine_args(topo, required=False)
    topo.add_argument(
        "--json",
        action="store_true",
        help="print the topology as JSON in the --topology-file format (nodes, CPUs, memory,"
        " hugepages, distances), usable as --topology-file or a scenario's topology:",
    )

    st = add(
        "state",
        "show a checkpoint file (ours or kubelet's) without the plugin running",
        f"{PROG} state --state-dir {DEFAULT_STATE_DIR}",
        "docs/recovery.md",
    )
    g = st.add_mutually_exclusive_group()
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help=f"read DIR/memory_manager_state (default: {DEFAULT_STATE_DIR})",
    )
    g.add_argument("--state-file", metavar="FILE", default=None, help="read this checkpoint file")
    st.add_argument(
        "--json", action="store_true", help="print the checkpoint in kubelet's JSON layout"
    )
    return parser


class _OutputError(Exception):
    """stdout could not be written."""

    def __init__(self, exc: OSError | None) -> None:
        self.exc = exc


def _emit(text: str) -> None:
    """Write ``text`` and a newline to stdout, flushed now so a failure is seen here."""
    if sys.stdout is None:
        raise _OutputError(None)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as exc:
        raise _OutputError(exc) from None


def _load_topology(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from nri_plugin.inputs.topology import discover_sysfs, load_topology_file

    if getattr(args, "topology_file", None):
        return load_topology_file(args.topology_file)
    return discover_sysfs(getattr(args, "sysfs_root", None) or "/sys")


def cmd_simulate(args: argparse.Namespace) -> int:
    from nri_plugin.frontends.simulate import simulate_text
    from nri_plugin.inputs.reader import decode_text, read_bytes

    if args.scenario == "-":
        source = "stdin"
        raw = sys.stdin.buffer.read(SCENARIO_LIMIT + 1)
        if len(raw) > SCENARIO_LIMIT:
            raise InputError(f"stdin: larger than {SCENARIO_LIMIT} bytes (the limit for scenarios)")
    else:
        source = args.scenario
        raw = read_bytes(source, InputError, limit=SCENARIO_LIMIT, what="scenarios")
    report = simulate_text(decode_text(raw, source, InputError), source=source)
    if args.compact:
        _emit(json.dumps(report, separators=(",", ":")))
    else:
        _emit(json.dumps(report, indent=2))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from nri_plugin.display import format_machine_table
    from nri_plugin.engine.manager import MemoryManager
    from nri_plugin.inputs.config import load_config_file, validate_for_machine

    topology = _load_topology(args)
    config = load_config_file(args.config)
    validate_for_machine(config, topology, source=args.config)
    manager = MemoryManager(topology, config)
    _emit(
        f"{args.config}: valid for this machine ({len(topology.nodes)} NUMA nodes)\n"
        f"  memory manager policy: {config.policy}\n"
        f"  topology manager: policy {config.topology_manager_policy},"
        f" scope {config.topology_manager_scope}\n" + format_machine_table(manager.state)
    )
    return EXIT_OK


def cmd_topology(args: argparse.Namespace) -> int:
    from nri_plugin.display import format_topology_table
    from nri_plugin.inputs.topology import topology_to_mapping

    topology = _load_topology(args)
    if args.json:
        _emit(json.dumps(topology_to_mapping(topology), indent=2))
    else:
        _emit(format_topology_table(topology))
    return EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nri_plugin.display import format_checkpoint
    from nri_plugin.persist.file import STATE_FILE_NAME, load_checkpoint
    from nri_plugin.persist.format import checkpoint_to_json

    if args.state_file:
        path = Path(args.state_file)
    else:
        path = Path(args.state_dir or DEFAULT_STATE_DIR) / STATE_FILE_NAME
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        raise InputError(f"{path}: no such file")
    if args.json:
        _emit(json.dumps(checkpoint_to_json(checkpoint), indent=2))
    else:
        _emit(f"checkpoint: {path}\n{format_checkpoint(checkpoint)}")
    return EXIT_OK


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": cmd_simulate,
    "check-config": cmd_check_config,
    "topology": cmd_topology,
    "state": cmd_state,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # the subcommand's usage, not the top level's, says what it takes
            _subcommand(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    prefix = f"{PROG} {args.command}"
    try:
        if args.command in ("run", "cri-proxy"):
            from nri_plugin import daemon

            mode = daemon.MODE_NRI if args.command == "run" else daemon.MODE_CRI_PROXY
            return daemon.main(args, mode)
        return _HANDLERS[args.command](args)
    except InputError as exc:
        _error(f"{prefix}: {exc}")
        return EXIT_BAD_INPUT
    except _OutputError as exc:
        if isinstance(exc.exc, BrokenPipeError):
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        reason = "stdout is closed" if exc.exc is None else exc.exc.strerror or str(exc.exc)
        if exc.exc is not None and exc.exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += " (the output is incomplete)"
        _silence_stdout()
        _error(f"{prefix}: cannot write the output: {reason}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MemoryError:
        _error(f"{prefix}: out of memory")
        return EXIT_FAILURE


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    return parser


def _error(text: str) -> None:
    try:
        sys.stderr.write(_one_line(text) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # nowhere left to say it


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()).strip()


if __name__ == "__main__":
    sys.exit(main())
