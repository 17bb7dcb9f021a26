"""Feature exchanges behave as copies forward and as sums into owners backward."""
import torch

from e2former_lammps.exchange import LocalImages
from e2former_lammps.parallel import KokkosExchange, owner_index


class OwnerMapComm:
    """Implements the documented Kokkos `data.forward_exchange / reverse_exchange` contract
    (LAMMPS's ghost comm) with a known owner map, to test our autograd wrapper on the CPU.
    The real Kokkos build could not be built here (no Kokkos >= 5.1 source)."""

    def __init__(self, owner, nlocal):
        self.owner, self.nlocal = owner, nlocal

    def forward_exchange(self, src, dst, width):
        dst[self.nlocal:] = src[self.owner]

    def reverse_exchange(self, src, dst, width):
        dst[: self.nlocal].index_add_(0, self.owner, src[self.nlocal:])
        dst[self.nlocal:] = 0


def test_owner_index_from_tags():
    tags = torch.tensor([7, 3, 9, 1]).numpy()
    ghosts = torch.tensor([9, 9, 1, 7]).numpy()
    assert owner_index(tags, ghosts).tolist() == [2, 2, 3, 0]


def test_kokkos_exchange_wrapper_matches_local_images():
    gen = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    nlocal, owner = 5, torch.tensor([0, 3, 3, 1, 4, 0])
    x = torch.randn(nlocal, 9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(nlocal + len(owner), 9, 4, dtype=torch.float64, generator=gen)
    ref = LocalImages(owner, nlocal)(x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    ex = KokkosExchange(OwnerMapComm(owner, nlocal), nlocal, nlocal + len(owner))
    out = ex(x)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.equal(out, ref) and torch.allclose(g, g_ref, atol=1e-14)


def test_blocks_copy_keys_and_values_to_ghosts_as_whole_features_would(monkeypatch):
    """E58: with an exchange that is not collective (one rank, ghosts as periodic images) a
    block runs its node-wise input work (norm, invariants, q/k/v) on the receivers only and
    copies keys and values to the ghost rows; a collective exchange (the Kokkos wrapper over
    the same owner map) still copies whole features between blocks. Same energies and
    dE/drij in fp64, with the blocks' activations kept and with blocks recomputed. The memory
    estimate (step_plan) is told which rows run the node work and which hold keys and values
    only (E59)."""
    import dataclasses

    import numpy as np

    import e2former_lammps.model as model_module
    from conftest import random_model, water_box
    from e2former_lammps import step_plan
    from e2former_lammps.forces import energy_and_pair_gradient
    from test_cuda_graphs import ghost_graph

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    model = random_model(seed, num_layers=2).requires_grad_(False)
    graph, owner = ghost_graph(water_box(2, seed=seed), model, torch.float64)
    n, n_total = graph.n_local, graph.species.numel()
    assert n_total > 2 * n  # a small periodic box: most rows are ghosts
    kokkos = dataclasses.replace(graph, exchange=KokkosExchange(
        OwnerMapComm(owner, n), n, n_total))
    rows_seen = []
    node_in = model_module._node_in
    monkeypatch.setattr(model_module, "_node_in",
                        lambda block, x: rows_seen.append(x.shape[0]) or node_in(block, x))
    planned = []
    checkpoint_mode = step_plan.checkpoint_mode
    monkeypatch.setattr(step_plan, "checkpoint_mode", lambda model, n_recv, n_atoms, *a: (
        planned.append((n_atoms, a[-1])) or checkpoint_mode(model, n_recv, n_atoms, *a)))
    for checkpoint in (False, True):
        model.checkpoint_blocks = checkpoint
        rows_seen.clear()
        planned.clear()
        eatoms, grad = energy_and_pair_gradient(model, graph)
        # the first plan is the structure's (then the isolated atoms' baseline)
        assert set(rows_seen) == {n} and planned[0] == (n, n_total - n)
        rows_seen.clear()
        planned.clear()
        eatoms_whole, grad_whole = energy_and_pair_gradient(model, kokkos)
        assert set(rows_seen) == {n_total} and planned[0] == (n_total, 0)
        assert torch.allclose(eatoms, eatoms_whole, rtol=0, atol=1e-12), checkpoint
        assert torch.allclose(grad, grad_whole, rtol=0, atol=1e-10 * grad.abs().max())
