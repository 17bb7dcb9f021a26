"""CUDA-graph evaluation: padded inputs give the eager energies and dE/drij; graphs replay."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from conftest import distributed_charge_model, random_model, spice_molecules, water_box
from e2former_lammps.cuda_graphs import (GraphedEnergyForces, PaddedGraph, bucket, capture,
                                         graph_key)
from e2former_lammps.exchange import LocalImages
from e2former_lammps.forces import energy_and_pair_gradient
from e2former_lammps.model import AtomGraph
from e2former_lammps.neighbors import atoms_to_graph


def ghost_graph(atoms: Atoms, model, dtype, device="cpu") -> tuple[AtomGraph, torch.Tensor]:
    """The LAMMPS form of a periodic structure: each image a pair reaches is a ghost atom
    (owner = the atom it images), as one LAMMPS rank hands it to the model."""
    cfg = model.config
    i, j, shifts = neighbor_list("ijS", atoms, cfg.cutoff)
    order = np.argsort(i, kind="stable")
    i, j, shifts = i[order], j[order], shifts[order]
    n = len(atoms)
    ghosts: dict[tuple, int] = {}
    pair_j = j.copy()
    for e in range(len(i)):
        if shifts[e].any():
            pair_j[e] = n + ghosts.setdefault((j[e], *shifts[e]), len(ghosts))
    owner = torch.tensor([k[0] for k in ghosts], dtype=torch.long)
    pos = atoms.get_positions()
    rij = pos[j] - pos[i] + shifts @ np.asarray(atoms.get_cell())
    local = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff, dtype)
    species = torch.cat([local.species, local.species[owner]])
    graph = AtomGraph(species=species.to(device), pair_i=torch.as_tensor(i).to(device),
                      pair_j=torch.as_tensor(pair_j).to(device),
                      rij=torch.as_tensor(rij, dtype=dtype).to(device), n_local=n,
                      exchange=LocalImages(owner.to(device), n))
    return graph, owner.to(device)


def periodic_molecule(seed: int) -> Atoms:
    atoms = spice_molecules(1, min_atoms=8, seed=seed)[0]
    atoms.set_cell(np.diag(np.ptp(atoms.positions, axis=0) + 3.0))
    atoms.pbc = True
    atoms.wrap()
    return atoms


def test_bucket_sizes():
    assert bucket(1, 256) == 256 and bucket(256, 256) == 256 and bucket(257, 256) == 512
    for n in np.random.default_rng().integers(1, 10**7, 200):
        b = bucket(int(n), 256)
        assert n <= b and b - n < max(256, n / 16)  # padding below 1/16 or the minimum


def with_charge(graph: AtomGraph, charge: float | None) -> AtomGraph:
    """graph with a total charge (e) and a singlet, as the LAMMPS hook gives them."""
    if charge is not None:
        graph.charge = torch.tensor([charge], dtype=graph.rij.dtype, device=graph.rij.device)
        graph.spin = torch.ones(1, dtype=graph.rij.dtype, device=graph.rij.device)
    return graph


@pytest.mark.parametrize("periodic, charge, coulomb", [
    (False, None, False), (True, None, False), (False, 1.0, False), (True, 1.0, False),
    (False, 1.0, True)])
def test_padded_graph_matches_eager(periodic, charge, coulomb):
    """Padding (dummy receivers at 2 r_c, ghost rows moved up, padded ghosts) changes no
    energy and no dE/drij, also when a second geometry with fewer pairs and ghosts reuses the
    buffers (stale rows of the first left behind), as during MD. With a total charge on a
    distributed-charge model, the dummies must not take a share of it; with a Coulomb term,
    the pairs beyond the model's cutoff and the padded message-passing rows change nothing."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    extra = dict(coulomb_cutoff=9.0) if coulomb else {}
    model = (random_model(seed=seed) if charge is None
             else distributed_charge_model(seed, **extra)).eval().requires_grad_(False)
    cfg = model.config
    atoms = periodic_molecule(seed) if periodic else spice_molecules(1, min_atoms=8,
                                                                      seed=seed)[0]
    if coulomb:  # a second copy 6 Å away: pairs beyond the model's cutoff, within Coulomb's
        copy = atoms.copy()
        copy.positions[:, 0] += np.ptp(atoms.positions[:, 0]) + 6.0
        atoms = atoms + copy

    def system(stretch: float):
        a = atoms.copy()
        if periodic:
            a.set_cell(a.cell * stretch, scale_atoms=True)
        else:
            a.positions *= stretch
        graph, owner = ghost_graph(a, model, torch.float64) if periodic else (
            atoms_to_graph(a, cfg.elements, cfg.atomic_numbers, cfg.coulomb_cutoff or
                           cfg.cutoff, mp_cutoff=cfg.cutoff), None)
        return with_charge(graph, charge), owner

    systems = [system(1.0)]
    stretch = 1.1
    while (second := system(stretch))[0].pair_i.numel() == systems[0][0].pair_i.numel():
        stretch *= 1.1  # until the stretched copy has fewer pairs (and images)
    systems.append(second)
    (big, big_owner), (small, small_owner) = systems
    assert small.pair_i.numel() < big.pair_i.numel()
    key = graph_key(big, big_owner, model.charge_spin is not None)
    assert key.charge_spin == (charge is not None)
    assert (key.n_mp_pad >= 0) == coulomb == (big.mp_index is not None)
    if coulomb:  # the molecule has pairs beyond the model's cutoff, which the rows leave out
        assert big.mp_index.numel() < big.pair_i.numel()
    padded = PaddedGraph(key, cfg.cutoff, big.rij.device, big.rij.dtype)
    for graph, owner in systems:
        padded.fill(graph, owner)
        e_pad, g_pad = energy_and_pair_gradient(model, padded.graph)
        e_ref, g_ref = energy_and_pair_gradient(model, graph)
        e_pad, g_pad = e_pad[:graph.n_local], g_pad[:graph.pair_i.numel()]
        assert torch.allclose(e_pad, e_ref, rtol=0, atol=1e-11), (e_pad - e_ref).abs().max()
        assert torch.allclose(g_pad, g_ref, rtol=0, atol=1e-11), (g_pad - g_ref).abs().max()
    assert padded.pair_i.numel() > small.pair_i.numel()


