"""Per-edge small matrix products in PyTorch: the reference of the Triton kernels.

a [E, M, K] (a Wigner-D block, M, K <= 2 lmax + 1) times b [E, K, C] (an edge's feature
rows): torch runs them as one batched GEMM, whose tiles are far larger than M = 5 rows.
"""
from __future__ import annotations

from torch import Tensor


def edge_matmul_reference(a: Tensor, b: Tensor) -> Tensor:
    """[E, M, K] @ [E, K, C] -> [E, M, C]."""
    return a @ b


def edge_outer_reference(a: Tensor, b: Tensor) -> Tensor:
    """[E, M, C] @ [E, K, C]^T -> [E, M, K]: the gradient of a rotation with respect to D."""
    return a @ b.transpose(-1, -2)
