"""Gated equivariant feed-forward: SO3Linear -> gate -> SO3Linear."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..o3 import row_degrees
from .linear import SO3Linear


def _gate_rows(gates: Tensor, row_degree: Tensor) -> Tensor:
    """[N, lmax, H] gates (one set per l > 0) -> [N, rows, H] (row r: set degree(r); l = 0
    rows get ones, which the activation does not use)."""
    return torch.cat([torch.ones_like(gates[:, :1]), gates], dim=1).index_select(1, row_degree)


class _GatedActivation(torch.autograd.Function):
    """SiLU on the l = 0 rows, h * gate elsewhere, keeping only h and the small gates.

    Autograd on the plain formula also keeps the gates spread over all rows (a feature-sized
    [N, rows, H] tensor per block); this rebuilds it in the backward. The backward is written
    in differentiable operations, so a second derivative (force-loss training) is exact.
    """

    @staticmethod
    def forward(ctx, h: Tensor, gates: Tensor, row_degree: Tensor, row0: Tensor) -> Tensor:
        ctx.save_for_backward(h, gates, row_degree, row0)
        return torch.where(row0, nn.functional.silu(h), h * _gate_rows(gates, row_degree))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, gates, row_degree, row0 = ctx.saved_tensors
        sig = torch.sigmoid(h)
        grad_h = torch.where(row0, grad_out * sig * (1 + h * (1 - sig)),
                             grad_out * _gate_rows(gates, row_degree))
        if not ctx.needs_input_grad[1]:
            return grad_h, None, None, None
        per_row = (grad_out * h).masked_fill(row0, 0)
        grad_sets = torch.zeros(h.shape[0], gates.shape[1] + 1, h.shape[2], dtype=h.dtype,
                                device=h.device).index_add(1, row_degree, per_row)
        return grad_h, grad_sets[:, 1:], None, None


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
        gates = torch.sigmoid(self.gates(x[:, 0])).view(x.shape[0], self.lmax, self.hidden)
        return self.down(_GatedActivation.apply(h, gates, self.row_degree, self.row0))
