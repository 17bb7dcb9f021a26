"""Equivariant attention block: invariant query/key, gated envelope softmax, EAAS message."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from e2former_lammps.o3 import n_path_rows, path_rows, row_degrees
from kernels.attention import equivariant_attention

from .linear import SO3Linear, degree_matmul
from .radial import EdgeRadialMLP, GaussianBasis


class _InvariantProducts(torch.autograd.Function):
    """s_{l,c} = sum over the rows r of degree l of (x W1)_{rc} (x W2)_{rc}, keeping only x.

    Autograd on the plain formula keeps the products x W1, x W2 and their intermediates
    (three [rows, C] tensors per atom with frozen weights, counted); this keeps x and
    recomputes the products in the backward (two GEMMs, <1% of a step predicted). The
    backward is written in differentiable operations, so a second derivative is exact.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1_rows: Tensor, w2_rows: Tensor, row_degree: Tensor,
                n_degrees: int) -> Tensor:
        ctx.save_for_backward(x, w1_rows, w2_rows, row_degree)
        prod = degree_matmul(x, w1_rows) * degree_matmul(x, w2_rows)
        sums = prod.new_zeros(prod.shape[0], n_degrees, prod.shape[-1])
        return sums.index_add(1, row_degree, prod)

    @staticmethod
    def backward(ctx, grad_sums: Tensor):
        x, w1_rows, w2_rows, row_degree = ctx.saved_tensors
        a, b = degree_matmul(x, w1_rows), degree_matmul(x, w2_rows)
        grad_rows = grad_sums.index_select(1, row_degree)
        grad_a, grad_b = grad_rows * b, grad_rows * a
        grad_x = (degree_matmul(grad_a, w1_rows.transpose(1, 2))
                  + degree_matmul(grad_b, w2_rows.transpose(1, 2)))
        # weight gradients only when asked for (not in MD, where the weights are frozen)
        xt = x.transpose(0, 1).transpose(1, 2)  # [rows, C_in, N]
        grad_w1 = torch.bmm(xt, grad_a.transpose(0, 1)) if ctx.needs_input_grad[1] else None
        grad_w2 = torch.bmm(xt, grad_b.transpose(0, 1)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w1, grad_w2, None, None


class EquivariantAttention(nn.Module):
    def __init__(self, basis: GaussianBasis, n_elements: int, channels: int, lmax: int,
                 num_heads: int, head_dim: int, radial_hidden: int, cutoff: float,
                 softmax_eps: float, identity_paths: bool = False,
                 weight_envelope: float | None = None):
        super().__init__()
        self.identity_paths, self.weight_envelope = identity_paths, weight_envelope
        self.lmax, self.num_heads, self.head_dim = lmax, num_heads, head_dim
        self.cutoff, self.softmax_eps = cutoff, softmax_eps
        self.impl = "auto"
        self.w_query_key_1 = SO3Linear(channels, channels, lmax, bias=False)
        self.w_query_key_2 = SO3Linear(channels, channels, lmax, bias=False)
        self.qk_mlp = nn.Sequential(
            nn.Linear((lmax + 1) * channels, channels), nn.SiLU(),
            nn.Linear(channels, 2 * num_heads * head_dim),
        )
        self.value = SO3Linear(channels, channels, lmax)
        self.radial = EdgeRadialMLP(basis, n_elements, radial_hidden, 2 * num_heads)
        self.rows = path_rows(lmax)
        # Per-l3 linear mix over the paths that end in l3 (and the identity path l3 -> l3,
        # last, with identity_paths).
        n_mixed = [len(self.rows[l3]) + identity_paths for l3 in range(lmax + 1)]
        self.path_mix = nn.ParameterList(
            nn.Parameter(torch.randn(n * channels, channels) / (n * channels) ** 0.5)
            for n in n_mixed
        )
        # message rows of the paths ending in l3, path-major: one gather per l3 (slicing each
        # path instead costs a message-sized zero fill per path in the backward)
        for l3 in range(lmax + 1):
            index = [s + m for _, s, _ in self.rows[l3] for m in range(2 * l3 + 1)]
            self.register_buffer(f"path_index_{l3}", torch.tensor(index), persistent=False)
        self.register_buffer("row_degree", row_degrees(lmax), persistent=False)

    def invariants(self, x: Tensor) -> Tensor:
        """s_{l,c} = sum_m (W1 x)_{lm,c} (W2 x)_{lm,c}: [N, (lmax+1) C]."""
        rows = self.row_degree
        return _InvariantProducts.apply(x, self.w_query_key_1.weight.index_select(0, rows),
                                        self.w_query_key_2.weight.index_select(0, rows), rows,
                                        self.lmax + 1).flatten(1)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Node-wise inputs of the attention from x [n_total, rows, C]: query-key rows
        [n_total, 2, heads, head_dim] (queries are used for receivers only) and values
        [n_total, rows, C]."""
        qk = self.qk_mlp(self.invariants(x)).view(-1, 2, self.num_heads, self.head_dim)
        return qk[:, 0], qk[:, 1], self.value(x)

    def message(self, q: Tensor, k: Tensor, v: Tensor, species: Tensor, pair_i: Tensor,
                pair_j: Tensor, rij: Tensor, shared: dict | None = None,
                keep_scores: bool | None = None) -> Tensor:
        """The per-edge part (kernels.attention.equivariant_attention): messages of the
        len(q) receivers. shared, keep_scores: see there."""
        return equivariant_attention(
            q, k, v, rij, pair_i, pair_j, species, self.radial.weights(),
            self.cutoff, self.softmax_eps, self.lmax, impl=self.impl,
            identity_paths=self.identity_paths, shared=shared,
            weight_envelope=self.weight_envelope, keep_scores=keep_scores,
        )

    def mix_paths(self, msg: Tensor) -> Tensor:
        """Messages [n_recv, path rows, C] -> update [n_recv, rows, C]: per l3, a linear
        mix of the paths that end in l3."""
        # the identity rows (sum_j alpha_ij v_j, all degrees) follow the path rows
        values = msg[:, n_path_rows(self.lmax):] if self.identity_paths else None
        out = []
        for l3 in range(self.lmax + 1):
            n_paths, width = len(self.rows[l3]), 2 * l3 + 1
            paths = msg.index_select(1, getattr(self, f"path_index_{l3}"))
            # [N, path, m, C] -> [N, m, path * C]: the paths' channels side by side
            paths = paths.view(-1, n_paths, width, msg.shape[-1]).transpose(1, 2)
            if values is not None:
                paths = torch.cat([paths, values[:, l3 * l3:(l3 + 1) ** 2, None]], dim=2)
                n_paths += 1
            out.append(paths.reshape(-1, width, n_paths * msg.shape[-1]) @ self.path_mix[l3])
        return torch.cat(out, dim=1)
