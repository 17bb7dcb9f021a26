"""Wigner D matrices (real basis, e3nn order) and the rotation that takes a direction to the pole.

D^l(R) is defined by Y_l(R r) = D^l(R) Y_l(r). With component-normalised Y^1 = sqrt(3) r,
D^1(R) = R. D^2(R) is quadratic in R: because Y^2 is a homogeneous quadratic, evaluating it
on R applied to fixed points P and multiplying by pinv(Y^2(P)) gives D^2 exactly for any
orthogonal R (and keeps it differentiable and batched).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from .spherical_harmonics import sh_l2


@functools.lru_cache(maxsize=None)
def _d2_probe(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    # Six generic directions; Y^2 on them has rank 5, so pinv gives the exact inverse map.
    pts = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
         [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    pts = pts / pts.norm(dim=-1, keepdim=True)
    inv = torch.linalg.pinv(sh_l2(pts).T)  # [6, 5]
    return pts.T.to(dtype=dtype, device=device), inv.to(dtype=dtype, device=device)


def wigner_d(rot: Tensor, l: int) -> Tensor:
    """D^l(R) for rotation matrices rot [..., 3, 3] -> [..., 2l+1, 2l+1]."""
    if l == 0:
        return torch.ones(rot.shape[:-2] + (1, 1), dtype=rot.dtype, device=rot.device)
    if l == 1:
        return rot
    if l == 2:
        pts, inv = _d2_probe(rot.dtype, rot.device)
        y_rot = sh_l2((rot @ pts).transpose(-1, -2))  # [..., 6, 5]
        # contiguous first: a transposed batch @ matrix would run as one tiny product per
        # rotation (batched GEMM); contiguous, it folds into one [.. * 5, 6] x [6, 5] GEMM
        return y_rot.transpose(-1, -2).contiguous() @ inv
    raise ValueError(f"wigner_d supports l <= 2, got {l}")


def rotation_to_pole(r_hat: Tensor) -> Tensor:
    """A rotation R [..., 3, 3] with R @ r_hat = y_hat, smooth on each of two branches.

    Rodrigues' formula R = I + [k]x + [k]x^2 / (1 + c), k = r_hat x t, c = r_hat . t, is
    singular only at c = -1. We use target t = +y when r_hat_y >= 0 and t = -y otherwise
    (then a half turn about x maps -y to +y), so 1 + c >= 1 on both branches. Any rotation
    that takes r_hat to the pole gives the same equivariant product, so the switch between
    branches changes nothing downstream.
    """
    x, y, z = r_hat.unbind(-1)
    s = torch.where(y >= 0, 1.0, -1.0).to(r_hat.dtype)
    # k = r_hat x (s*y_hat) = s * (-z, 0, x); c = s * y. R = I + [k]x + ([k]x^2 = k k^T -
    # |k|^2 I) / (1 + c), entry by entry (k_y = 0), then the half turn about x, diag(1, -1,
    # -1) on the left, on the negative branch: rows 1 and 2 times s.
    kx, kz = -s * z, s * x
    f = 1.0 / (1.0 + s * y)
    kxf, kzf = kx * f, kz * f
    entries = [1.0 - kz * kzf, -kz, kx * kzf,
               s * kz, s * (1.0 - (kx * kxf + kz * kzf)), -s * kx,
               s * (kx * kzf), s * kx, s * (1.0 - kx * kxf)]
    return torch.stack(entries, -1).unflatten(-1, (3, 3))


def so3_generator(l: int, axis: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """J^l_k = d/de D^l(exp(e [e_k]_x)) at e = 0, k = axis (0, 1, 2 for x, y, z): how a
    degree-l feature changes under a small turn about axis k (antisymmetric, [2l+1, 2l+1]).
    J^1_k = [e_k]_x. The attention's backward kernel turns the pole frame with these
    (kernels/attention/triton_backward._frame_torque; tests/test_o3.py checks its table)."""
    omega = torch.zeros(3, dtype=torch.float64)

    def d_of_turn(eps: Tensor) -> Tensor:
        w = omega.clone()
        w[axis] = eps
        x, y, z = w.unbind()
        zero = 0.0 * eps
        skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]),
                            torch.stack([-y, x, zero])])
        return wigner_d(torch.linalg.matrix_exp(skew), l)

    eps = torch.zeros((), dtype=torch.float64)
    return torch.autograd.functional.jacobian(d_of_turn, eps).to(dtype)
