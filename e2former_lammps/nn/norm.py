"""Equivariant RMS norm (E2Former / EquiformerV2 style)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class EquivariantRMSNorm(nn.Module):
    """Centre the l = 0 channels, divide every degree by one RMS per atom, scale per (l, c).

    The RMS is taken over channels and m for each l, then averaged over l, so every degree
    contributes equally whatever its number of components.
    """

    def __init__(self, channels: int, lmax: int, eps: float = 1e-6):
        super().__init__()
        self.lmax = lmax
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        l0 = x[:, :1] - x[:, :1].mean(dim=-1, keepdim=True)
        x = torch.cat([l0, x[:, 1:]], dim=1)
        ms = torch.stack(
            [x[:, l * l:(l + 1) ** 2].pow(2).mean(dim=(1, 2)) for l in range(self.lmax + 1)], -1
        ).mean(-1)
        inv = torch.rsqrt(ms + self.eps)[:, None, None]
        out = torch.cat(
            [x[:, l * l:(l + 1) ** 2] * self.scale[l] for l in range(self.lmax + 1)], dim=1
        ) * inv
        return torch.cat([out[:, :1] + self.bias, out[:, 1:]], dim=1)
