"""Per-edge small matrix products in Triton, differentiable to any order.

One program takes BLOCK_E edges and one block of at most 64 channels (the outer product loops
over the channel blocks); the M x K products are unrolled, so a [E, 5, 5] @ [E, 5, 64]
rotation reads each operand once and is bound by memory bandwidth, where a batched GEMM pads
M = 5 to its tile height. Wider channel blocks spill registers: all 256 channels in one
program made the 5 x 5 product slower than torch (kernels/NOTES.md E26). Strides are
arguments: a transposed Wigner block (D^T) is read in place.

Autograd: out = a @ b has d a = g @ b^T (edge_outer) and d b = a^T @ g (edge_matmul); the
outer product's gradients are edge_matmuls again. The backward calls the differentiable
ops, so double backward (a force loss) works.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_E = 32
MAX_BLOCK_C = 64


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, out_ptr, n_edges, n_channels,
                   sa_e, sa_m, sa_k, sb_e, sb_k, sb_c, so_e, so_m, so_c,
                   M: tl.constexpr, K: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    e_ok = e < n_edges
    ok = e_ok[:, None] & (c < n_channels)[None, :]
    e = e.to(tl.int64)
    for m in tl.static_range(M):
        acc = tl.zeros((BLOCK_E, BLOCK_C), dtype=out_ptr.dtype.element_ty)
        for k in tl.static_range(K):
            a = tl.load(a_ptr + e * sa_e + m * sa_m + k * sa_k, mask=e_ok, other=0.0)
            b = tl.load(b_ptr + e[:, None] * sb_e + k * sb_k + c[None, :] * sb_c, mask=ok,
                        other=0.0)
            acc += a[:, None] * b
        tl.store(out_ptr + e[:, None] * so_e + m * so_m + c[None, :] * so_c, acc, mask=ok)


@triton.jit
def _outer_kernel(a_ptr, b_ptr, out_ptr, n_edges, n_channels,
                  sa_e, sa_m, sa_c, sb_e, sb_k, sb_c, so_e, so_m, so_k,
                  M: tl.constexpr, K: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < n_edges
    e = e.to(tl.int64)
    for m in tl.static_range(M):
        for k in tl.static_range(K):
            acc = tl.zeros((BLOCK_E,), dtype=out_ptr.dtype.element_ty)
            for c0 in range(0, n_channels, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                ok = e_ok[:, None] & (c < n_channels)[None, :]
                a = tl.load(a_ptr + e[:, None] * sa_e + m * sa_m + c[None, :] * sa_c,
                            mask=ok, other=0.0)
                b = tl.load(b_ptr + e[:, None] * sb_e + k * sb_k + c[None, :] * sb_c,
                            mask=ok, other=0.0)
                acc += tl.sum(a * b, axis=1)
            tl.store(out_ptr + e * so_e + m * so_m + k * so_k, acc, mask=e_ok)


def _launch(kernel, a: Tensor, b: Tensor, out: Tensor, n_channels: int, m: int, k: int,
            channel_blocks: bool) -> Tensor:
    """channel_blocks: one program per (edge block, channel block), else per edge block."""
    n_edges = out.shape[0]
    if n_edges:
        block_c = min(MAX_BLOCK_C, triton.next_power_of_2(max(n_channels, 1)))
        grid = (triton.cdiv(n_edges, BLOCK_E),
                triton.cdiv(n_channels, block_c) if channel_blocks else 1)
        kernel[grid](a, b, out, n_edges, n_channels, *a.stride(), *b.stride(), *out.stride(),
                     M=m, K=k, BLOCK_E=BLOCK_E, BLOCK_C=block_c)
    return out


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    e, m, k = a.shape
    out = torch.empty(e, m, b.shape[2], dtype=b.dtype, device=b.device)
    return _launch(_matmul_kernel, a, b, out, b.shape[2], m, k, channel_blocks=True)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    e, m, c = a.shape
    out = torch.empty(e, m, b.shape[1], dtype=a.dtype, device=a.device)
    return _launch(_outer_kernel, a, b, out, c, m, b.shape[1], channel_blocks=False)


class EdgeProduct(torch.autograd.Function):
    """outer=False: [E, M, K] @ [E, K, C] -> [E, M, C]; outer=True: [E, M, C] @ [E, K, C]^T
    -> [E, M, K]. Each one's gradients are products of the two kinds again."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, outer: bool) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.outer = outer
        return _outer(a, b) if outer else _matmul(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        if ctx.outer:  # out = a b^T: d a = g b, d b = g^T a
            grad_a = EdgeProduct.apply(grad, b, False) if need_a else None
            grad_b = EdgeProduct.apply(grad.transpose(1, 2), a, False) if need_b else None
        else:  # out = a b: d a = g b^T, d b = a^T g
            grad_a = EdgeProduct.apply(grad, b, True) if need_a else None
            grad_b = EdgeProduct.apply(a.transpose(1, 2), grad, False) if need_b else None
        return grad_a, grad_b, None
