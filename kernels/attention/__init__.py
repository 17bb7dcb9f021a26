"""Equivariant attention + first-order EAAS convolution: reference and fused implementations."""
from __future__ import annotations

import torch
from torch import Tensor

from ..launch import on_device_of
from .common import EdgeRadialWeights

IMPLEMENTATIONS = ("reference", "reference_chunked", "triton", "auto")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str, q: Tensor, lmax: int) -> str:
    """"auto" -> "triton" for float32 CUDA tensors with triton importable and lmax 2, else
    "reference" (float64 on the GPU stays on the reference: the kernels were validated and
    timed in float32 there; float64 is validated in the CPU interpreter only)."""
    if impl == "auto":
        ok = q.is_cuda and q.dtype == torch.float32 and lmax == 2 and triton_available()
        return "triton" if ok else "reference"
    return impl


def equivariant_attention(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float, lmax: int,
    impl: str = "reference", identity_paths: bool = False, shared: dict | None = None,
    weight_envelope: float | None = None, keep_scores: bool | None = None,
) -> Tensor:
    """Messages of the receiving atoms, per tensor-product path.

    q [n_recv, H, d_k] queries of receivers; k [n_total, H, d_k]; v [n_total, (lmax+1)^2, C]
    values, C divisible by H (channel c belongs to head c // (C / H)); rij [E, 3] = x_j - x_i
    in Å; pair_i [E] receivers (< n_recv, sorted ascending), pair_j [E] senders; species
    [n_total] element indices. Returns [n_recv, n_path_rows(lmax), C], path-major rows
    (see e2former_lammps.o3.path_rows); with identity_paths, the (lmax+1)^2 rows of
    sum_j alpha_ij v_j (the l_f = 0 paths) follow them.
    impl: "reference" (PyTorch, materialises per-edge tensors), "reference_chunked" (the
    same over receiver chunks recomputed in the backward: one chunk's per-edge tensors at a
    time, for checks at sizes the reference does not fit), "triton" (fused kernel,
    lmax 2; runs on CPU only under TRITON_INTERPRET=1) or "auto" (triton on CUDA when
    available and lmax == 2, else reference). shared: a dict that lives for one forward of
    the model, through which the reference's layers share the edge geometry and Wigner
    matrices of rij (the kernels compute theirs on the fly). weight_envelope: width (Å) of a
    second envelope on the signed weight, or None (kernels.attention.reference's docstring).
    keep_scores: whether "triton" keeps per-edge scores from the forward for the backward
    (E53): True, False (memory is short), None (where the pairs fit one prepass launch).
    """
    impl = resolve_impl(impl, q, lmax)
    if impl == "reference":
        from .reference import equivariant_attention_reference

        return equivariant_attention_reference(
            q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps, lmax,
            identity_paths=identity_paths, shared=shared, weight_envelope=weight_envelope,
        )
    if impl == "reference_chunked":
        from .reference import equivariant_attention_reference_chunked

        return equivariant_attention_reference_chunked(
            q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps, lmax,
            identity_paths=identity_paths, weight_envelope=weight_envelope)
    if impl == "triton":
        from .autograd import equivariant_attention_triton

        with on_device_of(q):
            msg = equivariant_attention_triton(
                q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps, lmax,
                weight_envelope=weight_envelope, keep_scores=keep_scores,
            )
        if not identity_paths:
            return msg
        from .reference import attention_value_sum

        # no fused kernel for the identity rows yet: the edge-materialising reference
        return torch.cat([msg, attention_value_sum(
            q, k, v, rij, pair_i, pair_j, species, radial, cutoff, softmax_eps,
            weight_envelope)], dim=1)
    raise ValueError(f"unknown attention implementation {impl!r}; have {IMPLEMENTATIONS}")


def __getattr__(name: str):
    # Lazy: importing the reference at package import time would close an import cycle
    # (reference -> e2former_lammps.o3 -> e2former_lammps -> nn.attention -> here).
    if name == "equivariant_attention_reference":
        from .reference import equivariant_attention_reference

        return equivariant_attention_reference
    raise AttributeError(name)
