"""PyTorch reference of the on-the-fly equivariant attention (materialises per-edge tensors).

For each edge i <- j (pair_i receives) and head h:
    d = |r_ij|,  r_hat = r_ij / d,  p = envelope(d / r_c)
    hidden = SiLU(rbf(d) @ w_rbf + emb_recv[Z_i] + emb_send[Z_j])
    (gate_raw, weight) = hidden @ w_out + b_out              # [2H]
    s_ijh = sigmoid(gate_raw) * <q_ih, k_jh> / sqrt(d_k)
    a_ijh = p * exp(s_ijh)
    alpha_ijh = weight_ijh * a_ijh / (sum_j a_ijh + eps)           (weight_envelope None)
    alpha_ijh = weight_ijh * g * a_ijh / (sum_j a_ijh + eps)       (weight_envelope width w)
with g = p((d - (r_c - w)) / w): 1 up to r_c - w, then to 0 at r_c (w = r_c: g = p).
    out_i = sum_j alpha_ijh TP(v_j, r_hat_ij)                 # per path, channels split by head
exp(s) is evaluated as exp(s - m_i) with m_i = max_j s_ijh and eps * exp(-m_i) in the
denominator: the same number, without overflow, and independent of m (so m carries no
gradient and the energy stays smooth when neighbours enter the cutoff).
weight_envelope: a lone neighbour's a / (a + eps) stays near 1 until p ~ eps exp(-s), then
falls to 0 within ~0.01 Å of r_c when the learned score s is large (steep forces on isolated
ion pairs, benchmarks/cutoff_smoothness.py). The factor g bounds alpha by |weight| g; with
w = r_c its slope is bounded by 1.25 |weight p'| (x / (1 + x)^2 <= 1/4, x = a / eps) whatever
s is; a narrower w leaves the inner neighbours' weights as they were (a trained model keeps
its numbers there) at a steeper |g'| <= 1.875 / w.
TP is the EAAS product (pole-frame gather, one rotation per edge; see e2former_lammps.o3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from e2former_lammps.o3 import n_path_rows, rotation_to_pole, tp_eaas, wigner_d

from ..edge_matmul import edge_matmul
from .common import (EdgeRadialWeights, chunk_local, edge_geometry, receiver_chunks,
                     receiver_rowptr, scatter_max, weight_envelope_factor)

# edges per chunk of the chunked reference: 2^16 edges of the paper configuration's largest
# per-edge tensor ([E, 20, 256]) are 1.3 GB in float64
CHUNK_EDGES = 1 << 16


@dataclass
class EdgeFrame:
    """The geometry of the edges that every attention layer of a forward shares: d [E] (Å),
    r_hat [E, 3], envelope p(d / r_c) [E], and wigner[l] = D^l(R) [E, 2l+1, 2l+1] of the
    rotation R taking r_hat to the pole. Computed once per forward instead of once per layer
    (with the double backward of training, ~500 operators a layer)."""

    rij: Tensor
    dist: Tensor
    r_hat: Tensor
    env: Tensor
    wigner: dict[int, Tensor]

    @staticmethod
    def of(rij: Tensor, cutoff: float, lmax: int) -> "EdgeFrame":
        dist, r_hat, env = edge_geometry(rij, cutoff)
        rot = rotation_to_pole(r_hat)
        return EdgeFrame(rij, dist, r_hat, env, {l: wigner_d(rot, l) for l in range(lmax + 1)})


def edge_frame(rij: Tensor, cutoff: float, lmax: int, shared: dict | None) -> EdgeFrame:
    """EdgeFrame.of(rij, ...), taken from / left in `shared` (a dict that lives for one
    forward; None: not shared) when it was made for this very rij tensor."""
    if shared is None:
        return EdgeFrame.of(rij, cutoff, lmax)
    frame = shared.get((cutoff, lmax))
    if frame is None or frame.rij is not rij:
        frame = shared[(cutoff, lmax)] = EdgeFrame.of(rij, cutoff, lmax)
    return frame


def edge_gate_weight(
    dist: Tensor, species_i: Tensor, species_j: Tensor, radial: EdgeRadialWeights
) -> tuple[Tensor, Tensor]:
    """Per-edge (gate in (0, 1), signed weight), each [E, H], from the radial MLP."""
    hidden = radial.hidden(radial.rbf(dist), species_i, species_j)
    gate_raw, weight = (hidden @ radial.w_out + radial.b_out).chunk(2, dim=-1)
    return torch.sigmoid(gate_raw), weight


def attention_weights(
    q: Tensor, k: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor, species: Tensor,
    radial: EdgeRadialWeights, cutoff: float, softmax_eps: float,
    frame: EdgeFrame | None = None, weight_envelope: float | None = None,
) -> Tensor:
    """alpha_ijh [E, H] as in the module docstring (frame: rij's, if already made)."""
    n_recv, _, d_k = q.shape
    dist, _, env = edge_geometry(rij, cutoff) if frame is None else (frame.dist, None, frame.env)
    gate, weight = edge_gate_weight(dist, species[pair_i], species[pair_j], radial)
    # index_select, not x[index]: its backward is an index_add, several times faster on the
    # GPU than the sorting accumulate of advanced indexing (the training step's top kernel)
    qk = (q.index_select(0, pair_i) * k.index_select(0, pair_j)).sum(-1)
    score = gate * qk / math.sqrt(d_k)  # [E, H]
    smax = scatter_max(score.detach(), pair_i, n_recv)  # [n_recv, H]
    a = torch.exp(score - smax.index_select(0, pair_i)) * env[:, None]
    denom = torch.zeros_like(smax).index_add_(0, pair_i, a) + softmax_eps * torch.exp(-smax)
    if weight_envelope is not None:
        weight = weight * weight_envelope_factor(dist, cutoff, weight_envelope)[:, None]
    return weight * a / denom.index_select(0, pair_i)


def _weighted_values(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float,
    frame: EdgeFrame | None = None, weight_envelope: float | None = None,
) -> Tensor:
    """alpha_ijh v_j per edge, channels split by head: [E, rows, C]."""
    alpha = attention_weights(q, k, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps,
                              frame, weight_envelope)
    alpha_c = alpha.repeat_interleave(v.shape[-1] // q.shape[1], dim=-1)  # [E, C]
    return v.index_select(0, pair_j) * alpha_c[:, None, :]


def _sum_per_receiver(edge_values: Tensor, pair_i: Tensor, n_recv: int) -> Tensor:
    out = torch.zeros(n_recv, *edge_values.shape[1:], dtype=edge_values.dtype,
                      device=edge_values.device)
    return out.index_add_(0, pair_i, edge_values)


def attention_value_sum(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float,
    weight_envelope: float | None = None,
) -> Tensor:
    """sum_j alpha_ijh v_j, channels split by head (the l_f = 0 paths: no rotation, since
    D^T D = 1): [n_recv, rows, C]. Edge-materialising, like the rest of this module."""
    vj = _weighted_values(q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps,
                          weight_envelope=weight_envelope)
    return _sum_per_receiver(vj, pair_i, q.shape[0])


def equivariant_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float, lmax: int,
    identity_paths: bool = False, shared: dict | None = None,
    weight_envelope: float | None = None,
) -> Tensor:
    """See `kernels.attention.equivariant_attention` for shapes. Returns [n_recv, rows, C].
    shared: a dict living for one forward, through which the layers share rij's EdgeFrame."""
    n_recv = q.shape[0]
    # each D^l once per edge and forward (a path ending in l3 reuses D^l3; fewer operators
    # to dispatch and to differentiate twice in training)
    frame = edge_frame(rij, cutoff, lmax, shared)
    # the product is linear in v: weight first
    vj = _weighted_values(q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps,
                          frame, weight_envelope)
    v_rows = {l: vj[:, l * l:(l + 1) * (l + 1)] for l in range(lmax + 1)}
    out = [_sum_per_receiver(t, pair_i, n_recv)
           for t in tp_eaas(v_rows, frame.wigner, lmax, matmul=edge_matmul)]
    if identity_paths:
        out.append(_sum_per_receiver(vj, pair_i, n_recv))
    return torch.cat(out, dim=1)


def equivariant_attention_reference_chunked(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float, lmax: int,
    identity_paths: bool = False, weight_envelope: float | None = None,
    max_edges: int | None = None,
) -> Tensor:
    """The reference, receiver chunk by receiver chunk (at most max_edges edges each), every
    chunk recomputed in the backward (torch.utils.checkpoint): per-edge tensors of one chunk
    exist at a time, forward and backward, so the reference runs at sizes where the whole
    system's would not fit (the float64 check of the fused kernels at 100k atoms). Same
    numbers as equivariant_attention_reference, any order of derivatives. max_edges: default
    CHUNK_EDGES."""
    n_recv = q.shape[0]
    max_edges = CHUNK_EDGES if max_edges is None else max_edges
    rows = n_path_rows(lmax) + ((lmax + 1) ** 2 if identity_paths else 0)
    out = []
    for r0, r1, e0, e1 in receiver_chunks(receiver_rowptr(pair_i, n_recv), pair_i.numel(),
                                          max_edges):
        if e1 == e0:  # receivers without neighbours
            out.append(v.new_zeros(r1 - r0, rows, v.shape[-1]))
            continue
        nodes, pi, pj = chunk_local(pair_i, pair_j, r0, r1, e0, e1)
        out.append(checkpoint(
            equivariant_attention_reference, q[r0:r1], k.index_select(0, nodes),
            v.index_select(0, nodes), rij[e0:e1], pi, pj, species[nodes], radial, cutoff,
            softmax_eps, lmax, identity_paths, None, weight_envelope, use_reentrant=False))
    return torch.cat(out) if out else v.new_zeros(0, rows, v.shape[-1])
