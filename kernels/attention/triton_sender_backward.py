"""Sender-side reduction of the attention backward: dL/dv_j and dL/dk_j without atomics.

The receiver-major backward kernels (triton_backward.py, triton_head_backward.py) see each
edge i -> j once, from its receiver i; adding its share to the sender's gradients there takes
9 C + H d_k atomic adds per edge (2,300 + 1,024 in the paper configuration), the bulk of
those kernels' time. Instead, per receiver chunk, the chunk's edges are sorted by sender (a
transposed CSR, `sender_csr`), and one program per (sender j, head block) streams the edges
that end on j and sums in registers
    dv_j = sum_i alpha_ijh(c) D^l1(R_ij)^T q_ij,  q_ij = S^T D^l3(R_ij) G_i,
    dk_j = sum_i dqk_ijh q_ih,
recomputing alpha (prepass score and weight, the forward's (m, den)), the rotations and q
from G_i = dL/dout_i; dqk = dL/d<q_i, k_j> comes from the head kernel. One read-add-write
of dv_j, dk_j per sender and chunk, in a fixed order: no atomics, bitwise reproducible.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_geometry import _edge_envelope, _pole_frame
from .triton_backward import _pole_grad, _rotate_back
from .triton_forward import _pow2, heads_per_program


@triton.jit(do_not_specialize=["e_base"])  # triton_forward: chunk bounds
def _sender_bwd_kernel(
    g_out_ptr, q_ptr, rij_ptr, pi_ptr, perm_ptr, colptr_ptr, sw_ptr, dqk_ptr, m_ptr, den_ptr,
    dv_ptr, dk_ptr, e_base, cutoff,
    H: tl.constexpr, CH: tl.constexpr, CH_P: tl.constexpr, DK: tl.constexpr,
    DK_P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
    S01: tl.constexpr, S10: tl.constexpr, S11A: tl.constexpr, S11C: tl.constexpr,
    S12B: tl.constexpr, S12C: tl.constexpr, S12D: tl.constexpr,
    S21A: tl.constexpr, S21B: tl.constexpr, S21C: tl.constexpr,
    S22A: tl.constexpr, S22B: tl.constexpr, S22D: tl.constexpr, S22E: tl.constexpr,
):
    j = tl.program_id(0)
    hb = tl.program_id(1)
    C: tl.constexpr = H * CH
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs_h < H
    offs_c = tl.arange(0, CH_P)
    cmask = hmask[:, None] & (offs_c < CH)[None, :]
    chan = (offs_h * CH)[:, None] + offs_c[None, :]
    offs_d = tl.arange(0, DK_P)
    hd = offs_h[:, None] * DK + offs_d[None, :]
    qd_mask = hmask[:, None] & (offs_d < DK)[None, :]
    start = tl.load(colptr_ptr + j)
    end = tl.load(colptr_ptr + j + 1)
    acc0 = tl.zeros([BLOCK_H, CH_P], dtype=q_ptr.dtype.element_ty)
    acc1 = tl.zeros_like(acc0)
    acc2 = tl.zeros_like(acc0)
    acc3 = tl.zeros_like(acc0)
    acc4 = tl.zeros_like(acc0)
    acc5 = tl.zeros_like(acc0)
    acc6 = tl.zeros_like(acc0)
    acc7 = tl.zeros_like(acc0)
    acc8 = tl.zeros_like(acc0)
    acc_k = tl.zeros([BLOCK_H, DK_P], dtype=q_ptr.dtype.element_ty)
    for s0 in range(start, end, BLOCK_E):
        offs_s = s0 + tl.arange(0, BLOCK_E)
        smask = offs_s < end
        le = tl.load(perm_ptr + offs_s, mask=smask, other=0)  # chunk-local edge index
        e = le + e_base
        i = tl.load(pi_ptr + e, mask=smask, other=0)
        # geometry as [BLOCK_E, 1, 1] from the start (see triton_backward.py: layout pass)
        e3 = e[:, None, None]
        m3 = smask[:, None, None]
        (r00, r01, r02, r10, r11, r12, r20, r21, r22,
         d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
         d30, d31, d32, d33, d34, d40, d41, d42, d43, d44) = _pole_frame(
            rij_ptr, e3, m3)
        # alpha = w p(d) exp(s - m_i) / den_i, as in the channel kernel
        amask = smask[:, None] & hmask[None, :]
        e2 = e[:, None]
        env = _edge_envelope(rij_ptr, e2, smask[:, None], cutoff)
        swp = sw_ptr + le.to(tl.int64)[:, None] * (2 * H) + offs_h[None, :]
        s_e = tl.load(swp, mask=amask, other=0.0)
        w_e = tl.load(swp + H, mask=amask, other=0.0)
        ih = i[:, None] * H + offs_h[None, :]
        m_i = tl.load(m_ptr + ih, mask=amask, other=0.0)
        den_i = tl.load(den_ptr + ih, mask=amask, other=1.0)
        alpha = tl.where(amask, w_e * env * tl.exp(s_e - m_i) / den_i, 0.0)
        al = alpha[:, :, None]
        # the receivers' output gradients G_i, [BLOCK_E, BLOCK_H, CH_P] per row
        gmask = smask[:, None, None] & cmask[None, :, :]
        gp = g_out_ptr + i.to(tl.int64)[:, None, None] * (20 * C) + chan[None, :, :]
        q0, q10, q11, q12, q20, q21, q22, q23, q24 = _pole_grad(
            tl.load(gp + 0 * C, mask=gmask, other=0.0), tl.load(gp + 1 * C, mask=gmask, other=0.0),
            tl.load(gp + 2 * C, mask=gmask, other=0.0), tl.load(gp + 3 * C, mask=gmask, other=0.0),
            tl.load(gp + 4 * C, mask=gmask, other=0.0), tl.load(gp + 5 * C, mask=gmask, other=0.0),
            tl.load(gp + 6 * C, mask=gmask, other=0.0), tl.load(gp + 7 * C, mask=gmask, other=0.0),
            tl.load(gp + 8 * C, mask=gmask, other=0.0), tl.load(gp + 9 * C, mask=gmask, other=0.0),
            tl.load(gp + 10 * C, mask=gmask, other=0.0),
            tl.load(gp + 11 * C, mask=gmask, other=0.0),
            tl.load(gp + 12 * C, mask=gmask, other=0.0),
            tl.load(gp + 13 * C, mask=gmask, other=0.0),
            tl.load(gp + 14 * C, mask=gmask, other=0.0),
            tl.load(gp + 15 * C, mask=gmask, other=0.0),
            tl.load(gp + 16 * C, mask=gmask, other=0.0),
            tl.load(gp + 17 * C, mask=gmask, other=0.0),
            tl.load(gp + 18 * C, mask=gmask, other=0.0),
            tl.load(gp + 19 * C, mask=gmask, other=0.0),
            r00, r01, r02, r10, r11, r12, r20, r21, r22,
            d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
            d30, d31, d32, d33, d34, d40, d41, d42, d43, d44,
            S01, S10, S11A, S11C, S12B, S12C, S12D, S21A, S21B, S21C, S22A, S22B, S22D, S22E)
        (t0, t1, t2, t3, t4, t5, t6, t7, t8) = _rotate_back(
            q0 * al, q10 * al, q11 * al, q12 * al, q20 * al, q21 * al, q22 * al, q23 * al,
            q24 * al,
            r00, r01, r02, r10, r11, r12, r20, r21, r22,
            d00, d01, d02, d03, d04, d10, d11, d12, d13, d14, d20, d21, d22, d23, d24,
            d30, d31, d32, d33, d34, d40, d41, d42, d43, d44)
        acc0 += tl.sum(t0, axis=0)
        acc1 += tl.sum(t1, axis=0)
        acc2 += tl.sum(t2, axis=0)
        acc3 += tl.sum(t3, axis=0)
        acc4 += tl.sum(t4, axis=0)
        acc5 += tl.sum(t5, axis=0)
        acc6 += tl.sum(t6, axis=0)
        acc7 += tl.sum(t7, axis=0)
        acc8 += tl.sum(t8, axis=0)
        # dk_j += dqk q_i
        dqk = tl.load(dqk_ptr + le.to(tl.int64)[:, None] * H + offs_h[None, :], mask=amask,
                      other=0.0)
        qmask = smask[:, None, None] & qd_mask[None, :, :]
        qi = tl.load(q_ptr + i.to(tl.int64)[:, None, None] * (H * DK) + hd[None, :, :],
                     mask=qmask, other=0.0)
        acc_k += tl.sum(dqk[:, :, None] * qi, axis=0)
    # one writer per sender and chunk: read-add-write, skipped for senders without edges here
    n_in = end - start
    dvp = dv_ptr + j.to(tl.int64) * (9 * C) + chan
    vm = cmask & ((offs_c[None, :] * 0 + n_in) > 0)
    tl.store(dvp, tl.load(dvp, mask=vm, other=0.0) + acc0, mask=vm)
    tl.store(dvp + 1 * C, tl.load(dvp + 1 * C, mask=vm, other=0.0) + acc1, mask=vm)
    tl.store(dvp + 2 * C, tl.load(dvp + 2 * C, mask=vm, other=0.0) + acc2, mask=vm)
    tl.store(dvp + 3 * C, tl.load(dvp + 3 * C, mask=vm, other=0.0) + acc3, mask=vm)
    tl.store(dvp + 4 * C, tl.load(dvp + 4 * C, mask=vm, other=0.0) + acc4, mask=vm)
    tl.store(dvp + 5 * C, tl.load(dvp + 5 * C, mask=vm, other=0.0) + acc5, mask=vm)
    tl.store(dvp + 6 * C, tl.load(dvp + 6 * C, mask=vm, other=0.0) + acc6, mask=vm)
    tl.store(dvp + 7 * C, tl.load(dvp + 7 * C, mask=vm, other=0.0) + acc7, mask=vm)
    tl.store(dvp + 8 * C, tl.load(dvp + 8 * C, mask=vm, other=0.0) + acc8, mask=vm)
    km = qd_mask & ((offs_d[None, :] * 0 + n_in) > 0)
    dkp = dk_ptr + j.to(tl.int64) * (H * DK) + hd
    tl.store(dkp, tl.load(dkp, mask=km, other=0.0) + acc_k, mask=km)


def sender_csr(pair_j: torch.Tensor, n_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Transposed CSR of a chunk's senders: (perm [E_c], colptr [n_total + 1]) with
    pair_j[perm] ascending (stable) and colptr[j] .. colptr[j + 1] the chunk-local positions
    in perm of the edges that end on j. No host synchronisation (CUDA-graph safe)."""
    sorted_j, perm = torch.sort(pair_j, stable=True)
    bounds = torch.arange(n_total + 1, dtype=sorted_j.dtype, device=sorted_j.device)
    return perm, torch.searchsorted(sorted_j, bounds)


