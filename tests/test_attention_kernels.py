"""Fused Triton attention vs the PyTorch reference: values, first and second derivatives.

On the CPU the kernels run in Triton's interpreter (switched on by conftest.py before triton
is imported); on the GPU machine the CPU tests run only if TRITON_INTERPRET=1 was set by the
caller, and the CUDA tests run on the device. Inputs are
fresh random every run; the seed is printed (pytest -s) and part of every failure message.
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

import e2former_lammps  # noqa: F401  (import order: the package before kernels)
from kernels.attention import EdgeRadialWeights, equivariant_attention
from kernels.attention.common import receiver_chunks, receiver_rowptr

import triton  # noqa: F401  (installed by deploy/setup_env.sh: a missing one fails)
CUTOFF, EPS = 5.0, 1.0


def fresh_seed() -> int:
    seed = int(time.time_ns() % 2**31)
    print(f"seed {seed}")
    return seed


def make_inputs(seed, degrees, n_total, heads=4, d_k=8, channels=8, n_rbf=48, hidden=24,
                dtype=torch.float64, device="cpu", uniform_rbf=True):
    """Random op inputs; degrees[i] neighbours of receiver i (0 allowed), distances in (0.7, r_c).
    uniform_rbf: the radial weights say their centres are evenly spaced (as the model's
    GaussianBasis does), so the kernels visit a window of Gaussians; else all of them."""
    g = torch.Generator().manual_seed(seed)
    n_recv = len(degrees)
    pair_i = torch.repeat_interleave(torch.arange(n_recv), torch.tensor(degrees))
    e = pair_i.numel()
    pair_j = torch.randint(0, n_total, (e,), generator=g)
    direction = torch.randn(e, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    dist = 0.7 + (CUTOFF * 0.999 - 0.7) * torch.rand(e, 1, generator=g, dtype=torch.float64)
    rij = direction * dist

    def rn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    q, k = rn(n_recv, heads, d_k), rn(n_total, heads, d_k)
    v = rn(n_total, 9, channels)
    species = torch.randint(0, 3, (n_total,), generator=g)
    radial = EdgeRadialWeights(
        torch.linspace(0.0, CUTOFF, n_rbf, dtype=torch.float64), CUTOFF / (n_rbf - 1),
        rn(n_rbf, hidden, scale=n_rbf**-0.5), rn(3, hidden, scale=0.5), rn(3, hidden, scale=0.5),
        rn(hidden, 2 * heads, scale=hidden**-0.5), rn(2 * heads, scale=0.3),
        CUTOFF / (n_rbf - 1) if uniform_rbf else 0.0,
    )
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    radial = EdgeRadialWeights(*(cast(f) if torch.is_tensor(f) else f
                                 for f in dataclasses.astuple(radial)))
    return (cast(q), cast(k), cast(v), cast(rij), pair_i.to(device), pair_j.to(device),
            species.to(device), radial)


def call(impl, inputs, leaves=None, weight_envelope=None):
    q, k, v, rij, pair_i, pair_j, species, radial = inputs
    if leaves is not None:
        q, k, v, rij = leaves[:4]
        radial = dataclasses.replace(radial, w_rbf=leaves[4], emb_recv=leaves[5],
                                     emb_send=leaves[6], w_out=leaves[7], b_out=leaves[8])
    return equivariant_attention(q, k, v, rij, pair_i, pair_j, species, radial, CUTOFF, EPS, 2,
                                 impl=impl, weight_envelope=weight_envelope)


def make_leaves(inputs):
    q, k, v, rij, _, _, _, radial = inputs
    return [t.detach().clone().requires_grad_() for t in
            (q, k, v, rij, radial.w_rbf, radial.emb_recv, radial.emb_send, radial.w_out,
             radial.b_out)]


NAMES = ("q", "k", "v", "rij", "w_rbf", "emb_recv", "emb_send", "w_out", "b_out")


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


# Receivers with 0 neighbours, a few, > one tile (tile = 16 edges), a partly empty last tile.
DEGREES = [0, 3, 40, 17, 1, 0, 16]


@pytest.mark.parametrize("dtype,tol,variant,uniform_rbf,weight_envelope", [
    (torch.float64, 1e-12, {}, True, None),
    (torch.float64, 1e-12, {}, False, None),  # all Gaussians, by tl.dot
    (torch.float64, 1e-12, {"DEFER": True}, True, None),
    (torch.float64, 1e-12, {"PRE": True}, True, None),
    (torch.float64, 1e-12, {"PRE": True}, False, None),
    (torch.float32, 2e-5, {}, True, None),
    (torch.float64, 1e-12, {}, True, 1.5),  # alpha's weight w g(d): fused and PRE paths
    (torch.float64, 1e-12, {"PRE": True}, True, CUTOFF)])
def test_forward_matches_reference(interpreter, dtype, tol, variant, uniform_rbf,
                                   weight_envelope, monkeypatch):
    """Kernel variants (see triton_forward.default_blocks); PRE in chunks of <= 20 edges."""
    import kernels.attention.triton_forward as tf

    default = tf.default_blocks
    monkeypatch.setattr(tf, "default_blocks",
                        lambda h, ch, dev: {**default(h, ch, dev), **variant})
    monkeypatch.setattr(tf, "PRE_CHUNK_EDGES", 20)
    seed = fresh_seed()
    inputs = make_inputs(seed, DEGREES, n_total=9, dtype=dtype, uniform_rbf=uniform_rbf)
    ref_inputs = make_inputs(seed, DEGREES, n_total=9, dtype=torch.float64)
    out = call("triton", inputs, weight_envelope=weight_envelope)
    ref = call("reference", ref_inputs, weight_envelope=weight_envelope)
    if weight_envelope is not None:  # it changes the result (else the test proves nothing)
        assert rel(call("reference", ref_inputs), ref) > 1e-3
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel(out.double(), ref) < tol, f"seed {seed}"
    # receivers without neighbours get exactly zero
    assert (out[0] == 0).all() and (out[5] == 0).all()


def test_forward_paper_heads(interpreter):
    """128 heads x 8, C = 256 (2 channels per head), 256 rbf: several head blocks per program."""
    seed = fresh_seed()
    inputs = make_inputs(seed, [5, 0, 21], n_total=6, heads=128, d_k=8, channels=256,
                         n_rbf=256, hidden=64)
    assert rel(call("triton", inputs), call("reference", inputs)) < 1e-12, f"seed {seed}"


@pytest.mark.parametrize("backward,reduce,uniform_rbf,weight_envelope", [
    ("triton", "sorted", True, None), ("triton", "atomic", True, None),
    ("triton", "atomic", False, None), ("chunked", None, True, None),
    ("triton", "sorted", True, 1.5), ("triton", "atomic", True, CUTOFF),
    ("chunked", None, True, 1.5)])
def test_first_derivatives(interpreter, backward, reduce, uniform_rbf, weight_envelope,
                           monkeypatch):
    import kernels.attention.autograd as ag

    if backward == "triton":
        import kernels.attention.triton_backward as tb
        monkeypatch.setattr(tb, "CHUNK_EDGES", 20)
        monkeypatch.setattr(tb, "REDUCE", reduce)
    monkeypatch.setattr(ag, "BACKWARD_IMPL", backward)
    monkeypatch.setattr(ag, "CHUNK_EDGES", 20)  # several chunks, one receiver over the limit
    seed = fresh_seed()
    inputs = make_inputs(seed, DEGREES, n_total=9, uniform_rbf=uniform_rbf)
    grads = {}
    for impl in ("reference", "triton"):
        leaves = make_leaves(inputs)
        out = call(impl, inputs, leaves, weight_envelope)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=out.dtype)
        grads[impl] = torch.autograd.grad(out, leaves, g_out)
    for name, a, b in zip(NAMES, grads["triton"], grads["reference"]):
        assert rel(a, b) < 1e-10, f"d/d{name}: rel err {rel(a, b):.2e} (seed {seed})"


@pytest.mark.parametrize("heads,d_k,channels,hidden,degrees,reduce", [
    (4, 8, 8, 24, DEGREES, "sorted"),
    (64, 4, 64, 40, [2, 0, 19], "sorted"),  # several head blocks in all backward kernels
    (64, 4, 64, 40, [2, 0, 19], "atomic"),
    (8, 8, 64, 24, [3, 0, 17], "sorted"),  # 8 channels per head: 4 heads per backward program
    (2, 8, 64, 24, [3, 0, 17], "atomic"),  # 32 channels per head: 1 head per program
])
def test_forces_only_derivatives(interpreter, heads, d_k, channels, hidden, degrees, reduce,
                                 monkeypatch):
    """MD path: the radial weights need no gradient (frozen model); q, k, v, rij match."""
    import kernels.attention.triton_backward as tb

    monkeypatch.setattr(tb, "CHUNK_EDGES", 20)
    monkeypatch.setattr(tb, "REDUCE", reduce)
    seed = fresh_seed()
    inputs = make_inputs(seed, degrees, n_total=len(degrees) + 3, heads=heads, d_k=d_k,
                         channels=channels, hidden=hidden)
    grads = {}
    for impl in ("reference", "triton"):
        leaves = make_leaves(inputs)
        for w in leaves[4:]:
            w.requires_grad_(False)
        out = call(impl, inputs, leaves)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=out.dtype)
        grads[impl] = torch.autograd.grad(out, leaves[:4], g_out)
    for name, a, b in zip(NAMES, grads["triton"], grads["reference"]):
        assert rel(a, b) < 1e-10, f"d/d{name}: rel err {rel(a, b):.2e} (seed {seed})"


@pytest.mark.parametrize("reduce,weight_envelope,weights", [
    ("atomic", None, True), ("atomic", 1.5, False), ("sorted", None, False)])
def test_backward_reuses_the_forwards_scores(interpreter, reduce, weight_envelope, weights,
                                            monkeypatch):
    """One chunk of edges: the backward takes the forward's prepass scratch (E53) instead of
    running the prepass again, with the same gradients; a second backward through the
    retained graph gets them again (the first left the scratch as it was)."""
    import kernels.attention.autograd as ag
    import kernels.attention.triton_backward as tb
    import kernels.attention.triton_forward as tf

    monkeypatch.setattr(tb, "REDUCE", reduce)
    calls = []
    prepass = tf.edge_scores
    monkeypatch.setattr(tf, "edge_scores", lambda *a, **kw: calls.append(1) or prepass(*a, **kw))
    seed = fresh_seed()
    inputs = make_inputs(seed, DEGREES, n_total=9)
    g_out = None
    grads = {}
    for keep in (False, True):
        monkeypatch.setattr(ag, "KEEP_SCORES", keep)
        leaves = make_leaves(inputs)
        if not weights:
            for w in leaves[4:]:
                w.requires_grad_(False)
        wrt = leaves if weights else leaves[:4]
        calls.clear()
        out = call("triton", inputs, leaves, weight_envelope)
        if g_out is None:
            g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                                dtype=out.dtype)
        grads[keep] = torch.autograd.grad(out, wrt, g_out, retain_graph=True)
        assert len(calls) == (1 if keep else 2), f"prepass ran {len(calls)} times"
        if keep:
            again = torch.autograd.grad(out, wrt, g_out)
    ref_leaves = make_leaves(inputs)
    ref = torch.autograd.grad(call("reference", inputs, ref_leaves, weight_envelope),
                              ref_leaves if weights else ref_leaves[:4], g_out)
    for name, a, b, c, r in zip(NAMES, grads[True], grads[False], again, ref):
        assert rel(a, r) < 1e-10, f"d/d{name}: rel err {rel(a, r):.2e} (seed {seed})"
        assert rel(a, b) < 1e-12 and torch.equal(a, c), f"d/d{name} (seed {seed})"


def test_scores_kept_over_several_prepass_launches(interpreter, monkeypatch):
    """keep_scores=True with the pairs in several prepass launches (forward chunks of <= 20
    edges, backward chunks of <= 30: different bounds): the forward keeps all edges' scores,
    the backward runs no prepass, and the gradients equal those without keeping (None: the
    default recomputes beyond one launch) and the reference."""
    import kernels.attention.common as common
    import kernels.attention.triton_backward as tb
    import kernels.attention.triton_forward as tf

    monkeypatch.setattr(tf, "PRE_CHUNK_EDGES", 20)
    monkeypatch.setattr(common, "PRE_CHUNK_EDGES", 20)  # the default's bound (keeps_scores)
    monkeypatch.setattr(tb, "CHUNK_EDGES", 30)
    calls = []
    prepass = tf.edge_scores
    monkeypatch.setattr(tf, "edge_scores", lambda *a, **kw: calls.append(1) or prepass(*a, **kw))
    seed = fresh_seed()
    inputs = make_inputs(seed, DEGREES, n_total=9)
    q, k, v, rij, pair_i, pair_j, species, radial = inputs
    n_launches = len(receiver_chunks(receiver_rowptr(pair_i, len(DEGREES)), pair_i.numel(), 20))
    n_bwd_chunks = len(receiver_chunks(receiver_rowptr(pair_i, len(DEGREES)), pair_i.numel(), 30))
    assert n_launches > 2 and n_bwd_chunks > 1
    grads = {}
    for keep, prepasses in ((True, n_launches), (None, n_launches + n_bwd_chunks)):
        leaves = make_leaves(inputs)
        rad = dataclasses.replace(radial, w_rbf=leaves[4], emb_recv=leaves[5],
                                  emb_send=leaves[6], w_out=leaves[7], b_out=leaves[8])
        calls.clear()
        out = equivariant_attention(*leaves[:4], pair_i, pair_j, species, rad, CUTOFF, EPS, 2,
                                    impl="triton", keep_scores=keep)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=out.dtype)
        grads[keep] = torch.autograd.grad(out, leaves, g_out)
        assert len(calls) == prepasses, (keep, len(calls), prepasses)
    ref_leaves = make_leaves(inputs)
    ref = torch.autograd.grad(call("reference", inputs, ref_leaves), ref_leaves, g_out)
    for name, a, b, r in zip(NAMES, grads[True], grads[None], ref):
        assert rel(a, r) < 1e-10, f"d/d{name}: rel err {rel(a, r):.2e} (seed {seed})"
        assert rel(a, b) < 1e-12, f"d/d{name} (seed {seed})"


@pytest.mark.parametrize("weight_envelope", [None, 1.5])
def test_double_backward(interpreter, weight_envelope):
    """Gradient of a force-like loss (|dL/d inputs|^2) matches the reference."""
    seed = fresh_seed()
    inputs = make_inputs(seed, [0, 4, 19, 2], n_total=5)
    res = {}
    for impl in ("reference", "triton"):
        leaves = make_leaves(inputs)
        out = call(impl, inputs, leaves, weight_envelope)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=out.dtype)
        first = torch.autograd.grad(out, leaves, g_out, create_graph=True)
        loss = sum((f * f).sum() for f in first)
        res[impl] = torch.autograd.grad(loss, leaves)
    for name, a, b in zip(NAMES, res["triton"], res["reference"]):
        assert rel(a, b) < 1e-10, f"d2/d{name}: rel err {rel(a, b):.2e} (seed {seed})"


def test_double_backward_inputs_depend_on_rij(interpreter):
    """Force-loss training: q, k, v are functions of rij (as in every layer after the
    first), so dL/drij must count each path once (a regression: it was counted twice)."""
    seed = fresh_seed()
    inputs = make_inputs(seed, [0, 4, 7, 2], n_total=5)
    q0, k0, v0, rij0 = inputs[:4]
    pair_i = inputs[4]
    res = {}
    for impl in ("reference", "triton"):
        rij = rij0.clone().requires_grad_()
        feat = torch.zeros(q0.shape[0], dtype=rij.dtype).index_add(0, pair_i, rij.norm(dim=-1))
        q = q0 * (1.0 + 0.1 * feat)[:, None, None]
        k = k0 * (1.0 + 0.1 * rij.sum())
        v = v0 * (1.0 + 0.05 * rij.pow(2).sum())
        radial = inputs[7]
        out = equivariant_attention(q, k, v, rij, pair_i, inputs[5], inputs[6], radial, CUTOFF,
                                    EPS, 2, impl=impl)
        energy = (out * out).sum()
        (force,) = torch.autograd.grad(energy, rij, create_graph=True)
        (g2,) = torch.autograd.grad((force * force).sum(), rij)
        res[impl] = (force.detach(), g2)
    for a, b, what in zip(res["triton"], res["reference"], ("dE/drij", "d|F|^2/drij")):
        assert rel(a, b) < 1e-10, f"{what}: rel err {rel(a, b):.2e} (seed {seed})"


@pytest.mark.parametrize("width", [CUTOFF, 0.5])
def test_weight_envelope_bounds_a_lone_neighbours_slope(width):
    """A receiver with one neighbour and a large score (s = 20): without weight_envelope its
    alpha = w a / (a + eps) stays ~w until p ~ eps e^-s, then drops within ~0.01 Å of r_c
    (steep forces); with it, alpha <= |w| g and, for width = r_c (g = p),
    |d alpha / dd| <= 1.25 |w p'(d)| (reference docstring); a narrower width keeps the slope
    of order |w| / width. The radial MLP is constant in d here, so w and s are too."""
    from kernels.attention.common import weight_envelope_factor
    from kernels.attention.reference import attention_weights

    heads, d_k, n_rbf, hidden = 2, 4, 8, 4
    dist = torch.cat([torch.linspace(CUTOFF - 0.6, CUTOFF - 0.05, 200, dtype=torch.float64),
                      torch.linspace(CUTOFF - 0.05, CUTOFF - 1e-6, 1000, dtype=torch.float64)])
    n = dist.numel()
    dist.requires_grad_()
    rij = torch.stack([dist, torch.zeros_like(dist), torch.zeros_like(dist)], dim=-1)
    pair_i, pair_j = torch.arange(n), n + torch.arange(n)
    c = (20.0 / d_k**0.5) ** 0.5  # <q, k> / sqrt(d_k) = 20 with q = k = c
    q = torch.full((n, heads, d_k), c, dtype=torch.float64)
    k = torch.full((2 * n, heads, d_k), c, dtype=torch.float64)
    weight = torch.tensor([0.7, -1.3], dtype=torch.float64)
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    radial = EdgeRadialWeights(
        torch.linspace(0.0, CUTOFF, n_rbf, dtype=torch.float64), CUTOFF / (n_rbf - 1),
        zeros(n_rbf, hidden), zeros(1, hidden), zeros(1, hidden), zeros(hidden, 2 * heads),
        torch.cat([torch.full((heads,), 30.0, dtype=torch.float64), weight]),  # gate ~ 1
        CUTOFF / (n_rbf - 1))
    species = torch.zeros(2 * n, dtype=torch.long)
    slopes = {}
    for on in (None, width):
        alpha = attention_weights(q, k, rij, pair_i, pair_j, species, radial, CUTOFF, EPS,
                                  weight_envelope=on)
        slopes[on] = torch.stack([torch.autograd.grad(
            alpha[:, h].sum(), dist, retain_graph=True)[0].abs() for h in range(heads)], -1)
        if on is not None:
            g = weight_envelope_factor(dist.detach(), CUTOFF, width)[:, None]
            assert (alpha.detach().abs() <= weight.abs() * g + 1e-15).all()
    x = dist.detach() / CUTOFF
    if width == CUTOFF:
        bound = 1.25 * (30.0 * x**2 * (x - 1.0) ** 2 / CUTOFF)[:, None] * weight.abs()
        assert (slopes[width] <= bound + 1e-12).all()
    else:
        bound = 4.0 / width * weight.abs()  # measured: 1.875 / width, g's steepest slope
        assert (slopes[width] <= bound).all(), float(slopes[width].max())
    assert slopes[None].max() > 20 * bound.max()  # the defect it removes


def test_no_edges(interpreter):
    """Isolated atoms (the model's isolated-atom baseline): zero output, zero gradients."""
    inputs = make_inputs(fresh_seed(), [0, 0, 0], n_total=4)
    leaves = make_leaves(inputs)
    out = call("triton", inputs, leaves)
    assert out.shape == (3, 20, 8) and (out == 0).all()
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads)


