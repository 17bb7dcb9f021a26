"""Fused on-the-fly equivariant attention, forward, in Triton (lmax = 2).

One program per (receiving atom, block of heads). It streams the receiver's neighbours
(CSR by receiver: rowptr) in tiles of BLOCK_E edges and, per tile, in registers only:
  geometry (d, r_hat, envelope), Gaussian rbf -> radial MLP (two tl.dot, fp32 "ieee" or tf32),
  gate / signed weight, score <q_i, k_j> * gate / sqrt(d_k), online softmax with the
  reference's eps * exp(-max) term, the rotation R (r_hat -> pole) and D^2(R), the EAAS
  pole-frame gather/scale per path, the rotation back with D^l3(R)^T, and the weighted
  accumulation of the 20 output rows. Nothing per edge is written to memory; besides the
  output it writes the per-receiver softmax statistics (max m [n_recv, H] and denominator
  den = sum_j a_ij + eps * exp(-m) [n_recv, H]) that the backward uses.
Path-major output rows (see e2former_lammps.o3.path_rows, lmax 2):
  0-2 (0->1), 3 (1->0), 4-6 (1->1), 7-11 (1->2), 12-14 (2->1), 15-19 (2->2).
"""
from __future__ import annotations

import triton
import triton.language as tl

INV_SQRT2 = tl.constexpr(0.70710678118654752)
SQRT3 = tl.constexpr(1.7320508075688772)
SQRT5 = tl.constexpr(2.2360679774997897)
SQRT15 = tl.constexpr(3.8729833462074170)


@triton.jit
def _sh2(x, y, z):
    """Y^2 of a (unit) vector, e3nn order, as in e2former_lammps.o3.sh_l2."""
    return (SQRT15 * x * z, SQRT15 * x * y, SQRT5 * (y * y - 0.5 * (x * x + z * z)),
            SQRT15 * y * z, 0.5 * SQRT15 * (z * z - x * x))


@triton.jit
def _load_rij(rij_ptr, e, mask):
    """Components of rij for edge indices e (any tile shape). Masked edges read (0, 1, 0), a
    unit vector, so normalising and the rotation stay finite on them."""
    rx = tl.load(rij_ptr + e * 3 + 0, mask=mask, other=0.0)
    ry = tl.load(rij_ptr + e * 3 + 1, mask=mask, other=1.0)
    rz = tl.load(rij_ptr + e * 3 + 2, mask=mask, other=0.0)
    return rx, ry, rz


@triton.jit
def _envelope(d, cutoff):
    """Polynomial cutoff p(x) = 1 - 10 x^3 + 15 x^4 - 6 x^5, x = min(d / r_c, 1), as
    kernels.attention.common.envelope."""
    xc = tl.minimum(d / cutoff, 1.0)
    return 1.0 + xc * xc * xc * (-10.0 + xc * (15.0 - 6.0 * xc))


@triton.jit
def _envelope_slope(d, cutoff):
    """p'(d) (1/Å) of _envelope: 0 at and beyond the cutoff (p is clamped there). The weight
    envelope g(d) = p((d - start) / width) of kernels.attention.common.weight_envelope_factor
    is _envelope(max(d - start, 0), width), its slope _envelope_slope of the same."""
    xc = tl.minimum(d / cutoff, 1.0)
    return -30.0 * xc * xc * (xc - 1.0) * (xc - 1.0) / cutoff


@triton.jit
def _rotation_to_pole(x, y, z):
    """Entries of R with R r_hat = y_hat, the same branches as o3.rotation_to_pole."""
    s = tl.where(y >= 0, 1.0, -1.0).to(x.dtype)
    kx = -s * z
    kz = s * x
    f = 1.0 / (1.0 + s * y)
    r00 = 1.0 - kz * kz * f
    r01 = -kz
    r02 = kx * kz * f
    r10 = s * kz
    r11 = s * (1.0 - (kx * kx + kz * kz) * f)
    r12 = -s * kx
    r20 = s * (kx * kz * f)
    r21 = s * kx
    r22 = s * (1.0 - kx * kx * f)
    return r00, r01, r02, r10, r11, r12, r20, r21, r22


