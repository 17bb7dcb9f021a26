"""deploy/lmp_gpu.sh, the launcher for runs with the model on the GPU: it gives each MPI rank
its share of the cores for ML-IAP's pair handling (at most 8 threads) and as many workers for
torch.compile, unless the caller set OMP_NUM_THREADS / TORCHINDUCTOR_COMPILE_THREADS. Driven
with the real `lmp` and mpirun on a Lennard-Jones deck (no model)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from lammps_harness import allow_mpirun_as_root, lmp_binary

REPO = Path(__file__).resolve().parents[1]
DECK = """units lj
lattice fcc 0.8442
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
variable compile_threads getenv TORCHINDUCTOR_COMPILE_THREADS
print "compile threads: ${compile_threads}"
run 0
"""


def _threads_used(tmp_path: Path, mpi: list[str], omp: str | None) -> tuple[int, str]:
    (tmp_path / "in.lj").write_text(DECK)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")}
    env["LMP"] = lmp_binary()
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    allow_mpirun_as_root(env)
    cmd = ["bash", str(REPO / "deploy/lmp_gpu.sh"), *mpi, "-nocite", "-in", "in.lj"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    used = re.search(r"using (\d+) OpenMP thread\(s\) per MPI task", out)
    assert used, out[-2000:]
    return int(used.group(1)), out


@pytest.mark.parametrize("ranks", [1, 2])
def test_each_rank_gets_its_share_of_the_cores(tmp_path, ranks):
    mpi = [] if ranks == 1 else ["-np", str(ranks), "--"]
    threads, out = _threads_used(tmp_path, mpi, omp=None)
    cores = len(os.sched_getaffinity(0))  # what nproc counts
    share = max(1, min(8, cores // ranks))
    assert threads == share, out[-2000:]
    assert "OMP_NUM_THREADS environment is not set" not in out
    assert f"compile threads: {share}" in out, out[-2000:]


def test_the_callers_thread_count_is_kept(tmp_path):
    threads, _ = _threads_used(tmp_path, [], omp="1")
    assert threads == 1