def test_identity_path_rows(interpreter):
    """identity_paths appends sum_j alpha_ij v_j (all degrees) after the path rows, the same
    for both implementations, and leaves the path rows as they were; values and first
    derivatives, fp64."""
    from kernels.attention.reference import attention_weights

    seed = fresh_seed()
    inputs = make_inputs(seed, DEGREES, n_total=9)
    q, k, v, rij, pair_i, pair_j, species, radial = inputs
    with_id = {impl: equivariant_attention(q, k, v, rij, pair_i, pair_j, species, radial,
                                           CUTOFF, EPS, 2, impl=impl, identity_paths=True)
               for impl in ("reference", "triton")}
    paths = call("reference", inputs)
    ref = with_id["reference"]
    assert ref.shape == (len(DEGREES), paths.shape[1] + 9, v.shape[-1])
    assert torch.equal(ref[:, :paths.shape[1]], paths)
    alpha = attention_weights(q, k, rij, pair_i, pair_j, species, radial, CUTOFF, EPS)
    per_edge = v[pair_j] * alpha.repeat_interleave(v.shape[-1] // q.shape[1], -1)[:, None]
    by_loop = torch.stack([per_edge[pair_i == i].sum(0) for i in range(len(DEGREES))])
    assert rel(ref[:, paths.shape[1]:], by_loop) < 1e-13, f"seed {seed}"
    assert rel(with_id["triton"], ref) < 1e-12, f"seed {seed}"
    leaves = make_leaves(inputs)
    weights = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(seed))
    grads = {}
    for impl in ("reference", "triton"):
        q, k, v, rij = leaves[:4]
        out = equivariant_attention(q, k, v, rij, pair_i, pair_j, species, radial, CUTOFF, EPS,
                                    2, impl=impl, identity_paths=True)
        grads[impl] = torch.autograd.grad((out * weights).sum(), leaves[:4])
    for name, a, b in zip(NAMES, grads["triton"], grads["reference"]):
        assert rel(a, b) < 1e-11, f"d/d{name}, seed {seed}"


