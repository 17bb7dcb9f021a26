"""Equivariant RMS norm (E2Former / EquiformerV2 style)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..o3 import row_degrees


def _normalise(x: Tensor, row_divisor: Tensor, row0: Tensor, eps: float
               ) -> tuple[Tensor, Tensor]:
    """(x_hat [N, R, C], inv [N, 1, 1]): l = 0 rows centred over channels, then every row
    divided by the atom's RMS, the sum over rows r of sum_c x_rc^2 / row_divisor[r]."""
    xc = x - x.mean(dim=-1, keepdim=True) * row0
    inv = torch.rsqrt((xc.square().sum(-1) / row_divisor).sum(-1) + eps)[:, None, None]
    return xc * inv, inv


class _RMSNormFunction(torch.autograd.Function):
    """y = x_hat * scale_rows + row0 * bias, keeping only x for the backward.

    Autograd on the plain formula keeps two feature-sized tensors per norm (the centred
    input and its scaled copy, 2 x 9 C floats per atom); this keeps the input alone and
    recomputes x_hat in the backward. The backward is written in differentiable operations
    on that input, so a second derivative (training on forces) is exact.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale_rows: Tensor, bias: Tensor, row_divisor: Tensor,
                row0: Tensor, eps: float) -> Tensor:
        x_hat, _ = _normalise(x, row_divisor, row0, eps)
        ctx.save_for_backward(x, scale_rows, row_divisor, row0)
        ctx.eps = eps
        return x_hat * scale_rows + row0 * bias

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, scale_rows, row_divisor, row0 = ctx.saved_tensors
        x_hat, inv = _normalise(x, row_divisor, row0, ctx.eps)
        g = grad_y * scale_rows  # dL/dx_hat
        # d x_hat_rc / d xc_r'c': inv * (delta - x_hat_rc * x_hat_r'c' / row_divisor[r])
        dot = (g * x_hat).sum((1, 2))[:, None, None]
        grad_xc = inv * (g - x_hat / row_divisor[:, None] * dot)
        grad_x = grad_xc - grad_xc.mean(dim=-1, keepdim=True) * row0
        # parameter gradients only when asked for (not in MD, where the weights are frozen)
        grad_scale_rows = (grad_y * x_hat).sum(0) if ctx.needs_input_grad[1] else None
        grad_bias = (grad_y.sum(0) * row0).sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_scale_rows, grad_bias, None, None, None


class EquivariantRMSNorm(nn.Module):
    """Centre the l = 0 channels, divide every degree by one RMS per atom, scale per (l, c).

    The RMS is taken over channels and m for each l, then averaged over l, so every degree
    contributes equally whatever its number of components. Written with per-row constants
    instead of per-degree slices (a slice's backward fills a whole feature-sized zero
    tensor), and with its own backward that keeps only the input (kernels/NOTES.md E19).
    """

    def __init__(self, channels: int, lmax: int, eps: float = 1e-6):
        super().__init__()
        self.lmax = lmax
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        degree = row_degrees(lmax)
        self.register_buffer("row_degree", degree, persistent=False)
        # row r's share of the mean square: mean over the C channels and the 2l+1 rows of its
        # degree, then over the lmax+1 degrees (as divisors: integers stay exact when the
        # model changes dtype, 1/2304 in float32 would not)
        self.register_buffer("row_divisor", (channels * (2 * degree + 1) * (lmax + 1)).to(
            torch.get_default_dtype()), persistent=False)
        self.register_buffer("row0", (degree == 0).to(torch.get_default_dtype())[:, None],
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return _RMSNormFunction.apply(x, self.scale.index_select(0, self.row_degree), self.bias,
                                      self.row_divisor, self.row0, self.eps)
