#!/usr/bin/env bash
# Recipe: LAMMPS with Kokkos (CUDA, GPU-resident `pair_style mliap/kk unified`), for machines
# with network access or a Kokkos >= 5.1 source tree. NOT run in this project's CI or on its
# GPU machine: Debian's LAMMPS source has no bundled Kokkos and no Kokkos >= 5.1 source is
# reachable there (see README "Kokkos").
#
#   LAMMPS_SOURCE_DIR=~/lammps  [KOKKOS_SOURCE_DIR=~/kokkos-5.1]  deploy/build_lammps_kokkos.sh
#
# Then run decks unchanged (no hook lines needed: LAMMPS's own exchange moves ghost features):
#   lmp -k on g 1 -sf kk -pk kokkos newton on neigh half -in in.deck      # comm_style brick
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${LAMMPS_SOURCE_DIR:?set LAMMPS_SOURCE_DIR to a LAMMPS checkout (stable 4 Jul 2026 or newer)}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
PREFIX="${PREFIX:-$HOME/.cache/e2former-lammps/lammps-kokkos-cuda}"
BUILD_DIR="${BUILD_DIR:-/tmp/lammps-kokkos-build}"
ARCH="${KOKKOS_ARCH:-HOPPER90}"   # e.g. AMPERE80 for A100
kokkos_src=(-D DOWNLOAD_KOKKOS=ON)
if [[ -n "${KOKKOS_SOURCE_DIR:-}" ]]; then
    kokkos_src=(-D EXTERNAL_KOKKOS=OFF -D DOWNLOAD_KOKKOS=OFF -D KOKKOS_SOURCE_DIR="$KOKKOS_SOURCE_DIR")
fi
cmake -S "$LAMMPS_SOURCE_DIR/cmake" -B "$BUILD_DIR" \
    -D CMAKE_INSTALL_PREFIX="$PREFIX" -D BUILD_SHARED_LIBS=ON -D LAMMPS_EXCEPTIONS=ON \
    -D BUILD_MPI=ON -D PKG_ML-IAP=ON -D PKG_ML-SNAP=ON -D PKG_PYTHON=ON \
    -D MLIAP_ENABLE_PYTHON=ON -D Python_EXECUTABLE="$PYTHON" \
    -D PKG_KOKKOS=ON -D Kokkos_ENABLE_CUDA=ON -D "Kokkos_ARCH_${ARCH}=ON" \
    -D CMAKE_CXX_COMPILER="$LAMMPS_SOURCE_DIR/lib/kokkos/bin/nvcc_wrapper" "${kokkos_src[@]}"
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
cmake --install "$BUILD_DIR"
cmake --build "$BUILD_DIR" --target install-python
echo "LAMMPS (Kokkos CUDA) installed in $PREFIX; needs cupy in the Python environment"
