#!/usr/bin/env bash
# Builds the plugin's image from the unchanged Dockerfile, as `docker build .` would, on a
# machine with no Docker engine and no container registry, and writes it as an OCI archive.
#
#   * the tools (mmdebstrap, buildah, patchelf, libgpgme11) come from Debian with a private apt
#     config and are unpacked with `dpkg-deb -x` into the work directory;
#   * the base passed as PYTHON_IMAGE is made with mmdebstrap from Debian packages, shaped like
#     the official python:*-slim image (debian:*-slim's packages, Debian's python3, pip in
#     /usr/local where the Dockerfile's `pip uninstall` can remove it); cached, keyed by suite,
#     pip version and this recipe;
#   * the build context is the repository's tracked files (a clean checkout; local edits to
#     tracked files included, untracked files never), and .dockerignore applies as usual;
#   * buildah runs with chroot isolation, a private containers config and, in a private mount
#     namespace, a tmpfs over /var/lib (where it would otherwise keep a cache whatever its
#     config says); pip inside the build gets the host's index settings and CA bundle through
#     read-only mounts, which do not end up in the image.
# Nothing is written outside the work directory: with --check-system the script lists /etc,
# /var/lib and /usr before and after, and fails naming any difference.
#
# usage: hack/image-build.sh [--check-system] [--force] [DIR]
#        DIR defaults to $NMM_IMAGE_DIR, else $NMM_E2E_DIR/image, else /tmp/nmm-e2e/image.
# out:   DIR/nri-memory-manager-oci.tar, image localhost/nri-memory-manager:ci (the name is in
#        the archive's index.json); rebuilt only when the context, base or script changed
#        (--force: always).
# env:   NMM_IMAGE_SUITE   Debian suite of the base (default bookworm: Python 3.11; the only
#                          one tried so far)
#        NMM_E2E_MIRROR    Debian mirror (default: the system's first one)
# Needs root (mmdebstrap's root mode, overlay storage, chroot).
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
started=$SECONDS
check_system=false
force=false
while [ $# -gt 0 ]; do
    case $1 in
    --check-system) check_system=true ;;
    --force) force=true ;;
    -h | --help)
        sed -n '2,/^set -E/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*) printf 'image-build: error: unknown option %s\n' "$1" >&2 && exit 2 ;;
    *) break ;;
    esac
    shift
done
e2e_dir=${NMM_E2E_DIR:-/tmp/nmm-e2e}
work=$(realpath -m "${1:-${NMM_IMAGE_DIR:-$e2e_dir/image}}")
suite=${NMM_IMAGE_SUITE:-bookworm}
image=localhost/nri-memory-manager:ci
archive=$work/nri-memory-manager-oci.tar

