"""Per-edge small matrix products: the Triton kernels against the reference (values, first
and second derivatives), in Triton's interpreter on the CPU (conftest.py switches it on) and
on the GPU."""
from __future__ import annotations

import time
from functools import partial

import pytest
import torch

import e2former_lammps  # noqa: F401  (import order: the package before kernels)
from e2former_lammps.o3 import tp_eaas, wigner_d
from kernels.edge_matmul import edge_matmul, edge_outer


def fresh_generator() -> torch.Generator:
    seed = int(time.time_ns() % 2**31)
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_edges", [0, 1, 37])
@pytest.mark.parametrize("m,k", [(1, 1), (3, 3), (5, 5), (3, 5), (5, 3)])
@pytest.mark.parametrize("channels", [8, 13, 150])  # 150: three channel blocks, the last partial
def test_kernels_match_reference(interpreter, n_edges, m, k, channels):
    """Partly filled edge blocks (37 = 32 + 5), channel counts off a power of two, transposed
    and sliced operands read in place."""
    g = fresh_generator()
    a = torch.randn(n_edges, k, m, dtype=torch.float64, generator=g).transpose(1, 2)
    rows = torch.randn(n_edges, k + 2, channels, dtype=torch.float64, generator=g)
    b = rows[:, 1:k + 1]  # a row slice, as the attention passes its degree blocks
    torch.testing.assert_close(edge_matmul(a, b, impl="triton"), a @ b, rtol=1e-12,
                               atol=1e-12)
    x = torch.randn(n_edges, m, channels, dtype=torch.float64, generator=g)
    torch.testing.assert_close(edge_outer(x, b, impl="triton"), x @ b.transpose(1, 2),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", [edge_matmul, edge_outer])
def test_first_and_second_derivatives(interpreter, op):
    """gradcheck and gradgradcheck (fp64) through the Triton ops: the backward is made of
    the same differentiable ops, so a force loss can differentiate it again."""
    g = fresh_generator()
    # small: every input element costs numerical-derivative runs in the interpreter
    a = torch.randn(2, 3, 2, dtype=torch.float64, generator=g)
    b = torch.randn(2, 2, 2, dtype=torch.float64, generator=g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    run = partial(op, impl="triton")
    assert torch.autograd.gradcheck(run, (a, b))
    assert torch.autograd.gradgradcheck(run, (a, b))


def test_eaas_product_with_the_kernel_equals_the_reference(interpreter):
    """The EAAS tensor product with its rotations through the kernel (as the attention does)
    equals torch's, values and derivatives with respect to the features and the rotation."""
    g = fresh_generator()
    n_edges, channels = 11, 6
    axis = torch.randn(n_edges, 3, dtype=torch.float64, generator=g)
    angle = torch.randn(n_edges, dtype=torch.float64, generator=g)
    rot = torch.linalg.matrix_exp(angle[:, None, None] * torch.cross(
        torch.eye(3, dtype=torch.float64)[None], axis[:, None, :].expand(-1, 3, -1), dim=-1))
    rot.requires_grad_(True)
    v = {l: torch.randn(n_edges, 2 * l + 1, channels, dtype=torch.float64, generator=g,
                        requires_grad=True) for l in range(3)}
    results = []
    for matmul in (torch.matmul, partial(edge_matmul, impl="triton")):
        out = tp_eaas(v, {l: wigner_d(rot, l) for l in range(3)}, 2, matmul=matmul)
        loss = sum((t * t).sum() for t in out)
        grads = torch.autograd.grad(loss, [rot, *v.values()], create_graph=True)
        second = torch.autograd.grad(sum(x.sum() for x in grads), rot)
        results.append([t.detach() for t in out] + [x.detach() for x in grads] + list(second))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.gpu
def test_gpu_kernels_match_fp64_reference():
    """fp32 on the GPU at training sizes against the fp64 reference: values and gradients."""
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run with -m gpu on the GPU machine")
    g = fresh_generator()
    for m, k, channels in [(1, 1, 64), (3, 3, 64), (5, 5, 64), (5, 3, 64), (5, 5, 256)]:
        a = torch.randn(60_000, k, m, dtype=torch.float64, generator=g).transpose(1, 2)
        b = torch.randn(60_000, k, channels, dtype=torch.float64, generator=g)
        ac, bc = (x.float().cuda().requires_grad_(True) for x in (a, b))
        out = edge_matmul(ac, bc, impl="triton")
        torch.testing.assert_close(out.double().cpu(), a @ b, rtol=1e-5, atol=1e-5)
        grad = torch.randn_like(out)
        ga, gb = torch.autograd.grad(out, (ac, bc), grad)
        torch.testing.assert_close(ga.double().cpu(), (grad.double().cpu() @ b.transpose(1, 2)),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gb.double().cpu(), a.transpose(1, 2) @ grad.double().cpu(),
                                   rtol=1e-4, atol=1e-4)
