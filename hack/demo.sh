#!/usr/bin/env bash
# The demo: installs what it needs (a venv, a private containerd from Debian's
# packages), starts containerd with NRI and nri-memory-manager on a fake
# 4-NUMA topology, creates pods of each QoS class, prints the decisions and the
# state, and tears everything down. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# the setup's output only when it fails
hack/setup.sh >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
hack/e2e-setup.sh >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
.venv/bin/python hack/demo.py
