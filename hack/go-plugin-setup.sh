#!/usr/bin/env bash
# Builds the Go yardstick plugin of the end-to-end benchmark (benchmarks/go-plugin, on
# containerd/nri's pkg/stub) from Debian packages only: the Go 1.24 toolchain from trixie and
# the Go library sources (-dev packages) unpacked into one private GOPATH tree, built in GOPATH
# mode with no module proxy. Nothing is installed system-wide. Idempotent: the packages are
# downloaded once and the plugin is rebuilt only when its source or the package set changed.
#
# usage: hack/go-plugin-setup.sh [DIR]   (DIR defaults to $NMM_GO_PLUGIN_DIR, else
#                                         $NMM_E2E_DIR/go-plugin, else /tmp/nmm-e2e/go-plugin)
# env:   NMM_E2E_MIRROR    Debian mirror (default: the system's first one)
# The binary is DIR/bin/go-mems-only (benchmarks/bench_e2e.py looks for it there).
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
src=$repo/benchmarks/go-plugin
dir=$(realpath -m "${1:-${NMM_GO_PLUGIN_DIR:-${NMM_E2E_DIR:-/tmp/nmm-e2e}/go-plugin}}")
started=$SECONDS

say() { printf 'go-plugin-setup: %s\n' "$*"; }
die() { printf 'go-plugin-setup: error: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

for tool in apt-get dpkg-deb sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found: this script needs a Debian system"
done
[ -s "$src/main.go" ] || die "$src/main.go missing"

# Toolchain: trixie's Go 1.24 (sid's libraries below want no newer Go than the rest of the tree).
toolchain=(golang-1.24-go/trixie golang-1.24-src/trixie)
# Libraries: NRI 0.8.0 from sid (containerd 2.1's own NRI version; its pkg/stub also registers
# with 1.7's NRI 0.6.1), the CRI API it imports from sid, the rest from trixie, whose versions
# still build with Go 1.24.
libraries=(
    golang-github-containerd-nri-dev/sid
    golang-k8s-cri-api-dev/sid
    golang-github-containerd-ttrpc-dev/trixie
    golang-github-sirupsen-logrus-dev/trixie
    golang-golang-x-sys-dev/trixie
    golang-golang-x-net-dev/trixie
    golang-golang-x-text-dev/trixie
    golang-google-protobuf-dev/trixie
    golang-github-golang-protobuf-1-5-dev/trixie
    golang-google-genproto-dev/trixie
    golang-google-grpc-dev/trixie
    golang-github-opencontainers-specs-dev/trixie
)

mkdir -p "$dir"/apt/lists/partial "$dir"/apt/cache "$dir"/debs/go "$dir"/debs/lib "$dir"/bin

# --- private apt (hack/lib/private-apt.sh): fetch DEST PKG/SUITE -------------------------------
# shellcheck source=hack/lib/private-apt.sh
. "$here/lib/private-apt.sh"
private_apt "$dir" trixie sid

# unpack ROOT DEBDIR: extracts every .deb of DEBDIR into ROOT, atomically; a root whose
# package list differs from DEBDIR's (a package added or updated) is unpacked anew.
unpack() {
    local root=$1 debs=$2 deb list
    list=$(cd "$debs" && ls -1 -- *.deb)
    [ "$(cat "$root/.unpacked" 2>/dev/null)" = "$list" ] && return 0
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
    printf '%s\n' "$list" >"$root.tmp/.unpacked"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    say "unpacked $(basename "$debs") into $root"
}

for spec in "${toolchain[@]}"; do fetch "$dir/debs/go" "$spec" || die "cannot download $spec"; done
for spec in "${libraries[@]}"; do fetch "$dir/debs/lib" "$spec" || die "cannot download $spec"; done
unpack "$dir/go" "$dir/debs/go"
unpack "$dir/gopath" "$dir/debs/lib"

goroot=$dir/go/usr/lib/go-1.24
[ -x "$goroot/bin/go" ] || die "$goroot/bin/go missing after unpacking"
# Build offline from the unpacked tree only: GOPATH mode, no proxy, no toolchain download,
# no user or system go.env, a private build cache, and a static binary.
go_env=(
    GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS= GOENV=off CGO_ENABLED=0
    "GOROOT=$goroot" "GOPATH=$dir/gopath/usr/share/gocode" "GOCACHE=$dir/cache"
    "PATH=$goroot/bin:/usr/bin:/bin"
)
[ -d "$dir/gopath/usr/share/gocode/src/github.com/containerd/nri/pkg/stub" ] ||
    die "containerd/nri's pkg/stub missing in $dir/gopath"

# --- build: only when the source, the packages or the toolchain changed -------------------------
binary=$dir/bin/go-mems-only
stamp=$( (cat "$src"/*.go; cat "$dir/go/.unpacked" "$dir/gopath/.unpacked") | sha256sum)
if [ ! -x "$binary" ] || [ "$(cat "$binary.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building $binary with $(env -i "${go_env[@]}" go version)"
    (cd "$src" && env -i "${go_env[@]}" go build -trimpath -o "$binary.tmp" .) ||
        die "go build of $src failed"
    mv "$binary.tmp" "$binary"
    printf '%s\n' "$stamp" >"$binary.stamp"
fi
say "ready: $binary ($((SECONDS - started)) s)"
