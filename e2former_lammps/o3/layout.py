"""Row layout of equivariant features [..., (lmax+1)^2, C]: row l^2 + m belongs to degree l."""
from __future__ import annotations

import torch
from torch import Tensor


def row_degrees(lmax: int) -> Tensor:
    """Degree of each row [(lmax+1)^2] (int64): [0, 1, 1, 1, 2, 2, 2, 2, 2] for lmax 2."""
    return torch.repeat_interleave(torch.arange(lmax + 1), 2 * torch.arange(lmax + 1) + 1)
