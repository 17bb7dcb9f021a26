"""Shared pieces of the attention op: its weights, edge geometry, radial basis, envelope."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


# edges per launch of the Triton forward's prepass (bounds its [E, 2H] scratch); where all
# pairs fit one launch, the scratch and the gate ([E, H]) are kept for the backward by
# default, and for all pairs (one buffer, each launch its part) when the caller asks (E55)
PRE_CHUNK_EDGES = 1 << 20


def kept_scores_bytes(n_heads: int, n_pairs: int, itemsize: int = 4) -> int:
    """Bytes one attention layer with the Triton kernels keeps from its forward for its
    backward when it keeps its scores: score, weight and gate per pair (kernels/NOTES.md
    E53)."""
    return 3 * n_heads * itemsize * n_pairs


def keeps_scores(keep_scores: bool | None, n_pairs: int) -> bool:
    """Whether the Triton attention keeps its per-edge scores for the backward: as asked
    (True / False), or by default (None) where the pairs fit one prepass launch."""
    return n_pairs <= PRE_CHUNK_EDGES if keep_scores is None else keep_scores


def polynomial_envelope(x: Tensor) -> Tensor:
    """p(x) = 1 - 6x^5 + 15x^4 - 10x^3 on [0, 1], 0 beyond; value, slope, curvature vanish at 1."""
    x = x.clamp(max=1.0)
    x3 = x * x * x
    return 1.0 + x3 * (-10.0 + x * (15.0 - 6.0 * x))


def weight_envelope_factor(dist: Tensor, cutoff: float, width: float) -> Tensor:
    """g(d) = p((d - (r_c - width)) / width): 1 up to r_c - width (Å), then smoothly to 0 at
    r_c; width = r_c gives p(d / r_c) itself. The attention weight's second envelope."""
    return polynomial_envelope(((dist - (cutoff - width)) / width).clamp(min=0.0))


def edge_geometry(rij: Tensor, cutoff: float) -> tuple[Tensor, Tensor, Tensor]:
    """(d [E] in Å, r_hat [E, 3], envelope p(d / r_c) [E])."""
    dist = rij.norm(dim=-1)
    return dist, rij / dist[:, None], polynomial_envelope(dist / cutoff)


def gaussian_rbf(dist: Tensor, centers: Tensor, width: float) -> Tensor:
    """exp(-((d - mu_k) / width)^2 / 2): [E] -> [E, R]."""
    return torch.exp(-0.5 * ((dist[:, None] - centers) / width) ** 2)


def scatter_max(src: Tensor, index: Tensor, n: int,
                across: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Row-wise max of src [E, H] grouped by index; 0 for empty groups. across: combines the
    maxima with those of other ranks first (Exchange.max_over_ranks), while an empty group is
    still -inf, so a group is 0 only where it is empty on every rank."""
    out = torch.full((n, src.shape[1]), -torch.inf, dtype=src.dtype, device=src.device)
    out = out.scatter_reduce(0, index[:, None].expand_as(src), src, reduce="amax")
    if across is not None:
        out = across(out)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


@dataclass
class EdgeRadialWeights:
    """Weights of the per-edge radial MLP that gives each head a gate and a signed weight.

    hidden = SiLU(rbf(d) @ w_rbf + emb_recv[Z_i] + emb_send[Z_j]); [gate_raw, weight] =
    hidden @ w_out + b_out. emb_recv / emb_send are the element embeddings E'_t, E'_s already
    projected into the hidden layer (a linear layer on the concatenation [rbf, E'_t, E'_s]
    is exactly this sum).
    """

    rbf_centers: Tensor  # [R], Å
    rbf_width: float  # Å
    w_rbf: Tensor  # [R, hidden]
    emb_recv: Tensor  # [n_elements, hidden]
    emb_send: Tensor  # [n_elements, hidden]
    w_out: Tensor  # [hidden, 2 H]
    b_out: Tensor  # [2 H]
    # Å between neighbouring centres when they are evenly spaced (0: not known to be); lets
    # the Triton kernels visit only the Gaussians near each distance (triton_forward.rbf_window)
    rbf_spacing: float = 0.0

    def rbf(self, dist: Tensor) -> Tensor:
        return gaussian_rbf(dist, self.rbf_centers, self.rbf_width)

    def hidden(self, rbf: Tensor, species_i: Tensor, species_j: Tensor) -> Tensor:
        """The hidden layer [E, hidden] from rbf(d) [E, R] and the two atoms' elements."""
        return torch.nn.functional.silu(
            rbf @ self.w_rbf + self.emb_recv.index_select(0, species_i)
            + self.emb_send.index_select(0, species_j))


def receiver_rowptr(pair_i: Tensor, n_recv: int) -> Tensor:
    """CSR row pointer [n_recv + 1] (int64) of the receiver-sorted pair list."""
    # searchsorted on the sorted receivers: no host synchronisation (bincount has one)
    bounds = torch.arange(n_recv + 1, dtype=pair_i.dtype, device=pair_i.device)
    return torch.searchsorted(pair_i, bounds).to(torch.int64)


def chunk_local(pair_i: Tensor, pair_j: Tensor, r0: int, r1: int, e0: int,
                e1: int) -> tuple[Tensor, Tensor, Tensor]:
    """The receiver chunk [r0, r1) with its edges [e0, e1) as a system of its own:
    (nodes, pair_i, pair_j) with nodes [r1 - r0 + n_senders] the global atoms (the chunk's
    receivers first, then each distinct sender once) and the pair lists indexing them."""
    uniq, inverse = torch.unique(pair_j[e0:e1], return_inverse=True)
    nodes = torch.cat([torch.arange(r0, r1, device=pair_i.device, dtype=uniq.dtype), uniq])
    return nodes, pair_i[e0:e1] - r0, (r1 - r0) + inverse


def receiver_chunks(rowptr: Tensor, n_edges: int,
                    max_edges: int) -> list[tuple[int, int, int, int]]:
    """Consecutive receiver ranges (r0, r1, e0, e1) of a CSR row pointer [n_recv + 1] over
    n_edges edges, each with at most max_edges edges (but at least one receiver): the unit of
    chunked recomputation. A single chunk is decided from the sizes alone, without reading
    the row pointer back from the device (so CUDA graph capture sees no synchronisation)."""
    n_recv = rowptr.numel() - 1
    if n_recv <= 0:
        return []
    if n_edges <= max_edges:
        return [(0, n_recv, 0, n_edges)]
    rp = rowptr.tolist()
    chunks, r0 = [], 0
    while r0 < n_recv:
        target = rp[r0] + max_edges
        lo, hi = r0 + 1, n_recv
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if rp[mid] <= target:
                lo = mid
            else:
                hi = mid - 1
        r1 = max(r0 + 1, lo)
        chunks.append((r0, r1, rp[r0], rp[r1]))
        r0 = r1
    return chunks
