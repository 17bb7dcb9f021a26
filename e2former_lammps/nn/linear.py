"""SO(3)-equivariant linear map: one C_in x C_out matrix per degree l, bias on l = 0 only."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def degree_matmul(x: Tensor, l: int, weight: Tensor) -> Tensor:
    """x[:, l^2:(l+1)^2] @ weight for x [N, rows, C_in]: [N, 2l+1, C_out].

    As one [N (2l+1), C_in] x [C_in, C_out] product: the row slice is not contiguous, and
    `slice @ weight` then runs as N batched tiny products (measured on the H100: ~35% of a
    10k-atom step went to that bmm).
    """
    rows = x[:, l * l:(l + 1) ** 2]
    out = rows.reshape(-1, rows.shape[-1]) @ weight
    return out.view(x.shape[0], 2 * l + 1, weight.shape[-1])  # explicit: N may be 0


class SO3Linear(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, lmax: int, bias: bool = True):
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(
            torch.randn(lmax + 1, in_channels, out_channels) / math.sqrt(in_channels)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """x [N, (lmax+1)^2, C_in] -> [N, (lmax+1)^2, C_out]."""
        out = torch.cat(
            [degree_matmul(x, l, self.weight[l]) for l in range(self.lmax + 1)], dim=1
        )
        if self.bias is not None:
            out = torch.cat([out[:, :1] + self.bias, out[:, 1:]], dim=1)
        return out
