"""Gated equivariant feed-forward: SO3Linear -> gate -> SO3Linear."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..o3 import row_degrees
from .linear import SO3Linear


class GatedFeedForward(nn.Module):
    """l = 0 through SiLU; each l > 0 scaled by the sigmoid of its own extra l = 0 channels."""

    def __init__(self, channels: int, hidden: int, lmax: int):
        super().__init__()
        self.lmax, self.hidden = lmax, hidden
        self.up = SO3Linear(channels, hidden, lmax)
        self.gates = nn.Linear(channels, lmax * hidden)
        self.down = SO3Linear(hidden, channels, lmax)
        degree = row_degrees(lmax)
        # row r of the hidden features is gated by gate set degree(r) (set 0: ones, unused)
        self.register_buffer("row_degree", degree, persistent=False)
        self.register_buffer("row0", (degree == 0)[:, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        gates = torch.sigmoid(self.gates(x[:, 0])).view(-1, self.lmax, self.hidden)
        gates = torch.cat([torch.ones_like(gates[:, :1]), gates], dim=1)[:, self.row_degree]
        return self.down(torch.where(self.row0, nn.functional.silu(h), h * gates))
