"""Triton forward of the fused equivariant attention (lmax = 2); see _triton_geometry for the plan.

Launch: `attention_forward(...)` -> (out [n_recv, 20, C], m [n_recv, H], den [n_recv, H],
scores: the prepass's (sw, gate) kept for the backward, or None).
Accumulation dtype = input dtype (fp32 on the GPU; fp64 works in the interpreter for tests).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_geometry import _envelope, _load_rij, _rotation_to_pole, _wigner2
from .common import PRE_CHUNK_EDGES, receiver_chunks

N_ROWS_IN = 9
N_ROWS_OUT = 20

# Pole-frame gather pattern the kernels hard-code (checked against o3.eaas_paths at launch).
EXPECTED_SRC = ((0, 0, 0), (1,), (2, 0, 0), (0, 0, 1, 2, 0), (1, 2, 3), (4, 3, 0, 1, 0))
EXPECTED_ZERO = ((0, 2), (), (1,), (0, 4), (), (2,))


def eaas_constants() -> dict[str, float]:
    """The non-zero pole-frame scales of the 6 lmax-2 paths, by name, from o3.eaas_paths."""
    from e2former_lammps.o3 import eaas_paths

    paths = eaas_paths(2)
    for p, src, zero in zip(paths, EXPECTED_SRC, EXPECTED_ZERO):
        nz_src = tuple(s for s, c in zip(p.src, p.scale) if c != 0.0)
        exp_src = tuple(s for m, s in enumerate(src) if m not in zero)
        zeros = tuple(m for m, c in enumerate(p.scale) if c == 0.0)
        if nz_src != exp_src or zeros != zero:
            raise RuntimeError(f"EAAS path {p} does not match the pattern the kernel hard-codes")
    s = [p.scale for p in paths]
    return dict(
        S01=s[0][1], S10=s[1][0], S11A=s[2][0], S11C=s[2][2],
        S12B=s[3][1], S12C=s[3][2], S12D=s[3][3],
        S21A=s[4][0], S21B=s[4][1], S21C=s[4][2],
        S22A=s[5][0], S22B=s[5][1], S22D=s[5][3], S22E=s[5][4],
    )


@triton.jit
def _edge_geometry(offs_e, emask, rij_ptr, pj_ptr, cutoff):
    """j, unit vector (x, y, z), distance d and envelope p (0 on masked edges) of a tile."""
    j = tl.load(pj_ptr + offs_e, mask=emask, other=0)
    rx, ry, rz = _load_rij(rij_ptr, offs_e, emask)
    d = tl.sqrt(rx * rx + ry * ry + rz * rz)
    env = tl.where(emask, _envelope(d, cutoff), 0.0)
    return j, rx / d, ry / d, rz / d, d, env


@triton.jit
def _rbf_chunk(d, centers_ptr, r0, n_rbf, inv_width, BLOCK_R: tl.constexpr):
    """Gaussians r0 .. r0 + BLOCK_R of the distances d [BLOCK_E] (0 past n_rbf):
    (offs_r, rmask, t = (d - mu) / width, rbf [BLOCK_E, BLOCK_R])."""
    offs_r = r0 + tl.arange(0, BLOCK_R)
    rmask = offs_r < n_rbf
    mu = tl.load(centers_ptr + offs_r, mask=rmask, other=0.0)
    t = (d[:, None] - mu[None, :]) * inv_width
    rbf = tl.where(rmask[None, :], tl.exp(-0.5 * t * t), 0.0)
    return offs_r, rmask, t, rbf


@triton.jit
def _window_start(d, centers_ptr, inv_spacing, WIN: tl.constexpr):
    """First Gaussian of each edge's window: WIN evenly spaced centres around d [BLOCK_E]."""
    mu0 = tl.load(centers_ptr)
    return tl.floor((d - mu0) * inv_spacing + 0.5).to(tl.int32) - WIN // 2


@triton.jit
def _rbf_at(d, centers_ptr, r, n_rbf, inv_width):
    """Gaussian r [BLOCK_E] (one per edge) of the distances d [BLOCK_E]: (rmask, t, rbf)."""
    rmask = (r >= 0) & (r < n_rbf)
    mu = tl.load(centers_ptr + r, mask=rmask, other=0.0)
    t = (d - mu) * inv_width
    return rmask, t, tl.where(rmask, tl.exp(-0.5 * t * t), 0.0)


