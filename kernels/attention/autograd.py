"""autograd.Function around the fused Triton attention.

Forward: the fused Triton kernel (no per-edge tensor in memory); it also returns the
per-receiver softmax statistics (m, den) [n_recv, H].
Backward (first derivatives, the force path, create_graph=False): `backward_impl` picks
  - "triton": the fused Triton backward (triton_backward.py) when it is available, else
  - "chunked": recompute the PyTorch reference under autograd over receiver chunks of at most
    `CHUNK_EDGES` edges, so its memory is bounded by the chunk, not by the system.
Double backward (create_graph=True, training with a force loss): the backward recomputes the
reference on the original inputs under autograd with create_graph, so the returned gradients
are themselves differentiable (exact, but edge-materialising).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .common import (EdgeRadialWeights, chunk_local, keeps_scores, receiver_chunks,
                     receiver_rowptr)

CHUNK_EDGES = 1 << 15
BACKWARD_IMPL = "triton"  # "triton" or "chunked"
KEEP_SCORES = True  # the forward's prepass scratch reused by the backward (E53)


def _reference(q, k, v, rij, w_rbf, emb_recv, emb_send, w_out, b_out, pair_i, pair_j,
               species, centers, width, cutoff, eps, weight_envelope):
    from .reference import equivariant_attention_reference

    radial = EdgeRadialWeights(centers, width, w_rbf, emb_recv, emb_send, w_out, b_out)
    return equivariant_attention_reference(
        q, k, v, rij, pair_i, pair_j, species, radial, cutoff, eps, 2,
        weight_envelope=weight_envelope)


def _chunked_reference_grads(grad_out, q, k, v, rij, weights, pair_i, pair_j, species,
                             centers, width, cutoff, eps, weight_envelope, rowptr, needs):
    """Gradients of <grad_out, reference(...)> by recomputation over receiver chunks."""
    grads = [torch.zeros_like(t) if need else None
             for t, need in zip((q, k, v, rij, *weights), needs)]
    for r0, r1, e0, e1 in receiver_chunks(rowptr, pair_i.numel(), CHUNK_EDGES):
        if e1 > e0:
            nodes, pi, pj = chunk_local(pair_i, pair_j, r0, r1, e0, e1)
            leaves = [q[r0:r1], k[nodes], v[nodes], rij[e0:e1], *weights]
            leaves = [t.detach().requires_grad_(need) for t, need in zip(leaves, needs)]
            with torch.enable_grad():
                out = _reference(*leaves, pi, pj, species[nodes], centers, width, cutoff, eps,
                                 weight_envelope)
                req = [t for t in leaves if t.requires_grad]
                got = torch.autograd.grad(out, req, grad_out[r0:r1], allow_unused=True)
            got = iter(got)
            for idx, need in enumerate(needs):
                if not need:
                    continue
                g = next(got)
                if g is None:
                    continue
                if idx == 0:
                    grads[0][r0:r1] += g
                elif idx in (1, 2):
                    grads[idx].index_add_(0, nodes, g)
                elif idx == 3:
                    grads[3][e0:e1] += g
                else:
                    grads[idx] += g
    return grads


class TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rij, w_rbf, emb_recv, emb_send, w_out, b_out,
                pair_i, pair_j, species, rowptr, centers, width, spacing, cutoff, eps,
                weight_envelope, keep_scores):
        from .triton_forward import attention_forward

        # the prepass's per-edge scalars (score, weight, gate: 3H floats per edge) are kept
        # for the backward when a gradient will be taken and the caller asks for it (the
        # model, by free memory) or, by default, they fit one prepass chunk
        # (kernels/NOTES.md E53); otherwise the backward recomputes them per chunk
        out, m, den, scores = attention_forward(
            q, k, v, rij, pair_i, pair_j, species, rowptr, centers, width, spacing, w_rbf,
            emb_recv, emb_send, w_out, b_out, cutoff, eps, weight_envelope=weight_envelope,
            keep_scores=(KEEP_SCORES and keeps_scores(keep_scores, pair_i.numel())
                         and any(ctx.needs_input_grad[:9])))
        sw, gate = scores if scores is not None else (None, None)
        # not `out` ([n_recv, 20, C], the largest tensor here): the backward does not need it
        ctx.save_for_backward(q, k, v, rij, w_rbf, emb_recv, emb_send, w_out, b_out,
                              pair_i, pair_j, species, rowptr, centers, m, den, sw, gate)
        ctx.consts = (width, spacing, cutoff, eps, weight_envelope)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (q, k, v, rij, w_rbf, emb_recv, emb_send, w_out, b_out, pair_i, pair_j, species,
         rowptr, centers, m, den, sw, gate) = ctx.saved_tensors
        width, spacing, cutoff, eps, weight_envelope = ctx.consts
        needs = list(ctx.needs_input_grad[:9])
        diff = (q, k, v, rij, w_rbf, emb_recv, emb_send, w_out, b_out)
        tail = [None] * 11
        if not any(needs):
            return (None,) * 9 + tuple(tail)
        if torch.is_grad_enabled():
            # create_graph: differentiable recomputation with the reference, on aliases of
            # the inputs: q, k, v usually depend on rij themselves, and a gradient taken with
            # respect to the tensors would count those paths here and again upstream.
            with torch.enable_grad():
                alias = [t.view_as(t) for t in diff]
                ref = _reference(*alias, pair_i, pair_j, species, centers, width, cutoff, eps,
                                 weight_envelope)
                req = [t for t, need in zip(alias, needs) if need]
                got = iter(torch.autograd.grad(ref, req, grad_out, create_graph=True,
                                               allow_unused=True))
            grads = [next(got) if need else None for need in needs]
            return tuple(grads) + tuple(tail)
        grad_out = grad_out.contiguous()
        if BACKWARD_IMPL == "triton":
            try:
                from .triton_backward import attention_backward
            except ImportError:
                attention_backward = None
            if attention_backward is not None:
                grads = attention_backward(
                    grad_out, q, k, v, rij, pair_i, pair_j, species, rowptr, centers, width,
                    spacing, w_rbf, emb_recv, emb_send, w_out, b_out, cutoff, eps, m, den,
                    weight_grads=any(needs[4:]), weight_envelope=weight_envelope,
                    scores=None if sw is None else (sw, gate))
                return tuple(g if need else None for g, need in zip(grads, needs)) + tuple(tail)
        grads = _chunked_reference_grads(
            grad_out, q, k, v, rij, (w_rbf, emb_recv, emb_send, w_out, b_out), pair_i, pair_j,
            species, centers, width, cutoff, eps, weight_envelope, rowptr, needs)
        return tuple(grads) + tuple(tail)


def equivariant_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, rij: Tensor, pair_i: Tensor, pair_j: Tensor,
    species: Tensor, radial: EdgeRadialWeights, cutoff: float, softmax_eps: float, lmax: int,
    weight_envelope: float | None = None, keep_scores: bool | None = None,
) -> Tensor:
    """Fused Triton attention (lmax 2). Same interface and result as the reference.
    keep_scores: the forward keeps its per-edge scores for the backward (E53; 1.5 KB per
    pair in the paper configuration) instead of the backward recomputing them: True, False,
    or None: where the pairs fit one prepass launch (common.keeps_scores)."""
    if lmax != 2:
        raise ValueError(f"the Triton attention supports lmax 2 only, got {lmax}")
    n_heads = q.shape[1]
    if v.shape[-1] % n_heads:
        raise ValueError("channels must be divisible by the number of heads")
    dtype = q.dtype
    c = lambda t: t.to(dtype).contiguous()  # noqa: E731
    rowptr = receiver_rowptr(pair_i, q.shape[0])
    return TritonAttention.apply(
        c(q), c(k), c(v), c(rij), c(radial.w_rbf), c(radial.emb_recv), c(radial.emb_send),
        c(radial.w_out), c(radial.b_out), pair_i.contiguous(), pair_j.contiguous(),
        species.contiguous(), rowptr, c(radial.rbf_centers), float(radial.rbf_width),
        float(radial.rbf_spacing), float(cutoff), float(softmax_eps),
        None if weight_envelope is None else float(weight_envelope), keep_scores,
    )
