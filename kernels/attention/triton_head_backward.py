"""Backward of the head-sized part of the attention (softmax, score, gate, radial MLP) in Triton.

Given g_ijh = dL/dalpha_ijh (from the channel kernel, triton_backward.py) and the per-receiver
sums D_ih = sum_j g_ijh alpha_ijh, with
    alpha = w a / den_i,  a = p(d) exp(s - m_i),  s = sigmoid(g_raw) <q_i, k_j> / sqrt(d_k),
    (g_raw, w) = SiLU(pre) W_out + b_out,  pre = rbf(d) W_rbf + E_r[Z_i] + E_s[Z_j],
and m_i, den_i the forward's statistics (den includes eps * exp(-m)):
    dw = g a / den,  dA = (g w - D_i) / den,  ds = dA a,  dp = sum_h dA exp(s - m_i),
    dq_i += sum_j ds sigmoid(g_raw) k_j / sqrt(d_k),  dk_j += ds sigmoid(g_raw) q_i / sqrt(d_k),
    dg_raw = ds s (1 - sigmoid(g_raw)),
    dpre = ([dg_raw, dw] W_out^T) SiLU'(pre),  dd = (dpre W_rbf^T) . drbf/dd + dp p'(d).
Split in three by what each part is sized by (kernels/NOTES.md E52):
  * the head kernel, one program per (receiver, head block) streaming the receiver's edges:
    everything per (edge, head) from the prepass's s, w and gate (the forward's when it kept
    them, E53, else the backward's own; no radial MLP and no <q, k> recomputed, no tl.dot):
    dq_i summed in registers and stored once, dk_j by atomics (or, REDUCE "sorted",
    dL/d<q_i, k_j> left for the sender kernel), [dg_raw, dw] per edge, and the envelope terms
    of dd per head block;
  * [dg_raw, dw] W_out^T for all edges of the chunk: one matrix product (cuBLAS);
  * the radial kernel, edge-parallel: recomputes pre (the Gaussians near d), SiLU'(pre), dpre,
    and dd; dpre is kept only when the weights need gradients.
Per edge this writes [2H] + [hidden] + a few scalars, all scalars (no equivariant tensor).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_geometry import _envelope, _envelope_slope, _load_rij
from .triton_forward import (_edge_embeddings, _pow2, _radial_pre, _rbf_at, _rbf_chunk,
                             _window_start, dot_precision, rbf_window, weight_envelope_args)


@triton.jit(do_not_specialize=["r_base", "e_base", "n_edges"])  # triton_forward: chunk bounds
def _head_bwd_kernel(
    q_ptr, k_ptr, rij_ptr, pj_ptr, rowptr_ptr, sw_ptr, gate_ptr, m_ptr, den_ptr, galpha_ptr,
    dsum_ptr, dq_ptr, dk_ptr, do_ptr, ddh_ptr,
    r_base, e_base, n_edges, cutoff, qk_scale, wenv_start, wenv_width,
    H: tl.constexpr, DK: tl.constexpr, DK_P: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr, ATOMIC_DK: tl.constexpr, WENV: tl.constexpr,
):
    """Program (receiver i, head block hb). sw [E_c, 2H] = (s, w) and gate [E_c, H] from the
    prepass (WENV: w is already times g(d)); writes do [E_c, 2H] = (dg_raw, dw) (dw
    of the raw weight) and ddh [n_hb, E_c], this head block's envelope terms of dL/dd. do
    may be sw itself: each element is read before it is written, by the same program."""
    i = r_base + tl.program_id(0)
    hb = tl.program_id(1)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs_h < H
    offs_d = tl.arange(0, DK_P)
    hd = offs_h[:, None] * DK + offs_d[None, :]
    qd_mask = hmask[:, None] & (offs_d < DK)[None, :]
    qi = tl.load(q_ptr + i.to(tl.int64) * (H * DK) + hd, mask=qd_mask, other=0.0)
    mh = tl.load(m_ptr + i * H + offs_h, mask=hmask, other=0.0)
    inv_den = 1.0 / tl.load(den_ptr + i * H + offs_h, mask=hmask, other=1.0)
    d_i = tl.load(dsum_ptr + i * H + offs_h, mask=hmask, other=0.0)
    dq = tl.zeros([BLOCK_H, DK_P], dtype=qi.dtype)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        le = (offs_e - e_base).to(tl.int64)  # chunk-local edge index
        j = tl.load(pj_ptr + offs_e, mask=emask, other=0)
        rx, ry, rz = _load_rij(rij_ptr, offs_e, emask)
        d = tl.sqrt(rx * rx + ry * ry + rz * rz)
        env = tl.where(emask, _envelope(d, cutoff), 0.0)
        m2h = emask[:, None] & hmask[None, :]
        row = le[:, None] * (2 * H) + offs_h[None, :]
        s = tl.load(sw_ptr + row, mask=m2h, other=0.0)
        wt = tl.load(sw_ptr + row + H, mask=m2h, other=0.0)
        gate = tl.load(gate_ptr + le[:, None] * H + offs_h[None, :], mask=m2h, other=0.0)
        g = tl.load(galpha_ptr + le[:, None] * H + offs_h[None, :], mask=m2h, other=0.0)
        expo = tl.where(m2h, tl.exp(s - mh[None, :]), 0.0)
        a = env[:, None] * expo
        d_wt = g * a * inv_den[None, :]  # dL/dw (w as alpha sees it: times g(d) with WENV)
        d_a = tl.where(m2h, (g * wt - d_i[None, :]) * inv_den[None, :], 0.0)
        d_s = d_a * a
        dd = tl.sum(d_a * expo, axis=1) * _envelope_slope(d, cutoff)
        if WENV:  # alpha's weight is w g(d): dL/dg = sum_h dL/d(w g) w = (.. w g) g' / g
            d_in = tl.maximum(d - wenv_start, 0.0)
            g_env = _envelope(d_in, wenv_width)
            slope_over_g = tl.where(g_env > 0.0, _envelope_slope(d_in, wenv_width) / g_env, 0.0)
            dd += tl.sum(d_wt * wt, axis=1) * slope_over_g
            d_wt = d_wt * g_env[:, None]
        d_qk = d_s * gate * qk_scale
        d_graw = d_s * s * (1.0 - gate)  # s = gate <q, k> / sqrt(d_k)
        kp = j.to(tl.int64)[:, None, None] * (H * DK) + hd[None, :, :]
        m3 = emask[:, None, None] & qd_mask[None, :, :]
        kj = tl.load(k_ptr + kp, mask=m3, other=0.0)
        dq += tl.sum(d_qk[:, :, None] * kj, axis=0)
        if ATOMIC_DK:
            tl.atomic_add(dk_ptr + kp, d_qk[:, :, None] * qi[None, :, :], mask=m3,
                          sem="relaxed")
        else:  # dL/d<q_i, k_j> for the sender kernel, in place of the g it has read
            tl.store(galpha_ptr + le[:, None] * H + offs_h[None, :], d_qk, mask=m2h)
        tl.store(do_ptr + row, d_graw, mask=m2h)
        tl.store(do_ptr + row + H, d_wt, mask=m2h)
        tl.store(ddh_ptr + hb * n_edges + le, dd, mask=emask)
    # this program alone owns receiver i's head block: a store, no atomics
    tl.store(dq_ptr + i.to(tl.int64) * (H * DK) + hd, dq, mask=qd_mask)


@triton.jit(do_not_specialize=["e_base", "e_end"])  # triton_forward: chunk bounds
def _radial_bwd_kernel(
    rij_ptr, pi_ptr, pj_ptr, species_ptr, centers_ptr, w_rbf_ptr, emb_recv_ptr, emb_send_ptr,
    dhid_ptr, ddh_ptr, dd_ptr, dpre_ptr,
    e_base, e_end, n_hb, n_rbf, n_hid, inv_width, inv_spacing,
    HID_P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, WIN: tl.constexpr,
    DOT: tl.constexpr, WEIGHT_GRADS: tl.constexpr,
):
    """Edge-parallel: dpre = dL/dhidden * SiLU'(pre) with pre recomputed, and
    dd = dpre . (W_rbf^T drbf/dd) + the head blocks' envelope terms (ddh [n_hb, E_c])."""
    offs_e = e_base + tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < e_end
    le = (offs_e - e_base).to(tl.int64)
    n_edges = e_end - e_base
    offs_k = tl.arange(0, HID_P)
    kmask = offs_k < n_hid
    m2 = emask[:, None] & kmask[None, :]
    _, _, d, pre = _edge_embeddings(offs_e, emask, pi_ptr, pj_ptr, species_ptr, rij_ptr,
                                    emb_recv_ptr, emb_send_ptr, n_hid, offs_k, kmask)
    if WIN > 0:
        # one pass over the window's rows of W_rbf gives both pre and w_dd = W_rbf^T
        # drbf/dd, and dd's radial term is dpre . w_dd; a loop, not unrolled: unrolled, most
        # tiles compiled to 32 registers and 3 KB of spills, 11x slower (E52)
        w_dd = tl.zeros([BLOCK_E, HID_P], dtype=pre.dtype)
        lo = _window_start(d, centers_ptr, inv_spacing, WIN)
        for t in range(WIN):
            rmask, tt, rbf = _rbf_at(d, centers_ptr, lo + t, n_rbf, inv_width)
            w_r = tl.load(w_rbf_ptr + (lo + t)[:, None] * n_hid + offs_k[None, :],
                          mask=rmask[:, None] & kmask[None, :], other=0.0)
            pre += rbf[:, None] * w_r
            w_dd += (rbf * (-tt * inv_width))[:, None] * w_r
    else:
        pre = _radial_pre(pre, d, centers_ptr, w_rbf_ptr, n_rbf, n_hid, inv_width,
                          inv_spacing, offs_k, kmask, BLOCK_R, WIN, DOT)
    sig = 1.0 / (1.0 + tl.exp(-pre))
    dhid = tl.load(dhid_ptr + le[:, None] * n_hid + offs_k[None, :], mask=m2, other=0.0)
    dpre = dhid * (sig * (1.0 + pre * (1.0 - sig)))
    if WEIGHT_GRADS:
        tl.store(dpre_ptr + le[:, None] * n_hid + offs_k[None, :], dpre, mask=m2)
    dd = tl.zeros([BLOCK_E], dtype=pre.dtype)
    for hb in range(0, n_hb):
        dd += tl.load(ddh_ptr + hb * n_edges + le, mask=emask, other=0.0)
    if WIN > 0:
        dd += tl.sum(dpre * w_dd, axis=1)
    else:
        for r0 in range(0, n_rbf, BLOCK_R):
            offs_r, rmask, t, rbf = _rbf_chunk(d, centers_ptr, r0, n_rbf, inv_width, BLOCK_R)
            w_t = tl.load(w_rbf_ptr + offs_r[None, :] * n_hid + offs_k[:, None],
                          mask=rmask[None, :] & kmask[:, None], other=0.0)
            drbf = tl.dot(dpre, w_t, input_precision=DOT)
            dd += tl.sum(drbf * rbf * (-t * inv_width), axis=1)
    tl.store(dd_ptr + le, dd, mask=emask)


