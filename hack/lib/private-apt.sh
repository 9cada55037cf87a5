# shellcheck shell=bash
# A private apt: its own sources, lists and cache under a work directory; /etc/apt is only
# read for the mirror (and apt's proxy settings). Sourced by hack/e2e-setup.sh,
# hack/go-plugin-setup.sh and hack/image-build.sh, which define say and die.
#
#   private_apt DIR SUITE...   sources for SUITE... of the mirror under DIR/apt; sets
#                              $mirror and the apt_opts array
#   fetch DEST PKG[/SUITE]     downloads PKG's .deb into DEST unless one is there already;
#                              status 1 when it cannot
#
# env: NMM_E2E_MIRROR  Debian mirror (default: the system's first one)

private_apt() {
    _apt_dir=$1/apt
    shift
    mkdir -p "$_apt_dir/lists/partial" "$_apt_dir/cache"
    mirror=${NMM_E2E_MIRROR:-}
    [ -n "$mirror" ] ||
        mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] ||
        mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg # bookworm's also signs trixie/sid
    [ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
    local suite
    for suite in "$@"; do
        printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite"
    done >"$_apt_dir/sources.list.new"
    # other sources make the old lists stale
    cmp -s "$_apt_dir/sources.list.new" "$_apt_dir/sources.list" 2>/dev/null ||
        { mv "$_apt_dir/sources.list.new" "$_apt_dir/sources.list" && rm -f "$_apt_dir/updated"; }
    rm -f "$_apt_dir/sources.list.new"
    apt_opts=(
        -o "Dir::Etc::SourceList=$_apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$_apt_dir/lists" -o "Dir::Cache=$_apt_dir/cache"
        -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
        -o APT::Sandbox::User=root -qq
    )
}

apt_update() {
    say "apt: updating private package lists from $mirror"
    apt-get "${apt_opts[@]}" update || die "apt-get update failed (is $mirror reachable?)"
    touch "$_apt_dir/updated"
}

fetch() {
    local dest=$1 spec=$2 name=${2%/*}
    compgen -G "$dest/${name}_*.deb" >/dev/null && return 0
    mkdir -p "$dest"
    [ -e "$_apt_dir/updated" ] || apt_update
    say "apt: downloading $spec"
    # A failure with old lists usually means the suite moved on: refresh once and retry.
    if ! (cd "$dest" && apt-get "${apt_opts[@]}" download "$spec"); then
        apt_update
        (cd "$dest" && apt-get "${apt_opts[@]}" download "$spec") || return 1
    fi
}