def test_rbf_window_leaves_out_only_negligible_gaussians():
    """Every centre outside the kernels' window is > 8.5 widths from d (Gaussian < 2e-16)."""
    from kernels.attention.triton_forward import rbf_window

    n_rbf, width = 256, CUTOFF / 255
    win, inv_spacing = rbf_window(n_rbf, width, width)
    assert win == 19 and inv_spacing == pytest.approx(1 / width)
    centers = torch.linspace(0.0, CUTOFF, n_rbf, dtype=torch.float64)
    d = torch.linspace(0.0, CUTOFF, 10007, dtype=torch.float64)
    lo = torch.floor(d * inv_spacing + 0.5).long() - win // 2  # as _window_start
    idx = torch.arange(n_rbf)
    outside = (idx[None, :] < lo[:, None]) | (idx[None, :] >= lo[:, None] + win)
    gauss = torch.exp(-0.5 * ((d[:, None] - centers[None, :]) / width) ** 2)
    assert gauss[outside].max() < 2e-16
    assert rbf_window(19, 1.0, 1.0) == (0, 0.0)  # window as wide as the basis: dense
    assert rbf_window(256, width, 0.0) == (0, 0.0)  # spacing unknown: dense


def test_dot_precision_option(monkeypatch):
    from kernels.attention.triton_forward import dot_precision

    monkeypatch.setenv("E2FORMER_DOT_PRECISION", "tf32")
    assert dot_precision(torch.float32) == "tf32" and dot_precision(torch.float64) == "ieee"
    monkeypatch.setenv("E2FORMER_DOT_PRECISION", "bf16")
    with pytest.raises(ValueError, match="E2FORMER_DOT_PRECISION='bf16'"):
        dot_precision(torch.float32)


