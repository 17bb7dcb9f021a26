#!/usr/bin/env bash
# Download the wheels for the MACE peer benchmark (benchmarks/peers/mace_peer.py) so they
# can be carried to the GPU machine, which has no network. Python 3.12 / manylinux x86_64,
# installed there with `pip install --no-deps --target`. Folders (git-ignored via `.whl/`):
#
#   .whl/mace      mace-torch 0.3.16 and what it imports that the GPU image lacks (e3nn 0.6
#                  backend), cuequivariance + cuequivariance-torch 0.13 (pure Python),
#                  platformdirs (imported by the cuEq ops)                         ~6 MB
#   .whl/cueq-ops  cuequivariance-ops-cu13 + cuequivariance-ops-torch-cu13 0.13, re-zipped
#                  with LZMA (same files, same RECORD hashes; pip installs them as usual)
#                                                                                  ~29 MB
#
# The ops are the CUDA 13 builds: the GPU image's torch is 2.11+cu130, and the -cu12 torch
# extension links libnvrtc.so.12, which that image does not have. As PyPI ships them
# (deflate) the two ops wheels are ~74 MB, over one device call's 64 MiB carry; re-zipped
# with LZMA they are ~29 MB, so .whl/mace + .whl/cueq-ops (~35 MB) go in one call. The
# originals stay in .whl/.orig (not carried). CUEQ_CUDA=12 fetches the -cu12 pair instead.
#
# Usage: deploy/carry_peer_wheels.sh        (idempotent; prints the folder sizes)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
CU="${CUEQ_CUDA:-13}"
MACE_DIR="$REPO/.whl/mace"
OPS_DIR="$REPO/.whl/cueq-ops"
ORIG_DIR="$REPO/.whl/.orig"
log() { printf '[carry_peer_wheels] %s\n' "$*" >&2; }

mkdir -p "$MACE_DIR" "$OPS_DIR" "$ORIG_DIR"
if ! git -C "$REPO" check-ignore -q "$MACE_DIR/x"; then
    log "adding /.whl/ to .git/info/exclude"
    echo "/.whl/" >> "$(git -C "$REPO" rev-parse --git-path info/exclude)"
fi

BIN=(--python-version 3.12 --implementation cp --abi cp312
     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux_2_28_x86_64 --only-binary=:all:)
# (grep drops pip's notes about local index folders this machine's pip.conf names)
dl() { "$PY" -m pip download -q --no-deps --disable-pip-version-check "$@" 2>&1 \
           | { grep -v "^WARNING: Location 'file://" || true; } >&2; }

# Pure-Python wheels (py3-none-any).
log "pure-Python wheels -> $MACE_DIR"
dl -d "$MACE_DIR" --only-binary=:all: \
    mace-torch==0.3.16 e3nn==0.6.0 opt-einsum==3.4.0 opt-einsum-fx==0.1.4 torch-ema==0.3 \
    prettytable==3.18.0 configargparse==1.9.0 ase==3.29.0 wcwidth==0.9.4 platformdirs==4.14.7 \
    cuequivariance==0.13.0 cuequivariance-torch==0.13.0

# Compiled wheels for CPython 3.12 manylinux x86_64.
log "binary wheels (cp312 manylinux x86_64) -> $MACE_DIR"
dl -d "$MACE_DIR" "${BIN[@]}" matscipy==1.3.1 lmdb==3.0.0 orjson==3.13.0

# python-hostlist: sdist only; build a wheel here (pure Python).
if ! ls "$MACE_DIR"/python_hostlist-*.whl >/dev/null 2>&1; then
    log "building python-hostlist wheel from its sdist"
    "$PY" -m pip wheel -q --no-deps --disable-pip-version-check --no-binary python-hostlist \
        -w "$MACE_DIR" python-hostlist==2.3.0 2>&1 \
        | { grep -v "^WARNING: Location 'file://" || true; } >&2
fi

log "cuEquivariance ops (cu$CU) -> $ORIG_DIR, re-zipped with LZMA -> $OPS_DIR"
dl -d "$ORIG_DIR" "${BIN[@]}" "cuequivariance-ops-cu$CU==0.13.0" \
    "cuequivariance-ops-torch-cu$CU==0.13.0"
rm -f "$OPS_DIR"/*.whl
for w in "$ORIG_DIR"/cuequivariance_ops_cu"$CU"-*.whl \
         "$ORIG_DIR"/cuequivariance_ops_torch_cu"$CU"-*.whl; do
    out="$OPS_DIR/$(basename "$w")"
    if [[ -f "$ORIG_DIR/$(basename "$w").lzma" ]]; then
        cp "$ORIG_DIR/$(basename "$w").lzma" "$out"; continue
    fi
    log "re-zipping $(basename "$w") with LZMA (a minute or two)"
    "$PY" - "$w" "$out.tmp" <<'PYEOF'
import sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_LZMA) as zo:
    for info in zi.infolist():
        ni = zipfile.ZipInfo(info.filename, info.date_time)
        ni.external_attr = info.external_attr
        ni.compress_type = zipfile.ZIP_LZMA
        zo.writestr(ni, zi.read(info))
with zipfile.ZipFile(dst) as z:  # readable, CRCs right
    assert z.testzip() is None
PYEOF
    mv "$out.tmp" "$out"
    cp "$out" "$ORIG_DIR/$(basename "$w").lzma"
done

total=0
for d in "$MACE_DIR" "$OPS_DIR"; do
    ls -1 "$d"
    bytes=$(du -cb "$d"/*.whl | tail -n1 | cut -f1)
    total=$((total + bytes))
    printf '%s: %s bytes (%.1f MiB), %d wheels\n' "${d#$REPO/}" "$bytes" \
        "$(echo "$bytes / 1048576" | bc -l)" "$(ls "$d"/*.whl | wc -l)"
    (( bytes < 60 * 1000 * 1000 )) || log "WARNING: ${d#$REPO/} is over 60 MB: carry it alone"
done
printf 'both: %s bytes (%.1f MiB; one device call carries at most 64 MiB)\n' "$total" \
    "$(echo "$total / 1048576" | bc -l)"
