"""Initial node features: edge-degree embedding, element embedding, charge/spin embedding."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from e2former_lammps.exchange import Exchange
from e2former_lammps.o3 import row_degrees, spherical_harmonics
from kernels.attention.common import edge_geometry, scatter_max
from kernels.receiver_sum import receiver_outer_sum

from .linear import degree_matmul
from .radial import EdgeRadialMLP, GaussianBasis


class EdgeDegreeEmbedding(nn.Module):
    """h_i = E(Z_i) on l = 0 + (1 / avg_degree) sum_j p(d_ij) Y_l(r_hat_ij) (x) MLP_l(e_ij).

    The MLP's last layer is linear, so the sum over neighbours is taken on its hidden layer
    (plus a constant 1 for the bias) and the output layer is applied per atom:
    sum_j c_j (h_j W + b) = (sum_j c_j [h_j, 1]) [W; b]. Per edge that is (lmax+1)^2 x
    (hidden + 1) numbers instead of (lmax+1)^2 x C: the same function, ~4x less edge work.
    """

    def __init__(self, basis: GaussianBasis, n_elements: int, channels: int, lmax: int,
                 hidden: int, avg_degree: float, cutoff: float):
        super().__init__()
        self.lmax, self.channels, self.cutoff = lmax, channels, cutoff
        self.inv_avg_degree = 1.0 / avg_degree
        self.element = nn.Embedding(n_elements, channels)
        self.radial = EdgeRadialMLP(basis, n_elements, hidden, (lmax + 1) * channels)
        self.register_buffer("row_degree", row_degrees(lmax), persistent=False)

    # Edges per chunk: the radial MLP's per-edge activations ([E, hidden] a few times) and
    # the spherical harmonics are built a chunk at a time and recomputed in backward, so
    # memory stays O(atoms) for large systems (~1 GB per 2^20 edges). The chunk bounds are
    # read back from the GPU, so a CUDA graph holds at most one chunk (cuda_graphs.py). Fewer,
    # larger chunks cut the eager 10k-atom step by 7-18% (kernels/NOTES.md E46).
    chunk_edges: int = 1 << 20

    def _edge_sum(self, species: Tensor, pair_i: Tensor, pair_j: Tensor, rij: Tensor,
                  first: int, n: int) -> Tensor:
        """sum_j p Y_lm [h_j, 1] / avg_degree for receivers first..first+n: [n, rows, hidden+1]."""
        dist, r_hat, env = edge_geometry(rij, self.cutoff)
        hidden = self.radial.hidden(dist, species[pair_i], species[pair_j])
        hidden = torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=1)
        sh = spherical_harmonics(r_hat, self.lmax) * (env * self.inv_avg_degree)[:, None]
        return receiver_outer_sum(sh, hidden, pair_i - first, n)

    def _receiver_chunks(self, pair_i: Tensor, n_recv: int) -> list[tuple[int, int, int, int]]:
        """(first atom, end atom, first edge, end edge) of each chunk: whole receivers, about
        chunk_edges edges each (more only for one receiver with more neighbours than that).

        Chunks split at receiver boundaries so their sums are disjoint row ranges joined by one
        concatenation; one read-back from the device for all bounds.
        """
        row_ptr = torch.searchsorted(
            pair_i, torch.arange(n_recv + 1, device=pair_i.device, dtype=pair_i.dtype))
        n_edges = pair_i.shape[0]
        targets = torch.arange(0, n_edges, self.chunk_edges, device=pair_i.device)
        atom_bounds = torch.searchsorted(row_ptr, targets, right=True) - 1
        atom_bounds = torch.cat([atom_bounds.clamp(min=0), atom_bounds.new_tensor([n_recv])])
        atom_bounds = torch.unique_consecutive(atom_bounds)
        edge_bounds = row_ptr[atom_bounds]
        atoms, edges = atom_bounds.tolist(), edge_bounds.tolist()
        atoms[0], edges[0] = 0, 0
        return [(a0, a1, e0, e1) for a0, a1, e0, e1 in zip(atoms, atoms[1:], edges, edges[1:])]

    def forward(self, species: Tensor, n_recv: int, pair_i: Tensor, pair_j: Tensor,
                rij: Tensor) -> Tensor:
        """[n_recv, (lmax+1)^2, C] for the receiving atoms (pair_i sorted, all < n_recv)."""
        element = self.element(species[:n_recv])
        if rij.shape[0] == 0:  # isolated atoms (training's per-step baseline): the element only
            x = rij.new_zeros(n_recv, self.row_degree.numel() - 1, self.channels)
            return torch.cat([element[:, None].to(rij.dtype), x], dim=1)
        if rij.shape[0] <= self.chunk_edges:
            acc = self._edge_sum(species, pair_i, pair_j, rij, 0, n_recv)
        else:
            acc = torch.cat([
                checkpoint(self._edge_sum, species, pair_i[e0:e1], pair_j[e0:e1], rij[e0:e1],
                           a0, a1 - a0, use_reentrant=False)
                for a0, a1, e0, e1 in self._receiver_chunks(pair_i, n_recv)], dim=0)
        w_aug = torch.cat([self.radial.w_out, self.radial.b_out[None]], dim=0).to(acc.dtype)
        # [hidden + 1, (lmax+1) C] -> one [hidden + 1, C] matrix per degree, then per row
        w_degree = w_aug.view(w_aug.shape[0], self.lmax + 1, self.channels).transpose(0, 1)
        x = degree_matmul(acc, w_degree.index_select(0, self.row_degree))
        # the element embedding goes to row 0 (l = 0); row_degree[:1] is the index [0]
        return x.index_add(1, self.row_degree[:1], element[:, None])


class ChargeSpinEmbedding(nn.Module):
    """Total charge (e) and spin multiplicity of each structure -> an l = 0 feature vector."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, charge: Tensor, spin: Tensor) -> Tensor:
        return self.mlp(torch.stack([charge, spin - 1.0], dim=-1))


