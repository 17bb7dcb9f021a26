#!/usr/bin/env bash
# Build (or reuse from cache) LAMMPS with ML-IAP python support ("pair_style mliap
# unified"), ML-SNAP, PYTHON, MPI, as a shared library; install the `lammps` Python
# module into the chosen Python environment and put an `lmp` wrapper next to that Python.
#
# Uses the top-level CMakeLists.txt (a thin ExternalProject superbuild).
#
# Environment overrides (all optional):
#   PYTHON              Python to embed/install into   (default: <repo>/.venv/bin/python)
#   LAMMPS_SOURCE_DIR   LAMMPS source tree             (default: deploy/fetch_lammps_source.sh)
#   MPI                 auto | mpich | openmpi | /path/to/mpicxx | /path/to/mpi/prefix
#                       (default auto = the mpicxx/mpicc found in PATH)
#   PREFIX              install prefix (default: $E2FORMER_LAMMPS_CACHE/lammps-<ver>-<key>)
#   BUILD_DIR           scratch build tree (default: $E2FORMER_LAMMPS_CACHE/build/<key>;
#                       removed after a successful install unless KEEP_BUILD=1)
#   JOBS                parallel compile jobs (default: nproc)
#   LMP_BIN_DIR         where the `lmp` wrapper goes (default: directory of PYTHON)
#   LAMMPS_EXTRA_CMAKE_ARGS  extra "-D..." args for LAMMPS (space separated; part of the key)
#   E2FORMER_LAMMPS_CACHE    cache root (default ~/.cache/e2former-lammps)
#   FORCE_REBUILD=1     ignore a complete cached prefix
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${E2FORMER_LAMMPS_CACHE:-$HOME/.cache/e2former-lammps}"
JOBS="${JOBS:-$(nproc)}"
KEY_REV=1   # bump when the build recipe changes in a way that must invalidate caches

log() { printf '[build_lammps] %s\n' "$*" >&2; }
die() { printf '[build_lammps] ERROR: %s\n' "$*" >&2; exit 1; }
t0=$SECONDS

