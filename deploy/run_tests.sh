#!/usr/bin/env bash
# Set up everything (venv, MPI, mpi4py, LAMMPS with ML-IAP python; cached) and run the tests
# that need no GPU: real LAMMPS binary, real mpirun ranks, Triton kernels in interpreter mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -m "not gpu" -ra "$@"
