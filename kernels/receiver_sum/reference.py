"""Sums over each receiver's edges of per-edge outer products, in PyTorch: the reference of
the Triton kernels (triton_receiver_sum.py).

    outer_sum:  out_i = sum_{e: pair_i[e] = i} a_e (x) b_e          [n_recv, M, K]
    spread:     (G_{i(e)} b_e, G_{i(e)}^T a_e) per edge              ([E, M], [E, K])
spread is outer_sum's gradient (d a_e = G_{i(e)} b_e, d b_e = G_{i(e)}^T a_e for G = dL/dout);
both materialise an [E, M, K] tensor, which the kernels avoid.
"""
from __future__ import annotations

from torch import Tensor


def outer_sum_reference(a: Tensor, b: Tensor, pair_i: Tensor, n_recv: int) -> Tensor:
    """a [E, M], b [E, K], pair_i [E] -> [n_recv, M, K]."""
    out = a.new_zeros(n_recv, a.shape[1], b.shape[1])
    return out.index_add(0, pair_i, a[:, :, None] * b[:, None, :])


def spread_reference(g: Tensor, a: Tensor, b: Tensor, pair_i: Tensor) -> tuple[Tensor, Tensor]:
    """g [n_recv, M, K], a [E, M], b [E, K] -> (g_{i(e)} b_e [E, M], g_{i(e)}^T a_e [E, K])."""
    g_e = g.index_select(0, pair_i)
    return (g_e @ b[:, :, None]).squeeze(-1), (a[:, None, :] @ g_e).squeeze(1)
