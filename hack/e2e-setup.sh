#!/usr/bin/env bash
# Installs everything tests/e2e needs into one private directory, without touching the system:
# containerd 2.x (sid) and 1.7 (trixie), runc and busybox (bookworm), the CRI api.proto,
# a local OCI image tar and the Python CRI stubs; for the manifests, kustomize and kubectl
# (trixie) and kubernetes-validate (PyPI, in a venv of its own: Kubernetes' schemas offline).
# Idempotent: finished steps are skipped.
#
# usage: hack/e2e-setup.sh [DIR]   (DIR defaults to $NMM_E2E_DIR or /tmp/nmm-e2e)
# env:   PYTHON            interpreter with grpcio-tools (default: the repo's .venv)
#        NMM_E2E_MIRROR    Debian mirror (default: the system's first one)
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
dir=$(realpath -m "${1:-${NMM_E2E_DIR:-/tmp/nmm-e2e}}")
python=${PYTHON:-$repo/.venv/bin/python}
started=$SECONDS

say() { printf 'e2e-setup: %s\n' "$*"; }
die() { printf 'e2e-setup: error: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# The longest socket is $dir/run-17/containerd.sock.ttrpc; unix socket paths must stay < 108 bytes.
((${#dir} <= 60)) || die "directory $dir is ${#dir} bytes long; keep it at most 60 (socket paths)"
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool not found: this script needs a Debian system"
done
[ -x "$python" ] || die "python $python not found; set PYTHON to an interpreter with grpcio-tools"
"$python" -c 'import grpc_tools.protoc' 2>/dev/null ||
    die "$python cannot import grpc_tools; install grpcio-tools into it"

mkdir -p "$dir"/apt/lists/partial "$dir"/apt/cache "$dir"/debs
rm -f "$dir/setup.done" # rewritten at the very end, so an interrupted run is never "ready"

# --- private apt (hack/lib/private-apt.sh): fetch DEST PKG/SUITE -------------------------------
# shellcheck source=hack/lib/private-apt.sh
. "$here/lib/private-apt.sh"
private_apt "$dir" bookworm trixie sid

# unpack ROOT DEBDIR: extracts every .deb of DEBDIR into ROOT, atomically (a partial root is
# never mistaken for a finished one).
unpack() {
    local root=$1 debs=$2 deb
    [ -e "$root/.unpacked" ] && return 0
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
    touch "$root.tmp/.unpacked"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    say "unpacked $(basename "$(dirname "$root")")"
}

fetch "$dir/debs/ctrd2" containerd/sid
fetch "$dir/debs/ctrd17" containerd/trixie
# sid's and trixie's runc need glibc 2.38; bookworm's runs everywhere here.
fetch "$dir/debs/base" runc/bookworm
fetch "$dir/debs/base" busybox-static/bookworm
cri_proto=usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto
if ! compgen -G "$dir/debs/base/golang-*cri-api-dev_*.deb" >/dev/null; then
    fetch "$dir/debs/base" golang-k8s-cri-api-dev/sid ||
        fetch "$dir/debs/base" golang-github-kubernetes-cri-api-dev/trixie ||
        die "no CRI api.proto package found in sid or trixie"
fi
fetch "$dir/debs/k8s" kustomize/trixie
fetch "$dir/debs/k8s" kubectl/trixie
unpack "$dir/ctrd2/root" "$dir/debs/ctrd2"
unpack "$dir/ctrd17/root" "$dir/debs/ctrd17"
unpack "$dir/base/root" "$dir/debs/base"
unpack "$dir/k8s/root" "$dir/debs/k8s"
for bin in k8s/root/usr/bin/kustomize k8s/root/usr/bin/kubectl \
    ctrd2/root/usr/bin/containerd ctrd17/root/usr/bin/containerd \
    ctrd2/root/usr/bin/containerd-shim-runc-v2 ctrd17/root/usr/bin/containerd-shim-runc-v2 \
    ctrd2/root/usr/bin/ctr ctrd17/root/usr/bin/ctr base/root/usr/sbin/runc base/root/bin/busybox; do
    [ -x "$dir/$bin" ] || die "$dir/$bin missing after unpacking"
done
"$dir/base/root/usr/sbin/runc" --version >/dev/null 2>&1 ||
    die "$dir/base/root/usr/sbin/runc does not run on this system"

# --- Kubernetes' own JSON schemas, offline: no Debian package has a validator, PyPI does --------
validator=$dir/validate
validator_version=1.37.0
if [ "$(cat "$validator/.stamp" 2>/dev/null)" != "$validator_version" ]; then
    rm -rf "$validator"
    "$python" -m venv "$validator"
    "$validator/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$validator_version" ||
        die "cannot install kubernetes-validate $validator_version from PyPI"
    printf '%s\n' "$validator_version" >"$validator/.stamp"
    say "installed kubernetes-validate $validator_version in $validator"
fi

# --- local OCI image (no registry is reachable) -------------------------------------------------
image=$dir/e2e-image.tar
if [ ! -s "$image" ] || [ "$here/oci_image.py" -nt "$image" ]; then
    "$python" "$here/oci_image.py" --busybox "$dir/base/root/bin/busybox" --output "$image.tmp"
    mv "$image.tmp" "$image"
    say "built $image"
fi

# --- Python CRI stubs: generated code is tied to the protobuf runtime, so regenerate on change --
stubs=$dir/stubs/k8s_cri
stamp="$python $("$python" -c 'import importlib.metadata as m; print(m.version("protobuf"))')"
if [ ! -s "$stubs/api_pb2_grpc.py" ] || [ "$(cat "$stubs/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$stubs"
    mkdir -p "$stubs"
    # Trixie's copy imports gogo.proto; its gogoproto lines are file options only and can go.
    grep -v gogoproto "$dir/base/root/$cri_proto" >"$stubs/api.proto"
    : >"$stubs/__init__.py"
    (cd "$dir/stubs" && "$python" -m grpc_tools.protoc -I. --python_out=. \
        --grpc_python_out=. k8s_cri/api.proto)
    printf '%s\n' "$stamp" >"$stubs/.stamp"
    say "generated CRI stubs in $stubs"
fi

# The harness treats this file as "setup finished"; it lists what was installed.
for deb in "$dir"/debs/*/*.deb; do basename "$deb"; done >"$dir/setup.done"
say "ready in $dir ($((SECONDS - started)) s)"
