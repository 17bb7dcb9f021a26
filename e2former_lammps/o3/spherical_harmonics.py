"""Real spherical harmonics up to l = 2 in e3nn order and "component" normalisation.

Order within l: m = -l..l. For l = 1 the rows are (x, y, z), so y is the m = 0 axis
(the pole). Component normalisation: sum_m Y_lm(r_hat)^2 = 2l + 1 for a unit vector.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

SQRT3 = math.sqrt(3.0)
SQRT5 = math.sqrt(5.0)
SQRT15 = math.sqrt(15.0)


def sh_l1(r_hat: Tensor) -> Tensor:
    """Y^1 of unit vectors [..., 3] -> [..., 3] (x, y, z)."""
    return SQRT3 * r_hat


def sh_l2(r_hat: Tensor) -> Tensor:
    """Y^2 of unit vectors [..., 3] -> [..., 5] in e3nn order (m = -2..2).

    Homogeneous quadratic in r_hat; callers rely on that to build Wigner matrices.
    """
    x, y, z = r_hat.unbind(-1)
    return torch.stack(
        [
            SQRT15 * x * z,
            SQRT15 * x * y,
            SQRT5 * (y * y - 0.5 * (x * x + z * z)),
            SQRT15 * y * z,
            0.5 * SQRT15 * (z * z - x * x),
        ],
        dim=-1,
    )


def spherical_harmonics(r_hat: Tensor, lmax: int) -> Tensor:
    """All Y_l for l = 0..lmax (lmax <= 2), concatenated: [..., (lmax+1)^2]."""
    if not 0 <= lmax <= 2:
        raise ValueError(f"spherical_harmonics supports lmax 0..2, got {lmax}")
    parts = [torch.ones_like(r_hat[..., :1])]
    if lmax >= 1:
        parts.append(sh_l1(r_hat))
    if lmax >= 2:
        parts.append(sh_l2(r_hat))
    return torch.cat(parts, dim=-1)