def test_ghost_graph_is_the_periodic_structure():
    """The test's LAMMPS-form graph is right: same energies as ASE's shift-vector graph."""
    model = random_model(seed=3).eval().requires_grad_(False)
    cfg = model.config
    atoms = periodic_molecule(5)
    graph, owner = ghost_graph(atoms, model, torch.float64)
    assert owner.numel() > 0
    e_ghost, _ = energy_and_pair_gradient(model, graph)
    e_ase, _ = energy_and_pair_gradient(
        model, atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff))
    assert torch.allclose(e_ghost, e_ase, atol=1e-11)


def test_unsupported_inputs_run_eagerly():
    """CPU tensors (and weights that train) never reach graph capture."""
    model = random_model(seed=1).eval().requires_grad_(False)
    cfg = model.config
    atoms = spice_molecules(1, min_atoms=8, seed=2)[0]
    graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff)
    runner = GraphedEnergyForces(model)
    e, g = runner(graph)
    e_ref, g_ref = energy_and_pair_gradient(model, graph)
    assert torch.equal(e, e_ref) and torch.equal(g, g_ref) and not runner.in_use


def test_misspelt_switch_is_an_error(monkeypatch):
    model = random_model(seed=1).eval().requires_grad_(False)
    monkeypatch.setenv("E2FORMER_CUDA_GRAPHS", "off")
    with pytest.raises(ValueError, match=re.escape(
            "E2FORMER_CUDA_GRAPHS='off': expected one of ('0', '1')")):
        GraphedEnergyForces(model)
    monkeypatch.setenv("E2FORMER_CUDA_GRAPHS", "0")
    assert not GraphedEnergyForces(model).enabled


@pytest.mark.gpu
@pytest.mark.parametrize("periodic, charge, coulomb", [
    (False, None, False), (True, None, False), (False, 1.0, False), (True, 1.0, False),
    (False, 1.0, True)])
def test_cuda_graph_replays_match_eager(periodic, charge, coulomb):
    """Captured graphs replayed on new geometries and sizes give the eager float32 Triton
    results (relative 1e-5, floor 1e-6 eV, eV/Å), and a size change inside a bucket reuses
    its graph; also for a charged system on a distributed-charge model, with and without a
    Coulomb term (pairs to its longer cutoff, message-passing rows within the model's)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    kw = dict(dtype=torch.float32, channels=64, num_heads=8)
    if coulomb:
        kw["coulomb_cutoff"] = 9.0
    model = (random_model(seed=seed, **kw) if charge is None
             else distributed_charge_model(seed, **kw)).cuda()
    model.eval().requires_grad_(False)
    cfg = model.config
    runner = GraphedEnergyForces(model)
    rng = np.random.default_rng(seed)
    for step in range(4):
        atoms = water_box(2, seed=seed + step // 2)  # 24 waters, random orientations
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        if periodic:
            graph, _ = ghost_graph(atoms, model, torch.float32, "cuda")
        else:
            atoms.pbc = False
            graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers,
                                   cfg.coulomb_cutoff or cfg.cutoff, torch.float32, "cuda",
                                   mp_cutoff=cfg.cutoff)
        graph = with_charge(graph, charge)
        e, g = (t.clone() for t in runner(graph))
        e_ref, g_ref = energy_and_pair_gradient(model, graph)
        # relative 1e-5 of the largest value, with a floor for float32 rounding: a random
        # model's per-atom energies (~0.02 eV) are small sums of much larger terms
        assert (e - e_ref).abs().max() <= 1e-5 * e_ref.abs().max() + 1e-6
        assert (g - g_ref).abs().max() <= 1e-5 * g_ref.abs().max() + 1e-6
    assert 1 <= len(runner._graphs) <= 2 and runner.enabled
    assert all(k.charge_spin == (charge is not None) for k in runner._graphs)
    assert all((k.n_mp_pad >= 0) == coulomb for k in runner._graphs)


@pytest.mark.gpu
def test_gpu_captures_in_one_pool_reuse_its_freed_memory():
    """Captures sharing a pool reuse the blocks freed inside earlier captures: five captures
    of a function with a 256 MiB temporary reserve about one temporary, not five (a fresh
    capture stream per capture took new memory every time: 132 GiB of training graphs)."""
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run with -m gpu on the GPU machine")
    x = torch.ones(64 * 2**20, device="cuda")  # 256 MiB of float32

    def run():
        return (x * 2.0).sum()  # the product is a temporary freed inside the capture

    pool = torch.cuda.graph_pool_handle()
    torch.cuda.synchronize()
    start = torch.cuda.memory_reserved()
    graphs = [capture(run, pool)[0] for _ in range(5)]
    grown = torch.cuda.memory_reserved() - start
    for g in graphs:
        g.replay()
    torch.cuda.synchronize()
    assert grown < 2.5 * x.nbytes, f"five captures reserved {grown / 2**20:.0f} MiB"