@triton.jit
def _wigner2(r00, r01, r02, r10, r11, r12, r20, r21, r22):
    """D^2(R) entries d[a][b], the same construction as e2former_lammps.o3.wigner_d (generated)."""
    x0, y0, z0 = (r00, r10, r20)
    y0_0, y0_1, y0_2, y0_3, y0_4 = _sh2(x0, y0, z0)
    x1, y1, z1 = (r01, r11, r21)
    y1_0, y1_1, y1_2, y1_3, y1_4 = _sh2(x1, y1, z1)
    x2, y2, z2 = (r02, r12, r22)
    y2_0, y2_1, y2_2, y2_3, y2_4 = _sh2(x2, y2, z2)
    x3, y3, z3 = ((r00 + r01) * INV_SQRT2, (r10 + r11) * INV_SQRT2, (r20 + r21) * INV_SQRT2)
    y3_0, y3_1, y3_2, y3_3, y3_4 = _sh2(x3, y3, z3)
    x4, y4, z4 = ((r01 + r02) * INV_SQRT2, (r11 + r12) * INV_SQRT2, (r21 + r22) * INV_SQRT2)
    y4_0, y4_1, y4_2, y4_3, y4_4 = _sh2(x4, y4, z4)
    x5, y5, z5 = ((r00 + r02) * INV_SQRT2, (r10 + r12) * INV_SQRT2, (r20 + r22) * INV_SQRT2)
    y5_0, y5_1, y5_2, y5_3, y5_4 = _sh2(x5, y5, z5)
    d00 = -0.086066296582387042 * y0_0 + 0.17213259316477419 * y1_0 + -0.086066296582387083 * y2_0 + 0.5163977794943222 * y5_0
    d01 = -0.086066296582387097 * y0_0 + -0.086066296582387042 * y1_0 + 0.17213259316477392 * y2_0 + 0.51639777949432231 * y3_0
    d02 = -0.14907119849998601 * y0_0 + 0.29814239699997203 * y1_0 + -0.14907119849998599 * y2_0
    d03 = 0.17213259316477406 * y0_0 + -0.086066296582387125 * y1_0 + -0.08606629658238682 * y2_0 + 0.51639777949432242 * y4_0
    d04 = -0.25819888974716104 * y0_0 + 0.25819888974716126 * y2_0
    d10 = -0.086066296582387042 * y0_1 + 0.17213259316477419 * y1_1 + -0.086066296582387083 * y2_1 + 0.5163977794943222 * y5_1
    d11 = -0.086066296582387097 * y0_1 + -0.086066296582387042 * y1_1 + 0.17213259316477392 * y2_1 + 0.51639777949432231 * y3_1
    d12 = -0.14907119849998601 * y0_1 + 0.29814239699997203 * y1_1 + -0.14907119849998599 * y2_1
    d13 = 0.17213259316477406 * y0_1 + -0.086066296582387125 * y1_1 + -0.08606629658238682 * y2_1 + 0.51639777949432242 * y4_1
    d14 = -0.25819888974716104 * y0_1 + 0.25819888974716126 * y2_1
    d20 = -0.086066296582387042 * y0_2 + 0.17213259316477419 * y1_2 + -0.086066296582387083 * y2_2 + 0.5163977794943222 * y5_2
    d21 = -0.086066296582387097 * y0_2 + -0.086066296582387042 * y1_2 + 0.17213259316477392 * y2_2 + 0.51639777949432231 * y3_2
    d22 = -0.14907119849998601 * y0_2 + 0.29814239699997203 * y1_2 + -0.14907119849998599 * y2_2
    d23 = 0.17213259316477406 * y0_2 + -0.086066296582387125 * y1_2 + -0.08606629658238682 * y2_2 + 0.51639777949432242 * y4_2
    d24 = -0.25819888974716104 * y0_2 + 0.25819888974716126 * y2_2
    d30 = -0.086066296582387042 * y0_3 + 0.17213259316477419 * y1_3 + -0.086066296582387083 * y2_3 + 0.5163977794943222 * y5_3
    d31 = -0.086066296582387097 * y0_3 + -0.086066296582387042 * y1_3 + 0.17213259316477392 * y2_3 + 0.51639777949432231 * y3_3
    d32 = -0.14907119849998601 * y0_3 + 0.29814239699997203 * y1_3 + -0.14907119849998599 * y2_3
    d33 = 0.17213259316477406 * y0_3 + -0.086066296582387125 * y1_3 + -0.08606629658238682 * y2_3 + 0.51639777949432242 * y4_3
    d34 = -0.25819888974716104 * y0_3 + 0.25819888974716126 * y2_3
    d40 = -0.086066296582387042 * y0_4 + 0.17213259316477419 * y1_4 + -0.086066296582387083 * y2_4 + 0.5163977794943222 * y5_4
    d41 = -0.086066296582387097 * y0_4 + -0.086066296582387042 * y1_4 + 0.17213259316477392 * y2_4 + 0.51639777949432231 * y3_4
    d42 = -0.14907119849998601 * y0_4 + 0.29814239699997203 * y1_4 + -0.14907119849998599 * y2_4
    d43 = 0.17213259316477406 * y0_4 + -0.086066296582387125 * y1_4 + -0.08606629658238682 * y2_4 + 0.51639777949432242 * y4_4
    d44 = -0.25819888974716104 * y0_4 + 0.25819888974716126 * y2_4
    return (d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24, d30, d31, d32, d33, d34, d40, d41, d42, d43, d44)


@triton.jit
def _pole_frame(rij_ptr, e, mask):
    """R (r_hat -> pole, 9 entries) and D^2(R) (25 entries) of the edges e, any tile shape."""
    rx, ry, rz = _load_rij(rij_ptr, e, mask)
    d = tl.sqrt(rx * rx + ry * ry + rz * rz)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotation_to_pole(rx / d, ry / d, rz / d)
    (d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
     d30, d31, d32, d33, d34, d40, d41, d42, d43, d44) = _wigner2(
        r00, r01, r02, r10, r11, r12, r20, r21, r22)
    return (r00, r01, r02, r10, r11, r12, r20, r21, r22,
            d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
            d30, d31, d32, d33, d34, d40, d41, d42, d43, d44)


@triton.jit
def _edge_envelope(rij_ptr, e, mask, cutoff):
    """Envelope p(|r_ij|) of the edges e, any tile shape."""
    rx, ry, rz = _load_rij(rij_ptr, e, mask)
    return _envelope(tl.sqrt(rx * rx + ry * ry + rz * rz), cutoff)
