#!/usr/bin/env bash
# Create .venv with the package and its test tools. Idempotent.
# On a fresh Debian machine (as root) it first installs python3 and venv from apt.
set -euo pipefail
cd "$(dirname "$0")/.."

need_python() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 - <<'PY' 2>/dev/null || return 0
import sys, venv, ensurepip  # noqa: F401
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
  return 1
}

if need_python; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: python3 >= 3.11 with venv is missing; run as root to install it" >&2
    exit 1
  fi
  echo "setup: installing python3 and python3-venv from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi

# hack/test.sh lints the shell scripts with shellcheck
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python --version))"
