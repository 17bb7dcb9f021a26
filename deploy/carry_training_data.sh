#!/usr/bin/env bash
# Copy the spice-xtb training data (../shared/data/spice-xtb, ~10 MB) into .carry/spice-xtb
# for the GPU machine, which does not see ../shared: training and benchmarks/train_sweep.py
# there read .carry/spice-xtb/{train,val}.hdf5 (carry ".carry/spice-xtb" and, for ASE,
# ".whl/mace"). SPICE_XTB_DIR overrides the source folder.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${SPICE_XTB_DIR:-$REPO/../shared/data/spice-xtb}"
DST="$REPO/.carry/spice-xtb"
for f in train.hdf5 val.hdf5; do
    [[ -f "$SRC/$f" ]] || { echo "[carry_training_data] ERROR: no $SRC/$f" >&2; exit 1; }
done
git -C "$REPO" check-ignore -q "$DST/x" || echo "/.carry/" >> "$(git -C "$REPO" rev-parse --git-path info/exclude)"
mkdir -p "$DST"
cp "$SRC"/train.hdf5 "$SRC"/val.hdf5 "$DST"/
[[ -f "$SRC/README.md" ]] && cp "$SRC/README.md" "$DST"/  # provenance travels with the data
echo "[carry_training_data] $(du -sh "$DST" | cut -f1) in $DST" >&2
echo "$DST"
