"""Radial basis (Gaussians on [0, r_c]) and the radial MLP on edge scalars."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels.attention import EdgeRadialWeights
from kernels.attention.common import gaussian_rbf


class GaussianBasis(nn.Module):
    """num_rbf Gaussians with centres evenly on [0, cutoff] Å and width = their spacing."""

    def __init__(self, cutoff: float, num_rbf: int):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_rbf))
        self.width = cutoff / (num_rbf - 1)

    def forward(self, dist: Tensor) -> Tensor:
        return gaussian_rbf(dist, self.centers, self.width)


class EdgeRadialMLP(nn.Module):
    """MLP on e_ij = [rbf(d_ij), E_t(Z_i), E_s(Z_j)]: one hidden SiLU layer, out_features out.

    The first layer is stored as an rbf matrix plus per-element rows (the element
    embeddings already projected), which is the same linear map on the concatenation and
    what the fused kernel consumes.
    """

    def __init__(self, basis: GaussianBasis, n_elements: int, hidden: int, out_features: int):
        super().__init__()
        self.basis = basis
        num_rbf = basis.centers.numel()
        self.w_rbf = nn.Parameter(torch.randn(num_rbf, hidden) / num_rbf**0.5)
        self.emb_recv = nn.Parameter(torch.randn(n_elements, hidden) * 0.5)
        self.emb_send = nn.Parameter(torch.randn(n_elements, hidden) * 0.5)
        self.w_out = nn.Parameter(torch.randn(hidden, out_features) / hidden**0.5)
        self.b_out = nn.Parameter(torch.zeros(out_features))

    def hidden(self, dist: Tensor, species_i: Tensor, species_j: Tensor) -> Tensor:
        """The hidden layer [E, hidden]: SiLU(rbf(d) W_rbf + E_r[Z_i] + E_s[Z_j])."""
        return self.weights().hidden(self.basis(dist), species_i, species_j)

    def forward(self, dist: Tensor, species_i: Tensor, species_j: Tensor) -> Tensor:
        return self.hidden(dist, species_i, species_j) @ self.w_out + self.b_out

    def weights(self) -> EdgeRadialWeights:
        return EdgeRadialWeights(
            rbf_centers=self.basis.centers, rbf_width=self.basis.width, w_rbf=self.w_rbf,
            emb_recv=self.emb_recv, emb_send=self.emb_send, w_out=self.w_out, b_out=self.b_out,
            rbf_spacing=self.basis.width,  # linspace centres, width = spacing
        )
