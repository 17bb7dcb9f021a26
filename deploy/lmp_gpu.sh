#!/usr/bin/env bash
# Start LAMMPS for a model on the GPU: keeps hwloc (loaded by MPI_Init) from pulling the
# system's libLLVM into the process through its OpenCL/GL plugins, which breaks Triton's own
# LLVM (measured on the H100 machine: libLLVM-16 mapped after MPI_Init; the fused attention
# then failed in ConvertTritonGPUToLLVM). Usage: deploy/lmp_gpu.sh [mpirun args --] -in deck
set -euo pipefail
export HWLOC_COMPONENTS="${HWLOC_COMPONENTS:--gl,-opencl}"
# Large systems: without expandable segments the caching allocator fragments (measured on the
# H200, 1M water atoms, paper configuration: out of memory with 22.5 GB reserved but unused;
# with them the step ran at 135 GB peak).
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
LMP="${LMP:-$(command -v lmp || true)}"
if [[ -z "$LMP" || ! -x "$LMP" ]]; then
    echo "lmp_gpu.sh: no LAMMPS binary: put \`lmp\` in PATH (deploy/build_lammps.sh, or" \
         "deploy/build_lammps_gpu.sh on the GPU machine) or set LMP=/path/to/lmp" >&2
    exit 127
fi
# ML-IAP's pair handling (deploy/lammps-patches/0002) runs on OMP_NUM_THREADS threads per
# rank; unless the caller chose, each rank gets its share of the cores, at most 8 (LAMMPS
# itself would default to one thread). So do the workers with which each rank's first step
# compiles the model's node work (torch.compile; Inductor would start one per core per rank).
threads_per_rank() { local n=$(( $(nproc) / $1 )); (( n < 1 )) && n=1; (( n > 8 )) && n=8; echo $n; }
if [[ " $* " == *" -- "* ]]; then
    mpi_args=(); ranks=1
    while [[ "$1" != "--" ]]; do
        [[ "$1" == "-np" || "$1" == "-n" ]] && ranks="${2:-1}"
        mpi_args+=("$1"); shift
    done; shift
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(threads_per_rank "$ranks")}"
    export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-$(threads_per_rank "$ranks")}"
    exec mpirun "${mpi_args[@]}" "$LMP" "$@"  # (Open MPI passes the environment to local ranks)
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(threads_per_rank 1)}"
export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-$(threads_per_rank 1)}"
exec "$LMP" "$@"
