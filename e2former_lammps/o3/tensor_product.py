"""The first-order equivariant tensor product TP(v, r_hat) and its EAAS (SO(3) -> SO(2)) form.

TP couples a feature v of degree l1 with the direction Y^1(r_hat) into degree l3. The paths
kept for lmax = 2 are 0->1, 1->0, 1->1, 1->2, 2->1, 2->2. Each path is scaled by
sqrt(2 l3 + 1) so unit-variance inputs give unit-variance outputs.

EAAS: rotate into the frame where r_hat is the pole (y). There Y^1 = sqrt(3) * (0, 1, 0), so
the CG contraction keeps one input m per output m: output row m3 = scale[m3] * input row
src[m3] (scale 0 where the product vanishes). So
    TP(v, r_hat) = D^l3(R)^T  S(D^l1(R) v),   R r_hat = y_hat,
with S a gather and a per-row scale: the "parity re-indexing".
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .clebsch_gordan import clebsch_gordan
from .spherical_harmonics import sh_l1

POLE_M_INDEX = 1  # index of m = 0 (the y row) within l = 1


def tp_paths(lmax: int) -> tuple[tuple[int, int], ...]:
    """(l1, l3) pairs coupled through l2 = 1, all degrees <= lmax, in a fixed order."""
    return tuple(
        (l1, l3)
        for l1 in range(lmax + 1)
        for l3 in range(lmax + 1)
        if abs(l1 - l3) <= 1 <= l1 + l3
    )


def path_rows(lmax: int) -> dict[int, list[tuple[int, int, int]]]:
    """For each l3: list of (path index, first output row, l1) in the path-major row layout.

    The tensor product output is stored as [..., n_rows, C] with the 2 l3 + 1 rows of each
    path one after another, paths in `tp_paths` order.
    """
    rows: dict[int, list[tuple[int, int, int]]] = {l: [] for l in range(lmax + 1)}
    start = 0
    for p, (l1, l3) in enumerate(tp_paths(lmax)):
        rows[l3].append((p, start, l1))
        start += 2 * l3 + 1
    return rows


def n_path_rows(lmax: int) -> int:
    return sum(2 * l3 + 1 for _, l3 in tp_paths(lmax))


def path_cg(l1: int, l3: int) -> Tensor:
    """CG[l1, 1, l3] times the path normalisation sqrt(2 l3 + 1), float64."""
    return clebsch_gordan(l1, 1, l3) * math.sqrt(2 * l3 + 1)


def tp_dense(v: dict[int, Tensor], r_hat: Tensor, lmax: int) -> list[Tensor]:
    """Dense reference: per path, sum_{m1,m2} CG[m1,m2,m3] v_l1[m1,c] Y1[m2].

    v[l1]: [..., 2 l1 + 1, C]; r_hat: [..., 3]. Returns one [..., 2 l3 + 1, C] per path.
    """
    y1 = sh_l1(r_hat)
    out = []
    for l1, l3 in tp_paths(lmax):
        cg = path_cg(l1, l3).to(dtype=v[l1].dtype, device=v[l1].device)
        out.append(torch.einsum("abk,...ac,...b->...kc", cg, v[l1], y1))
    return out


@dataclass(frozen=True)
class SparsePath:
    """Output row m3 of path (l1 -> l3) in the pole frame = scale[m3] * input row src[m3]."""

    l1: int
    l3: int
    src: tuple[int, ...]
    scale: tuple[float, ...]


@functools.lru_cache(maxsize=None)
def eaas_paths(lmax: int) -> tuple[SparsePath, ...]:
    """Gather indices and scales of each path in the pole frame, read off the dense CG.

    Raises if any output row draws on more than one input row (the sparsity EAAS relies on).
    """
    paths = []
    for l1, l3 in tp_paths(lmax):
        # Y^1(y_hat) = sqrt(3) e_y: only the m2 = 0 slice of CG survives.
        mat = path_cg(l1, l3)[:, POLE_M_INDEX, :] * math.sqrt(3.0)  # [2l1+1, 2l3+1]
        src, scale = [], []
        for m3 in range(2 * l3 + 1):
            nz = torch.nonzero(mat[:, m3].abs() > 1e-12).flatten().tolist()
            if len(nz) > 1:
                raise RuntimeError(f"path {l1}->{l3}: output row {m3} is not sparse")
            src.append(nz[0] if nz else 0)
            scale.append(float(mat[nz[0], m3]) if nz else 0.0)
        paths.append(SparsePath(l1, l3, tuple(src), tuple(scale)))
    return tuple(paths)


@functools.lru_cache(maxsize=None)
def _pole_gathers(lmax: int, dtype: torch.dtype, device: torch.device
                  ) -> tuple[tuple[Tensor, Tensor], ...]:
    """(src [2 l3 + 1] long, scale [2 l3 + 1, 1]) of each path, on the device once: built
    per call they were two host-to-device copies per path and call (a training step makes
    thousands of operator calls; these were 24 of them per attention layer)."""
    return tuple((torch.tensor(path.src, device=device),
                  torch.tensor(path.scale, dtype=dtype, device=device)[:, None])
                 for path in eaas_paths(lmax))


def tp_pole_frame(u: dict[int, Tensor], lmax: int) -> list[Tensor]:
    """S: the sparse product in the pole frame. u[l1]: [..., 2 l1 + 1, C] (already rotated)."""
    any_u = next(iter(u.values()))
    gathers = _pole_gathers(lmax, any_u.dtype, any_u.device)
    # index_select: its backward is an index_add (advanced indexing's sorts on the GPU)
    return [u[path.l1].index_select(-2, src) * scale
            for path, (src, scale) in zip(eaas_paths(lmax), gathers)]


def tp_eaas(v: dict[int, Tensor], wigner: dict[int, Tensor], lmax: int,
            matmul: Callable[[Tensor, Tensor], Tensor] = torch.matmul) -> list[Tensor]:
    """TP through the pole frame: D^l3^T S(D^l1 v). wigner[l]: [..., 2l+1, 2l+1] of R.
    matmul: how the rotations are multiplied (the attention passes a per-edge kernel)."""
    u = {l: matmul(wigner[l], v[l]) for l in v}
    return [
        matmul(wigner[path.l3].transpose(-1, -2), t)
        for path, t in zip(eaas_paths(lmax), tp_pole_frame(u, lmax))
    ]
