"""The pod-resources flags of ``run`` and ``cri-proxy``.

Kept apart from the client and the server so that the command line does not
load gRPC for commands that never use it.
"""

from __future__ import annotations

import argparse

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# the client's LOOKUP_DEADLINE_S, as the help text says it
DEADLINE_TEXT = "100 ms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pod-resources-socket",
        metavar="PATH",
        default=DEFAULT_SOCKET,
        help="kubelet's pod-resources socket: device NUMA hints and exact init containers;"
        f" a container's creation waits at most {DEADLINE_TEXT} for it ('' to not use it;"
        f" default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--serve-pod-resources",
        metavar="PATH",
        default=None,
        help="serve a pod-resources socket: kubelet's answers with the plugin's memory"
        " blocks and allocatable memory added, for node-feature-discovery's"
        " topology-updater or resource-topology-exporter (default: not served)",
    )
