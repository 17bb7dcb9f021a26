"""Sum over each receiver's edges of per-edge outer products (the edge-degree embedding's
sum_j Y(r_hat_ij) (x) [h_ij, 1]): reference and Triton behind one interface.

`receiver_outer_sum(a, b, pair_i, n_recv)` = out_i = sum_{e: pair_i[e] = i} a_e (x) b_e,
[n_recv, M, K], differentiable to any order. The reference builds the [E, M, K] products and
scatters them; the kernel sums them per receiver in registers (pair_i sorted: CSR), so
nothing per edge is written but the inputs' gradients. impl "auto": Triton for float32 CUDA
tensors unless E2FORMER_RECEIVER_SUM=reference; the reference elsewhere.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..launch import kernel_or_reference, on_device_of
from .reference import outer_sum_reference


def resolve_impl(impl: str, x: Tensor) -> str:
    return kernel_or_reference("receiver_outer_sum", impl, x, "E2FORMER_RECEIVER_SUM",
                               dtypes=(torch.float32,))


def receiver_outer_sum(a: Tensor, b: Tensor, pair_i: Tensor, n_recv: int,
                       impl: str = "auto") -> Tensor:
    """a [E, M], b [E, K], pair_i [E] (receivers, sorted ascending, < n_recv) ->
    [n_recv, M, K]."""
    if resolve_impl(impl, a) == "triton":
        from ..attention.common import receiver_rowptr
        from .triton_receiver_sum import OuterSum

        with on_device_of(a):
            return OuterSum.apply(a, b, receiver_rowptr(pair_i, n_recv))
    return outer_sum_reference(a, b, pair_i, n_recv)