say() { printf 'image-build: %s\n' "$*"; }
die() { printf 'image-build: error: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap root mode, overlay storage, chroot)"
for tool in apt-get dpkg-deb git unshare mount python3 sha256sum tar; do
    command -v "$tool" >/dev/null || die "$tool not found: this script needs a Debian system"
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"

# --- the system's state, to prove the build leaves it alone ------------------------------------
watched=(/etc /var/lib /usr)
system_listing() {
    # type, mode, owner, size, mtime and name of everything; -xdev: another mount is not ours
    find "${watched[@]}" -xdev -printf '%y %m %U:%G %s %T@ %p\n' 2>/dev/null | LC_ALL=C sort
}
if $check_system; then
    mkdir -p "$work"
    system_listing >"$work/system.before"
fi

mkdir -p "$work"/{apt/lists/partial,apt/cache,debs,cache,etc,tmp}
export TMPDIR=$work/tmp

# --- tools: private apt (hack/lib/private-apt.sh), dpkg-deb -x ---------------------------------
# shellcheck source=hack/lib/private-apt.sh
. "$here/lib/private-apt.sh"
# The tools come from bookworm whatever the base's suite: they run on this host.
private_apt "$work" bookworm
tools=$work/tools
tool_debs=(mmdebstrap buildah libgpgme11 patchelf)
if [ ! -e "$tools/.unpacked" ]; then
    for pkg in "${tool_debs[@]}"; do
        fetch "$work/debs" "$pkg" || die "cannot download $pkg from $mirror"
    done
    rm -rf "$tools.tmp"
    mkdir -p "$tools.tmp"
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$tools.tmp"; done
    # buildah re-executes itself with an empty environment for RUN steps (chroot isolation):
    # LD_LIBRARY_PATH would not reach it, a RUNPATH does.
    "$tools.tmp/usr/bin/patchelf" --set-rpath "$tools/usr/lib/x86_64-linux-gnu" \
        "$tools.tmp/usr/bin/buildah"
    touch "$tools.tmp/.unpacked"
    rm -rf "$tools"
    mv "$tools.tmp" "$tools"
    say "unpacked ${tool_debs[*]} into $tools"
fi
buildah=$tools/usr/bin/buildah
missing_libs=$(ldd "$buildah" | awk '/not found/ {print $1}')
[ -z "$missing_libs" ] || die "buildah needs libraries this system lacks: $missing_libs"

# --- private containers configuration: nothing read from or written to /etc/containers ---------
cat >"$work/etc/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/runroot"
EOF
printf 'unqualified-search-registries = []\n' >"$work/etc/registries.conf"
# network_config_dir: otherwise buildah creates /etc/cni/net.d/cni.lock
cat >"$work/etc/containers.conf" <<EOF
[network]
network_config_dir = "$work/cni/net.d"
EOF
printf '{"default": [{"type": "insecureAcceptAnything"}]}\n' >"$work/etc/policy.json"
export CONTAINERS_STORAGE_CONF=$work/etc/storage.conf
export CONTAINERS_REGISTRIES_CONF=$work/etc/registries.conf
export CONTAINERS_CONF=$work/etc/containers.conf
# the runroot describes mounts of earlier runs' namespaces, all gone now
rm -rf "$work/runroot"
mkdir -p "$work/runroot" "$work/cni/net.d"

# --- pip settings for the build: the host's network indexes and CA bundle ----------------------
ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
ca=${ca:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$ca" ] || die "CA bundle $ca not readable (set PIP_CERT)"
python3 - "$work/etc/pip.conf" <<'PY'
# What pip on the host would use to reach an index, minus file:// indexes the build cannot see.
import re, subprocess, sys
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                        capture_output=True, text=True, check=False).stdout
keep = {"index-url", "extra-index-url", "trusted-host", "default-timeout"}
settings = {}
for line in listed.splitlines():
    m = re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip())
    if m and m[1] in keep:
        value = m[2]
        if m[1].endswith("index-url"):
            value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
        if value:
            settings[m[1]] = value
settings["cert"] = "/etc/ssl/certs/ca-certificates.crt"
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
PY

