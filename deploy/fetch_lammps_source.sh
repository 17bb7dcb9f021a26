#!/usr/bin/env bash
# Obtain a LAMMPS source tree with ML-IAP Python ("mliap unified") support.
#
# Prints the absolute path of the source tree (the directory holding cmake/, src/,
# python/) as the LAST line of stdout; all progress messages go to stderr.
#
#   deploy/fetch_lammps_source.sh            -> fetch (or reuse cached) source
#   LAMMPS_SOURCE_DIR=/path/to/lammps deploy/fetch_lammps_source.sh
#                                            -> just validate and print that tree
#
# Route (see /work/shared/design/environment.md): Debian's source package `lammps` of the
# unstable suite (20260704+dfsg = LAMMPS stable 4 Jul 2026). A deb-src entry for
# `unstable` is derived from the system's deb822 apt sources (same archive URI and key),
# with its own apt state under the cache directory (system apt state is not touched).
# `apt-get source --download-only` is used; it may exit 100 when the .dsc/.debian.tar.xz
# are unavailable: the orig tarball is the artifact, verified against `apt-cache showsrc`.
#
# Environment:
#   LAMMPS_SOURCE_DIR        use this tree, fetch nothing
#   LAMMPS_DEB_VERSION       preferred Debian upstream version (default 20260704)
#   E2FORMER_LAMMPS_CACHE    cache root (default ~/.cache/e2former-lammps)
set -euo pipefail

PREFERRED="${LAMMPS_DEB_VERSION:-20260704}"
CACHE="${E2FORMER_LAMMPS_CACHE:-$HOME/.cache/e2former-lammps}"
MARKER_FILE=".e2former-source-complete"

log() { printf '[fetch_lammps_source] %s\n' "$*" >&2; }
die() {
    printf '\n[fetch_lammps_source] ERROR: %s\n' "$*" >&2
    cat >&2 <<EOF

Could not obtain a LAMMPS source tree automatically.
What was tried: Debian source package 'lammps' from the 'unstable' suite, using the
archive URI of this system's deb822 apt sources (/etc/apt/sources.list.d/*.sources),
apt state in $CACHE/apt, downloads in $CACHE/downloads.

Workaround: point LAMMPS_SOURCE_DIR at a LAMMPS checkout (stable 4 Jul 2026 or newer,
it must contain src/ML-IAP/mliap_unified_couple.pyx), e.g.
    git clone -b stable https://github.com/lammps/lammps.git ~/lammps
    LAMMPS_SOURCE_DIR=~/lammps deploy/setup_env.sh
EOF
    exit 1
}

check_tree() {  # $1 = candidate source dir
    [[ -f "$1/cmake/CMakeLists.txt" ]] || return 1
    [[ -f "$1/src/ML-IAP/mliap_unified_couple.pyx" ]] || return 1
    [[ -d "$1/python/lammps" ]] || return 1
}

# ---------------------------------------------------------------- user-provided tree
if [[ -n "${LAMMPS_SOURCE_DIR:-}" ]]; then
    src="$(cd "$LAMMPS_SOURCE_DIR" 2>/dev/null && pwd)" \
        || die "LAMMPS_SOURCE_DIR=$LAMMPS_SOURCE_DIR does not exist"
    check_tree "$src" || die "LAMMPS_SOURCE_DIR=$src is not a LAMMPS tree with ML-IAP python support (need cmake/CMakeLists.txt, src/ML-IAP/mliap_unified_couple.pyx, python/lammps)"
    log "using LAMMPS_SOURCE_DIR=$src (no fetch)"
    echo "$src"
    exit 0
fi

# ---------------------------------------------------------------- cached tree
# Reuse a cached extraction of the preferred version without touching the network.
pref_dir="$CACHE/src/lammps-$PREFERRED"
if [[ -f "$pref_dir/$MARKER_FILE" ]] && check_tree "$pref_dir"; then
    log "cached source: $pref_dir ($(head -n1 "$pref_dir/$MARKER_FILE"))"
    echo "$pref_dir"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (not a Debian-like system)"

# ---------------------------------------------------------------- private apt state
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/sources.list.d" "$APT/archives/partial" "$CACHE/downloads"

# Derive URI + Signed-By from the system's deb822 sources: first stanza of Types 'deb'
# whose URI is not a security/updates archive.
sysfile=""
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && { sysfile="$f"; break; }
done
[[ -n "$sysfile" ]] || die "no deb822 apt sources file (/etc/apt/sources.list.d/*.sources) to derive the archive URI from"