# ------------------------------------------------------------------------ Python
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found (run deploy/setup_env.sh, or set PYTHON=...)"
PYTHON="$(command -v "$PYTHON")"
# Not realpath: a venv's bin/python is a symlink and must stay the venv's interpreter.
[[ "$PYTHON" = /* ]] || PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
"$PYTHON" -c "import numpy, Cython" 2>/dev/null \
    || die "$PYTHON lacks numpy and/or cython (needed to build ML-IAP python support): $PYTHON -m pip install numpy cython"
PYINFO="$("$PYTHON" -c 'import sys, sysconfig; print(sys.version.split()[0], sys.base_prefix, sysconfig.get_config_var("LDLIBRARY"))')"
log "python: $PYTHON ($PYINFO)"

# ------------------------------------------------------------------------ source
SRC="$("$REPO/deploy/fetch_lammps_source.sh" | tail -n1)"
[[ -f "$SRC/src/version.h" ]] || die "no LAMMPS source tree (got '$SRC')"
LMP_VERSION_STR="$(sed -n 's/^#define LAMMPS_VERSION "\(.*\)"/\1/p' "$SRC/src/version.h" | head -n1)"
LMP_VERSION="$(date -u -d "$LMP_VERSION_STR" +%Y%m%d 2>/dev/null || echo unknown)"
log "LAMMPS source: $SRC (version \"$LMP_VERSION_STR\" = $LMP_VERSION)"

# ------------------------------------------------------------------------ MPI
MPI="${MPI:-auto}"
MPICC=""; MPICXX=""
case "$MPI" in
    auto)    MPICC="$(command -v mpicc || true)"; MPICXX="$(command -v mpicxx || command -v mpic++ || true)" ;;
    mpich)   MPICC="$(command -v mpicc.mpich || true)"; MPICXX="$(command -v mpicxx.mpich || true)" ;;
    openmpi) MPICC="$(command -v mpicc.openmpi || true)"; MPICXX="$(command -v mpicxx.openmpi || true)" ;;
    *)
        if [[ -d "$MPI" ]]; then MPICC="$MPI/bin/mpicc"; MPICXX="$MPI/bin/mpicxx"
        else MPICXX="$MPI"; MPICC="$(dirname "$MPI")/mpicc"; fi ;;
esac
[[ -n "$MPICXX" && -x "$MPICXX" ]] || die "no MPI C++ compiler wrapper for MPI=$MPI (install mpich: apt-get install mpich libmpich-dev, or set MPI=...)"
[[ -x "$MPICC" ]] || MPICC=""
MPI_ID="$("$MPICXX" -show 2>/dev/null || "$MPICXX" --showme 2>/dev/null || echo "$MPICXX")"
log "MPI: $MPICXX ($MPI_ID)"

# ------------------------------------------------------------------------ cache key
LAMMPS_FLAGS="BUILD_SHARED_LIBS=ON LAMMPS_EXCEPTIONS=ON BUILD_MPI=ON PKG_ML-IAP=ON PKG_ML-SNAP=ON PKG_PYTHON=ON MLIAP_ENABLE_PYTHON=ON Release ${LAMMPS_EXTRA_CMAKE_ARGS:-}"
CXX_ID="$(c++ --version 2>/dev/null | head -n1 || true)"
# Source identity: the fetch stamp (also inside the carried trimmed tree), else the git
# commit of a user checkout, else its path.
if [[ -f "$SRC/.e2former-source-complete" ]]; then SRC_ID="$(head -n1 "$SRC/.e2former-source-complete")"
elif SRC_ID="$(git -C "$SRC" rev-parse HEAD 2>/dev/null)"; then SRC_ID="git $SRC_ID $SRC"
else SRC_ID="path $SRC"; fi
KEY="$(printf '%s\n' "rev=$KEY_REV" "lammps=$LMP_VERSION_STR" "src=$SRC_ID" "flags=$LAMMPS_FLAGS" \
        "python=$PYINFO" "mpi=$MPI_ID" "cxx=$CXX_ID" "superbuild=$(sha256sum "$REPO/CMakeLists.txt" | cut -c1-16)" \
        "patches=$(cat "$REPO"/deploy/lammps-patches/*.patch 2>/dev/null | sha256sum | cut -c1-16)" \
        | sha256sum | cut -c1-12)"
PREFIX="${PREFIX:-$CACHE/lammps-$LMP_VERSION-$KEY}"
BUILD_DIR="${BUILD_DIR:-$CACHE/build/$LMP_VERSION-$KEY}"
MARKER="$PREFIX/.e2former-build-complete"
log "cache key: $KEY  prefix: $PREFIX"

find_lib() { ls "$PREFIX"/lib*/liblammps.so 2>/dev/null | head -n1; }

# ------------------------------------------------------------------------ build
if [[ -f "$MARKER" && "$(head -n1 "$MARKER")" == "key $KEY" && -x "$PREFIX/bin/lmp" && -n "$(find_lib)" \
      && -z "${FORCE_REBUILD:-}" ]]; then
    log "cached LAMMPS build is complete: skipping build"
else
    command -v cmake >/dev/null || die "cmake not found (apt-get install cmake)"
    log "building LAMMPS with $JOBS jobs (build tree $BUILD_DIR); takes ~5 min on 2 cores"
    # An existing build tree of the same key (an interrupted or failed build) is resumed
    # incrementally; the prefix is always installed afresh.
    rm -rf "$PREFIX"
    mkdir -p "$BUILD_DIR"
    extra_list=""
    for a in ${LAMMPS_EXTRA_CMAKE_ARGS:-}; do extra_list="${extra_list:+$extra_list;}$a"; done
    tb=$SECONDS
    cmake -S "$REPO" -B "$BUILD_DIR" \
        -DLAMMPS_SOURCE_DIR="$SRC" \
        -DCMAKE_INSTALL_PREFIX="$PREFIX" \
        -DE2F_PYTHON="$PYTHON" \
        -DE2F_MPI_C_COMPILER="$MPICC" \
        -DE2F_MPI_CXX_COMPILER="$MPICXX" \
        -DE2F_LAMMPS_EXTRA_ARGS="$extra_list" >&2
    # Makefile generator: the LAMMPS sub-build inherits the -j jobserver.
    cmake --build "$BUILD_DIR" -j "$JOBS" >&2 || die "LAMMPS build failed (build tree kept: $BUILD_DIR)"
    [[ -x "$PREFIX/bin/lmp" && -n "$(find_lib)" ]] || die "install step did not produce $PREFIX/bin/lmp and liblammps.so"
    help="$("$PREFIX/bin/lmp" -h 2>/dev/null || true)"
    [[ "$help" == *ML-IAP* ]] || die "$PREFIX/bin/lmp does not list the ML-IAP package"
    { echo "key $KEY"; echo "lammps $LMP_VERSION_STR ($LMP_VERSION)"; echo "source $SRC_ID"; echo "flags $LAMMPS_FLAGS";
      echo "python $PYTHON ($PYINFO)"; echo "mpi $MPI_ID"; echo "cxx $CXX_ID";
      echo "built $(date -u +%FT%TZ) in $((SECONDS - tb)) s with $JOBS jobs"; } > "$MARKER"
    log "LAMMPS built and installed in $((SECONDS - tb)) s"
    if [[ -z "${KEEP_BUILD:-}" ]]; then rm -rf "$BUILD_DIR"; fi
fi
LIBLAMMPS="$(find_lib)"

# ------------------------------------------------------------------------ Python module
# Installed by copying python/lammps + liblammps.so into the environment's site-packages,
# with a minimal .dist-info (offline, no setuptools/wheel/pip needed; what LAMMPS's
# `make install-python` produces, minus its network use). Skipped when up to date.
"$PYTHON" - "$SRC/python/lammps" "$LIBLAMMPS" "$LMP_VERSION_STR" "$PREFIX" <<'PYEOF' >&2
import base64, hashlib, os, shutil, site, sys, sysconfig, time

pkg_src, lib, version_str, prefix = sys.argv[1:5]
t = time.strptime("".join(version_str.split()), "%d%b%Y")
version = "%d.%d.%d" % (t.tm_year, t.tm_mon, t.tm_mday)

site_dir = sysconfig.get_paths()["purelib"]
if not os.access(site_dir, os.W_OK):
    site_dir = site.getusersitepackages()
    os.makedirs(site_dir, exist_ok=True)
dest = os.path.join(site_dir, "lammps")
stamp = os.path.join(dest, ".e2former_prefix")
want = f"{prefix}\n{os.path.getmtime(lib)}\n"
if os.path.isfile(stamp) and open(stamp).read() == want and os.path.isfile(os.path.join(dest, "liblammps.so")):
    print(f"[build_lammps] lammps Python module up to date in {dest}")
    sys.exit(0)

shutil.rmtree(dest, ignore_errors=True)
for d in os.listdir(site_dir):
    if d.startswith("lammps-") and d.endswith((".dist-info", ".egg-info")):
        p = os.path.join(site_dir, d)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
shutil.copytree(pkg_src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
shutil.copy2(lib, os.path.join(dest, "liblammps.so"))
with open(stamp, "w") as f:
    f.write(want)

info = os.path.join(site_dir, f"lammps-{version}.dist-info")
os.makedirs(info)
with open(os.path.join(info, "METADATA"), "w") as f:
    f.write(f"Metadata-Version: 2.1\nName: lammps\nVersion: {version}\n"
            f"Summary: LAMMPS Python module (liblammps from {prefix})\nLicense: GPL-2.0-only\n")
with open(os.path.join(info, "INSTALLER"), "w") as f:
    f.write("e2former-lammps\n")
records = []
for root, _, files in os.walk(dest):
    for name in files:
        p = os.path.join(root, name)
        h = base64.urlsafe_b64encode(hashlib.sha256(open(p, "rb").read()).digest()).rstrip(b"=").decode()
        records.append(f"{os.path.relpath(p, site_dir)},sha256={h},{os.path.getsize(p)}")
for name in ("METADATA", "INSTALLER"):
    records.append(f"{os.path.relpath(os.path.join(info, name), site_dir)},,")
records.append(f"{os.path.relpath(os.path.join(info, 'RECORD'), site_dir)},,")
with open(os.path.join(info, "RECORD"), "w") as f:
    f.write("\n".join(records) + "\n")
print(f"[build_lammps] installed lammps Python module {version} into {dest}")
PYEOF

# ------------------------------------------------------------------------ lmp wrapper
# The embedded interpreter in lmp locates its prefix by searching PATH for "python3";
# putting the Python's bin dir first makes it the venv's (site-packages, torch, ...).
LMP_BIN_DIR="${LMP_BIN_DIR:-$(dirname "$PYTHON")}"
mkdir -p "$LMP_BIN_DIR" 2>/dev/null || true
if [[ ! -w "$LMP_BIN_DIR" ]]; then
    log "WARNING: $LMP_BIN_DIR is not writable; putting the lmp wrapper in $PREFIX/e2former-bin"
    LMP_BIN_DIR="$PREFIX/e2former-bin"; mkdir -p "$LMP_BIN_DIR"
fi
wrapper="$LMP_BIN_DIR/lmp"
PYBIN="$(dirname "$PYTHON")"
new_wrapper="$(cat <<EOF
#!/bin/sh
# Generated by e2former-lammps deploy/build_lammps.sh: runs the cached LAMMPS build with
# this Python environment as the embedded interpreter.
PATH="$PYBIN:\$PATH"; export PATH
exec "$PREFIX/bin/lmp" "\$@"
EOF
)"
if [[ ! -f "$wrapper" || -L "$wrapper" || "$(cat "$wrapper")" != "$new_wrapper" ]]; then
    rm -f "$wrapper"
    printf '%s\n' "$new_wrapper" > "$wrapper"
    chmod +x "$wrapper"
    log "wrote $wrapper -> $PREFIX/bin/lmp"
fi

# ------------------------------------------------------------------------ smoke test
help="$("$wrapper" -h 2>/dev/null || true)"
[[ "$help" == *"ML-IAP ML-SNAP PYTHON"* ]] || die "$wrapper -h does not list ML-IAP ML-SNAP PYTHON"
(cd /tmp && "$PYTHON" -c "import lammps; l = lammps.lammps(cmdargs=['-log', 'none', '-screen', 'none']); assert l.has_package('ML-IAP') and l.has_package('PYTHON'), l.installed_packages; l.close()") \
    || die "the lammps Python module does not load liblammps.so from $PYTHON"
log "OK in $((SECONDS - t0)) s: lmp=$wrapper  liblammps=$LIBLAMMPS  LAMMPS $LMP_VERSION_STR"
echo "$PREFIX"