def test_auto_dispatch_cpu_is_reference():
    from kernels.attention import resolve_impl

    q = torch.zeros(1, 1, 1)
    assert resolve_impl("auto", q, 2) == "reference"
    assert resolve_impl("triton", q, 2) == "triton"


def test_eaas_pattern_matches_o3():
    from kernels.attention.triton_forward import eaas_constants

    assert len(eaas_constants()) == 14


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def paper_size_inputs(seed: int, dtype: torch.dtype, heads: int = 128, channels: int = 256,
                      n_rbf: int = 256) -> dict:
    """300 receivers with 0-69 neighbours, paper attention sizes (default), on the GPU."""
    g = torch.Generator().manual_seed(seed)
    degrees = torch.randint(0, 70, (300,), generator=g).tolist()
    return make_inputs(seed, degrees, n_total=400, heads=heads, d_k=8, channels=channels,
                       n_rbf=n_rbf, hidden=64, dtype=dtype, device="cuda")


def assert_grads_match(grads: dict, seed: int) -> None:
    for name, a, b in zip(NAMES, grads["triton"], grads["reference"]):
        assert rel(a.double(), b) < 1e-4, f"d/d{name} {rel(a.double(), b):.2e} (seed {seed})"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("weight_envelope", [None, 1.0])
def test_gpu_forward_backward_paper_size(weight_envelope):
    """fp32 kernels vs the fp64 reference, compiled (the interpreter does not check what
    the compiler rejects, e.g. a loop-carried name changing type)."""
    seed = fresh_seed()
    inputs = paper_size_inputs(seed, torch.float32)
    ref64 = paper_size_inputs(seed, torch.float64)
    out = call("triton", inputs, weight_envelope=weight_envelope)
    ref = call("reference", ref64, weight_envelope=weight_envelope)
    assert rel(out.double(), ref) < 1e-5, f"seed {seed}"
    grads = {}
    for impl, inp in (("triton", inputs), ("reference", ref64)):
        leaves = make_leaves(inp)
        o = call(impl, inp, leaves, weight_envelope)
        g_out = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).to(o)
        grads[impl] = torch.autograd.grad(o, leaves, g_out)
    assert_grads_match(grads, seed)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("reduce", ["sorted", "atomic"])