@triton.jit
def _radial_pre(pre, d, centers_ptr, w_rbf_ptr, n_rbf, n_hid, inv_width, inv_spacing, offs_k,
                kmask, BLOCK_R: tl.constexpr, WIN: tl.constexpr, DOT: tl.constexpr):
    """The radial MLP's first layer: pre (the element embeddings) + rbf(d) @ W_rbf. WIN > 0:
    only the WIN Gaussians nearest d (evenly spaced centres; rbf_window), rows of W_rbf
    gathered per edge; WIN = 0: all n_rbf, as a tl.dot per BLOCK_R chunk."""
    if WIN > 0:
        lo = _window_start(d, centers_ptr, inv_spacing, WIN)
        for t in tl.static_range(WIN):
            rmask, _, rbf = _rbf_at(d, centers_ptr, lo + t, n_rbf, inv_width)
            w = tl.load(w_rbf_ptr + (lo + t)[:, None] * n_hid + offs_k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            pre += rbf[:, None] * w
    else:
        for r0 in range(0, n_rbf, BLOCK_R):
            offs_r, rmask, t, rbf = _rbf_chunk(d, centers_ptr, r0, n_rbf, inv_width, BLOCK_R)
            w = tl.load(w_rbf_ptr + offs_r[:, None] * n_hid + offs_k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            pre += tl.dot(rbf, w, input_precision=DOT)
    return pre


@triton.jit
def _edge_embeddings(offs_e, emask, pi_ptr, pj_ptr, species_ptr, rij_ptr, emb_recv_ptr,
                     emb_send_ptr, n_hid, offs_k, kmask):
    """An edge-parallel tile's receivers i, senders j, distances d and the radial MLP's
    element terms E_r[Z_i] + E_s[Z_j] [BLOCK_E, HID_P] (the first layer without rbf)."""
    ii = tl.load(pi_ptr + offs_e, mask=emask, other=0)
    j = tl.load(pj_ptr + offs_e, mask=emask, other=0)
    zi = tl.load(species_ptr + ii, mask=emask, other=0)
    zj = tl.load(species_ptr + j, mask=emask, other=0)
    rx, ry, rz = _load_rij(rij_ptr, offs_e, emask)
    d = tl.sqrt(rx * rx + ry * ry + rz * rz)
    m2 = emask[:, None] & kmask[None, :]
    pre = tl.load(emb_send_ptr + zj[:, None] * n_hid + offs_k[None, :], mask=m2, other=0.0)
    pre += tl.load(emb_recv_ptr + zi[:, None] * n_hid + offs_k[None, :], mask=m2, other=0.0)
    return ii, j, d, pre


@triton.jit
def _radial_out(hidden, w_out_ptr, b_out_ptr, offs_k, kmask, offs_h, hmask, H: tl.constexpr,
                DOT: tl.constexpr):
    """The radial MLP's output layer for heads offs_h: (W_gate, W_weight [HID_P, BLOCK_H],
    gate = sigmoid(g_raw), signed weight w), each [BLOCK_E, BLOCK_H]."""
    wmask = kmask[:, None] & hmask[None, :]
    w_g = tl.load(w_out_ptr + offs_k[:, None] * (2 * H) + offs_h[None, :], mask=wmask, other=0.0)
    w_w = tl.load(w_out_ptr + offs_k[:, None] * (2 * H) + H + offs_h[None, :], mask=wmask,
                  other=0.0)
    graw = tl.dot(hidden, w_g, input_precision=DOT)
    graw += tl.load(b_out_ptr + offs_h, mask=hmask, other=0.0)[None, :]
    wt = tl.dot(hidden, w_w, input_precision=DOT)
    wt += tl.load(b_out_ptr + H + offs_h, mask=hmask, other=0.0)[None, :]
    gate = 1.0 / (1.0 + tl.exp(-graw))
    return w_g, w_w, gate, wt


@triton.jit
def _edge_tile_scalars(
    offs_e, emask, i_species, rij_ptr, pj_ptr, species_ptr,
    centers_ptr, w_rbf_ptr, emb_recv_ptr, emb_send_ptr, w_out_ptr, b_out_ptr,
    n_rbf, n_hid, inv_width, inv_spacing, cutoff, offs_h, hmask,
    H: tl.constexpr, HID_P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr,
    WIN: tl.constexpr, DOT: tl.constexpr,
):
    """Geometry and radial MLP of one edge tile: j, (x, y, z) unit, d, envelope p, gate, weight."""
    j, x, y, z, d, env = _edge_geometry(offs_e, emask, rij_ptr, pj_ptr, cutoff)
    # Radial MLP: hidden = SiLU(rbf @ w_rbf + emb_recv[Z_i] + emb_send[Z_j]).
    offs_k = tl.arange(0, HID_P)
    kmask = offs_k < n_hid
    zj = tl.load(species_ptr + j, mask=emask, other=0)
    pre = tl.load(emb_send_ptr + zj[:, None] * n_hid + offs_k[None, :],
                  mask=emask[:, None] & kmask[None, :], other=0.0)
    pre += tl.load(emb_recv_ptr + i_species * n_hid + offs_k, mask=kmask, other=0.0)[None, :]
    pre = _radial_pre(pre, d, centers_ptr, w_rbf_ptr, n_rbf, n_hid, inv_width, inv_spacing,
                      offs_k, kmask, BLOCK_R, WIN, DOT)
    hidden = pre / (1.0 + tl.exp(-pre))
    _, _, gate, wt = _radial_out(hidden, w_out_ptr, b_out_ptr, offs_k, kmask, offs_h, hmask, H,
                                 DOT)
    return j, x, y, z, d, env, pre, hidden, gate, wt


@triton.jit
def _score(q, k_ptr, j, emask, offs_h, hmask, offs_d, DK: tl.constexpr, H: tl.constexpr):
    """<q_ih, k_jh> for the tile: [BLOCK_E, BLOCK_H] (and k_j [BLOCK_E, BLOCK_H, DK_P])."""
    kp = k_ptr + j.to(tl.int64)[:, None, None] * (H * DK) + offs_h[None, :, None] * DK \
        + offs_d[None, None, :]
    kmask = emask[:, None, None] & hmask[None, :, None] & (offs_d < DK)[None, None, :]
    kj = tl.load(kp, mask=kmask, other=0.0)
    return tl.sum(kj * q[None, :, :], axis=2), kj


@triton.jit
def _b(t):
    """Per-edge scalar [BLOCK_E] -> [BLOCK_E, 1, 1] for channel tiles."""
    return t[:, None, None]


# Chunk bounds (edge and receiver offsets, edge counts) change with every MD step's pair list.
# Triton specialises integer arguments on divisibility by 16 by default, so each new
# combination compiled the kernel again (seconds each) inside timed steps: LAMMPS at 100k
# atoms ran its model call 4x slower than the model alone until these became plain runtime
# integers (kernels/NOTES.md E36, confirmed on the H200 in session 19).
@triton.jit(do_not_specialize=["e_base", "e_end"])
def _edge_scores_kernel(
    q_ptr, k_ptr, rij_ptr, pi_ptr, pj_ptr, species_ptr,
    centers_ptr, w_rbf_ptr, emb_recv_ptr, emb_send_ptr, w_out_ptr, b_out_ptr, sw_ptr,
    gate_ptr, e_base, e_end, n_rbf, n_hid, inv_width, inv_spacing, cutoff, qk_scale,
    wenv_start, wenv_width, H: tl.constexpr, DK: tl.constexpr, DK_P: tl.constexpr,
    HID_P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
    WIN: tl.constexpr, DOT: tl.constexpr, WENV: tl.constexpr, GATE_OUT: tl.constexpr,
):
    """Edge-parallel prepass (PRE mode): radial MLP once per edge (all heads), score s and
    signed weight w -> sw[e - e_base] = [s (H), w (H)] for the edges of one chunk (WENV: w
    times the weight envelope g(d); every consumer of sw then has it); GATE_OUT: also the
    gate sigmoid(g_raw) -> gate[e - e_base] (H), for the head backward."""
    offs_e = e_base + tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < e_end
    offs_k = tl.arange(0, HID_P)
    kmask = offs_k < n_hid
    ii, j, d, pre = _edge_embeddings(offs_e, emask, pi_ptr, pj_ptr, species_ptr, rij_ptr,
                                     emb_recv_ptr, emb_send_ptr, n_hid, offs_k, kmask)
    pre = _radial_pre(pre, d, centers_ptr, w_rbf_ptr, n_rbf, n_hid, inv_width, inv_spacing,
                      offs_k, kmask, BLOCK_R, WIN, DOT)
    hidden = pre / (1.0 + tl.exp(-pre))
    if WENV:
        g_env = _envelope(tl.maximum(d - wenv_start, 0.0), wenv_width)
    offs_d = tl.arange(0, DK_P)
    dmask = offs_d < DK
    out = sw_ptr + (offs_e - e_base).to(tl.int64)[:, None] * (2 * H)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        hmask = offs_h < H
        _, _, gate, wt = _radial_out(hidden, w_out_ptr, b_out_ptr, offs_k, kmask, offs_h,
                                     hmask, H, DOT)
        m3 = emask[:, None, None] & hmask[None, :, None] & dmask[None, None, :]
        hd = offs_h[None, :, None] * DK + offs_d[None, None, :]
        qi = tl.load(q_ptr + ii.to(tl.int64)[:, None, None] * (H * DK) + hd, mask=m3, other=0.0)
        kj = tl.load(k_ptr + j.to(tl.int64)[:, None, None] * (H * DK) + hd, mask=m3, other=0.0)
        s = gate * tl.sum(qi * kj, axis=2) * qk_scale
        m2h = emask[:, None] & hmask[None, :]
        if WENV:
            wt = wt * g_env[:, None]
        tl.store(out + offs_h[None, :], s, mask=m2h)
        tl.store(out + H + offs_h[None, :], wt, mask=m2h)
        if GATE_OUT:
            gp = gate_ptr + (offs_e - e_base).to(tl.int64)[:, None] * H + offs_h[None, :]
            tl.store(gp, gate, mask=m2h)


@triton.jit
def _acc(acc, corr3, DEFER: tl.constexpr, x, scale):
    """Online-softmax accumulation of one output row: acc * corr + scale * x (edges summed now,
    or kept per edge slot and summed once at the end when DEFER)."""
    if DEFER:
        return acc * corr3 + x * scale
    else:
        return acc * corr3 + tl.sum(x, axis=0, keep_dims=True) * scale


@triton.jit(do_not_specialize=["r_base", "e_base"])  # chunk bounds (above)
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, rij_ptr, pj_ptr, species_ptr, rowptr_ptr,
    centers_ptr, w_rbf_ptr, emb_recv_ptr, emb_send_ptr, w_out_ptr, b_out_ptr,
    out_ptr, m_ptr, den_ptr, sw_ptr, r_base, e_base,
    n_rbf, n_hid, inv_width, inv_spacing, cutoff, eps, qk_scale, wenv_start, wenv_width,
    H: tl.constexpr, DK: tl.constexpr, CH: tl.constexpr,
    DK_P: tl.constexpr, CH_P: tl.constexpr, HID_P: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, DEFER: tl.constexpr,
    WIN: tl.constexpr, DOT: tl.constexpr, PRE: tl.constexpr, WENV: tl.constexpr,
    S01: tl.constexpr, S10: tl.constexpr, S11A: tl.constexpr, S11C: tl.constexpr,
    S12B: tl.constexpr, S12C: tl.constexpr, S12D: tl.constexpr,
    S21A: tl.constexpr, S21B: tl.constexpr, S21C: tl.constexpr,
    S22A: tl.constexpr, S22B: tl.constexpr, S22D: tl.constexpr, S22E: tl.constexpr,
):
    i = r_base + tl.program_id(0)
    hb = tl.program_id(1)
    C: tl.constexpr = H * CH
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs_h < H
    offs_d = tl.arange(0, DK_P)
    offs_c = tl.arange(0, CH_P)
    cmask = hmask[:, None] & (offs_c < CH)[None, :]  # [BLOCK_H, CH_P]
    q = tl.load(q_ptr + i * (H * DK) + offs_h[:, None] * DK + offs_d[None, :],
                mask=hmask[:, None] & (offs_d < DK)[None, :], other=0.0)
    dtype = q.dtype
    i_species = tl.load(species_ptr + i)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    chan = (offs_h * CH)[:, None] + offs_c[None, :]  # [BLOCK_H, CH_P] channel index

    m = tl.full([BLOCK_H], -1.0e30, dtype)
    lsum = tl.zeros([BLOCK_H], dtype)
    ACC_E: tl.constexpr = BLOCK_E if DEFER else 1
    a00 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a01 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a02 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a03 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a04 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a05 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a06 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a07 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a08 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a09 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a10 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a11 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a12 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a13 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a14 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a15 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a16 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a17 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a18 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)
    a19 = tl.zeros([ACC_E, BLOCK_H, CH_P], dtype)

    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        if PRE:
            # score and signed weight precomputed by _edge_scores_kernel for this chunk
            j, x, y, z, d, env = _edge_geometry(offs_e, emask, rij_ptr, pj_ptr, cutoff)
            swp = sw_ptr + (offs_e - e_base).to(tl.int64)[:, None] * (2 * H) + offs_h[None, :]
            swmask = emask[:, None] & hmask[None, :]
            s = tl.load(swp, mask=swmask, other=0.0)
            wt = tl.load(swp + H, mask=swmask, other=0.0)
        else:
            j, x, y, z, d, env, pre, hidden, gate, wt = _edge_tile_scalars(
                offs_e, emask, i_species, rij_ptr, pj_ptr, species_ptr,
                centers_ptr, w_rbf_ptr, emb_recv_ptr, emb_send_ptr, w_out_ptr, b_out_ptr,
                n_rbf, n_hid, inv_width, inv_spacing, cutoff, offs_h, hmask, H, HID_P, BLOCK_E,
                BLOCK_R, WIN, DOT)
            qk, kj = _score(q, k_ptr, j, emask, offs_h, hmask, offs_d, DK, H)
            s = gate * qk * qk_scale
            if WENV:
                g_env = _envelope(tl.maximum(d - wenv_start, 0.0), wenv_width)
                wt = wt * g_env[:, None]
        s = tl.where(emask[:, None], s, -1.0e30)
        m_new = tl.maximum(m, tl.max(s, axis=0))
        corr = tl.exp(m - m_new)
        a = tl.exp(s - m_new[None, :]) * env[:, None]
        lsum = lsum * corr + tl.sum(a, axis=0)
        wa = (a * wt)[:, :, None]  # [BLOCK_E, BLOCK_H, 1]
        corr3 = corr[None, :, None]
        m = m_new

        r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotation_to_pole(x, y, z)
        (d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
         d30, d31, d32, d33, d34, d40, d41, d42, d43, d44) = _wigner2(
            r00, r01, r02, r10, r11, r12, r20, r21, r22)
        r00 = _b(r00)
        r01 = _b(r01)
        r02 = _b(r02)
        r10 = _b(r10)
        r11 = _b(r11)
        r12 = _b(r12)
        r20 = _b(r20)
        r21 = _b(r21)
        r22 = _b(r22)
        vp = v_ptr + j.to(tl.int64)[:, None, None] * (9 * C) + chan[None, :, :]
        vmask = emask[:, None, None] & cmask[None, :, :]
        v0 = tl.load(vp, mask=vmask, other=0.0) * wa
        # path 0 -> 1: t = (0, S01 u0, 0); out = R^T t
        a00 = _acc(a00, corr3, DEFER, r10 * v0, S01)
        a01 = _acc(a01, corr3, DEFER, r11 * v0, S01)
        a02 = _acc(a02, corr3, DEFER, r12 * v0, S01)
        v1 = tl.load(vp + 1 * C, mask=vmask, other=0.0) * wa
        v2 = tl.load(vp + 2 * C, mask=vmask, other=0.0) * wa
        v3 = tl.load(vp + 3 * C, mask=vmask, other=0.0) * wa
        u0 = r00 * v1 + r01 * v2 + r02 * v3
        u1 = r10 * v1 + r11 * v2 + r12 * v3
        u2 = r20 * v1 + r21 * v2 + r22 * v3
        # path 1 -> 0
        a03 = _acc(a03, corr3, DEFER, u1, S10)
        # path 1 -> 1: t = (S11A u2, 0, S11C u0)
        t0 = S11A * u2
        t2 = S11C * u0
        a04 = _acc(a04, corr3, DEFER, r00 * t0 + r20 * t2, 1.0)
        a05 = _acc(a05, corr3, DEFER, r01 * t0 + r21 * t2, 1.0)
        a06 = _acc(a06, corr3, DEFER, r02 * t0 + r22 * t2, 1.0)
        # path 1 -> 2: t = (0, S12B u0, S12C u1, S12D u2, 0); out = D2^T t
        t1 = S12B * u0
        t2 = S12C * u1
        t3 = S12D * u2
        a07 = _acc(a07, corr3, DEFER, _b(d10) * t1 + _b(d20) * t2 + _b(d30) * t3, 1.0)
        a08 = _acc(a08, corr3, DEFER, _b(d11) * t1 + _b(d21) * t2 + _b(d31) * t3, 1.0)
        a09 = _acc(a09, corr3, DEFER, _b(d12) * t1 + _b(d22) * t2 + _b(d32) * t3, 1.0)
        a10 = _acc(a10, corr3, DEFER, _b(d13) * t1 + _b(d23) * t2 + _b(d33) * t3, 1.0)
        a11 = _acc(a11, corr3, DEFER, _b(d14) * t1 + _b(d24) * t2 + _b(d34) * t3, 1.0)
        # l1 = 2: u = D2 v
        w0 = tl.load(vp + 4 * C, mask=vmask, other=0.0) * wa
        w1 = tl.load(vp + 5 * C, mask=vmask, other=0.0) * wa
        w2 = tl.load(vp + 6 * C, mask=vmask, other=0.0) * wa
        w3 = tl.load(vp + 7 * C, mask=vmask, other=0.0) * wa
        w4 = tl.load(vp + 8 * C, mask=vmask, other=0.0) * wa
        g0 = _b(d00) * w0 + _b(d01) * w1 + _b(d02) * w2 + _b(d03) * w3 + _b(d04) * w4
        g1 = _b(d10) * w0 + _b(d11) * w1 + _b(d12) * w2 + _b(d13) * w3 + _b(d14) * w4
        g2 = _b(d20) * w0 + _b(d21) * w1 + _b(d22) * w2 + _b(d23) * w3 + _b(d24) * w4
        g3 = _b(d30) * w0 + _b(d31) * w1 + _b(d32) * w2 + _b(d33) * w3 + _b(d34) * w4
        g4 = _b(d40) * w0 + _b(d41) * w1 + _b(d42) * w2 + _b(d43) * w3 + _b(d44) * w4
        # path 2 -> 1: t = (S21A g1, S21B g2, S21C g3); out = R^T t
        t0 = S21A * g1
        t1 = S21B * g2
        t2 = S21C * g3
        a12 = _acc(a12, corr3, DEFER, r00 * t0 + r10 * t1 + r20 * t2, 1.0)
        a13 = _acc(a13, corr3, DEFER, r01 * t0 + r11 * t1 + r21 * t2, 1.0)
        a14 = _acc(a14, corr3, DEFER, r02 * t0 + r12 * t1 + r22 * t2, 1.0)
        # path 2 -> 2: t = (S22A g4, S22B g3, 0, S22D g1, S22E g0); out = D2^T t
        t0 = S22A * g4
        t1 = S22B * g3
        t3 = S22D * g1
        t4 = S22E * g0
        a15 = _acc(a15, corr3, DEFER,
            _b(d00) * t0 + _b(d10) * t1 + _b(d30) * t3 + _b(d40) * t4, 1.0)
        a16 = _acc(a16, corr3, DEFER,
            _b(d01) * t0 + _b(d11) * t1 + _b(d31) * t3 + _b(d41) * t4, 1.0)
        a17 = _acc(a17, corr3, DEFER,
            _b(d02) * t0 + _b(d12) * t1 + _b(d32) * t3 + _b(d42) * t4, 1.0)
        a18 = _acc(a18, corr3, DEFER,
            _b(d03) * t0 + _b(d13) * t1 + _b(d33) * t3 + _b(d43) * t4, 1.0)
        a19 = _acc(a19, corr3, DEFER,
            _b(d04) * t0 + _b(d14) * t1 + _b(d34) * t3 + _b(d44) * t4, 1.0)

    m = tl.where(m == -1.0e30, 0.0, m)
    den = lsum + eps * tl.exp(-m)
    tl.store(m_ptr + i * H + offs_h, m, mask=hmask)
    tl.store(den_ptr + i * H + offs_h, den, mask=hmask)
    inv = (1.0 / den)[:, None]
    op = out_ptr + i.to(tl.int64) * (20 * C) + chan
    tl.store(op + 0 * C, tl.sum(a00, axis=0) * inv, mask=cmask)
    tl.store(op + 1 * C, tl.sum(a01, axis=0) * inv, mask=cmask)
    tl.store(op + 2 * C, tl.sum(a02, axis=0) * inv, mask=cmask)
    tl.store(op + 3 * C, tl.sum(a03, axis=0) * inv, mask=cmask)
    tl.store(op + 4 * C, tl.sum(a04, axis=0) * inv, mask=cmask)
    tl.store(op + 5 * C, tl.sum(a05, axis=0) * inv, mask=cmask)
    tl.store(op + 6 * C, tl.sum(a06, axis=0) * inv, mask=cmask)
    tl.store(op + 7 * C, tl.sum(a07, axis=0) * inv, mask=cmask)
    tl.store(op + 8 * C, tl.sum(a08, axis=0) * inv, mask=cmask)
    tl.store(op + 9 * C, tl.sum(a09, axis=0) * inv, mask=cmask)
    tl.store(op + 10 * C, tl.sum(a10, axis=0) * inv, mask=cmask)
    tl.store(op + 11 * C, tl.sum(a11, axis=0) * inv, mask=cmask)
    tl.store(op + 12 * C, tl.sum(a12, axis=0) * inv, mask=cmask)
    tl.store(op + 13 * C, tl.sum(a13, axis=0) * inv, mask=cmask)
    tl.store(op + 14 * C, tl.sum(a14, axis=0) * inv, mask=cmask)
    tl.store(op + 15 * C, tl.sum(a15, axis=0) * inv, mask=cmask)
    tl.store(op + 16 * C, tl.sum(a16, axis=0) * inv, mask=cmask)
    tl.store(op + 17 * C, tl.sum(a17, axis=0) * inv, mask=cmask)
    tl.store(op + 18 * C, tl.sum(a18, axis=0) * inv, mask=cmask)
    tl.store(op + 19 * C, tl.sum(a19, axis=0) * inv, mask=cmask)