# --- the base: a python:*-slim lookalike, cached by suite, pip version and recipe -------------
# python:*-slim is debian:*-slim (minbase: Essential, required and apt, which brings the libstdc++
# grpcio's wheels need) with ca-certificates, netbase and tzdata; its python3 is Debian's here.
base_variant=minbase
base_packages=python3,python-is-python3,ca-certificates,netbase,tzdata
recipe=$(printf '%s %s\n' "$base_variant" "$base_packages" | sha256sum | cut -c1-8)
rm -rf "$work/wheels"
mkdir -p "$work/wheels"
if PIP_NO_CACHE_DIR=1 python3 -m pip download -q --no-deps -d "$work/wheels" pip 2>"$work/pip.err"; then
    wheel=$(basename "$(compgen -G "$work/wheels/pip-*.whl" | head -n1)")
    pip_version=${wheel#pip-}
    pip_version=${pip_version%%-*}
else
    # no index reachable: the newest cached base will do
    cached=$(compgen -G "$work/cache/base-$suite-pip*-$recipe.tar" | sort -V | tail -n1 || true)
    [ -n "$cached" ] || die "cannot download pip and no base is cached: $(tail -n1 "$work/pip.err")"
    pip_version=${cached##*/base-"$suite"-pip}
    pip_version=${pip_version%-"$recipe".tar}
    say "pip download failed; using the cached base with pip $pip_version"
fi
base_key=$suite-pip$pip_version-$recipe
base_tar=$work/cache/base-$base_key.tar
base_image=localhost/nmm-base/python-slim:$base_key
reimport=false
if [ ! -s "$base_tar" ]; then
    reimport=true
    say "making the base ($suite, pip $pip_version) with mmdebstrap"
    t0=$SECONDS
    # own mount namespace: the /proc, /sys, /dev mounts of mmdebstrap's chroot die with it;
    # the hooks are scripts mmdebstrap runs with the chroot as $1
    # shellcheck disable=SC2016
    PATH=$tools/usr/bin:$PATH unshare -m --propagation private -- \
        nice -n 10 mmdebstrap --mode=root --variant="$base_variant" --quiet \
        --include="$base_packages" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook="mkdir -p \"\$1/tmp/w\" && cp '$work/wheels/$wheel' \"\$1/tmp/w/\"" \
        --customize-hook="chroot \"\$1\" python3 /tmp/w/$wheel/pip install -q --root-user-action=ignore --no-index --no-cache-dir /tmp/w/$wheel" \
        --customize-hook='rm -rf "$1/tmp/w" "$1/root/.cache"' \
        "$suite" "$work/cache/partial.tar" \
        "deb [signed-by=$keyring] $mirror $suite main"
    mv "$work/cache/partial.tar" "$base_tar"
    say "base rootfs $base_tar ($(du -m "$base_tar" | cut -f1) MB, $((SECONDS - t0)) s)"
fi
for old in "$work"/cache/base-*.tar; do
    [ "$old" = "$base_tar" ] || rm -f "$old"
done

# --- the build context: tracked files of the working tree ------------------------------------
context=$work/context
rm -rf "$context"
mkdir -p "$context"
git -C "$repo" ls-files -z --cached | while IFS= read -r -d '' f; do
    if [ -e "$repo/$f" ] || [ -L "$repo/$f" ]; then printf '%s\0' "$f"; fi
done | tar -C "$repo" --null -T - -cf - | tar -C "$context" -xf -
build_key=$(
    {
        printf '%s\n' "$base_key"
        sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
        tar -C "$context" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . |
            sha256sum
    } | sha256sum | cut -d' ' -f1
)

# --- build in a private mount namespace with a tmpfs over /var/lib -----------------------------
build_in_namespace() {
    set -Eeuo pipefail
    mount -t tmpfs -o size=16m,mode=0755 tmpfs /var/lib
    local b=("$buildah") sig=(--signature-policy "$work/etc/policy.json")
    if $reimport || ! "${b[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
        # earlier bases (another pip) go first
        "${b[@]}" images --format '{{.Name}}:{{.Tag}}' | { grep '^localhost/nmm-base/' || true; } |
            while read -r old; do "${b[@]}" rmi -f "$old" >/dev/null; done
        local c
        c=$("${b[@]}" from "${sig[@]}" scratch)
        "${b[@]}" add "$c" "$base_tar" / >/dev/null
        "${b[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --cmd python3 --os linux --arch amd64 "$c"
        "${b[@]}" commit "${sig[@]}" --quiet --rm "$c" "$base_image" >/dev/null
        printf 'image-build: base image %s imported\n' "$base_image"
    fi
    "${b[@]}" bud "${sig[@]}" --isolation chroot --pull=never --layers=false --quiet \
        --build-arg "PYTHON_IMAGE=$base_image" \
        -v "$work/etc/pip.conf:/etc/pip.conf:ro" -v "$ca:/etc/ssl/certs/ca-certificates.crt:ro" \
        -t "$image" "$context" >/dev/null
    rm -f "$archive.tmp"
    "${b[@]}" push "${sig[@]}" --quiet "$image" "oci-archive:$archive.tmp:$image"
    # storage keeps only the base between runs
    "${b[@]}" rmi -f "$image" >/dev/null
    "${b[@]}" rmi --prune >/dev/null 2>&1 || true
}

if ! $force && [ -s "$archive" ] && [ "$(cat "$archive.key" 2>/dev/null)" = "$build_key" ]; then
    say "$archive is up to date"
else
    say "building $image from $repo/Dockerfile (PYTHON_IMAGE=$base_image)"
    t0=$SECONDS
    rm -f "$archive.key"
    export work buildah base_image base_tar reimport image archive ca context
    unshare -m --propagation private -- bash -c "$(declare -f build_in_namespace)
build_in_namespace" 2>&1 | sed 's/^/  buildah: /' >&2
    mv "$archive.tmp" "$archive"
    printf '%s\n' "$build_key" >"$archive.key"
    say "built $archive ($(du -m "$archive" | cut -f1) MB, $((SECONDS - t0)) s)"
fi
rm -rf "$context" "$work/wheels" "$work/pip.err" "$work/tmp"/*

if $check_system; then
    system_listing >"$work/system.after"
    if ! diff "$work/system.before" "$work/system.after" >"$work/system.diff"; then
        say "the system changed during the build (${watched[*]}):"
        head -n 40 "$work/system.diff" >&2
        die "$(grep -c '^[<>]' "$work/system.diff") entries differ; see $work/system.diff"
    fi
    say "system untouched: ${watched[*]} list the same before and after"
    rm -f "$work/system.before" "$work/system.after" "$work/system.diff"
fi
say "ready: $archive ($((SECONDS - started)) s)"