@pytest.mark.parametrize("heads,channels,n_rbf", [
    (128, 256, 256),  # paper: 2 channels per head
    (8, 64, 32),  # the shipped model: 8 channels per head (fewer heads per program, E20)
    (2, 64, 32),  # 32 channels per head: one head per program in the backward kernels
])
def test_gpu_forces_only(reduce, heads, channels, n_rbf, monkeypatch):
    """MD path on the GPU (frozen radial weights): fp32 kernels vs the fp64 reference; the
    sender-sorted reduction gives bitwise the same dv, dk on a second run."""
    import kernels.attention.triton_backward as tb

    monkeypatch.setattr(tb, "REDUCE", reduce)
    seed = fresh_seed()

    def forces_grads(impl, dtype):
        inp = paper_size_inputs(seed, dtype, heads, channels, n_rbf)
        leaves = make_leaves(inp)[:4]
        o = call(impl, inp, leaves + [w.detach() for w in make_leaves(inp)[4:]])
        g_out = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).to(o)
        return torch.autograd.grad(o, leaves, g_out)

    grads = {"triton": forces_grads("triton", torch.float32),
             "reference": forces_grads("reference", torch.float64)}
    assert_grads_match(grads, seed)
    if reduce == "sorted":
        again = forces_grads("triton", torch.float32)
        for name, a, b in zip(("k", "v"), grads["triton"][1:3], again[1:3]):
            assert torch.equal(a, b), f"d/d{name} differs between two runs (seed {seed})"


