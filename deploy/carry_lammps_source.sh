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
want="$SRC $(cat "$SRC/.e2former-source-complete" 2>/dev/null || git -C "$SRC" rev-parse HEAD 2>/dev/null || true) trim-rev=1"
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
tar -C "$SRC" -czf "$tmp" \
    --exclude='.git' --exclude='__pycache__' --exclude='*.pyc' \
    --exclude='lib/*/examples' --exclude='lib/*/doc' --exclude='lib/*/docs' \
    --exclude='python/examples' --exclude='src/Make.py' \
    --exclude='src/*/README.md' \
    "${members[@]}"
mv "$tmp" "$OUT"
echo "$want" > "$stamp"
log "wrote $OUT ($(du -h "$OUT" | cut -f1)) from $SRC"
echo "$OUT"
