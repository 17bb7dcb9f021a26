"""Initial node features: edge-degree embedding, element embedding, charge/spin embedding."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from e2former_lammps.o3 import spherical_harmonics
from kernels.attention.common import edge_geometry

from .radial import EdgeRadialMLP, GaussianBasis


class EdgeDegreeEmbedding(nn.Module):
    """h_i = E(Z_i) on l = 0 + (1 / avg_degree) sum_j p(d_ij) Y_l(r_hat_ij) (x) MLP_l(e_ij)."""

    def __init__(self, basis: GaussianBasis, n_elements: int, channels: int, lmax: int,
                 hidden: int, avg_degree: float, cutoff: float):
        super().__init__()
        self.lmax, self.channels, self.cutoff = lmax, channels, cutoff
        self.inv_avg_degree = 1.0 / avg_degree
        self.element = nn.Embedding(n_elements, channels)
        self.radial = EdgeRadialMLP(basis, n_elements, hidden, (lmax + 1) * channels)
        self.register_buffer(
            "row_degree", torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)]),
            persistent=False,
        )

    # Edges per chunk: the per-edge tensor [E, (lmax+1)^2, C] is built a chunk at a time
    # and recomputed in backward, so memory stays O(atoms) for large systems.
    chunk_edges: int = 1 << 17

    def _edge_sum(self, species: Tensor, pair_i: Tensor, pair_j: Tensor, rij: Tensor,
                  first: int, n: int) -> Tensor:
        """Sum over the given edges for receivers first..first+n: [n, rows, C]."""
        dist, r_hat, env = edge_geometry(rij, self.cutoff)
        radial = self.radial(dist, species[pair_i], species[pair_j])
        radial = radial.view(-1, self.lmax + 1, self.channels)[:, self.row_degree]  # [E, rows, C]
        sh = spherical_harmonics(r_hat, self.lmax) * (env * self.inv_avg_degree)[:, None]
        out = torch.zeros(n, *radial.shape[1:], dtype=rij.dtype, device=rij.device)
        return out.index_add(0, pair_i - first, sh[:, :, None] * radial)

    def forward(self, species: Tensor, n_recv: int, pair_i: Tensor, pair_j: Tensor,
                rij: Tensor) -> Tensor:
        """[n_recv, (lmax+1)^2, C] for the receiving atoms."""
        n_edges = rij.shape[0]
        if n_edges <= self.chunk_edges:
            x = self._edge_sum(species, pair_i, pair_j, rij, 0, n_recv)
        else:
            # Receivers are sorted, so each chunk touches one contiguous range of them.
            rows = (self.lmax + 1) ** 2
            x = torch.zeros(n_recv, rows, self.channels, dtype=rij.dtype, device=rij.device)
            for start in range(0, n_edges, self.chunk_edges):
                sl = slice(start, start + self.chunk_edges)
                first, last = int(pair_i[sl][0]), int(pair_i[sl][-1])
                part = checkpoint(self._edge_sum, species, pair_i[sl], pair_j[sl], rij[sl],
                                  first, last + 1 - first, use_reentrant=False)
                x = torch.cat([x[:first], x[first:last + 1] + part, x[last + 1:]], dim=0)
        l0 = x[:, :1] + self.element(species[:n_recv])[:, None]
        return torch.cat([l0, x[:, 1:]], dim=1)


class ChargeSpinEmbedding(nn.Module):
    """Total charge (e) and spin multiplicity of each structure -> an l = 0 feature vector."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, charge: Tensor, spin: Tensor) -> Tensor:
        return self.mlp(torch.stack([charge, spin - 1.0], dim=-1))