DOT_PRECISIONS = ("ieee", "tf32")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision of the radial MLP in all attention kernels: "ieee" (full fp32,
    the default) or "tf32" (tensor cores; inputs rounded to a 10-bit mantissa), chosen with
    the environment variable E2FORMER_DOT_PRECISION; float64 always "ieee". Only the radial
    MLP (per-edge scalars) uses tl.dot: geometry, rotations and the channel sums stay fp32.
    Measured error and speed: kernels/NOTES.md, E16."""
    from e2former_lammps.switches import env_choice  # the package imports kernels/

    value = env_choice("E2FORMER_DOT_PRECISION", DOT_PRECISIONS, "ieee")
    return value if dtype == torch.float32 else "ieee"


def weight_envelope_args(cutoff: float, width: float | None) -> tuple[float, float]:
    """(start, width) in Å of the weight envelope g for the kernels (unused when None)."""
    return (0.0, 1.0) if width is None else (float(cutoff) - float(width), float(width))


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def heads_per_program(lanes: int, n_heads: int, ch: int) -> int:
    """BLOCK_H for tiles `lanes` = BLOCK_H x CH_P wide (heads x channels per head).

    The tiles were tuned for the paper's 2 channels per head. The same BLOCK_H with 8 channels
    per head (the shipped model: 64 channels, 8 heads) makes every [BLOCK_E, BLOCK_H, CH_P]
    accumulator 4x larger (register spills) while most heads are masked: kernels/NOTES.md E20.
    """
    return max(1, min(lanes // _pow2(ch), _pow2(n_heads)))


def default_blocks(n_heads: int, ch: int, device: torch.device) -> dict:
    """Tile sizes: BLOCK_E edges per tile, BLOCK_H heads per program, BLOCK_R rbf chunk;
    PRE: edge-parallel prepass of the radial MLP + score (else all fused in one kernel, which
    needs BLOCK_H >= 16 for its tl.dot); DEFER: sum over the tile's edges once at the end
    instead of per tile. ch: channels per head."""
    # Fastest of the autotuned variants on the H100 at 10k water atoms (kernels/NOTES.md, E5):
    # BLOCK_H 64 at 2 channels per head
    return dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=heads_per_program(128, n_heads, ch),
                BLOCK_R=32, num_warps=4)


RBF_WINDOW_WIDTHS = 8.0


def rbf_window(n_rbf: int, width: float, spacing: float) -> tuple[int, float]:
    """(WIN, 1 / spacing): the kernels visit only the WIN Gaussians nearest each distance
    when the centres are evenly spaced (spacing > 0, Å); WIN = 0: all n_rbf. Every centre
    left out is more than RBF_WINDOW_WIDTHS + 1/2 widths from d, so its Gaussian is below
    exp(-36) ~ 2e-16: the same numbers as the dense sum in float32 and float64."""
    if spacing <= 0.0:
        return 0, 0.0
    half = math.ceil(RBF_WINDOW_WIDTHS * width / spacing) + 1
    win = 2 * half + 1
    return (win, 1.0 / spacing) if win < n_rbf else (0, 0.0)


def edge_scores(sw, q, k, rij, pair_i, pair_j, species, centers, rbf_width, rbf_spacing, w_rbf,
                emb_recv, emb_send, w_out, b_out, cutoff, e0: int, e1: int,
                blocks=None, weight_envelope: float | None = None, gate=None) -> None:
    """The PRE prepass for edges [e0, e1): sw[e - e0] = [s (H), w (H)] (score, signed weight;
    with weight_envelope, w g); gate (a tensor of at least (e1 - e0) H, or None): also
    gate[e - e0] = sigmoid(g_raw) (H)."""
    if e1 <= e0:
        return
    n_heads, d_k = q.shape[1], q.shape[2]
    n_rbf, n_hid = w_rbf.shape
    win, inv_spacing = rbf_window(n_rbf, rbf_width, rbf_spacing)
    bl = blocks or default_blocks(n_heads, 1, q.device)  # only its PRE_* and BLOCK_R
    # PRE_BLOCK_H 16: 48 registers against 255 at 32, the prepass 0.35 ms faster at 10k
    # water atoms in the paper configuration (H200, kernels/NOTES.md E35)
    be = bl.get("PRE_BLOCK_E", 32)
    _edge_scores_kernel[(triton.cdiv(e1 - e0, be),)](
        q, k, rij, pair_i, pair_j, species, centers, w_rbf, emb_recv, emb_send,
        w_out, b_out, sw, sw if gate is None else gate, e0, e1, n_rbf, n_hid,
        1.0 / rbf_width, inv_spacing, float(cutoff),
        1.0 / math.sqrt(d_k), *weight_envelope_args(cutoff, weight_envelope), H=n_heads,
        DK=d_k, DK_P=_pow2(d_k),
        HID_P=_pow2(n_hid, 16), BLOCK_E=be, BLOCK_H=bl.get("PRE_BLOCK_H", 16),
        BLOCK_R=bl["BLOCK_R"], WIN=win, DOT=dot_precision(q.dtype),
        WENV=weight_envelope is not None, GATE_OUT=gate is not None,
        num_warps=bl.get("PRE_NUM_WARPS", 8),
        **({"num_stages": bl["PRE_NUM_STAGES"]} if "PRE_NUM_STAGES" in bl else {}))


def attention_forward(q, k, v, rij, pair_i, pair_j, species, rowptr, centers, rbf_width,
                      rbf_spacing, w_rbf, emb_recv, emb_send, w_out, b_out, cutoff, softmax_eps,
                      blocks=None, weight_envelope: float | None = None,
                      keep_scores: bool = False):
    """Run the fused forward. All float tensors one dtype, contiguous. See module docstring;
    weight_envelope: kernels.attention.reference's. keep_scores: return the prepass's
    scores for all edges (sw [E, 2H] flat, gate [E, H] flat) for the backward, which then
    skips its own prepass (3H floats per edge kept instead of one chunk's scratch reused)."""
    n_recv, n_heads, d_k = q.shape
    channels = v.shape[-1]
    ch = channels // n_heads
    n_rbf, n_hid = w_rbf.shape
    out = torch.empty(n_recv, N_ROWS_OUT, channels, dtype=q.dtype, device=q.device)
    m = torch.empty(n_recv, n_heads, dtype=q.dtype, device=q.device)
    den = torch.empty(n_recv, n_heads, dtype=q.dtype, device=q.device)
    if n_recv == 0:
        return out, m, den, None
    bl = blocks or default_blocks(n_heads, ch, q.device)
    consts = eaas_constants()
    win, inv_spacing = rbf_window(n_rbf, rbf_width, rbf_spacing)
    common = dict(H=n_heads, DK=d_k, CH=ch, DK_P=_pow2(d_k), CH_P=_pow2(ch), WIN=win,
                  HID_P=_pow2(n_hid, 16), BLOCK_E=bl["BLOCK_E"], BLOCK_H=bl["BLOCK_H"],
                  BLOCK_R=bl["BLOCK_R"], DEFER=bl.get("DEFER", False),
                  DOT=dot_precision(q.dtype), WENV=weight_envelope is not None, **consts,
                  num_warps=bl.get("num_warps", 4))
    scal = (n_rbf, n_hid, 1.0 / rbf_width, inv_spacing, float(cutoff), float(softmax_eps),
            1.0 / math.sqrt(d_k), *weight_envelope_args(cutoff, weight_envelope))
    n_hb = triton.cdiv(n_heads, bl["BLOCK_H"])
    if not bl.get("PRE", False):
        _attention_fwd_kernel[(n_recv, n_hb)](
            q, k, v, rij, pair_j, species, rowptr,
            centers, w_rbf, emb_recv, emb_send, w_out, b_out,
            out, m, den, out, 0, 0, *scal, PRE=False, **common)
        return out, m, den, None
    chunks = receiver_chunks(rowptr, pair_i.numel(), PRE_CHUNK_EDGES)
    # kept: one buffer for all edges, each chunk writing from its first edge; else one
    # chunk-sized scratch reused
    n_e = pair_i.numel() if keep_scores else max(e1 - e0 for _, _, e0, e1 in chunks)
    sw = torch.empty(n_e * 2 * n_heads + 1, dtype=q.dtype, device=q.device)
    gate = (torch.empty(n_e * n_heads + 1, dtype=q.dtype, device=q.device) if keep_scores
            else None)
    for r0, r1, e0, e1 in chunks:
        sw_c, gate_c = ((sw[e0 * 2 * n_heads:], gate[e0 * n_heads:]) if keep_scores
                        else (sw, None))
        edge_scores(sw_c, q, k, rij, pair_i, pair_j, species, centers, rbf_width,
                    rbf_spacing, w_rbf, emb_recv, emb_send, w_out, b_out, cutoff, e0, e1, bl,
                    weight_envelope, gate=gate_c)
        _attention_fwd_kernel[(r1 - r0, n_hb)](
            q, k, v, rij, pair_j, species, rowptr,
            centers, w_rbf, emb_recv, emb_send, w_out, b_out,
            out, m, den, sw_c, r0, e0, *scal, PRE=True, **common)
    return out, m, den, ((sw, gate) if keep_scores else None)
