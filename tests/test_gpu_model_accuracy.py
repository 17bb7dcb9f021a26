"""The full model with the fused kernels in float32 against the edge-materialising
reference, paper configuration (C 256, 4 blocks, 128 heads x 8), water at 1k and 100k atoms
(issue 3: energy and forces within 1e-5 relative). Against the reference in float32 (the
kernels' own error) and in float64 (the float32 model's whole error). The reference runs
receiver chunk by receiver chunk (impl "reference_chunked"): whole, its per-edge tensors do
not fit one GPU past ~5k atoms."""
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
    runs = {}
    # the kernels twice: as the model decides (keeping the attention's scores for all pairs
    # where memory allows, E55: at 100k atoms more than one prepass launch), and keeping them
    # up to one launch only (the backward reruns the prepass per chunk beyond it)
    big_gpu = torch.cuda.get_device_properties(dev).total_memory > 120e9
    for name, dtype, impl in (("kernels fp32", torch.float32, "auto"),  # Triton on CUDA
                              ("kernels fp32, scores up to one launch", torch.float32, "auto"),
                              ("reference fp32", torch.float32, "reference_chunked"),
                              ("reference fp64", torch.float64, "reference_chunked")):
        model = paper_model(dev).to(dtype)
        model.set_attention_impl(impl)
        model.keep_scores_beyond_one_launch = not name.endswith("one launch")
        runs[name] = eatoms_and_pair_gradient(model, species, pair_i, pair_j, rij.to(dtype), n)
        if name == "kernels fp32" and big_gpu:  # 100k: ~85 GB free (keep_scores_need_bytes)
            assert model.last_keep_scores, "the step did not keep the scores"
        del model
        torch.cuda.empty_cache()
    errors = {}
    for kernels in ("kernels fp32", "kernels fp32, scores up to one launch"):
        eatoms, grad = runs[kernels]
        assert torch.isfinite(eatoms).all() and torch.isfinite(grad).all()
        for ref in ("reference fp32", "reference fp64"):
            eatoms_ref, grad_ref = runs[ref]
            e_ref = eatoms_ref.double().sum()
            errors[kernels, ref] = (
                abs(float(eatoms.double().sum() - e_ref)) / abs(float(e_ref)),
                rel(grad, grad_ref.double()), rel(eatoms, eatoms_ref.double()))
            print(f"N={n} edges={pair_i.numel()} {kernels} vs {ref}: energy rel "
                  f"{errors[kernels, ref][0]:.1e}, dE/drij rel {errors[kernels, ref][1]:.1e}, "
                  f"per-atom energies rel {errors[kernels, ref][2]:.1e}")
    for (kernels, ref), (e_err, g_err, atoms_err) in errors.items():
        what = f"{kernels} vs {ref} (seed {seed})"
        assert e_err <= 1e-5, f"energy rel err {e_err:.2e}, {what}"
        assert g_err <= 1e-5, f"dE/drij rel err {g_err:.2e}, {what}"
        # per-atom energies of random weights are small differences of large terms (network
        # output minus the isolated-atom baseline): float32 alone leaves them ~2e-5 off
        assert atoms_err <= 1e-4, f"per-atom energies rel err {atoms_err:.2e}, {what}"
