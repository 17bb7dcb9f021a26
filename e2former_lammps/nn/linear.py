"""SO(3)-equivariant linear map: one C_in x C_out matrix per degree l, bias on l = 0 only."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..o3 import row_degrees


def degree_matmul(x: Tensor, weight_rows: Tensor, bias_rows: Tensor | None = None) -> Tensor:
    """x [N, rows, C_in] times weight_rows [rows, C_in, C_out] row by row (+ bias_rows
    [rows, C_out]): [N, rows, C_out].

    One batched GEMM over the rows: the view x.transpose(0, 1) [rows, N, C_in] has unit
    column stride, so BLAS reads it in place. (Slicing rows per degree instead made copies,
    and `slice @ weight` on a non-contiguous slice ran N tiny products: ~35% of a 10k-atom
    step on the H100, kernels/NOTES.md E9.)
    """
    xt = x.transpose(0, 1)
    out = (torch.bmm(xt, weight_rows) if bias_rows is None
           else torch.baddbmm(bias_rows[:, None, :], xt, weight_rows))
    return out.transpose(0, 1).contiguous()


class SO3Linear(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, lmax: int, bias: bool = True):
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(
            torch.randn(lmax + 1, in_channels, out_channels) / math.sqrt(in_channels)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("row_degree", row_degrees(lmax), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, (lmax+1)^2, C_in] -> [N, (lmax+1)^2, C_out]."""
        bias_rows = None
        if self.bias is not None:
            bias_rows = torch.cat([self.bias[None], self.bias.new_zeros(
                self.row_degree.numel() - 1, self.bias.numel())])
        return degree_matmul(x, self.weight.index_select(0, self.row_degree), bias_rows)
