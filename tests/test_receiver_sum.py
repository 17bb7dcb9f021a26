"""receiver_outer_sum (kernels/receiver_sum): the Triton kernels (interpreter on the CPU) vs
the PyTorch reference, values and first and second derivatives, on fresh random inputs with
receivers of 0 edges, of less than and of more than one tile (16 edges)."""
from __future__ import annotations

import time

import pytest
import torch

import e2former_lammps  # noqa: F401  (import order: the package before kernels)
from kernels.receiver_sum import receiver_outer_sum

DEGREES = [0, 3, 40, 17, 1, 0, 16]


def make_inputs(seed: int, m: int, k: int, dtype=torch.float64, degrees=DEGREES):
    g = torch.Generator().manual_seed(seed)
    pair_i = torch.repeat_interleave(torch.arange(len(degrees)), torch.tensor(degrees))
    e = pair_i.numel()
    a = torch.randn(e, m, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(e, k, generator=g, dtype=torch.float64).to(dtype)
    return a, b, pair_i


def rel(x, y) -> float:
    return float((x.double() - y).norm() / y.norm())


@pytest.mark.parametrize("m,k", [(9, 65), (9, 16), (4, 33), (16, 8)])
def test_values_and_two_derivatives_match_reference(interpreter, m, k):
    seed = int(time.time_ns() % 2**31)
    a0, b0, pair_i = make_inputs(seed, m, k)
    n = len(DEGREES)
    results = {}
    for impl in ("reference", "triton"):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        out = receiver_outer_sum(a, b, pair_i, n, impl=impl)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1),
                            dtype=out.dtype)
        ga, gb = torch.autograd.grad(out, (a, b), g_out, create_graph=True)
        # a second derivative as a force loss takes it: through both first derivatives
        second = torch.autograd.grad(ga.square().sum() + (gb * b).sum(), (a, b))
        results[impl] = (out.detach(), ga.detach(), gb.detach(), *second)
    ref, tri = results["reference"], results["triton"]
    assert (tri[0][0] == 0).all() and (tri[0][5] == 0).all()  # receivers without edges
    for name, x, y in zip(("out", "d/da", "d/db", "d2/da", "d2/db"), tri, ref):
        assert x.shape == y.shape
        assert rel(x, y) < 1e-12, f"{name}: {rel(x, y):.2e} (seed {seed}, m {m}, k {k})"


def test_gradcheck_and_gradgradcheck(interpreter):
    """Numerical derivatives (one kernel call per input element: a small case, one receiver
    over a tile)."""
    seed = int(time.time_ns() % 2**31)
    degrees = [0, 2, 17]
    a, b, pair_i = make_inputs(seed, 2, 3, degrees=degrees)
    a.requires_grad_()
    b.requires_grad_()

    def fn(x, y):
        return receiver_outer_sum(x, y, pair_i, len(degrees), impl="triton")
    assert torch.autograd.gradcheck(fn, (a, b))
    assert torch.autograd.gradgradcheck(fn, (a, b))


def test_float32_matches_float64_reference(interpreter):
    seed = int(time.time_ns() % 2**31)
    a, b, pair_i = make_inputs(seed, 9, 65)
    ref = receiver_outer_sum(a, b, pair_i, len(DEGREES), impl="reference")
    out = receiver_outer_sum(a.float(), b.float(), pair_i, len(DEGREES), impl="triton")
    assert out.dtype == torch.float32 and rel(out, ref) < 1e-6, f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernels_match_fp64_reference():
    """Compiled kernels in float32 (the model's edge-degree embedding sizes) vs the float64
    reference, values and first derivatives."""
    seed = int(time.time_ns() % 2**31)
    g = torch.Generator().manual_seed(seed)
    n = 3000
    degrees = torch.randint(0, 90, (n,), generator=g)
    pair_i = torch.repeat_interleave(torch.arange(n), degrees).cuda()
    a = torch.randn(pair_i.numel(), 9, generator=g, dtype=torch.float64).cuda()
    b = torch.randn(pair_i.numel(), 65, generator=g, dtype=torch.float64).cuda()
    g_out = torch.randn(n, 9, 65, generator=g, dtype=torch.float64).cuda()
    grads = {}
    for impl, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        x, y = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
        out = receiver_outer_sum(x, y, pair_i, n, impl=impl)
        grads[impl] = (out.detach(), *torch.autograd.grad(out, (x, y), g_out.to(dtype)))
    for name, x, y in zip(("out", "d/da", "d/db"), grads["triton"], grads["reference"]):
        assert rel(x, y) < 1e-5, f"{name}: {rel(x, y):.2e} (seed {seed})"