def default_head_blocks(n_heads: int) -> dict[str, int]:
    # the head kernel (BLOCK_E edges x BLOCK_H heads per tile) and the radial kernel
    # (RADIAL_BLOCK_E edges per program); E52 in kernels/NOTES.md
    return dict(BLOCK_E=8, BLOCK_H=32, num_warps=4,
                RADIAL_BLOCK_E=16, BLOCK_R=32, RADIAL_NUM_WARPS=4)


def head_backward(q, k, rij, pair_i, pair_j, species, rowptr, centers, rbf_width, rbf_spacing,
                  w_rbf, emb_recv, emb_send, w_out, cutoff, sw, gate, m, den, galpha, dsum, dq,
                  dk, r0: int, r1: int, e0: int, e1: int, weight_grads: bool,
                  atomic_dk: bool = True, weight_envelope: float | None = None,
                  overwrite_scores: bool = True):
    """Run the head backward for receivers [r0, r1) (edges [e0, e1)); stores dq of those
    receivers, adds into dk. sw [E_c, 2H], gate [E_c, H]: the chunk's prepass
    (triton_forward.edge_scores with gate, in the forward or the backward); galpha is
    chunk-local [E_c, H], dsum [n, H].

    Returns (dd [e1 - e0] = dL/d|r_ij| of the radial MLP and envelopes, d_o [e1 - e0, 2H] =
    dL/d(g_raw, w), d_pre [e1 - e0, hidden] or None). With atomic_dk and overwrite_scores,
    d_o is written over sw (read by nothing after this); without atomic_dk, dk is left to
    the sender kernel, which reads sw, and galpha is overwritten with dL/d<q_i, k_j> (what
    that kernel needs).
    weight_envelope: alpha's weight is w g(d).
    """
    n_heads, d_k = q.shape[1], q.shape[2]
    n_rbf, n_hid = w_rbf.shape
    n_e = e1 - e0
    bl = default_head_blocks(n_heads)
    block_h = min(bl["BLOCK_H"], _pow2(n_heads))
    n_hb = triton.cdiv(n_heads, block_h)
    sw = sw[:n_e * 2 * n_heads].view(n_e, 2 * n_heads)
    d_o = sw if atomic_dk and overwrite_scores else torch.empty_like(sw)
    ddh = torch.empty(n_hb, n_e, dtype=q.dtype, device=q.device)
    _head_bwd_kernel[(r1 - r0, n_hb)](
        q, k, rij, pair_j, rowptr, sw, gate, m, den, galpha, dsum, dq, dk, d_o, ddh,
        r0, e0, n_e, float(cutoff), 1.0 / math.sqrt(d_k),
        *weight_envelope_args(cutoff, weight_envelope),
        H=n_heads, DK=d_k, DK_P=_pow2(d_k), BLOCK_E=bl["BLOCK_E"], BLOCK_H=block_h,
        ATOMIC_DK=atomic_dk, WENV=weight_envelope is not None, num_warps=bl["num_warps"])
    # dL/dhidden for every edge of the chunk at once: [E_c, 2H] x [2H, hidden]
    d_hidden = torch.mm(d_o, w_out.t())
    dd = torch.empty(n_e, dtype=q.dtype, device=q.device)
    d_pre = torch.empty(n_e, n_hid, dtype=q.dtype, device=q.device) if weight_grads else dd
    win, inv_spacing = rbf_window(n_rbf, rbf_width, rbf_spacing)
    _radial_bwd_kernel[(triton.cdiv(n_e, bl["RADIAL_BLOCK_E"]),)](
        rij, pair_i, pair_j, species, centers, w_rbf, emb_recv, emb_send, d_hidden, ddh, dd,
        d_pre, e0, e1, n_hb, n_rbf, n_hid, 1.0 / rbf_width, inv_spacing,
        HID_P=_pow2(n_hid, 16), BLOCK_E=bl["RADIAL_BLOCK_E"], BLOCK_R=bl["BLOCK_R"], WIN=win,
        DOT=dot_precision(q.dtype), WEIGHT_GRADS=weight_grads,
        num_warps=bl["RADIAL_NUM_WARPS"])
    return dd, d_o, (d_pre if weight_grads else None)