@pytest.mark.gpu
@gpu
def test_gpu_gradgradcheck():
    """torch.autograd.gradcheck and gradgradcheck of the Triton op on the GPU (float64)."""
    seed = fresh_seed()
    inputs = make_inputs(seed, [3, 0, 5], n_total=5, heads=2, d_k=4, channels=4, n_rbf=8,
                         hidden=16, device="cuda")
    leaves = make_leaves(inputs)
    weights = [w.detach() for w in leaves[4:]]

    def f(q, k, v, rij):
        return call("triton", inputs, [q, k, v, rij] + weights)

    args = tuple(leaves[:4])
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7), f"seed {seed}"
    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-6), f"seed {seed}"


@pytest.mark.parametrize("identity_paths,weight_envelope", [(False, None), (True, 1.5)])
def test_chunked_reference_matches_reference(identity_paths, weight_envelope, monkeypatch):
    """impl "reference_chunked" (receiver chunks recomputed in the backward, for float64
    checks at 100k atoms) = the reference: output, first derivatives and the force-loss
    second derivatives, in chunks of <= 20 edges (several chunks, a receiver over the limit,
    receivers without neighbours)."""
    import kernels.attention.reference as reference

    monkeypatch.setattr(reference, "CHUNK_EDGES", 20)
    seed = fresh_seed()
    inputs = make_inputs(seed, DEGREES, n_total=9)
    results = {}
    for impl in ("reference", "reference_chunked"):
        leaves = make_leaves(inputs)
        q, k, v, rij = leaves[:4]
        radial = dataclasses.replace(inputs[7], w_rbf=leaves[4], emb_recv=leaves[5],
                                     emb_send=leaves[6], w_out=leaves[7], b_out=leaves[8])
        out = equivariant_attention(q, k, v, rij, *inputs[4:7], radial, CUTOFF, EPS, 2,
                                    impl=impl, identity_paths=identity_paths,
                                    weight_envelope=weight_envelope)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=out.dtype)
        first = torch.autograd.grad(out, leaves, g_out, create_graph=True)
        # a force loss: |dL/drij|^2 differentiated again, to every input
        second = torch.autograd.grad(first[3].square().sum(), leaves)
        results[impl] = (out.detach(), [g.detach() for g in first], second)
    (out_ref, first_ref, second_ref) = results["reference"]
    (out, first, second) = results["reference_chunked"]
    assert out.shape == out_ref.shape
    assert (out[0] == 0).all() and (out[5] == 0).all()  # receivers without neighbours
    assert rel(out, out_ref) < 1e-12, f"seed {seed}"
    for name, a, b in zip(NAMES, first, first_ref):
        assert rel(a, b) < 1e-12, f"d/d{name}: {rel(a, b):.2e} (seed {seed})"
    for name, a, b in zip(NAMES, second, second_ref):
        assert rel(a, b) < 1e-11, f"second derivative, {name}: {rel(a, b):.2e} (seed {seed})"
