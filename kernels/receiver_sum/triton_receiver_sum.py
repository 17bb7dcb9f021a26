"""Sums over each receiver's edges of per-edge outer products, in Triton (reference.py has the
formulas), differentiable to any order.

One program per receiver walks its edges (CSR rowptr) in tiles of BLOCK_E:
  * _outer_sum_kernel: acc [M, K] += a_tile^T b_tile (tl.dot), one store per receiver;
  * _spread_kernel: G_i [M, K] read once, then per tile a_grad = b_tile G_i^T, b_grad = a_tile G_i.
Autograd: outer_sum's gradient is spread; spread's is (outer_sum(g1, b) + outer_sum(a, g2),
spread(G, g1, g2)), so the pair is closed under differentiation (a force loss trains through
it) and no [E, M, K] tensor is ever built.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..attention.triton_forward import _pow2, dot_precision

BLOCK_E = 16  # tl.dot needs >= 16 rows


@triton.jit
def _tile(ptr, offs_e, emask, n_cols, COLS_P: tl.constexpr):
    """Rows offs_e of a row-major [E, n_cols] tensor, zero-padded to COLS_P columns."""
    cols = tl.arange(0, COLS_P)
    return tl.load(ptr + offs_e.to(tl.int64)[:, None] * n_cols + cols[None, :],
                   mask=emask[:, None] & (cols < n_cols)[None, :], other=0.0)


@triton.jit
def _receiver_rows(ptr, i, n_m, n_k, M_P: tl.constexpr, K_P: tl.constexpr):
    """Pointers and mask of receiver i's [M, K] block of a [n_recv, M, K] tensor."""
    offs_m = tl.arange(0, M_P)
    offs_k = tl.arange(0, K_P)
    p = ptr + i.to(tl.int64) * (n_m * n_k) + offs_m[:, None] * n_k + offs_k[None, :]
    return p, (offs_m < n_m)[:, None] & (offs_k < n_k)[None, :]


@triton.jit
def _outer_sum_kernel(a_ptr, b_ptr, rowptr_ptr, out_ptr, n_m, n_k, M_P: tl.constexpr,
                      K_P: tl.constexpr, BLOCK_E: tl.constexpr, DOT: tl.constexpr):
    i = tl.program_id(0)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    acc = tl.zeros([M_P, K_P], dtype=out_ptr.dtype.element_ty)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        a = _tile(a_ptr, offs_e, emask, n_m, M_P)
        b = _tile(b_ptr, offs_e, emask, n_k, K_P)
        acc += tl.dot(tl.trans(a), b, input_precision=DOT)
    p, mask = _receiver_rows(out_ptr, i, n_m, n_k, M_P, K_P)
    tl.store(p, acc, mask=mask)


@triton.jit
def _spread_kernel(g_ptr, a_ptr, b_ptr, rowptr_ptr, a_out_ptr, b_out_ptr, n_m, n_k,
                   M_P: tl.constexpr, K_P: tl.constexpr, BLOCK_E: tl.constexpr,
                   DOT: tl.constexpr):
    i = tl.program_id(0)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    p, mask = _receiver_rows(g_ptr, i, n_m, n_k, M_P, K_P)
    g = tl.load(p, mask=mask, other=0.0)
    cols_m = tl.arange(0, M_P)
    cols_k = tl.arange(0, K_P)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        rows = offs_e.to(tl.int64)[:, None]
        a = _tile(a_ptr, offs_e, emask, n_m, M_P)
        b = _tile(b_ptr, offs_e, emask, n_k, K_P)
        tl.store(a_out_ptr + rows * n_m + cols_m[None, :],
                 tl.dot(b, tl.trans(g), input_precision=DOT),
                 mask=emask[:, None] & (cols_m < n_m)[None, :])
        tl.store(b_out_ptr + rows * n_k + cols_k[None, :], tl.dot(a, g, input_precision=DOT),
                 mask=emask[:, None] & (cols_k < n_k)[None, :])


def _consts(n_m: int, n_k: int, dtype: torch.dtype) -> dict:
    return dict(M_P=_pow2(n_m, 16), K_P=_pow2(n_k, 16), BLOCK_E=BLOCK_E,
                DOT=dot_precision(dtype))


def _outer_sum(a: Tensor, b: Tensor, rowptr: Tensor) -> Tensor:
    a, b = a.contiguous(), b.contiguous()
    n_recv, n_m, n_k = rowptr.numel() - 1, a.shape[1], b.shape[1]
    out = torch.empty(n_recv, n_m, n_k, dtype=a.dtype, device=a.device)
    if n_recv:
        _outer_sum_kernel[(n_recv,)](a, b, rowptr, out, n_m, n_k,
                                     **_consts(n_m, n_k, a.dtype))
    return out


def _spread(g: Tensor, a: Tensor, b: Tensor, rowptr: Tensor) -> tuple[Tensor, Tensor]:
    g, a, b = g.contiguous(), a.contiguous(), b.contiguous()
    n_recv, n_m, n_k = g.shape
    a_out, b_out = torch.empty_like(a), torch.empty_like(b)
    if n_recv:
        _spread_kernel[(n_recv,)](g, a, b, rowptr, a_out, b_out, n_m, n_k,
                                  **_consts(n_m, n_k, a.dtype))
    return a_out, b_out


class OuterSum(torch.autograd.Function):
    """(a [E, M], b [E, K], rowptr [n_recv + 1]) -> [n_recv, M, K]."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, rowptr: Tensor) -> Tensor:
        ctx.save_for_backward(a, b, rowptr)
        return _outer_sum(a, b, rowptr)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, rowptr = ctx.saved_tensors
        grad_a, grad_b = Spread.apply(grad, a, b, rowptr)
        return grad_a, grad_b, None


class Spread(torch.autograd.Function):
    """(G [n_recv, M, K], a [E, M], b [E, K], rowptr) -> (G_{i(e)} b_e, G_{i(e)}^T a_e)."""

    @staticmethod
    def forward(ctx, g: Tensor, a: Tensor, b: Tensor, rowptr: Tensor):
        ctx.save_for_backward(g, a, b, rowptr)
        return _spread(g, a, b, rowptr)

    @staticmethod
    def backward(ctx, grad_ga: Tensor, grad_gb: Tensor):
        g, a, b, rowptr = ctx.saved_tensors
        # outputs G b and G^T a: d G = g1 (x) b + a (x) g2 per edge, summed per receiver;
        # d b = G^T g1, d a = G g2 (spread again, with (g1, g2) in place of (a, b))
        grad_g = OuterSum.apply(grad_ga, b, rowptr) + OuterSum.apply(a, grad_gb, rowptr)
        grad_a, grad_b = Spread.apply(g, grad_ga, grad_gb, rowptr)
        return grad_g, grad_a, grad_b, None
