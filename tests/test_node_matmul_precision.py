"""E2FORMER_NODE_MATMUL: the node-wise products in fp32 (default), tf32 or bf16 (the
throughput the targets need lies beyond fp32 arithmetic: kernels/NOTES.md E27)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from e2former_lammps import E2FormerCalculator
from e2former_lammps.nn.linear import NODE_MATMUL_ENV, bmm_tf32, degree_matmul

from conftest import random_model, water_box


def test_unknown_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(NODE_MATMUL_ENV, "fp16")
    x = torch.randn(4, 9, 8)
    with pytest.raises(ValueError, match="E2FORMER_NODE_MATMUL='fp16'"):
        degree_matmul(x, torch.randn(9, 8, 8))


def test_tf32_product_and_its_derivatives():
    """The tf32 bmm's backward is itself differentiable: first and second derivatives by
    finite differences (fp64 on the CPU, where the tf32 flag changes nothing), and the
    custom operator's registration (fake tensor shapes, autograd) checked by opcheck."""
    a = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.equal(bmm_tf32(a, b), torch.bmm(a, b))
    assert torch.autograd.gradcheck(bmm_tf32, (a, b))
    assert torch.autograd.gradgradcheck(bmm_tf32, (a, b))
    torch.library.opcheck(torch.ops.e2former.bmm_tf32.default, (a, b))


def test_tf32_product_compiles_into_one_graph():
    """torch.compile traces the tf32 product as one node (the autograd.Function that set
    cuBLAS's flag inside broke the node work's graph into 16: kernels/NOTES.md E56), on
    transposed views as degree_matmul passes them, forward and backward as eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    def mix(x, w):
        return torch.tanh(bmm_tf32(x.transpose(0, 1), w)).transpose(0, 1).sum(-1)

    compiled = torch.compile(mix, fullgraph=True, dynamic=True)
    w = torch.randn(9, 8, 6, dtype=torch.float64, requires_grad=True)
    for n in (5, 11):
        x = torch.randn(n, 9, 8, dtype=torch.float64)
        got = compiled(x, w)
        (g_got,) = torch.autograd.grad(got.square().sum(), w)
        want = mix(x, w)
        (g_want,) = torch.autograd.grad(want.square().sum(), w)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
        assert torch.allclose(g_got, g_want, rtol=1e-12, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_node_products_change_forces_by_under_a_percent(monkeypatch, seed):
    """A float32 model with bf16 node products against the same model in float64: the
    forces move by ~0.5% (fp32 products: ~1e-6), the energy by < 1 meV/atom, and float64
    models ignore the setting. (Rounding the inputs also makes the energy surface slightly
    rough (printed: the energy change of a 1e-3 Å move beyond -F . dx), so NVE drift, not
    this error alone, decides whether bf16 is usable for MD.)"""
    model64 = random_model(seed=seed)
    model32 = copy.deepcopy(model64).float()
    atoms = water_box(3, seed=seed)

    def energy_forces(model):
        a = atoms.copy()
        a.calc = E2FormerCalculator(model)
        return a.get_potential_energy(), a.get_forces()

    e64, f64 = energy_forces(model64)
    e32, f32 = energy_forces(model32)
    monkeypatch.setenv(NODE_MATMUL_ENV, "bf16")
    e16, f16 = energy_forces(model32)
    assert energy_forces(model64)[0] == e64
    rel = lambda f: np.linalg.norm(f - f64) / np.linalg.norm(f64)  # noqa: E731
    # the figures kernels/NOTES.md E28 quotes (pytest -s): errors, and the roughness, the
    # energy change of a 1e-3 Å move beyond -F . dx
    moved = atoms.copy()
    dx = 1e-3 * np.random.default_rng(seed).standard_normal(moved.positions.shape)
    moved.positions += dx
    moved.calc = E2FormerCalculator(model32)
    rough = abs(moved.get_potential_energy() - e16 + (f16 * dx).sum()) / len(atoms)
    print(f"seed {seed}: forces rel. err. fp32 {rel(f32):.2e}, bf16 {rel(f16):.2e}; energy "
          f"err. bf16 {abs(e16 - e64) / len(atoms):.2e} eV/atom; roughness {rough:.1e} eV/atom")
    assert rel(f32) < 1e-5
    assert 1e-3 < rel(f16) < 2e-2
    assert abs(e16 - e64) / len(atoms) < 1e-3


@pytest.mark.gpu
def test_gpu_tf32_and_bf16_node_products(monkeypatch):
    """On the GPU: degree_matmul at a 10k-atom size ([8192, 9, 128] x [9, 128, 128], where
    cuBLAS takes tensor-core kernels) and its input gradient, each setting against fp64,
    tf32 between fp32 and bf16; the full model's forces (fused attention) within 1e-3 for
    tf32; the global cuBLAS tf32 setting left as it was. (At the 192-atom model size alone
    cuBLAS kept its fp32 kernels and tf32 equalled fp32 bit for bit, H200.)"""
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run with -m gpu on the GPU machine")
    gen = torch.Generator().manual_seed(7)
    x64 = torch.randn(8192, 9, 128, generator=gen, dtype=torch.float64)
    w64 = torch.randn(9, 128, 128, generator=gen, dtype=torch.float64) / 128**0.5
    up = torch.randn(8192, 9, 128, generator=gen, dtype=torch.float64)
    ref = degree_matmul(x64, w64)
    ref_dx = torch.bmm(up.transpose(0, 1), w64.transpose(1, 2)).transpose(0, 1)
    before = torch.backends.cuda.matmul.fp32_precision

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return (torch.linalg.norm(a.double().cpu() - b) / torch.linalg.norm(b)).item()

    err, err_dx = {}, {}
    for value in ("fp32", "tf32", "bf16"):
        monkeypatch.setenv(NODE_MATMUL_ENV, value)
        x = x64.float().cuda().requires_grad_()
        out = degree_matmul(x, w64.float().cuda())
        out.backward(up.float().cuda())
        err[value], err_dx[value] = rel(out, ref), rel(x.grad, ref_dx)
    print("degree_matmul", err, "input gradient", err_dx)
    assert torch.backends.cuda.matmul.fp32_precision == before
    for e in (err, err_dx):
        assert e["fp32"] < 1e-6
        assert e["fp32"] < e["tf32"] < e["bf16"] < 2e-2

    model64 = random_model(seed=5)
    model32 = copy.deepcopy(model64).float().cuda()
    atoms = water_box(4, seed=5)
    a = atoms.copy()
    a.calc = E2FormerCalculator(model64)
    f64 = a.get_forces()
    forces = {}
    for value in ("fp32", "tf32", "bf16"):
        monkeypatch.setenv(NODE_MATMUL_ENV, value)
        a = atoms.copy()
        a.calc = E2FormerCalculator(model32)
        forces[value] = np.linalg.norm(a.get_forces() - f64) / np.linalg.norm(f64)
    print("model forces", forces)
    assert forces["fp32"] < 1e-5
    assert forces["tf32"] < 1e-3
    assert forces["fp32"] < forces["bf16"] < 2e-2