def default_sender_blocks(n_heads: int, ch: int) -> dict[str, int]:
    # first guess (BLOCK_E x BLOCK_H x CH like the channel kernel's tile); benchmarks/
    # bench_attention.py --autotune times the alternatives (kernels/NOTES.md, E15, E20)
    return dict(BLOCK_E=16, BLOCK_H=heads_per_program(32, n_heads, ch), num_warps=4)


def sender_backward(grad_out, q, rij, pair_i, pair_j, sw, dqk, m, den, dv, dk, cutoff: float,
                    e0: int, e1: int, consts: dict, blocks: dict | None = None) -> None:
    """Add the contributions of edges [e0, e1) (one receiver chunk) to dv [n_total, 9, C] and
    dk [n_total, H, d_k]; sw [E_c, 2H] is the chunk's prepass, dqk [E_c, H] from the head
    kernel (chunk-local rows)."""
    n_heads, d_k = q.shape[1], q.shape[2]
    n_total, ch = dv.shape[0], dv.shape[-1] // n_heads
    perm, colptr = sender_csr(pair_j[e0:e1], n_total)
    bl = blocks or default_sender_blocks(n_heads, ch)
    grid = (n_total, triton.cdiv(n_heads, bl["BLOCK_H"]))
    _sender_bwd_kernel[grid](
        grad_out, q, rij, pair_i, perm, colptr, sw, dqk, m, den, dv, dk, e0, float(cutoff),
        H=n_heads, CH=ch, CH_P=_pow2(ch), DK=d_k, DK_P=_pow2(d_k), BLOCK_E=bl["BLOCK_E"],
        BLOCK_H=bl["BLOCK_H"], **consts, num_warps=bl["num_warps"])
