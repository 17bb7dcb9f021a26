"""The full model with the fused kernels in float32 against the edge-materialising reference
in float64, paper configuration (C 256, 4 blocks, 128 heads x 8), water at 1k and 100k atoms
(issue 3: energy and forces within 1e-5 relative; float64 on the reference side, so the
error measured is the float32 kernels' alone). The reference runs receiver chunk by receiver chunk
(impl "reference_chunked"): whole, its per-edge tensors do not fit one GPU past ~5k atoms."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_attention import CUTOFF, neighbour_list, paper_model, water_box  # noqa: E402

from e2former_lammps.exchange import NoGhosts  # noqa: E402
from e2former_lammps.forces import energy_and_pair_gradient  # noqa: E402
from e2former_lammps.model import AtomGraph  # noqa: E402


def eatoms_and_pair_gradient(model, species, pair_i, pair_j, rij, n):
    """(per-atom energies [n] eV, dE/drij [E, 3] eV/Å), detached."""
    graph = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij, n_local=n,
                      exchange=NoGhosts(n))
    eatoms, grad = energy_and_pair_gradient(model, graph)
    return eatoms.detach(), grad.detach()


def rel(a, b) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n_atoms", [1000, 100000])
def test_gpu_model_fp32_kernels_match_fp64_reference(n_atoms):
    seed = int(time.time_ns() % 2**31)
    print(f"seed {seed}")
    dev = torch.device("cuda")
    pos, species, box = water_box(n_atoms, seed=seed, device=dev)
    n = pos.shape[0]
    pair_i, pair_j, rij = neighbour_list(pos, box, CUTOFF)
    model = paper_model(dev)  # float32: the Triton kernels ("auto" on CUDA)
    eatoms, grad = eatoms_and_pair_gradient(model, species, pair_i, pair_j, rij.float(), n)
    del model
    torch.cuda.empty_cache()
    reference = paper_model(dev).double()
    reference.set_attention_impl("reference_chunked")
    eatoms_ref, grad_ref = eatoms_and_pair_gradient(reference, species, pair_i, pair_j,
                                                    rij.double(), n)
    assert torch.isfinite(eatoms).all() and torch.isfinite(grad).all()
    e_err = abs(float(eatoms.double().sum() - eatoms_ref.sum())) / abs(float(eatoms_ref.sum()))
    g_err, atoms_err = rel(grad, grad_ref), rel(eatoms, eatoms_ref)
    print(f"N={n} edges={pair_i.numel()}: energy rel {e_err:.1e}, dE/drij rel {g_err:.1e}, "
          f"per-atom energies rel {atoms_err:.1e}")
    assert e_err <= 1e-5, f"energy rel err {e_err:.2e} (seed {seed})"
    assert g_err <= 1e-5, f"dE/drij rel err {g_err:.2e} (seed {seed})"
    # the per-atom energies of random weights are small sums of large terms: float32 alone
    # (the reference in float32 on the CPU, 120 atoms) leaves them ~1e-5 off in norm
    assert atoms_err <= 1e-4, f"per-atom energies rel err {atoms_err:.2e} (seed {seed})"
