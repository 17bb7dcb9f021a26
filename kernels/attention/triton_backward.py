"""Backward of the fused attention (first derivatives, lmax 2): the channel kernel, and the driver.

Split by size. The output is out_i = sum_j alpha_ijh(c) M_ij v_j with M_ij = D^l3(R)^T S D^l1(R)
(R = R(r_hat_ij), the 9 -> 20 row map of the EAAS product). Given G = dL/dout:
  * channel-sized work (per edge 9 x C and 20 x C, the bulk of the FLOPs and bytes) runs in the
    Triton kernel below, one program per (receiver, head block), streaming the receiver's
    edges like the forward, recomputing alpha (from the forward's prepass scores and (m, den)),
    R, D^2 and the pole-frame products in registers:
      g_ijh   = dL/dalpha_ijh = sum_{c in h} <M_ij v_j, G_i>_c            -> [E, H]
      D_ih    = sum_j g_ijh alpha_ijh                                     -> [n_recv, H]
      dv_j   += alpha_ijh(c) M_ij^T G_i                                   (atomics)
      dL/dr_ij through R (channel sums, per head block)                   -> [n_hb, E, 3]
    The last is the frame's "torque": turning the pole frame by omega changes u = D^l1 v and
    P = D^l3 G by omega.J, so dL/domega = <J u, q> + <S u, J P> per channel, and only the
    turns about x and z matter (the EAAS product is SO(2)-equivariant about the pole y);
    a direction change moves the frame by exactly those. Three sums per edge, not the 34 of
    dL/dR and dL/dD^2 followed by autograd through R(r) and D^2(R) (kernels/NOTES.md E34).
  * head-sized work (softmax, score, gate, radial MLP, envelope): triton_head_backward.py.
Receiver chunks of CHUNK_EDGES edges bound the per-edge scratch. dv_j and dk_j (the senders'
gradients) are reduced by REDUCE: "atomic" (default) adds them from the receiver kernels
with atomics; "sorted" sums them per sender over the chunk's sender-sorted edges
(triton_sender_backward.py: dv, dk bitwise reproducible, ~6% slower, kernels/NOTES.md E15).
dL/dr_ij is summed over head blocks from per-block stores, without atomics in either mode, so
with "sorted" dq, dk, dv and dL/dr_ij are all free of atomics (the radial weights' gradients,
for training, still use index_add_).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_geometry import SQRT3, _edge_envelope, _load_rij, _pole_frame
from .common import receiver_chunks
from .triton_forward import _pow2, eaas_constants, heads_per_program

CHUNK_EDGES = 1 << 20
# how dv, dk reach the senders (module docstring): "atomic" is faster on the H200 (E15),
# "sorted" gives bitwise reproducible dv, dk
REDUCE_MODES = ("atomic", "sorted")
REDUCE = "atomic"


@triton.jit
def _csum(t):
    """Sum over heads and channels of [BLOCK_E, BLOCK_H, CH_P] -> [BLOCK_E]."""
    return tl.sum(tl.sum(t, axis=2), axis=1)


@triton.jit
def _path_rows(
    G00, G01, G02, G04, G05, G06, G07, G08, G09, G10, G11,
    G12, G13, G14, G15, G16, G17, G18, G19,
    r00, r01, r02, r10, r11, r12, r20, r21, r22,
    d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
    d30, d31, d32, d33, d34, d40, d41, d42, d43, d44,
):
    """Pole-frame output gradients P = D^l3(R) G_path of the five paths with l3 > 0 (rows of
    paths 0, 2, 3, 4, 5; path 1 has l3 = 0: its P is G03)."""
    p0_0 = r00 * G00 + r01 * G01 + r02 * G02
    p0_1 = r10 * G00 + r11 * G01 + r12 * G02
    p0_2 = r20 * G00 + r21 * G01 + r22 * G02
    p2_0 = r00 * G04 + r01 * G05 + r02 * G06
    p2_1 = r10 * G04 + r11 * G05 + r12 * G06
    p2_2 = r20 * G04 + r21 * G05 + r22 * G06
    p3_0 = d00 * G07 + d01 * G08 + d02 * G09 + d03 * G10 + d04 * G11
    p3_1 = d10 * G07 + d11 * G08 + d12 * G09 + d13 * G10 + d14 * G11
    p3_2 = d20 * G07 + d21 * G08 + d22 * G09 + d23 * G10 + d24 * G11
    p3_3 = d30 * G07 + d31 * G08 + d32 * G09 + d33 * G10 + d34 * G11
    p3_4 = d40 * G07 + d41 * G08 + d42 * G09 + d43 * G10 + d44 * G11
    p4_0 = r00 * G12 + r01 * G13 + r02 * G14
    p4_1 = r10 * G12 + r11 * G13 + r12 * G14
    p4_2 = r20 * G12 + r21 * G13 + r22 * G14
    p5_0 = d00 * G15 + d01 * G16 + d02 * G17 + d03 * G18 + d04 * G19
    p5_1 = d10 * G15 + d11 * G16 + d12 * G17 + d13 * G18 + d14 * G19
    p5_2 = d20 * G15 + d21 * G16 + d22 * G17 + d23 * G18 + d24 * G19
    p5_3 = d30 * G15 + d31 * G16 + d32 * G17 + d33 * G18 + d34 * G19
    p5_4 = d40 * G15 + d41 * G16 + d42 * G17 + d43 * G18 + d44 * G19
    return (p0_0, p0_1, p0_2, p2_0, p2_1, p2_2, p3_0, p3_1, p3_2, p3_3, p3_4,
            p4_0, p4_1, p4_2, p5_0, p5_1, p5_2, p5_3, p5_4)


@triton.jit
def _pole_grad_of_rows(
    G03, p0_1, p2_0, p2_2, p3_1, p3_2, p3_3, p4_0, p4_1, p4_2, p5_0, p5_1, p5_3, p5_4,
    S01, S10, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E,
):
    """q = S^T P: the pole-frame gradient of the rotated value u = D^l1 v (9 rows: l1 = 0,
    1, 2), unweighted by alpha."""
    return (S01 * p0_1,
            S11C * p2_2 + S12B * p3_1, S10 * G03 + S12C * p3_2, S11A * p2_0 + S12D * p3_3,
            S22E * p5_4, S21A * p4_0 + S22D * p5_3, S21B * p4_1, S21C * p4_2 + S22B * p5_1,
            S22A * p5_0)


@triton.jit
def _pole_grad(
    G00, G01, G02, G03, G04, G05, G06, G07, G08, G09,
    G10, G11, G12, G13, G14, G15, G16, G17, G18, G19,
    r00, r01, r02, r10, r11, r12, r20, r21, r22,
    d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
    d30, d31, d32, d33, d34, d40, d41, d42, d43, d44,
    S01, S10, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E,
):
    """q = S^T (D^l3 G_path) from the 20 output-gradient rows G (the rows q does not need
    are dead code to the compiler)."""
    (p0_0, p0_1, p0_2, p2_0, p2_1, p2_2, p3_0, p3_1, p3_2, p3_3, p3_4,
     p4_0, p4_1, p4_2, p5_0, p5_1, p5_2, p5_3, p5_4) = _path_rows(
        G00, G01, G02, G04, G05, G06, G07, G08, G09, G10, G11,
        G12, G13, G14, G15, G16, G17, G18, G19,
        r00, r01, r02, r10, r11, r12, r20, r21, r22,
        d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
        d30, d31, d32, d33, d34, d40, d41, d42, d43, d44)
    return _pole_grad_of_rows(
        G03, p0_1, p2_0, p2_2, p3_1, p3_2, p3_3, p4_0, p4_1, p4_2, p5_0, p5_1, p5_3, p5_4,
        S01, S10, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E)


@triton.jit
def _frame_torque(
    v0, u10, u11, u12, u20, u21, u22, u23, u24,
    q10, q11, q12, q20, q21, q22, q23, q24,
    p0_0, p0_2, p2_1, p3_0, p3_1, p3_2, p3_3, p3_4,
    p4_0, p4_1, p4_2, p5_0, p5_1, p5_2, p5_3, p5_4,
    S01, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E,
):
    """(t_x, t_z) = dL/domega_x, dL/domega_z per unit alpha: the edge's pole frame turned by
    exp([omega]_x) (R -> exp([omega]_x) R), so u -> u + omega.J u and P -> P + omega.J P, and
    dL/domega_k = <J_k u, q> + <y, J_k P> with y = S u the pole-frame outputs. J_k = o3.so3_generator(l, k): [e_k]_x for l = 1, for l = 2 the sparse matrices
    written out below (entries 1 and sqrt(3); tests/test_o3.py checks this table and that
    S commutes with the turn about the pole).
    About the pole (y) nothing changes: the EAAS product is SO(2)-equivariant."""
    # y rows of the paths with l3 > 0 (path 1 has l3 = 0, no turn)
    b = S01 * v0                                                   # path 0: (0, b, 0)
    a0 = S11A * u12                                                # path 2: (a0, 0, a2)
    a2 = S11C * u10
    e1 = S12B * u10                                                # path 3: (0, e1, e2, e3, 0)
    e2 = S12C * u11
    e3 = S12D * u12
    c0 = S21A * u21                                                # path 4: (c0, c1, c2)
    c1 = S21B * u22
    c2 = S21C * u23
    f0 = S22A * u24                                                # path 5: (f0, f1, 0, f3, f4)
    f1 = S22B * u23
    f3 = S22D * u21
    f4 = S22E * u20
    # <J_k u, q> (l1 = 1, 2) + <y, J_k P> (l3 = 1: J_x P = (0, -P2, P1), J_z P = (-P1, P0, 0);
    # l3 = 2: J_x P = (P1, -P0, -s3 P3, s3 P2 - P4, P3), J_z P = (-P3, -s3 P2 - P4, s3 P1,
    # P0, P1))
    tx = (u11 * q12 - u12 * q11
          + u21 * q20 - u20 * q21 - SQRT3 * u23 * q22 + (SQRT3 * u22 - u24) * q23 + u23 * q24
          - b * p0_2 + a2 * p2_1 - c1 * p4_2 + c2 * p4_1
          - e1 * p3_0 - SQRT3 * e2 * p3_3 + e3 * (SQRT3 * p3_2 - p3_4)
          + f0 * p5_1 - f1 * p5_0 + f3 * (SQRT3 * p5_2 - p5_4) + f4 * p5_3)
    tz = (u10 * q11 - u11 * q10
          - u23 * q20 - (SQRT3 * u22 + u24) * q21 + SQRT3 * u21 * q22 + u20 * q23 + u21 * q24
          + b * p0_0 - a0 * p2_1 - c0 * p4_1 + c1 * p4_0
          - e1 * (SQRT3 * p3_2 + p3_4) + SQRT3 * e2 * p3_1 + e3 * p3_0
          - f0 * p5_3 - f1 * (SQRT3 * p5_2 + p5_4) + f3 * p5_0 + f4 * p5_1)
    return tx, tz


@triton.jit
def _rotate_back(
    q0, q10, q11, q12, q20, q21, q22, q23, q24,
    r00, r01, r02, r10, r11, r12, r20, r21, r22,
    d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
    d30, d31, d32, d33, d34, d40, d41, d42, d43, d44,
):
    """D^l1(R)^T of the 9 pole-frame rows: the contribution to dL/dv_j."""
    return (q0,
            r00 * q10 + r10 * q11 + r20 * q12,
            r01 * q10 + r11 * q11 + r21 * q12,
            r02 * q10 + r12 * q11 + r22 * q12,
            d00 * q20 + d10 * q21 + d20 * q22 + d30 * q23 + d40 * q24,
            d01 * q20 + d11 * q21 + d21 * q22 + d31 * q23 + d41 * q24,
            d02 * q20 + d12 * q21 + d22 * q22 + d32 * q23 + d42 * q24,
            d03 * q20 + d13 * q21 + d23 * q22 + d33 * q23 + d43 * q24,
            d04 * q20 + d14 * q21 + d24 * q22 + d34 * q23 + d44 * q24)


@triton.jit(do_not_specialize=["r_base", "e_base", "n_edges"])  # triton_forward: chunk bounds
def _attention_bwd_kernel(
    g_out_ptr, v_ptr, rij_ptr, pj_ptr, rowptr_ptr, sw_ptr, m_ptr, den_ptr,
    dv_ptr, galpha_ptr, dsum_ptr, dturn_ptr,
    r_base, e_base, n_edges, cutoff,
    H: tl.constexpr, CH: tl.constexpr, CH_P: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
    S01: tl.constexpr, S10: tl.constexpr, S11A: tl.constexpr, S11C: tl.constexpr,
    S12B: tl.constexpr, S12C: tl.constexpr, S12D: tl.constexpr,
    S21A: tl.constexpr, S21B: tl.constexpr, S21C: tl.constexpr,
    S22A: tl.constexpr, S22B: tl.constexpr, S22D: tl.constexpr, S22E: tl.constexpr,
    ATOMIC_DV: tl.constexpr,
):
    i = r_base + tl.program_id(0)
    hb = tl.program_id(1)
    C: tl.constexpr = H * CH
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs_h < H
    offs_c = tl.arange(0, CH_P)
    cmask = hmask[:, None] & (offs_c < CH)[None, :]
    chan = (offs_h * CH)[:, None] + offs_c[None, :]
    gp = g_out_ptr + i.to(tl.int64) * (20 * C) + chan
    # G rows of this receiver, [1, BLOCK_H, CH_P] each
    G00 = tl.load(gp + 0 * C, mask=cmask, other=0.0)[None]
    G01 = tl.load(gp + 1 * C, mask=cmask, other=0.0)[None]
    G02 = tl.load(gp + 2 * C, mask=cmask, other=0.0)[None]
    G03 = tl.load(gp + 3 * C, mask=cmask, other=0.0)[None]
    G04 = tl.load(gp + 4 * C, mask=cmask, other=0.0)[None]
    G05 = tl.load(gp + 5 * C, mask=cmask, other=0.0)[None]
    G06 = tl.load(gp + 6 * C, mask=cmask, other=0.0)[None]
    G07 = tl.load(gp + 7 * C, mask=cmask, other=0.0)[None]
    G08 = tl.load(gp + 8 * C, mask=cmask, other=0.0)[None]
    G09 = tl.load(gp + 9 * C, mask=cmask, other=0.0)[None]
    G10 = tl.load(gp + 10 * C, mask=cmask, other=0.0)[None]
    G11 = tl.load(gp + 11 * C, mask=cmask, other=0.0)[None]
    G12 = tl.load(gp + 12 * C, mask=cmask, other=0.0)[None]
    G13 = tl.load(gp + 13 * C, mask=cmask, other=0.0)[None]
    G14 = tl.load(gp + 14 * C, mask=cmask, other=0.0)[None]
    G15 = tl.load(gp + 15 * C, mask=cmask, other=0.0)[None]
    G16 = tl.load(gp + 16 * C, mask=cmask, other=0.0)[None]
    G17 = tl.load(gp + 17 * C, mask=cmask, other=0.0)[None]
    G18 = tl.load(gp + 18 * C, mask=cmask, other=0.0)[None]
    G19 = tl.load(gp + 19 * C, mask=cmask, other=0.0)[None]
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    m_i = tl.load(m_ptr + i * H + offs_h, mask=hmask, other=0.0)
    inv_den = 1.0 / tl.load(den_ptr + i * H + offs_h, mask=hmask, other=1.0)
    dsum = tl.zeros([BLOCK_H], dtype=G00.dtype)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        j = tl.load(pj_ptr + offs_e, mask=emask, other=0)
        # per-edge scalars are loaded directly as [BLOCK_E, 1, 1]: 1D scalars expanded late
        # make triton 3.6's layout pass fail here ("arith.mulf op requires the same encoding")
        e3 = offs_e[:, None, None]
        m3 = emask[:, None, None]
        (r00, r01, r02, r10, r11, r12, r20, r21, r22,
         d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
         d30, d31, d32, d33, d34, d40, d41, d42, d43, d44) = _pole_frame(
            rij_ptr, e3, m3)
        le = offs_e - e_base  # chunk-local edge index
        amask = emask[:, None] & hmask[None, :]
        # alpha = w p(d) exp(s - m_i) / den_i from the prepass's (s, w) and the forward's stats
        # (with weight_envelope the prepass's w is already w g)
        e2 = offs_e[:, None]
        env = _edge_envelope(rij_ptr, e2, emask[:, None], cutoff)
        swp = sw_ptr + le.to(tl.int64)[:, None] * (2 * H) + offs_h[None, :]
        s_e = tl.load(swp, mask=amask, other=0.0)
        w_e = tl.load(swp + H, mask=amask, other=0.0)
        alpha = tl.where(amask, w_e * env * tl.exp(s_e - m_i[None, :]) * inv_den[None, :], 0.0)
        al = alpha[:, :, None]
        vp = v_ptr + j.to(tl.int64)[:, None, None] * (9 * C) + chan[None, :, :]
        vmask = emask[:, None, None] & cmask[None, :, :]
        v0 = tl.load(vp, mask=vmask, other=0.0)
        v1 = tl.load(vp + 1 * C, mask=vmask, other=0.0)
        v2 = tl.load(vp + 2 * C, mask=vmask, other=0.0)
        v3 = tl.load(vp + 3 * C, mask=vmask, other=0.0)
        w0 = tl.load(vp + 4 * C, mask=vmask, other=0.0)
        w1 = tl.load(vp + 5 * C, mask=vmask, other=0.0)
        w2 = tl.load(vp + 6 * C, mask=vmask, other=0.0)
        w3 = tl.load(vp + 7 * C, mask=vmask, other=0.0)
        w4 = tl.load(vp + 8 * C, mask=vmask, other=0.0)
        # forward pole-frame values u = D^l1 v
        u10 = r00 * v1 + r01 * v2 + r02 * v3
        u11 = r10 * v1 + r11 * v2 + r12 * v3
        u12 = r20 * v1 + r21 * v2 + r22 * v3
        u20 = d00 * w0 + d01 * w1 + d02 * w2 + d03 * w3 + d04 * w4
        u21 = d10 * w0 + d11 * w1 + d12 * w2 + d13 * w3 + d14 * w4
        u22 = d20 * w0 + d21 * w1 + d22 * w2 + d23 * w3 + d24 * w4
        u23 = d30 * w0 + d31 * w1 + d32 * w2 + d33 * w3 + d34 * w4
        u24 = d40 * w0 + d41 * w1 + d42 * w2 + d43 * w3 + d44 * w4
        (p0_0, p0_1, p0_2, p2_0, p2_1, p2_2, p3_0, p3_1, p3_2, p3_3, p3_4,
         p4_0, p4_1, p4_2, p5_0, p5_1, p5_2, p5_3, p5_4) = _path_rows(
            G00, G01, G02, G04, G05, G06, G07, G08, G09, G10, G11,
            G12, G13, G14, G15, G16, G17, G18, G19,
            r00, r01, r02, r10, r11, r12, r20, r21, r22,
            d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
            d30, d31, d32, d33, d34, d40, d41, d42, d43, d44)
        q0, q10, q11, q12, q20, q21, q22, q23, q24 = _pole_grad_of_rows(
            G03, p0_1, p2_0, p2_2, p3_1, p3_2, p3_3, p4_0, p4_1, p4_2, p5_0, p5_1, p5_3, p5_4,
            S01, S10, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E)
        # dL/dalpha: <u, q> summed over the head's channels (rotation-invariant form)
        gal = v0 * q0 + u10 * q10 + u11 * q11 + u12 * q12 + u20 * q20 + u21 * q21 \
            + u22 * q22 + u23 * q23 + u24 * q24
        gal = tl.sum(gal, axis=2)
        tl.store(galpha_ptr + le[:, None] * H + offs_h[None, :], gal, mask=amask)
        dsum += tl.sum(gal * alpha, axis=0)
        # dL/dr_ij through the rotation: the frame turned about x and z (t_x, t_z), which a
        # change dr of the direction does by omega_z = (R dr)_x / d, omega_x = -(R dr)_z / d,
        # so dL/dr = R^T (t_z, 0, -t_x) / d: three channel sums per edge where dL/dR and
        # dL/dD^2 took 34 (kernels/NOTES.md E34)
        tx, tz = _frame_torque(
            v0, u10, u11, u12, u20, u21, u22, u23, u24,
            q10, q11, q12, q20, q21, q22, q23, q24,
            p0_0, p0_2, p2_1, p3_0, p3_1, p3_2, p3_3, p3_4,
            p4_0, p4_1, p4_2, p5_0, p5_1, p5_2, p5_3, p5_4,
            S01, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E)
        rx, ry, rz = _load_rij(rij_ptr, e3, m3)
        inv_d = 1.0 / tl.sqrt(rx * rx + ry * ry + rz * rz)
        tx = tx * al * inv_d
        tz = tz * al * inv_d
        dtp = dturn_ptr + (hb * n_edges + le) * 3
        tl.store(dtp + 0, _csum(r00 * tz - r20 * tx), mask=emask)
        tl.store(dtp + 1, _csum(r01 * tz - r21 * tx), mask=emask)
        tl.store(dtp + 2, _csum(r02 * tz - r22 * tx), mask=emask)
        # dv_j += alpha * D^l1^T q
        if ATOMIC_DV:
            (t0, t1, t2, t3, t4, t5, t6, t7, t8) = _rotate_back(
                q0 * al, q10 * al, q11 * al, q12 * al, q20 * al, q21 * al, q22 * al,
                q23 * al, q24 * al,
                r00, r01, r02, r10, r11, r12, r20, r21, r22,
                d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
                d30, d31, d32, d33, d34, d40, d41, d42, d43, d44)
            dvp = dv_ptr + j.to(tl.int64)[:, None, None] * (9 * C) + chan[None, :, :]
            tl.atomic_add(dvp, t0, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 1 * C, t1, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 2 * C, t2, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 3 * C, t3, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 4 * C, t4, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 5 * C, t5, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 6 * C, t6, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 7 * C, t7, mask=vmask, sem="relaxed")
            tl.atomic_add(dvp + 8 * C, t8, mask=vmask, sem="relaxed")
    tl.store(dsum_ptr + i * H + offs_h, dsum, mask=hmask)


def default_bwd_blocks(n_heads: int, ch: int) -> dict[str, int]:
    # fastest of BWD_VARIANTS (benchmarks/bench_attention.py --autotune) at 10k water atoms on
    # the H200 after E34 took the rotation gradient out of the tile: 4 edges x 32 heads at 2
    # channels per head, 168 registers, no spills (kernels/NOTES.md E37; before: E7, E20)
    return dict(BLOCK_E=4, BLOCK_H=heads_per_program(64, n_heads, ch), num_warps=4)


def attention_backward(grad_out, q, k, v, rij, pair_i, pair_j, species, rowptr, centers, width,
                       spacing, w_rbf, emb_recv, emb_send, w_out, b_out, cutoff, eps, m, den,
                       weight_grads: bool = True, weight_envelope: float | None = None,
                       scores=None):
    """Gradients (q, k, v, rij, w_rbf, emb_recv, emb_send, w_out, b_out) of <grad_out, out>.

    Per receiver chunk: the forward's prepass (s, w) [E_c, 2H] and the gate [E_c, H], the
    channel kernel (g = dL/dalpha, D = sum_j g alpha, dv, and dL/dr_ij through the rotation,
    per head block), the head backward (dq, dk, dL/d|r|: triton_head_backward.py) (with
    REDUCE "sorted", dv and dk come from the sender kernel instead), and PyTorch for the sum
    over head blocks plus dL/d|r| r_hat and, if weight_grads, the weight products.
    The five weight gradients are None when weight_grads is False (MD: forces only).
    scores: the forward's prepass scores of all edges (sw, gate) when it kept them
    (attention_forward's keep_scores): the prepass is not run again, and they are left as
    they were (a second backward through a retained graph reads them).
    """
    from .common import EdgeRadialWeights, gaussian_rbf
    from .triton_forward import edge_scores
    from .triton_head_backward import head_backward
    from .triton_sender_backward import sender_backward

    n_heads, channels = q.shape[1], v.shape[-1]
    ch = channels // n_heads
    bl = default_bwd_blocks(n_heads, ch)
    if REDUCE not in REDUCE_MODES:
        raise ValueError(f"REDUCE must be one of {REDUCE_MODES}, got {REDUCE!r}")
    atomic = REDUCE == "atomic"
    consts = eaas_constants()
    dv = torch.zeros_like(v)
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    drij = torch.zeros_like(rij)
    dsum = torch.zeros_like(m)
    dw = [torch.zeros_like(t) for t in (w_rbf, emb_recv, emb_send, w_out, b_out)]
    chunks = receiver_chunks(rowptr, pair_i.numel(), CHUNK_EDGES)
    max_e = max([e1 - e0 for _, _, e0, e1 in chunks] + [0])
    if scores is None:
        sw = torch.empty(max_e * 2 * n_heads + 1, dtype=q.dtype, device=q.device)
        gate = torch.empty(max_e * n_heads + 1, dtype=q.dtype, device=q.device)
    for r0, r1, e0, e1 in chunks:
        if e1 <= e0:
            continue
        if scores is None:
            edge_scores(sw, q, k, rij, pair_i, pair_j, species, centers, width, spacing,
                        w_rbf, emb_recv, emb_send, w_out, b_out, cutoff, e0, e1,
                        weight_envelope=weight_envelope, gate=gate)
        else:  # the kept scores of all edges, from this chunk's first
            sw, gate = scores[0][e0 * 2 * n_heads:], scores[1][e0 * n_heads:]
        galpha = torch.empty(e1 - e0, n_heads, dtype=q.dtype, device=q.device)
        grid = (r1 - r0, triton.cdiv(n_heads, bl["BLOCK_H"]))
        # every program writes all its edges' 3 numbers: no zeroing, no atomics
        dturn = torch.empty(grid[1], e1 - e0, 3, dtype=v.dtype, device=v.device)
        _attention_bwd_kernel[grid](
            grad_out, v, rij, pair_j, rowptr, sw, m, den, dv, galpha, dsum, dturn, r0, e0,
            e1 - e0, float(cutoff), H=n_heads, CH=ch, CH_P=_pow2(ch), BLOCK_E=bl["BLOCK_E"],
            BLOCK_H=bl["BLOCK_H"], **consts, ATOMIC_DV=atomic, num_warps=bl["num_warps"])
        dd, d_o, d_pre = head_backward(
            q, k, rij, pair_i, pair_j, species, rowptr, centers, width, spacing, w_rbf,
            emb_recv, emb_send, w_out, cutoff, sw, gate, m, den, galpha, dsum, dq, dk, r0, r1,
            e0, e1, weight_grads, atomic_dk=atomic, weight_envelope=weight_envelope,
            overwrite_scores=scores is None)
        if not atomic:  # galpha now holds dL/d<q_i, k_j>
            sender_backward(grad_out, q, rij, pair_i, pair_j, sw, galpha, m, den, dv, dk,
                            cutoff, e0, e1, consts)
        rc = rij[e0:e1].detach()
        dist = rc.norm(dim=-1, keepdim=True)
        torch.add(dturn.sum(0), rc * (dd[:, None] / dist), out=drij[e0:e1])
        if weight_grads:
            pi, pj = pair_i[e0:e1], pair_j[e0:e1]
            rbf = gaussian_rbf(dist[:, 0], centers, width)
            hidden = EdgeRadialWeights(centers, width, w_rbf, emb_recv, emb_send, w_out,
                                       b_out).hidden(rbf, species[pi], species[pj])
            dw[0] += rbf.transpose(0, 1) @ d_pre
            dw[1].index_add_(0, species[pi], d_pre)
            dw[2].index_add_(0, species[pj], d_pre)
            dw[3] += hidden.transpose(0, 1) @ d_o
            dw[4] += d_o.sum(0)
    if not weight_grads:
        dw = [None] * 5
    return (dq, dk, dv, drij, *dw)
