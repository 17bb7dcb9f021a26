"""Long-range electrostatics of charged structures: a damped, shifted-force Coulomb sum over
pairs within its own cutoff, on charges spread from each structure's total charge.

Beyond the message-passing cutoff the network is blind, yet two ions 5-7.5 Å apart still
change their energy by eV (SPICE's ion pairs, training/NOTES.md T20). Here atom i of a
structure with total charge Q carries q_i = Q w_i, w a softmax over the structure's atoms of
a linear function of their final scalar features (summing to one, so the charges sum to Q;
exactly zero for a neutral structure), and each pair within `cutoff` adds

    E_ij = k_e q_i q_j phi(r_ij),   phi(r) = f(r) - f(r_c) - (r - r_c) f'(r_c),
    f(r) = erf(r / width) / r

(k_e = 14.399645 eV Å / e^2): Coulomb at long range, finite as r -> 0 (the erf damping),
and phi and its slope zero at the cutoff, so energy and forces are continuous there.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from e2former_lammps.exchange import Exchange

from .embedding import structure_softmax

COULOMB_EV_ANGSTROM = 14.399645  # e^2 / (4 pi eps_0) in eV Å


def _erf_over_r(r: Tensor, width: float) -> Tensor:
    return torch.erf(r / width) / r


def damped_shifted_force(r: Tensor, cutoff: float, width: float) -> Tensor:
    """phi(r) of the module docstring (1/Å) for distances r > 0 (Å); 0 at and beyond cutoff."""
    # f(r_c) and f'(r_c) as Python floats (fp64): a tensor made from the cutoff would be a
    # host-to-device copy, which CUDA-graph capture of the training step refuses
    f_c = math.erf(cutoff / width) / cutoff
    # f'(r) = (2 / sqrt(pi)) exp(-(r/w)^2) / (w r) - erf(r/w) / r^2
    df_c = (2.0 / math.sqrt(math.pi)) * math.exp(-(cutoff / width) ** 2) / (width * cutoff) \
        - f_c / cutoff
    r_in = r.clamp(max=cutoff)  # beyond the cutoff phi is 0 with a zero gradient
    return _erf_over_r(r_in, width) - f_c - (r_in - cutoff) * df_c


class CoulombEnergy(nn.Module):
    """Per-atom electrostatic energies (eV) of charged structures from their receivers'
    final scalar features and the pairs within `cutoff`."""

    def __init__(self, channels: int, cutoff: float, width: float):
        super().__init__()
        self.cutoff, self.width = cutoff, width
        # zero: a new term starts with the charge spread evenly over each structure's atoms
        self.logits = nn.Linear(channels, 1)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def charges(self, scalars: Tensor, structure: Tensor, charge: Tensor, n_owned: int,
                exchange: Exchange) -> Tensor:
        """q [n] (e) of the receivers: scalars [n, C], structure [n] indexing charge [B]."""
        w = structure_softmax(self.logits(scalars), structure, charge.shape[0], n_owned,
                              exchange)[:, 0]
        return charge.to(w.dtype).index_select(0, structure) * w

    def forward(self, q: Tensor, pair_i: Tensor, pair_j: Tensor, rij: Tensor,
                exchange: Exchange, n_local: int) -> Tensor:
        """eatoms [n_local] (eV) from the receivers' charges q [n_recv]: half of each directed
        pair's energy goes to its receiver, so a full pair list counts each pair once."""
        q_all = exchange(q[:, None])[:, 0]  # ghosts get their owners' charges
        r = torch.linalg.vector_norm(rij, dim=-1)
        e_pair = (0.5 * COULOMB_EV_ANGSTROM) * q_all.index_select(0, pair_i) \
            * q_all.index_select(0, pair_j) * damped_shifted_force(r, self.cutoff, self.width)
        return torch.zeros(q.shape[0], dtype=e_pair.dtype, device=q.device).index_add(
            0, pair_i, e_pair)[:n_local]