read -r URI SIGNED < <(awk '
    function flush() {
        if (types ~ /(^| )deb( |$)/ && uri != "" && uri !~ /security/ && !done) {
            print uri, (signed == "" ? "-" : signed); done = 1
        }
        types = ""; uri = ""; signed = ""
    }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    tolower($1) == "types:"     { $1 = ""; types = $0 }
    tolower($1) == "uris:"      { uri = $2 }
    tolower($1) == "signed-by:" { signed = $2 }
    END { flush() }' "$sysfile") || true
[[ -n "${URI:-}" ]] || die "could not find a Debian archive URI in $sysfile"
log "archive URI from $sysfile: $URI"

{
    echo "Types: deb-src"
    echo "URIs: $URI"
    echo "Suites: unstable"
    echo "Components: main"
    if [[ "$SIGNED" != "-" && -f "$SIGNED" ]]; then echo "Signed-By: $SIGNED"; fi
} > "$APT/sources.list.d/e2former-unstable-src.sources"

APT_OPTS=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$APT/sources.list.d"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
)

log "apt-get update (unstable deb-src only, private state in $APT/lists)"
apt-get "${APT_OPTS[@]}" -q update >&2 \
    || die "apt-get update of the unstable deb-src index failed"

showsrc="$(apt-cache "${APT_OPTS[@]}" showsrc lammps 2>/dev/null)" \
    || die "apt-cache showsrc lammps failed"
[[ -n "$showsrc" ]] || die "no 'lammps' source package in unstable"

# Lines "<debian version> <sha256> <size> <orig tarball name>" for each offered version.
mapfile -t offers < <(printf '%s\n' "$showsrc" | awk '
    /^Package:/ { ver = ""; insha = 0 }
    /^Version:/ { ver = $2 }
    /^[A-Za-z0-9-]+:/ { insha = ($1 == "Checksums-Sha256:"); next }
    insha && $3 ~ /\.orig\.tar\.(gz|xz|bz2)$/ { print ver, $1, $2, $3 }')
((${#offers[@]})) || die "apt-cache showsrc lammps lists no orig tarball"

upstream_of() { local v="${1#*:}"; v="${v%%-*}"; echo "${v%%+*}"; }

chosen=""
for o in "${offers[@]}"; do
    read -r v _ _ _ <<<"$o"
    if [[ "$(upstream_of "$v")" == "$PREFERRED" ]]; then chosen="$o"; break; fi
done
if [[ -z "$chosen" ]]; then
    chosen="$(printf '%s\n' "${offers[@]}" | sort -V -k1,1 | tail -n1)"
    log "WARNING: preferred version $PREFERRED is not offered any more; falling back to the newest: ${chosen%% *}"
fi
read -r DEBVER SHA SIZE TARBALL <<<"$chosen"
UPVER="$(upstream_of "$DEBVER")"
log "using Debian lammps $DEBVER (upstream $UPVER), $TARBALL, $((SIZE / 1048576)) MiB"

dest="$CACHE/src/lammps-$UPVER"
if [[ -f "$dest/$MARKER_FILE" ]] && check_tree "$dest"; then
    log "cached source: $dest"
    echo "$dest"
    exit 0
fi

# ---------------------------------------------------------------- download + verify
dl="$CACHE/downloads"
tar_path="$dl/$TARBALL"
sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$SHA" ]]; }

if sha_ok "$tar_path"; then
    log "tarball already downloaded and verified: $tar_path"
else
    log "apt-get source --download-only lammps=$DEBVER (into $dl)"
    set +e
    (cd "$dl" && apt-get "${APT_OPTS[@]}" -q source --download-only "lammps=$DEBVER") >&2
    rc=$?
    set -e
    if [[ $rc -ne 0 ]]; then
        log "apt-get source exited $rc (expected when the .dsc/.debian.tar.xz are unavailable); checking the orig tarball"
    fi
    [[ -f "$tar_path" ]] || die "apt-get source did not save $TARBALL"
    sha_ok "$tar_path" || { mv -f "$tar_path" "$tar_path.bad"; die "sha256 of $TARBALL does not match apt-cache showsrc ($SHA)"; }
    log "sha256 verified: $SHA"
    rm -f "$dl"/lammps_*.dsc "$dl"/lammps_*.debian.tar.* 2>/dev/null || true
fi

# ---------------------------------------------------------------- extract
tmp="$CACHE/src/.extract-$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
log "extracting $TARBALL"
tar -xf "$tar_path" -C "$tmp"
# Debian's orig tarball has no top-level directory; upstream tarballs have one.
root="$tmp"
if ! check_tree "$root"; then
    top=("$tmp"/*)
    [[ ${#top[@]} -eq 1 && -d "${top[0]}" ]] && root="${top[0]}"
fi
check_tree "$root" || die "$TARBALL: no cmake/CMakeLists.txt + src/ML-IAP/mliap_unified_couple.pyx + python/lammps (version $DEBVER lacks mliap unified?)"
rm -rf "$dest"
mv "$root" "$dest"
printf 'debian %s upstream %s sha256 %s\n' "$DEBVER" "$UPVER" "$SHA" > "$dest/$MARKER_FILE"
log "source ready: $dest"
echo "$dest"
