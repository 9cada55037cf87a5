#!/usr/bin/env bash
# nri-memory-manager on a kind cluster, end to end:
#   create a one-node cluster with NRI on (hack/kind/cluster.yaml), build the
#   image and `kind load` it, deploy hack/kind (deploy/ + a fake 4-NUMA
#   topology whose nodes the plugin maps onto the node's real ones), then
#   create hack/kind/pods.yaml's pods one by one: a pod spanning fake nodes 0
#   and 1, pods on fake nodes 2 and 3, Burstable and BestEffort pods, and one
#   that must be refused. hack/kind/verify.py checks each: the fake nodes it
#   got (its nri-memory-manager.io/numa-nodes annotation, crictl inspect), that
#   it runs, that the kernel confines it to its cpuset.mems
#   (/proc/PID/status), which names nodes the host has; the refusal's
#   TopologyAffinityError. Then the plugin's metrics and state.
#
# Needs docker (a running engine), kind, kubectl and python3 on the host, and
# about 2Gi of memory free for the node. Not run in CI: the CI machine has no
# Docker engine: tests/e2e/test_kind_overlay.py runs the same rendering of
# hack/kind, the same pods and the same checks (verify.py) against the image on
# a plain containerd in CI.
#
# Environment:
#   CLUSTER_NAME     kind cluster name (default nmm-e2e)
#   KIND_NODE_IMAGE  kindest/node image: pick its containerd (1.7 or 2.x)
#   KEEP_CLUSTER=1   leave the cluster running afterwards
set -euo pipefail

cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER_NAME:-nmm-e2e}"
# must match newName/newTag in hack/kind/kustomization.yaml
IMAGE="nri-memory-manager:kind-e2e"
NODE="${CLUSTER}-control-plane"
NS="nmm-e2e"
PLUGIN_NS="kube-system"
PLUGIN_LABEL="app.kubernetes.io/name=nri-memory-manager"

log() { printf '== %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

for tool in docker kind kubectl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed"
done

k() { kubectl --context "kind-${CLUSTER}" "$@"; }

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "plugin logs (last 50 lines)"
    k -n "$PLUGIN_NS" logs -l "$PLUGIN_LABEL" --tail=50 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" = "1" ]; then
    log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
create_args=(--name "$CLUSTER" --config hack/kind/cluster.yaml --wait 180s)
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
  create_args+=(--image "$KIND_NODE_IMAGE")
fi
kind create cluster "${create_args[@]}"
docker exec "$NODE" containerd --version
docker exec "$NODE" test -S /var/run/nri/nri.sock || fail "containerd on $NODE has no NRI socket"

log "building $IMAGE and loading it into $NODE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "deploying the plugin (hack/kind)"
k apply -k hack/kind
# ready = /healthz: registered with containerd and synchronized
k -n "$PLUGIN_NS" rollout status daemonset/nri-memory-manager --timeout=180s
PLUGIN_POD="$(k -n "$PLUGIN_NS" get pods -l "$PLUGIN_LABEL" -o jsonpath='{.items[0].metadata.name}')"

log "creating the test pods one by one and checking each (hack/kind/pods.yaml)"
k create namespace "$NS"
failures=0
python3 hack/kind/verify.py hack/kind/pods.yaml \
  --context "kind-${CLUSTER}" --node "$NODE" --namespace "$NS" || failures=$((failures + 1))

check() {
  local what=$1 got=$2 want=$3
  if [ "$got" = "$want" ]; then
    printf '  ok    %-40s %s\n' "$what" "$got"
  else
    printf '  FAIL  %-40s got %s, want %s\n' "$what" "$got" "$want"
    failures=$((failures + 1))
  fi
}

log "plugin metrics (through the API server's pod proxy)"
metrics="$(k get --raw "/api/v1/namespaces/${PLUGIN_NS}/pods/${PLUGIN_POD}:9464/proxy/metrics")"
printf '%s\n' "$metrics" | grep -E '^kubelet_(topology_manager_admission|memory_manager_pinning)' || true
errors="$(printf '%s\n' "$metrics" |
  awk '$1 == "kubelet_topology_manager_admission_errors_total" {print int($2)}')"
if [ "${errors:-0}" -ge 1 ]; then
  check "admission errors counted" "yes" "yes"
else
  check "admission errors counted" "${errors:-none}" "at least 1"
fi

log "plugin state"
k -n "$PLUGIN_NS" exec "$PLUGIN_POD" -- nri-memory-manager state

if [ "$failures" -ne 0 ]; then
  fail "$failures check(s) failed"
fi
log "kind e2e passed"
