"""Equivariant RMS norm (E2Former / EquiformerV2 style)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..o3 import row_degrees


class EquivariantRMSNorm(nn.Module):
    """Centre the l = 0 channels, divide every degree by one RMS per atom, scale per (l, c).

    The RMS is taken over channels and m for each l, then averaged over l, so every degree
    contributes equally whatever its number of components. Written with per-row constants
    instead of per-degree slices: a slice's backward fills a whole feature-sized zero tensor.
    """

    def __init__(self, channels: int, lmax: int, eps: float = 1e-6):
        super().__init__()
        self.lmax = lmax
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        degree = row_degrees(lmax)
        self.register_buffer("row_degree", degree, persistent=False)
        # mean over the 2l+1 rows of each degree, then over the lmax+1 degrees (as divisors:
        # integers stay exact when the model changes dtype, 1/9 in float32 would not)
        self.register_buffer("row_count", ((2 * degree + 1) * (lmax + 1)).to(
            torch.get_default_dtype()), persistent=False)
        self.register_buffer("row0", (degree == 0).to(torch.get_default_dtype())[:, None],
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(dim=-1, keepdim=True) * self.row0
        ms = (x.pow(2).mean(dim=-1) / self.row_count).sum(-1)
        inv = torch.rsqrt(ms + self.eps)[:, None, None]
        return x * self.scale[self.row_degree] * inv + self.row0 * self.bias
