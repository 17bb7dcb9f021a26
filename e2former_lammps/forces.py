"""Forces and virial from dE/drij (rij = x_j - x_i): the only derivative the model needs."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .model import AtomGraph, E2FormerV2


def energy_and_pair_gradient(model: E2FormerV2, graph: AtomGraph,
                             create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """(eatoms [n_local] eV, dE/drij [E, 3] eV/Å) with E the sum of the local energies.

    A large step that ran out of GPU memory with all activations kept, because the model's
    memory estimate said they fit, runs again with block recompute (and so do later steps);
    not with a collective exchange, where the other ranks have moved on."""
    try:
        return _energy_and_pair_gradient(model, graph, create_graph)
    except torch.OutOfMemoryError:
        if not (model.kept_activations_by_estimate
                and getattr(graph.exchange, "anchor", None) is None):
            raise
    # outside the except block, whose traceback holds the failed step's tensors
    model.memory_estimate_trusted = False
    if graph.rij.is_cuda:
        torch.cuda.empty_cache()
    warnings.warn(f"E2Former: out of GPU memory with every block's activations kept "
                  f"({graph.n_local} atoms, {graph.pair_i.numel()} pairs), although the "
                  f"estimate said they fit; recomputing blocks in the backward from now on",
                  RuntimeWarning, stacklevel=2)
    return _energy_and_pair_gradient(model, graph, create_graph)


def _energy_and_pair_gradient(model: E2FormerV2, graph: AtomGraph,
                              create_graph: bool) -> tuple[Tensor, Tensor]:
    rij = graph.rij.detach().requires_grad_(True)
    graph.rij = rij
    # A collective exchange must run its backward on every rank: differentiate with respect
    # to its anchor too, so that its nodes are on the path even where rij has no pairs.
    anchor = getattr(graph.exchange, "anchor", None)
    inputs = (rij,) if anchor is None else (rij, anchor)
    with torch.enable_grad():
        eatoms = model(graph)
        if not eatoms.requires_grad:  # no pairs and frozen weights: nothing depends on rij
            return eatoms, torch.zeros_like(rij)
        grad = torch.autograd.grad(eatoms.sum(), inputs, create_graph=create_graph,
                                   allow_unused=True)[0]
    if grad is None:  # no pairs at all
        grad = torch.zeros_like(rij)
    return eatoms, grad


def pair_gradient_to_forces(grad: Tensor, pair_i: Tensor, pair_j: Tensor, n_atoms: int) -> Tensor:
    """F_k = -dE/dx_k: rij = x_j - x_i gives +grad on i and -grad on j."""
    forces = torch.zeros(n_atoms, 3, dtype=grad.dtype, device=grad.device)
    forces.index_add_(0, pair_i, grad)
    forces.index_add_(0, pair_j, -grad)
    return forces


def pair_gradient_to_virial(grad: Tensor, rij: Tensor) -> Tensor:
    """sum_e rij (x) dE/drij [3, 3] (eV); stress = this / volume, LAMMPS pressure = -this / V."""
    return rij.detach().T @ grad
