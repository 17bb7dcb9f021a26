"""Pair lists for ASE structures: all j within r_c of i, periodic images by shift vectors."""
from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from ase.neighborlist import neighbor_list

from .exchange import NoGhosts
from .model import AtomGraph
from .validation import check_positions, species_index


def atoms_to_graph(atoms: Atoms, elements: list[str], atomic_numbers: list[int],
                   cutoff: float, dtype: torch.dtype = torch.float64,
                   device: str | torch.device = "cpu",
                   mp_cutoff: float | None = None) -> AtomGraph:
    """AtomGraph of one structure: the pairs within `cutoff` (Å); where mp_cutoff is
    shorter, the rows within it as the graph's mp_index (message passing).

    rij = x_j - x_i + S . cell (S the integer image shift), so ghosts are never made: an
    image of atom j is atom j itself, reached with another displacement.
    """
    positions = torch.tensor(atoms.get_positions(), dtype=torch.float64)
    check_positions(positions)
    species = species_index(atoms.get_atomic_numbers(), atomic_numbers, elements)
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    order = np.argsort(i, kind="stable")
    i, j, shifts = i[order], j[order], shifts[order]
    cell = torch.tensor(np.asarray(atoms.get_cell()), dtype=torch.float64)
    offsets = torch.tensor(shifts, dtype=torch.float64) @ cell
    pair_i = torch.as_tensor(i, dtype=torch.long)
    pair_j = torch.as_tensor(j, dtype=torch.long)
    # Differences in float64 first: at 500 Å from the origin float32 positions keep only
    # ~1e-5 Å, so a float32 model would see a translated structure differently.
    rij = (positions[pair_j] - positions[pair_i] + offsets).to(device=device, dtype=dtype)
    pair_i, pair_j = pair_i.to(device), pair_j.to(device)
    n = len(atoms)
    graph = AtomGraph(
        species=species.to(device), pair_i=pair_i, pair_j=pair_j, rij=rij, n_local=n,
        exchange=NoGhosts(n),
    )
    if mp_cutoff is not None and mp_cutoff < cutoff:
        graph.mp_index = message_passing_index(graph.rij, mp_cutoff)
    return graph


def message_passing_index(rij: Tensor, cutoff: float) -> Tensor:
    """Rows of rij [E, 3] (Å) shorter than cutoff, in order."""
    return torch.nonzero((rij * rij).sum(-1) < cutoff * cutoff).squeeze(1)
