"""SO(3)-equivariant linear map: one C_in x C_out matrix per degree l, bias on l = 0 only."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..o3 import row_degrees
from ..switches import env_choice

# Precision of the node-wise products of float32 features (degree_matmul): "fp32" (default),
# "tf32" (CUDA tensor cores, inputs rounded to 10 mantissa bits) or "bf16" (inputs rounded to
# bfloat16, fp32 accumulation). They are most of a step's FLOPs (kernels/NOTES.md E27).
NODE_MATMUL_ENV = "E2FORMER_NODE_MATMUL"
NODE_MATMUL_PRECISIONS = ("fp32", "tf32", "bf16")


def node_matmul_precision() -> str:
    """The precision E2FORMER_NODE_MATMUL asks for (read at each call: set it before a run)."""
    return env_choice(NODE_MATMUL_ENV, NODE_MATMUL_PRECISIONS, "fp32")


@contextmanager
def _tf32_matmuls():
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = old


@torch.library.custom_op("e2former::bmm_tf32", mutates_args=())
def bmm_tf32(a: Tensor, b: Tensor) -> Tensor:
    """torch.bmm with cuBLAS allowed to use tf32 (on the CPU a plain bmm). A custom operator,
    not an autograd.Function around the flag, so torch.compile traces it as one node of the
    node work's graph (setting the flag inside a traced function breaks the graph: E56)."""
    with _tf32_matmuls():
        return torch.bmm(a, b)


@bmm_tf32.register_fake
def _bmm_tf32_shape(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], a.shape[1], b.shape[2])


def _bmm_tf32_setup(ctx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _bmm_tf32_backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
    # made of the operator again: its backward runs in tf32 too (a plain bmm under the flag
    # would run its backward, outside it, in full fp32), and second derivatives (force-loss
    # training) stay exact for its math
    a, b = ctx.saved_tensors
    grad_a = bmm_tf32(grad, b.transpose(1, 2)) if ctx.needs_input_grad[0] else None
    grad_b = bmm_tf32(a.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b


bmm_tf32.register_autograd(_bmm_tf32_backward, setup_context=_bmm_tf32_setup)


def degree_matmul(x: Tensor, weight_rows: Tensor, bias_rows: Tensor | None = None) -> Tensor:
    """x [N, rows, C_in] times weight_rows [rows, C_in, C_out] row by row (+ bias_rows
    [rows, C_out]): [N, rows, C_out], float32 products in the precision of
    E2FORMER_NODE_MATMUL (node_matmul_precision; other dtypes as they are).

    One batched GEMM over the rows: the view x.transpose(0, 1) [rows, N, C_in] has unit
    column stride, so BLAS reads it in place. (Slicing rows per degree instead made copies,
    and `slice @ weight` on a non-contiguous slice ran N tiny products: ~35% of a 10k-atom
    step on the H100, kernels/NOTES.md E9.)
    """
    xt = x.transpose(0, 1)
    precision = node_matmul_precision() if x.dtype == torch.float32 else "fp32"
    if precision == "bf16":
        out = torch.bmm(xt.to(torch.bfloat16), weight_rows.to(torch.bfloat16)).float()
    elif precision == "tf32" and x.is_cuda:
        out = bmm_tf32(xt, weight_rows)
    else:
        out = (torch.bmm(xt, weight_rows) if bias_rows is None
               else torch.baddbmm(bias_rows[:, None, :], xt, weight_rows))
        return out.transpose(0, 1).contiguous()
    if bias_rows is not None:
        out = out + bias_rows[:, None, :]
    return out.transpose(0, 1).contiguous()


class SO3Linear(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, lmax: int, bias: bool = True):
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(
            torch.randn(lmax + 1, in_channels, out_channels) / math.sqrt(in_channels)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("row_degree", row_degrees(lmax), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, (lmax+1)^2, C_in] -> [N, (lmax+1)^2, C_out]."""
        bias_rows = None
        if self.bias is not None:
            bias_rows = torch.cat([self.bias[None], self.bias.new_zeros(
                self.row_degree.numel() - 1, self.bias.numel())])
        return degree_matmul(x, self.weight.index_select(0, self.row_degree), bias_rows)
