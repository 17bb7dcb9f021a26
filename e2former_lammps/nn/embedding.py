"""Initial node features: edge-degree embedding, element embedding, charge/spin embedding."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from e2former_lammps.o3 import row_degrees, spherical_harmonics
from kernels.attention.common import edge_geometry

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

    # Edges per chunk: the per-edge tensor [E, (lmax+1)^2, hidden + 1] is built a chunk at a
    # time and recomputed in backward, so memory stays O(atoms) for large systems.
    chunk_edges: int = 1 << 18

    def _edge_sum(self, species: Tensor, pair_i: Tensor, pair_j: Tensor, rij: Tensor,
                  first: int, n: int) -> Tensor:
        """sum_j p Y_lm [h_j, 1] / avg_degree for receivers first..first+n: [n, rows, hidden+1]."""
        dist, r_hat, env = edge_geometry(rij, self.cutoff)
        hidden = self.radial.hidden(dist, species[pair_i], species[pair_j])
        hidden = torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=1)
        sh = spherical_harmonics(r_hat, self.lmax) * (env * self.inv_avg_degree)[:, None]
        out = torch.zeros(n, sh.shape[1], hidden.shape[1], dtype=rij.dtype, device=rij.device)
        return out.index_add(0, pair_i - first, sh[:, :, None] * hidden[:, None, :])

    def forward(self, species: Tensor, n_recv: int, pair_i: Tensor, pair_j: Tensor,
                rij: Tensor) -> Tensor:
        """[n_recv, (lmax+1)^2, C] for the receiving atoms."""
        n_edges = rij.shape[0]
        if n_edges <= self.chunk_edges:
            acc = self._edge_sum(species, pair_i, pair_j, rij, 0, n_recv)
        else:
            # Receivers are sorted, so each chunk touches one contiguous range of them.
            rows, width = (self.lmax + 1) ** 2, self.radial.w_rbf.shape[1] + 1
            acc = torch.zeros(n_recv, rows, width, dtype=rij.dtype, device=rij.device)
            for start in range(0, n_edges, self.chunk_edges):
                sl = slice(start, start + self.chunk_edges)
                first, last = int(pair_i[sl][0]), int(pair_i[sl][-1])
                part = checkpoint(self._edge_sum, species, pair_i[sl], pair_j[sl], rij[sl],
                                  first, last + 1 - first, use_reentrant=False)
                acc = torch.cat([acc[:first], acc[first:last + 1] + part, acc[last + 1:]], dim=0)
        w_aug = torch.cat([self.radial.w_out, self.radial.b_out[None]], dim=0).to(acc.dtype)
        # [hidden + 1, (lmax+1) C] -> one [hidden + 1, C] matrix per degree, then per row
        w_degree = w_aug.view(w_aug.shape[0], self.lmax + 1, self.channels).transpose(0, 1)
        x = degree_matmul(acc, w_degree[self.row_degree])
        # the element embedding goes to row 0 (l = 0); row_degree[:1] is the index [0]
        return x.index_add(1, self.row_degree[:1], self.element(species[:n_recv])[:, None])


class ChargeSpinEmbedding(nn.Module):
    """Total charge (e) and spin multiplicity of each structure -> an l = 0 feature vector."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, charge: Tensor, spin: Tensor) -> Tensor:
        return self.mlp(torch.stack([charge, spin - 1.0], dim=-1))
