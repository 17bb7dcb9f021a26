"""Real-basis Clebsch-Gordan tensors (e3nn order), derived numerically from the Wigner matrices.

C[l1, l2, l3] is the invariant tensor of D^l1 (x) D^l2 (x) D^l3: the null space of
(D1 (x) D2 (x) D3 - I) over a few random rotations (one-dimensional when the triangle
rule holds). Normalised to unit Frobenius norm, sign fixed by its largest entry.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from .wigner import wigner_d


def _random_rotations(n: int, generator: torch.Generator) -> Tensor:
    q = torch.randn(n, 4, dtype=torch.float64, generator=generator)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )


@functools.lru_cache(maxsize=None)
def clebsch_gordan(l1: int, l2: int, l3: int) -> Tensor:
    """Dense real CG tensor [2l1+1, 2l2+1, 2l3+1] in float64 (zeros if the triangle rule fails)."""
    dims = (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        return torch.zeros(dims, dtype=torch.float64)
    rots = _random_rotations(4, torch.Generator().manual_seed(1234))
    blocks = []
    n = dims[0] * dims[1] * dims[2]
    for rot in rots:
        k = torch.kron(torch.kron(wigner_d(rot, l1), wigner_d(rot, l2)), wigner_d(rot, l3))
        blocks.append(k - torch.eye(n, dtype=torch.float64))
    _, svals, vh = torch.linalg.svd(torch.cat(blocks, 0))
    null = vh[svals.abs() < 1e-9] if svals.numel() == n else vh[-1:]
    if null.shape[0] != 1:
        raise RuntimeError(f"CG({l1},{l2},{l3}): null space of dimension {null.shape[0]}")
    c = null[0]
    c = c / c.norm()
    # Deterministic sign: the first entry whose size is (within rounding) the largest is positive.
    idx = int(torch.nonzero(c.abs() > c.abs().max() - 1e-9)[0])
    c = c * torch.sign(c[idx])
    c[c.abs() < 1e-12] = 0.0
    return c.reshape(dims)
