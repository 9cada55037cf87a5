#!/usr/bin/env bash
# Set up everything and run every check: lint, types, unit/property/protocol
# tests and the end-to-end tests against real containerd 2.x and 1.7, the
# plugin's own image among them.
# Needs root (containerd, runc, cgroups). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/setup.sh
hack/e2e-setup.sh
# The plugin's image from the Dockerfile, for tests/e2e/test_image.py; also proves the build
# leaves /etc, /var/lib and /usr as they were.
hack/image-build.sh --check-system
echo "== shellcheck"
shellcheck hack/*.sh hack/kind/*.sh .ci/run
echo "== ruff"
.venv/bin/ruff check nri_plugin tests hack benchmarks
echo "== mypy --strict"
.venv/bin/mypy --strict nri_plugin benchmarks
echo "== pytest"
# CI=true makes a missing e2e setup a failure, never a skip
CI=true .venv/bin/python -m pytest -p no:cacheprovider "$@"
