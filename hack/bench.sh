#!/usr/bin/env bash
# Set up and run every benchmark, printing one table per item (see benchmarks/README.md).
#
# usage: hack/bench.sh [--quick] [--only NAME]... [--skip NAME]...
#   NAME: decision, transport, checkpoint, memory, e2e
# The e2e benchmark needs root: as root, hack/e2e-setup.sh installs containerd
# and runc first when missing (idempotent); otherwise e2e says it is skipped.
# hack/go-plugin-setup.sh builds its Go yardstick plugin (idempotent); when that
# fails, e2e says so and measures the other configurations.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/setup.sh >&2
if [ "$(id -u)" -eq 0 ] && [[ " $* " != *" --skip e2e "* ]]; then
  hack/e2e-setup.sh >&2
  hack/go-plugin-setup.sh >&2 ||
    echo "bench: the Go plugin could not be built; e2e runs without it" >&2
fi
exec .venv/bin/python -m benchmarks.run "$@"
