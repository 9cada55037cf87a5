#!/usr/bin/env bash
# Set up and run the checks.
#
#   hack/test.sh          lint, types, unit/property/protocol tests and the end-to-end
#                         tests against real containerd 2.x and 1.7 (root; installs a
#                         private containerd under /tmp/nmm-e2e and builds the plugin's
#                         image from the Dockerfile first). CI runs this.
#   hack/test.sh --unit   lint, types and the unit/property/protocol tests only: no root,
#                         no containerd, nothing installed beyond .venv.
#
# Other arguments go to pytest (e.g. hack/test.sh --unit tests/test_cli.py -k help).
set -euo pipefail
cd "$(dirname "$0")/.."

unit_only=0
if [ "${1:-}" = --unit ]; then
    unit_only=1
    shift
fi

hack/setup.sh
if [ "$unit_only" = 0 ]; then
    hack/e2e-setup.sh
    # The plugin's image from the Dockerfile, for tests/e2e/test_image.py; also proves the
    # build leaves /etc, /var/lib and /usr as they were.
    hack/image-build.sh --check-system
fi
echo "== shellcheck"
if command -v shellcheck >/dev/null; then
    shellcheck hack/*.sh hack/kind/*.sh hack/lib/*.sh .ci/run
elif [ "$unit_only" = 1 ]; then
    echo "shellcheck not installed: skipped (apt-get install shellcheck)"
else
    echo "shellcheck not installed" >&2
    exit 1
fi
echo "== ruff"
.venv/bin/ruff check nri_plugin tests hack benchmarks
echo "== mypy --strict"
.venv/bin/mypy --strict nri_plugin benchmarks
echo "== pytest"
if [ "$unit_only" = 1 ]; then
    # a plain pytest: tests/e2e is skipped unless --e2e or NMM_E2E=1
    .venv/bin/python -m pytest -p no:cacheprovider "$@"
else
    # CI=true makes a missing e2e setup a failure, never a skip
    CI=true .venv/bin/python -m pytest -p no:cacheprovider --e2e "$@"
fi
