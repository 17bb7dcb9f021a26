"""Per-edge small matrix products (Wigner-D rotations of edge features): reference and
Triton behind one interface.

`edge_matmul(a, b)` = a @ b for a [E, M, K], b [E, K, C]; `edge_outer(a, b)` = a @ b^T for
a [E, M, C], b [E, K, C]. impl "auto" picks Triton for CUDA tensors (a batch-128 training
step 1.5x faster on the H200: kernels/NOTES.md E26) unless E2FORMER_EDGE_MATMUL=reference
is set, and the reference on the CPU.
"""
from __future__ import annotations

from torch import Tensor

from ..launch import kernel_or_reference, on_device_of
from .reference import edge_matmul_reference, edge_outer_reference


def resolve_impl(impl: str, x: Tensor) -> str:
    return kernel_or_reference("edge_matmul", impl, x, "E2FORMER_EDGE_MATMUL")


def edge_matmul(a: Tensor, b: Tensor, impl: str = "auto") -> Tensor:
    """[E, M, K] @ [E, K, C] -> [E, M, C], differentiable to any order."""
    if resolve_impl(impl, b) == "triton":
        from .triton_edge_matmul import EdgeProduct

        with on_device_of(a):
            return EdgeProduct.apply(a, b, False)
    return edge_matmul_reference(a, b)


def edge_outer(a: Tensor, b: Tensor, impl: str = "auto") -> Tensor:
    """[E, M, C] @ [E, K, C]^T -> [E, M, K], differentiable to any order."""
    if resolve_impl(impl, a) == "triton":
        from .triton_edge_matmul import EdgeProduct

        with on_device_of(a):
            return EdgeProduct.apply(a, b, True)
    return edge_outer_reference(a, b)
