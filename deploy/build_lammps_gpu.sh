#!/usr/bin/env bash
# Build LAMMPS (ML-IAP python, ML-SNAP, PYTHON, MPI; CPU build) on the GPU machine, which
# has no network: unpack .carry/lammps-src.tgz (made by deploy/carry_lammps_source.sh) to
# /tmp and drive deploy/build_lammps.sh with the system's Python and Open MPI.
# No venv, no apt, no mpi4py build there (its mpi4py is already built on its Open MPI).
#
#   deploy/build_lammps_gpu.sh            # ~1 min with 16 cores
#   -> prints the install prefix; `lmp` wrapper next to the Python (or LMP_BIN_DIR)
#
# Overrides: PYTHON (default: python3 in PATH, i.e. /opt/torch/.venv/bin/python3),
# CARRY_TGZ, SRC_DIR (/tmp/lammps-src), PREFIX (/tmp/lammps-install), JOBS (16),
# MPI (openmpi if mpicxx.openmpi exists, else auto), LMP_BIN_DIR.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY_TGZ="${CARRY_TGZ:-$REPO/.carry/lammps-src.tgz}"
SRC_DIR="${SRC_DIR:-/tmp/lammps-src}"
log() { printf '[build_lammps_gpu] %s\n' "$*" >&2; }

if [[ -n "${LAMMPS_SOURCE_DIR:-}" ]]; then
    SRC_DIR="$LAMMPS_SOURCE_DIR"
else
    [[ -f "$CARRY_TGZ" ]] || { log "ERROR: $CARRY_TGZ missing: run deploy/carry_lammps_source.sh on a machine with network and carry .carry/lammps-src.tgz"; exit 1; }
    tgz_sha="$(sha256sum "$CARRY_TGZ" | cut -d' ' -f1)"
    if [[ "$(cat "$SRC_DIR/.carry-tgz-sha256" 2>/dev/null)" != "$tgz_sha" ]]; then
        # (file mtimes come from the archive, so an existing build tree stays incremental)
        log "unpacking $CARRY_TGZ into $SRC_DIR"
        rm -rf "$SRC_DIR"; mkdir -p "$SRC_DIR"
        tar -xzf "$CARRY_TGZ" -C "$SRC_DIR"
        echo "$tgz_sha" > "$SRC_DIR/.carry-tgz-sha256"
    fi
fi
# The trimmed tarball has no docs, benchmarks or potentials, which LAMMPS's install step
# copies (seen on the GPU machine: "cannot find .../doc/lammps.1", then ".../bench").
mkdir -p "$SRC_DIR/doc" "$SRC_DIR/bench" "$SRC_DIR/potentials"
[[ -f "$SRC_DIR/doc/lammps.1" ]] || : > "$SRC_DIR/doc/lammps.1"

PYTHON="${PYTHON:-$(command -v python3)}"
if [[ -z "${MPI:-}" ]]; then
    if command -v mpicxx.openmpi >/dev/null; then MPI=openmpi; else MPI=auto; fi
fi

export LAMMPS_SOURCE_DIR="$SRC_DIR" PYTHON MPI
export PREFIX="${PREFIX:-/tmp/lammps-install}"
export BUILD_DIR="${BUILD_DIR:-/tmp/lammps-build}"
export JOBS="${JOBS:-16}"
export E2FORMER_LAMMPS_CACHE="${E2FORMER_LAMMPS_CACHE:-/tmp/e2former-lammps-cache}"
log "python=$PYTHON MPI=$MPI prefix=$PREFIX jobs=$JOBS"
exec "$REPO/deploy/build_lammps.sh"
