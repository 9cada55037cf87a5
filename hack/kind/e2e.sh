#!/usr/bin/env bash
# nri-memory-manager on a kind cluster, end to end:
#   create a one-node cluster with NRI on (hack/kind/cluster.yaml), build the
#   image and `kind load` it, deploy hack/kind (deploy/ + a fake 4-NUMA
#   topology), create Guaranteed, Burstable and BestEffort pods and one that
#   must be refused, then check each container's cpuset.mems in its OCI spec
#   on the node (crictl inspect) and the refusal reason in the pod's status.
#
# Needs docker (a running engine), kind, kubectl and python3 on the host, and
# about 2Gi of memory free for the node. Not run in CI: the CI machine has no
# Docker engine (tests/e2e covers the same plugin against plain containerd).
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

log "creating the test pods"
k create namespace "$NS"
k apply -n "$NS" -f - <<'EOF'
# Guaranteed, 128Mi: fits a single fake NUMA node; the lowest is node 0.
apiVersion: v1
kind: Pod
metadata: {name: guaranteed}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.10
      resources:
        limits: {cpu: 100m, memory: 128Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: burstable}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.10
      resources:
        requests: {cpu: 50m, memory: 64Mi}
        limits: {memory: 128Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: besteffort}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.10
---
# Guaranteed, 1536Mi: more than any one fake node (1Gi) holds, and the
# policy is single-numa-node: refused with TopologyAffinityError.
apiVersion: v1
kind: Pod
metadata: {name: refused}
spec:
  containers:
    - name: app
      image: registry.k8s.io/pause:3.10
      resources:
        limits: {cpu: 100m, memory: 1536Mi}
EOF
k -n "$NS" wait --for=condition=Ready pod/guaranteed pod/burstable pod/besteffort --timeout=180s

# cpuset.mems in the container's OCI spec, read on the node ("" when unset)
container_mems() {
  local pod=$1 id
  id="$(docker exec "$NODE" crictl ps -a -q \
    --label "io.kubernetes.pod.namespace=$NS" --label "io.kubernetes.pod.name=$pod" | head -n 1)"
  [ -n "$id" ] || fail "no container of pod $pod on $NODE"
  docker exec "$NODE" crictl inspect "$id" | python3 -c '
import json, sys
spec = json.load(sys.stdin)["info"]["runtimeSpec"]
print(spec.get("linux", {}).get("resources", {}).get("cpu", {}).get("mems", ""))
'
}

failures=0
check() {
  local what=$1 got=$2 want=$3
  if [ "$got" = "$want" ]; then
    printf '  ok    %-28s %s\n' "$what" "${got:-(unset)}"
  else
    printf '  FAIL  %-28s got %s, want %s\n' "$what" "${got:-(unset)}" "${want:-(unset)}"
    failures=$((failures + 1))
  fi
}

log "checking cpuset.mems on the node"
# assignments first: a failed lookup must stop the script, not compare as ""
mems_guaranteed="$(container_mems guaranteed)"
mems_burstable="$(container_mems burstable)"
mems_besteffort="$(container_mems besteffort)"
check "guaranteed cpuset.mems" "$mems_guaranteed" "0"
check "burstable cpuset.mems" "$mems_burstable" ""
check "besteffort cpuset.mems" "$mems_besteffort" ""

log "checking the refusal"
reason=""
for _ in $(seq 1 60); do
  reason="$(k -n "$NS" get pod refused \
    -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
  [ "$reason" = "CreateContainerError" ] && break
  sleep 2
done
message="$(k -n "$NS" get pod refused \
  -o jsonpath='{.status.containerStatuses[0].state.waiting.message}')"
check "refused waiting reason" "$reason" "CreateContainerError"
case "$message" in
  *TopologyAffinityError:*single-numa-node*) check "refused message" "TopologyAffinityError" \
    "TopologyAffinityError" ;;
  *) check "refused message" "$message" "TopologyAffinityError: ... single-numa-node" ;;
esac
printf '  message: %s\n' "$message"

log "plugin metrics (through the API server's pod proxy)"
metrics="$(k get --raw "/api/v1/namespaces/${PLUGIN_NS}/pods/${PLUGIN_POD}:9464/proxy/metrics")"
printf '%s\n' "$metrics" | grep -E '^(topology_manager_admission|memory_manager_pinning)' || true
errors="$(printf '%s\n' "$metrics" |
  awk '$1 == "topology_manager_admission_errors_total" {print int($2)}')"
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
