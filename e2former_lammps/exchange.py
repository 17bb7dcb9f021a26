"""Feature exchange between layers: fills ghost-atom rows from the atoms that own them.

The model computes features only for its receiving atoms (rows 0..n_recv) and calls the
exchange after each layer to get rows for all n_total atoms. One interface, several
transports:
- `NoGhosts`: every atom is computed here (plain structures, or LAMMPS ghost-shell mode).
- `LocalImages`: one rank; each ghost is a periodic image of an owned atom.
- `MPIExchange` (e2former_lammps.parallel): owners on other ranks, through mpi4py.
- `GhostShell` (e2former_lammps.parallel): LAMMPS ghost-shell mode on several ranks: every
  atom is computed here, but sums over a structure's atoms span the ranks.
Backward of every exchange adds ghost gradients back into their owners. Quantities summed
over all atoms of a structure (the charge spread) go through sum_over_ranks/max_over_ranks.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Exchange:
    """Maps receiver rows [n_recv, ...] to all rows [n_total, ...]; and reduces a small
    tensor over the ranks that share one structure (identity on one rank)."""

    n_recv: int
    n_total: int
    # the receivers are the atoms this rank owns (each atom of the system on one rank) and
    # every other row a copy of an owned atom on some rank: set by the MPI feature exchange
    receivers_are_owned_atoms: bool = False
    # each call is a collective (every rank calls it once per layer, in the same order): the
    # model exchanges whole features between blocks; otherwise a block exchanges only its
    # attention's keys and values (model.TransformerBlock.forward)
    collective: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sum_over_ranks(self, t: Tensor) -> Tensor:
        """The sum of t over all ranks, on every rank; differentiable. Collective."""
        return t

    def max_over_ranks(self, t: Tensor) -> Tensor:
        """The elementwise max of t over all ranks (no gradient). Collective."""
        return t


class NoGhosts(Exchange):
    def __init__(self, n_atoms: int):
        self.n_recv = self.n_total = n_atoms

    def __call__(self, x: Tensor) -> Tensor:
        return x


class LocalImages(Exchange):
    """Ghost g (row n_recv + g) is a copy of owned row owner[g]; autograd scatters back."""

    def __init__(self, owner: Tensor, n_local: int):
        self.owner = owner
        self.n_recv = n_local
        self.n_total = n_local + owner.numel()

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cat([x, x[self.owner]], dim=0)


def atoms_owned_once(exchange: Exchange, n_local: int) -> bool:
    """Is each atom of the system a receiver row on exactly one rank, every other row a copy
    of one (one rank: computed_here; several: the MPI feature exchange)? What a softmax over
    a structure's atoms needs; a ghost shell computes copies as receivers too."""
    return computed_here(exchange, n_local) or (exchange.receivers_are_owned_atoms
                                                and exchange.n_recv == n_local)


def computed_here(exchange: Exchange, n_local: int) -> bool:
    """Is every row an atom computed here (NoGhosts without a ghost shell) or a periodic image
    of one (LocalImages): one rank, ghosts only as images of local atoms?"""
    return ((type(exchange) is NoGhosts and exchange.n_total == n_local)
            or (type(exchange) is LocalImages and exchange.n_recv == n_local))
