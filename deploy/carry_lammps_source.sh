#!/usr/bin/env bash
# Make .carry/lammps-src.tgz: a trimmed LAMMPS source tree (cmake/, src/, python/, lib/
# without doc/examples/potentials/bench/unittest; ~12 MB) for the GPU machine, which has
# no network. It travels with the working tree (git ignores .carry/; pass it in `carry`).
# There: deploy/build_lammps_gpu.sh unpacks and builds it.
#
# Source: LAMMPS_SOURCE_DIR, else what deploy/fetch_lammps_source.sh gives (cached).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT_TGZ:-$REPO/.carry/lammps-src.tgz}"
log() { printf '[carry_lammps_source] %s\n' "$*" >&2; }

SRC="$("$REPO/deploy/fetch_lammps_source.sh" | tail -n1)"
[[ -f "$SRC/src/ML-IAP/mliap_unified_couple.pyx" ]] || { log "ERROR: no LAMMPS source"; exit 1; }

stamp="$OUT.source"
want="$SRC $(cat "$SRC/.e2former-source-complete" 2>/dev/null || git -C "$SRC" rev-parse HEAD 2>/dev/null || true) trim-rev=2"
if [[ -f "$OUT" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    log "up to date: $OUT ($(du -h "$OUT" | cut -f1))"
    echo "$OUT"; exit 0
fi

mkdir -p "$(dirname "$OUT")"
tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# Everything the CMake build reads: cmake/, src/, lib/ (package helper libs/headers),
# python/ (the lammps module), plus version/license files; docs, examples, potentials,
# benchmarks, unit tests, tools are left out. fortran/ is tiny and harmless.
members=()
for d in cmake src lib python fortran LICENSE README; do
    [[ -e "$SRC/$d" ]] && members+=("$d")
done
[[ -f "$SRC/.e2former-source-complete" ]] && members+=(".e2former-source-complete")
[[ -f "$SRC/doc/lammps.1" ]] && members+=("doc/lammps.1")   # `make install` copies it
# `make install` also copies bench/ and potentials/ (94 MB): carry them as stub dirs.
stub="$(mktemp -d)"
trap 'rm -f "$tmp"; rm -rf "$stub"' EXIT
for d in bench potentials; do
    mkdir -p "$stub/$d"
    echo "Left out of the trimmed LAMMPS source made by e2former-lammps deploy/carry_lammps_source.sh" > "$stub/$d/README.e2former"
done
tar -czf "$tmp" -C "$stub" bench potentials -C "$SRC" \
    --exclude='.git' --exclude='__pycache__' --exclude='*.pyc' \
    --exclude='lib/*/examples' --exclude='lib/*/doc' --exclude='lib/*/docs' \
    --exclude='python/examples' --exclude='src/Make.py' \
    --exclude='src/*/README.md' \
    "${members[@]}"
mv "$tmp" "$OUT"
echo "$want" > "$stamp"
log "wrote $OUT ($(du -h "$OUT" | cut -f1)) from $SRC"
echo "$OUT"
