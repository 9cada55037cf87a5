#!/usr/bin/env bash
# The demo: installs what it needs (a venv, a private containerd from Debian's
# packages), starts containerd with NRI and nri-memory-manager on a fake
# 4-NUMA topology, creates pods of each QoS class, prints the decisions and the
# state, and tears everything down. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh >/dev/null
hack/e2e-setup.sh >/dev/null
exec .venv/bin/python hack/demo.py
