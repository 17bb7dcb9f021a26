"""Equivariant attention + first-order EAAS convolution: reference and fused implementations."""
from __future__ import annotations

from torch import Tensor

from .common import EdgeRadialWeights
from .reference import equivariant_attention_reference

IMPLEMENTATIONS = ("reference",)


def equivariant_attention(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float, lmax: int,
    impl: str = "reference",
) -> Tensor:
    """Messages of the receiving atoms, per tensor-product path.

    q [n_recv, H, d_k] queries of receivers; k [n_total, H, d_k]; v [n_total, (lmax+1)^2, C]
    values, C divisible by H (channel c belongs to head c // (C / H)); rij [E, 3] = x_j - x_i
    in Å; pair_i [E] receivers (< n_recv, sorted ascending), pair_j [E] senders; species
    [n_total] element indices. Returns [n_recv, n_path_rows(lmax), C], path-major rows
    (see e2former_lammps.o3.path_rows).
    """
    if impl == "reference":
        return equivariant_attention_reference(
            q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps, lmax
        )
    raise ValueError(f"unknown attention implementation {impl!r}; have {IMPLEMENTATIONS}")
