"""Backward of the head-sized part of the attention (softmax, score, gate, radial MLP) in Triton.

Given g_ijh = dL/dalpha_ijh (from the channel kernel, triton_backward.py) and the per-receiver
sums D_ih = sum_j g_ijh alpha_ijh, with
    alpha = w a / den_i,  a = p(d) exp(s - m_i),  s = sigmoid(g_raw) <q_i, k_j> / sqrt(d_k),
    (g_raw, w) = SiLU(rbf(d) W_rbf + E_r[Z_i] + E_s[Z_j]) W_out + b_out,
and m_i, den_i the forward's statistics (den includes eps * exp(-m)):
    dw = g a / den,  dA = (g w - D_i) / den,  ds = dA a,  dp = sum_h dA exp(s - m_i),
    dq_i += sum_j ds sigmoid(g_raw) k_j / sqrt(d_k),  dk_j += ds sigmoid(g_raw) q_i / sqrt(d_k),
    dg_raw = ds <q_i, k_j> / sqrt(d_k) sigmoid'(g_raw),
    dpre = ([dg_raw, dw] W_out^T) SiLU'(pre),  dd = (dpre W_rbf^T) . drbf/dd + dp p'(d).
One program per receiver streams its edges (all heads): the radial MLP is recomputed once per
edge, q_i is read once, dq_i needs no per-edge storage; dk_j by atomics or, with
REDUCE = "sorted" (triton_backward.py), by the sender kernel (triton_sender_backward.py).
Nothing per edge is written except dd (the distance gradient, [E]) and, only when the
weights need gradients,
dL/d(g_raw, w) [E, 2H] and dL/dpre [E, hidden] for the weight products done in PyTorch.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_geometry import _envelope, _envelope_slope
from .triton_forward import (_edge_geometry, _pow2, _radial_out, _radial_pre, _rbf_at,
                             _rbf_chunk, _window_start, dot_precision, rbf_window,
                             weight_envelope_args)


@triton.jit(do_not_specialize=["r_base", "e_base"])  # triton_forward: chunk bounds
def _head_bwd_kernel(
    q_ptr, k_ptr, rij_ptr, pj_ptr, species_ptr, rowptr_ptr,
    centers_ptr, w_rbf_ptr, emb_recv_ptr, emb_send_ptr, w_out_ptr, b_out_ptr,
    m_ptr, den_ptr, galpha_ptr, dsum_ptr,
    dq_ptr, dk_ptr, ddist_ptr, do_ptr, dpre_ptr,
    r_base, e_base, n_rbf, n_hid, inv_width, inv_spacing, cutoff, qk_scale, wenv_start,
    wenv_width, H: tl.constexpr, DK: tl.constexpr, DK_P: tl.constexpr, HID_P: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, WIN: tl.constexpr,
    WEIGHT_GRADS: tl.constexpr, ATOMIC_DK: tl.constexpr, DOT: tl.constexpr,
    WENV: tl.constexpr,
):
    i = r_base + tl.program_id(0)
    zi = tl.load(species_ptr + i)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    offs_k = tl.arange(0, HID_P)
    kmask = offs_k < n_hid
    offs_d = tl.arange(0, DK_P)
    dmask = offs_d < DK
    emb_i = tl.load(emb_recv_ptr + zi * n_hid + offs_k, mask=kmask, other=0.0)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        le = offs_e - e_base  # chunk-local edge index
        j, _, _, _, d, env = _edge_geometry(offs_e, emask, rij_ptr, pj_ptr, cutoff)
        denv = _envelope_slope(d, cutoff)  # p'(d)
        if WENV:  # the weight envelope g(d) and its slope
            d_in = tl.maximum(d - wenv_start, 0.0)
            g_env = _envelope(d_in, wenv_width)
            dg_env = _envelope_slope(d_in, wenv_width)
        # radial MLP forward, recomputed once per edge for all heads
        zj = tl.load(species_ptr + j, mask=emask, other=0)
        m2 = emask[:, None] & kmask[None, :]
        pre = tl.load(emb_send_ptr + zj[:, None] * n_hid + offs_k[None, :], mask=m2, other=0.0)
        pre += emb_i[None, :]
        pre = _radial_pre(pre, d, centers_ptr, w_rbf_ptr, n_rbf, n_hid, inv_width, inv_spacing,
                          offs_k, kmask, BLOCK_R, WIN, DOT)
        sig = 1.0 / (1.0 + tl.exp(-pre))
        hidden = pre * sig
        dpre = tl.zeros([BLOCK_E, HID_P], dtype=pre.dtype)
        denv_acc = tl.zeros([BLOCK_E], dtype=pre.dtype)
        dg_acc = tl.zeros([BLOCK_E], dtype=pre.dtype)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            hmask = offs_h < H
            w_g, w_w, gate, wt = _radial_out(hidden, w_out_ptr, b_out_ptr, offs_k, kmask,
                                             offs_h, hmask, H, DOT)
            hd = offs_h[:, None] * DK + offs_d[None, :]
            qd_mask = hmask[:, None] & dmask[None, :]
            qi = tl.load(q_ptr + i.to(tl.int64) * (H * DK) + hd, mask=qd_mask, other=0.0)
            m3 = emask[:, None, None] & qd_mask[None, :, :]
            kp = j.to(tl.int64)[:, None, None] * (H * DK) + hd[None, :, :]
            kj = tl.load(k_ptr + kp, mask=m3, other=0.0)
            qk = tl.sum(kj * qi[None, :, :], axis=2)
            s = gate * qk * qk_scale
            mh = tl.load(m_ptr + i * H + offs_h, mask=hmask, other=0.0)
            inv_den = 1.0 / tl.load(den_ptr + i * H + offs_h, mask=hmask, other=1.0)
            d_i = tl.load(dsum_ptr + i * H + offs_h, mask=hmask, other=0.0)
            m2h = emask[:, None] & hmask[None, :]
            expo = tl.where(m2h, tl.exp(s - mh[None, :]), 0.0)
            a = env[:, None] * expo
            g = tl.load(galpha_ptr + le[:, None] * H + offs_h[None, :], mask=m2h, other=0.0)
            d_wt = g * a * inv_den[None, :]
            if WENV:  # alpha = (w g) a / den: w g is the weight, g(d) a factor of its own
                dg_acc += tl.sum(tl.where(m2h, d_wt * wt, 0.0), axis=1)
                d_wt = d_wt * g_env[:, None]
                wt = wt * g_env[:, None]
            d_a = tl.where(m2h, (g * wt - d_i[None, :]) * inv_den[None, :], 0.0)
            d_s = d_a * a
            denv_acc += tl.sum(d_a * expo, axis=1)
            d_qk = d_s * gate * qk_scale
            d_graw = d_s * qk * qk_scale * gate * (1.0 - gate)
            dq_tile = tl.sum(d_qk[:, :, None] * kj, axis=0)
            tl.atomic_add(dq_ptr + i.to(tl.int64) * (H * DK) + hd, dq_tile, mask=qd_mask,
                          sem="relaxed")
            if ATOMIC_DK:
                tl.atomic_add(dk_ptr + kp, d_qk[:, :, None] * qi[None, :, :], mask=m3,
                              sem="relaxed")
            else:  # dL/d<q_i, k_j> for the sender kernel, in place of the g it has read
                tl.store(galpha_ptr + le[:, None] * H + offs_h[None, :], d_qk, mask=m2h)
            dpre += tl.dot(d_graw, tl.trans(w_g), input_precision=DOT)
            dpre += tl.dot(d_wt, tl.trans(w_w), input_precision=DOT)
            if WEIGHT_GRADS:
                dop = do_ptr + le.to(tl.int64)[:, None] * (2 * H) + offs_h[None, :]
                tl.store(dop, d_graw, mask=m2h)
                tl.store(dop + H, d_wt, mask=m2h)
        dpre = dpre * (sig * (1.0 + pre * (1.0 - sig)))
        if WEIGHT_GRADS:
            tl.store(dpre_ptr + le.to(tl.int64)[:, None] * n_hid + offs_k[None, :], dpre,
                     mask=m2)
        dd = denv_acc * denv
        if WENV:
            dd += dg_acc * dg_env
        if WIN > 0:  # the Gaussians the forward visited (triton_forward.rbf_window)
            lo = _window_start(d, centers_ptr, inv_spacing, WIN)
            for t in tl.static_range(WIN):
                rmask, tt, rbf = _rbf_at(d, centers_ptr, lo + t, n_rbf, inv_width)
                w_r = tl.load(w_rbf_ptr + (lo + t)[:, None] * n_hid + offs_k[None, :],
                              mask=rmask[:, None] & kmask[None, :], other=0.0)
                dd += tl.sum(dpre * w_r, axis=1) * rbf * (-tt * inv_width)
        else:
            for r0 in range(0, n_rbf, BLOCK_R):
                offs_r, rmask, t, rbf = _rbf_chunk(d, centers_ptr, r0, n_rbf, inv_width,
                                                   BLOCK_R)
                w_t = tl.load(w_rbf_ptr + offs_r[None, :] * n_hid + offs_k[:, None],
                              mask=rmask[None, :] & kmask[:, None], other=0.0)
                drbf = tl.dot(dpre, w_t, input_precision=DOT)
                dd += tl.sum(drbf * rbf * (-t * inv_width), axis=1)
        tl.store(ddist_ptr + le, dd, mask=emask)


def default_head_blocks() -> dict[str, int]:
    # fastest of HEAD_VARIANTS (benchmarks/bench_attention.py --autotune) at 10k water atoms
    # on the H100 (kernels/NOTES.md, E7); num_stages (Triton's software pipelining of the
    # head loop's loads, 3 when not given) is in the sweep since E41
    return dict(BLOCK_E=16, BLOCK_H=32, BLOCK_R=32, num_warps=4)


def head_backward(q, k, rij, pair_j, species, rowptr, centers, rbf_width, rbf_spacing, w_rbf,
                  emb_recv, emb_send, w_out, b_out, cutoff, m, den, galpha, dsum, dq, dk,
                  r0: int, r1: int, e0: int, e1: int, weight_grads: bool,
                  atomic_dk: bool = True, weight_envelope: float | None = None):
    """Run the head backward for receivers [r0, r1) (edges [e0, e1)); accumulates into dq, dk.

    Returns (dd [e1 - e0] = dL/d|r_ij| of the radial MLP and envelope, d_o [e1 - e0, 2H] or
    None, d_pre [e1 - e0, hidden] or None); galpha is chunk-local [e1 - e0, H], dsum [n, H].
    atomic_dk False: dk is left to the sender kernel, and galpha is overwritten with
    dL/d<q_i, k_j> (what that kernel needs). weight_envelope: alpha's weight is w g(d).
    """
    n_heads, d_k = q.shape[1], q.shape[2]
    n_rbf, n_hid = w_rbf.shape
    n_e = e1 - e0
    dd = torch.empty(n_e, dtype=q.dtype, device=q.device)
    d_o = torch.empty(n_e, 2 * n_heads, dtype=q.dtype, device=q.device) if weight_grads else dd
    d_pre = torch.empty(n_e, n_hid, dtype=q.dtype, device=q.device) if weight_grads else dd
    bl = default_head_blocks()
    win, inv_spacing = rbf_window(n_rbf, rbf_width, rbf_spacing)
    _head_bwd_kernel[(r1 - r0,)](
        q, k, rij, pair_j, species, rowptr, centers, w_rbf, emb_recv, emb_send, w_out, b_out,
        m, den, galpha, dsum, dq, dk, dd, d_o, d_pre,
        r0, e0, n_rbf, n_hid, 1.0 / rbf_width, inv_spacing, float(cutoff), 1.0 / math.sqrt(d_k),
        *weight_envelope_args(cutoff, weight_envelope),
        H=n_heads, DK=d_k, DK_P=_pow2(d_k), HID_P=_pow2(n_hid, 16),
        BLOCK_E=bl["BLOCK_E"], BLOCK_H=min(bl["BLOCK_H"], _pow2(n_heads, 16)),
        BLOCK_R=bl["BLOCK_R"], WIN=win, WEIGHT_GRADS=weight_grads, ATOMIC_DK=atomic_dk,
        DOT=dot_precision(q.dtype), WENV=weight_envelope is not None,
        **{k: bl[k] for k in ("num_warps", "num_stages") if k in bl})
    if not weight_grads:
        return dd, None, None
    return dd, d_o, d_pre