def structure_softmax(logits: Tensor, structure: Tensor, n_structures: int,
                      n_owned: int | None = None, exchange: Exchange | None = None) -> Tensor:
    """Softmax of logits [n, k] over the atoms of each structure (structure [n]): weights
    that sum to one per structure and column. It runs over the first n_owned rows (default
    all; the rest are ghost copies, which get their owners' weights) and, through
    `exchange`, over the atoms other ranks own."""
    ranks = exchange if exchange is not None else Exchange()  # base: one rank
    n_owned = logits.shape[0] if n_owned is None else n_owned
    own_logits, own_structure = logits[:n_owned], structure[:n_owned]
    # shift by the structure's max over all ranks (no gradient through it); gathers by
    # index_select (its backward is an index_add, not a sort)
    top = scatter_max(own_logits.detach(), own_structure, n_structures,
                      across=ranks.max_over_ranks)
    a = torch.exp(logits - top.index_select(0, structure))
    total = ranks.sum_over_ranks(torch.zeros_like(top).index_add(0, own_structure,
                                                                 a[:n_owned]))
    return a / total.index_select(0, structure)


class DistributedChargeSpin(nn.Module):
    """Total charge Q (e) and unpaired electrons S - 1 of each structure, spread over its
    atoms: atom i of structure b gets (Q_b w_i, (S_b - 1) u_i) @ value, with w, u a softmax
    over the structure's atoms of logits from their scalar features.

    The weights sum to one per structure, so what a structure receives does not grow with
    its size, and the charge can sit where the chemistry puts it (on the NH3+ of an
    ammonium, learned from the features); a neutral singlet gets only `neutral`, the same
    vector for every atom.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.logits = nn.Linear(channels, 2)
        # zero: a new embedding starts without effect and learns where charge matters
        self.value = nn.Parameter(torch.zeros(2, channels))
        # what every atom gets whatever the charge: zero for a new model; a model converted
        # from the uniform embedding keeps that one's neutral-singlet vector here, so its
        # neutral structures are predicted exactly as before the conversion
        self.neutral = nn.Parameter(torch.zeros(channels))

    def forward(self, scalars: Tensor, structure: Tensor, charge: Tensor, spin: Tensor,
                n_owned: int | None = None, exchange: Exchange | None = None) -> Tensor:
        """scalars [n, C] (l = 0 rows), structure [n] (index into charge/spin [B]) ->
        [n, C] added to the l = 0 rows. The softmax runs over the first n_owned rows (default
        all; the rest are ghost copies) and, through `exchange`, over the atoms other ranks
        own."""
        weights = structure_softmax(self.logits(scalars), structure, charge.shape[0], n_owned,
                                    exchange)
        amount = torch.stack([charge, spin - 1.0], dim=-1).index_select(0, structure) * weights
        return self.neutral + amount @ self.value
