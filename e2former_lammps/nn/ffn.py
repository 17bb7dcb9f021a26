"""Gated equivariant feed-forward: SO3Linear -> gate -> SO3Linear."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .linear import SO3Linear


class GatedFeedForward(nn.Module):
    """l = 0 through SiLU; each l > 0 scaled by the sigmoid of its own extra l = 0 channels."""

    def __init__(self, channels: int, hidden: int, lmax: int):
        super().__init__()
        self.lmax, self.hidden = lmax, hidden
        self.up = SO3Linear(channels, hidden, lmax)
        self.gates = nn.Linear(channels, lmax * hidden)
        self.down = SO3Linear(hidden, channels, lmax)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        gates = torch.sigmoid(self.gates(x[:, 0])).view(-1, self.lmax, self.hidden)
        parts = [nn.functional.silu(h[:, :1])]
        for l in range(1, self.lmax + 1):
            parts.append(h[:, l * l:(l + 1) ** 2] * gates[:, l - 1, None])
        return self.down(torch.cat(parts, dim=1))
