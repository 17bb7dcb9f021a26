"""GPU machine: LAMMPS with the model on the GPU (fp64) equals the CPU calculator; two MPI
ranks sharing one GPU, and (on a machine with two) two ranks on two GPUs, give the
single-rank numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from e2former_lammps import E2FormerCalculator
from e2former_lammps.lammps.export import export_lammps_model

from conftest import distributed_charge_model, random_model, water_box
from lammps_harness import run_lammps, stress_to_pressure_virial

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ELEMENTS = ["H", "C", "N", "O"]


def test_gpu_lammps_one_and_two_ranks_match_cpu_calculator(tmp_path):
    model = random_model(seed=31)
    path = tmp_path / "gpu.pt"
    export_lammps_model(model, path, device="cuda:0")  # both ranks on GPU 0
    atoms = water_box(3, seed=2)
    one = run_lammps(tmp_path / "np1", atoms, path, ELEMENTS)
    two = run_lammps(tmp_path / "np2", atoms, path, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1")
    atoms.calc = E2FormerCalculator(model)
    f_ref = atoms.get_forces()
    p_ref = stress_to_pressure_virial(atoms.get_stress())
    for res in (one, two):
        assert abs(res.energy - atoms.get_potential_energy()) < 1e-10 * len(atoms)
        assert np.abs(res.forces - f_ref).max() < 1e-10 * max(1.0, np.abs(f_ref).max())
        assert np.abs(res.pressure_virial - p_ref).max() < 1e-9 * np.abs(p_ref).max()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (one per rank)")
def test_gpu_lammps_two_ranks_on_two_gpus_match_cpu_calculator(tmp_path):
    """A model exported for "cuda" (no index) puts each MPI rank on GPU `local rank mod
    GPUs`: two ranks run on GPUs 0 and 1, exchange ghost features through host memory, and
    give the CPU calculator's numbers (fp64)."""
    model = random_model(seed=34)
    path = tmp_path / "gpus.pt"
    export_lammps_model(model, path, device="cuda")
    atoms = water_box(3, seed=6)
    two = run_lammps(tmp_path / "np2", atoms, path, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1")
    for rank in (0, 1):
        assert f"rank {rank} of 2 runs the model on cuda:{rank}" in two.log, two.log[-3000:]
    atoms.calc = E2FormerCalculator(model)
    f_ref = atoms.get_forces()
    assert abs(two.energy - atoms.get_potential_energy()) < 1e-10 * len(atoms)
    assert np.abs(two.forces - f_ref).max() < 1e-10 * max(1.0, np.abs(f_ref).max())
    p_ref = stress_to_pressure_virial(atoms.get_stress())
    assert np.abs(two.pressure_virial - p_ref).max() < 1e-9 * np.abs(p_ref).max()


@pytest.mark.parametrize("coulomb_cutoff", [None, 9.0])
def test_gpu_lammps_charged_system_on_two_ranks_matches_cpu_calculator(tmp_path,
                                                                       coulomb_cutoff):
    """A cation with the distributed charge embedding, the model on the GPU (fp64): one and
    two ranks sharing the GPU (the charge softmax summed across ranks through host memory)
    give the CPU calculator's numbers; the one-rank run replays CUDA graphs, whose padding
    atoms must take no share of the charge. With the Coulomb term (pairs to 9 Å, periodic
    images included) the graphs also hold the padded Coulomb pairs, which must add no energy,
    and two ranks exchange the ghosts' charges."""
    model = distributed_charge_model(33, coulomb_cutoff=coulomb_cutoff)
    path = tmp_path / "cation.pt"
    export_lammps_model(model, path, device="cuda:0", charge=1.0, spin=2.0)
    atoms = water_box(3, seed=5)
    one = run_lammps(tmp_path / "np1", atoms, path, ELEMENTS)
    two = run_lammps(tmp_path / "np2", atoms, path, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1")
    atoms.info.update(charge=1, spin=2)
    atoms.calc = E2FormerCalculator(model)
    f_ref = atoms.get_forces()
    assert "replayed from CUDA graphs" in one.log
    for res in (one, two):
        assert abs(res.energy - atoms.get_potential_energy()) < 1e-10 * len(atoms)
        assert np.abs(res.forces - f_ref).max() < 1e-10 * max(1.0, np.abs(f_ref).max())


def test_gpu_lammps_cuda_graphs_match_eager(tmp_path, monkeypatch):
    """float32 on the GPU, 81 periodic atoms (ghosts = images): 20 MD steps replayed from
    CUDA graphs end where the eager run ends (both fused Triton attention)."""
    monkeypatch.setenv("HWLOC_COMPONENTS", "-gl,-opencl")  # keep Triton's LLVM (lmp_gpu.sh)
    model = random_model(seed=32, dtype=torch.float32)
    path = tmp_path / "gpu32.pt"
    export_lammps_model(model, path, device="cuda")
    atoms = water_box(3, seed=4)
    results = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("E2FORMER_CUDA_GRAPHS", mode)
        results[mode] = run_lammps(tmp_path / f"graphs{mode}", atoms, path, ELEMENTS,
                                   run="velocity all create 300 7 mom yes\nfix 1 all nve\n"
                                       "timestep 0.0005\nrun 20")
    graphs, eager = results["1"], results["0"]
    assert "replayed from CUDA graphs" in graphs.log
    assert "replayed from CUDA graphs" not in eager.log
    assert "node-wise work through torch.compile" in graphs.log  # E54's default on CUDA
    assert abs(graphs.energy - eager.energy) < 1e-5 * abs(eager.energy)
    assert np.abs(graphs.forces - eager.forces).max() < 1e-4 * np.abs(eager.forces).max()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (one per rank)")
@pytest.mark.parametrize("transport", ["mpi4py", "torch", "auto"])
def test_gpu_lammps_float32_triton_on_two_gpus_matches_one(tmp_path, monkeypatch, transport):
    """float32 (fused Triton attention and rotations): two ranks on GPUs 0 and 1 give the
    one-rank energy and forces, with the features exchanged through pinned host buffers
    (mpi4py) or NCCL (torch, and auto, which picks it here). Rank 1's kernels once ran on GPU 0 with GPU 1's data (a
    non-finite energy at 10k atoms), which the fp64 test above, on the reference path,
    could not see."""
    monkeypatch.setenv("HWLOC_COMPONENTS", "-gl,-opencl")  # keep Triton's LLVM (lmp_gpu.sh)
    monkeypatch.setenv("E2FORMER_EXCHANGE", transport)
    model = random_model(seed=35, dtype=torch.float32)
    path = tmp_path / "gpus32.pt"
    export_lammps_model(model, path, device="cuda")
    atoms = water_box(4, seed=7)
    one = run_lammps(tmp_path / "np1", atoms, path, ELEMENTS)
    two = run_lammps(tmp_path / "np2", atoms, path, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1")
    assert "rank 1 of 2 runs the model on cuda:1" in two.log, two.log[-3000:]
    # auto (the default) picks NCCL when every rank has a GPU of its own
    by_nccl = "exchanged by torch.distributed (cpu:gloo,cuda:nccl)" in two.log
    assert by_nccl == (transport != "mpi4py"), two.log[-3000:]
    assert "WARNING (E2Former)" not in two.log  # the fused kernels, not the fallback
    assert abs(two.energy - one.energy) < 1e-5 * abs(one.energy)
    assert np.abs(two.forces - one.forces).max() < 1e-4 * np.abs(one.forces).max()


@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a GPU")
def test_gpu_nccl_exchange_with_two_ranks_on_one_gpu_says_why(tmp_path, monkeypatch):
    """E2FORMER_EXCHANGE=torch with two ranks on one GPU: NCCL cannot, and the run stops
    with an error naming the setting and the shared GPU."""
    monkeypatch.setenv("HWLOC_COMPONENTS", "-gl,-opencl")
    monkeypatch.setenv("E2FORMER_EXCHANGE", "torch")
    model = random_model(seed=36, dtype=torch.float32)
    path = tmp_path / "shared.pt"
    export_lammps_model(model, path, device="cuda:0")
    out = run_lammps(tmp_path / "np2", water_box(4, seed=7), path, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1", expect_fail=True)
    assert "needs one GPU per rank, but ranks [0, 1] share cuda:0" in out, out[-3000:]
    assert "Traceback" not in out
