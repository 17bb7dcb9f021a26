"""Diagnose Triton compilation after MPI/LAMMPS is loaded (GPU machine).

Prints the LLVM/OpenCL libraries in the process after MPI_Init, then compiles a tiny kernel.
"""
import os
import sys

import torch
import triton
import triton.language as tl

if "--mpi" in sys.argv:
    from mpi4py import MPI  # noqa: F401  (MPI_Init: hwloc may load its plugins here)
    MPI.COMM_WORLD.Barrier()
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if any(
    k in l for k in ("LLVM", "OpenCL", "hwloc"))})
print("HWLOC_COMPONENTS=", os.environ.get("HWLOC_COMPONENTS"), "libs:", libs)


@triton.jit
def _add(x, y, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(y + o, tl.load(x + o, mask=m) + 1.0, mask=m)


x = torch.randn(1000, device="cuda")
y = torch.empty_like(x)
try:
    _add[(8,)](x, y, 1000, BLOCK=128)
    print("triton compile OK", bool(torch.allclose(y, x + 1)))
except Exception as exc:
    print("triton compile FAILED:", type(exc).__name__, str(exc)[:200])
