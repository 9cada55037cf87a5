#!/usr/bin/env bash
# Long fault-injection run against real containerd 2.x and 1.7 (docs/fault-injection.md):
# random pod churn, in-place resizes, crashes with kubelet's restarts and restarts with new
# limits, while the plugin is killed with SIGKILL (plugin-kill) or containerd is restarted
# (containerd-restart), checked against `nri-memory-manager simulate`.
# Prints the seed, progress and the figures of every run; exits 1 when any check failed.
# Needs root (containerd, runc, cgroups). Scenarios, logs and figures stay in --work
# (default: $NMM_E2E_DIR/logs/fault-injection-SEED, NMM_E2E_DIR defaults to /tmp/nmm-e2e).
#
# usage: hack/fault-injection.sh [--ops N] [--seed S] [--flavor 2.x|1.7|both]
#            [--fault plugin-kill|containerd-restart|both] [--policy best-effort|restricted]
#            [--fault-rate R] [--work DIR]
#   --ops N         operations per run (default 5000; the CI slice runs 1000)
#   --seed S        repeat a run (default: a random seed, printed first)
#   --fault-rate R  chance that an operation is hit by a fault (default 0.02)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "fault-injection: needs root (containerd, runc, mounts and cgroups)" >&2
    exit 2
fi
for step in hack/setup.sh hack/e2e-setup.sh; do
    if ! out=$("$step" 2>&1); then
        printf '%s\n' "$out" >&2
        exit 1
    fi
done
exec .venv/bin/python -m tests.e2e.faults "$@"
