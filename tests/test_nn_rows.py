"""Row-layout helpers of the node blocks against their definitions (slice per degree)."""
import pytest
import torch

from e2former_lammps.nn.ffn import GatedFeedForward
from e2former_lammps.nn.linear import SO3Linear, degree_matmul
from e2former_lammps.nn.norm import EquivariantRMSNorm
from e2former_lammps.o3 import row_degrees


def test_row_degrees():
    assert row_degrees(0).tolist() == [0]
    assert row_degrees(2).tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("n_atoms", [0, 1, 7])
def test_degree_matmul_is_a_product_per_row(n_atoms):
    g = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    x = torch.randn(n_atoms, 9, 5, dtype=torch.float64, generator=g)
    w = torch.randn(9, 5, 3, dtype=torch.float64, generator=g)
    b = torch.randn(9, 3, dtype=torch.float64, generator=g)
    out = degree_matmul(x, w, b)
    ref = torch.stack([x[:, r] @ w[r] + b[r] for r in range(9)], dim=1)
    assert out.shape == (n_atoms, 9, 3) and out.is_contiguous()
    assert torch.allclose(out, ref, atol=1e-13)


def test_so3_linear_and_norm_match_their_per_degree_definitions():
    torch.manual_seed(int(torch.seed() % 2**31))
    x = torch.randn(6, 9, 4, dtype=torch.float64)
    lin = SO3Linear(4, 3, 2).double()
    with torch.no_grad():
        lin.bias.normal_()
    ref = torch.cat([x[:, l * l:(l + 1) ** 2] @ lin.weight[l] for l in range(3)], dim=1)
    ref[:, 0] += lin.bias
    assert torch.allclose(lin(x), ref, atol=1e-13)

    norm = EquivariantRMSNorm(4, 2).double()
    with torch.no_grad():
        norm.scale.normal_()
        norm.bias.normal_()
    y = x.clone()
    y[:, 0] -= y[:, 0].mean(-1, keepdim=True)
    ms = torch.stack([y[:, l * l:(l + 1) ** 2].pow(2).mean((1, 2)) for l in range(3)]).mean(0)
    ref = torch.cat([y[:, l * l:(l + 1) ** 2] * norm.scale[l] for l in range(3)], dim=1)
    ref = ref / torch.sqrt(ms + norm.eps)[:, None, None]
    ref[:, 0] += norm.bias
    assert torch.allclose(norm(x), ref, atol=1e-13)


def _assert_same_derivatives(fn, plain, x: torch.Tensor, params: tuple, g: torch.Generator
                             ) -> None:
    """fn (custom backward) and plain (autograd on the formula) agree in value, in the first
    derivatives by x and params, and in the second derivatives of a loss on dL/dx (as a
    force loss is) by x and params; float64. gradgradcheck on fn by x, and dL/dx with the
    parameters frozen, as well."""
    assert torch.allclose(fn(x), plain(x), atol=1e-14)
    w = torch.randn(fn(x).shape, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((fn(x) * w).sum(), (x, *params), create_graph=True)
    want = torch.autograd.grad((plain(x) * w).sum(), (x, *params), create_graph=True)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-13)
    v = torch.randn(x.shape, dtype=torch.float64, generator=g)
    got2 = torch.autograd.grad((got[0] * v).sum(), (x, *params), allow_unused=True)
    want2 = torch.autograd.grad((want[0] * v).sum(), (x, *params), allow_unused=True)
    for a, b, t in zip(got2, want2, (x, *params)):
        # None: no dependence (e.g. a bias does not reach dL/dx)
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t) if b is None else b
        assert torch.allclose(a, b, atol=1e-12)
    assert got2[0].abs().max() > 0
    assert torch.autograd.gradgradcheck(fn, (x,))
    # frozen parameters (MD): the backward skips their gradients, dL/dx is unchanged
    for p in params:
        p.requires_grad_(False)
    frozen = torch.autograd.grad((fn(x) * w).sum(), x)[0]
    for p in params:
        p.requires_grad_(True)
    assert torch.allclose(frozen, want[0], atol=1e-13)


def _plain_norm(norm: EquivariantRMSNorm, x: torch.Tensor) -> torch.Tensor:
    """The norm as plain autograd operations (what the custom backward replaces)."""
    row0 = norm.row0
    xc = x - x.mean(-1, keepdim=True) * row0
    ms = (xc.pow(2).mean(-1) / (norm.row_divisor / x.shape[-1])).sum(-1)
    return xc * norm.scale[norm.row_degree] * torch.rsqrt(ms + norm.eps)[:, None, None] \
        + row0 * norm.bias


@pytest.mark.parametrize("lmax", [0, 2])
def test_norm_backward_and_double_backward(lmax):
    """The hand-written backward (keeps only the input) gives the same first and second
    derivatives as autograd on the plain formula, for x, scale and bias (float64)."""
    g = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    rows = (lmax + 1) ** 2
    norm = EquivariantRMSNorm(5, lmax).double()
    with torch.no_grad():
        norm.scale.copy_(torch.randn(norm.scale.shape, dtype=torch.float64, generator=g))
        norm.bias.copy_(torch.randn(norm.bias.shape, dtype=torch.float64, generator=g))
    x = torch.randn(4, rows, 5, dtype=torch.float64, generator=g, requires_grad=True)
    _assert_same_derivatives(norm, lambda t: _plain_norm(norm, t), x, (norm.scale, norm.bias),
                             g)


def test_norm_keeps_only_its_input_for_the_backward():
    norm = EquivariantRMSNorm(8, 2).double()
    x = torch.randn(3, 9, 8, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        norm(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


def _plain_ffn(ffn: GatedFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The feed-forward as plain autograd operations (what the custom backward replaces)."""
    h = ffn.up(x)
    gates = torch.sigmoid(ffn.gates(x[:, 0])).view(x.shape[0], ffn.lmax, ffn.hidden)
    gates = torch.cat([torch.ones_like(gates[:, :1]), gates], dim=1)[:, ffn.row_degree]
    return ffn.down(torch.where(ffn.row0, torch.nn.functional.silu(h), h * gates))


@pytest.mark.parametrize("lmax", [1, 2])  # the model allows 1 and 2
def test_ffn_backward_and_double_backward(lmax):
    """The gated activation's own backward (keeps h and the small gates) gives the same first
    and second derivatives as autograd on the plain formula (float64)."""
    g = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    rows = (lmax + 1) ** 2
    ffn = GatedFeedForward(4, 6, lmax).double()
    x = torch.randn(5, rows, 4, dtype=torch.float64, generator=g, requires_grad=True)
    _assert_same_derivatives(ffn, lambda t: _plain_ffn(ffn, t), x, tuple(ffn.parameters()),
                             g)


def test_ffn_keeps_three_feature_sized_tensors_not_four():
    """Input (for up), hidden h (for the activation), activation output (for down): the gates
    spread over all rows are no longer kept (the plain formula keeps them too)."""
    ffn = GatedFeedForward(8, 8, 2).double()
    # enough atoms that per-row weight gathers ([9, 8, 8]) are smaller than a feature tensor
    x = torch.randn(100, 9, 8, dtype=torch.float64, requires_grad=True)

    def feature_sized_saved(fn) -> int:
        saved = {}
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.setdefault(t.untyped_storage().data_ptr(), t.numel()) and t,
                lambda t: t):
            fn(x)
        return sum(1 for n in saved.values() if n >= x.numel())

    assert feature_sized_saved(ffn) == 3
    assert feature_sized_saved(lambda t: _plain_ffn(ffn, t)) == 4


@pytest.mark.parametrize("lmax", [1, 2])
def test_attention_invariants_backward_and_double_backward(lmax):
    """The query/key invariants' own backward (keeps only x, recomputes x W1 and x W2) gives
    the same first and second derivatives as autograd on the plain formula (float64)."""
    from e2former_lammps.nn.attention import EquivariantAttention
    from e2former_lammps.nn.radial import GaussianBasis

    g = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    attn = EquivariantAttention(GaussianBasis(5.0, 8), 2, 4, lmax, 2, 4, 8, 5.0, 1e-6).double()
    rows = (lmax + 1) ** 2
    x = torch.randn(5, rows, 4, dtype=torch.float64, generator=g, requires_grad=True)

    def plain(t):
        prod = attn.w_query_key_1(t) * attn.w_query_key_2(t)
        sums = prod.new_zeros(prod.shape[0], lmax + 1, prod.shape[-1])
        return sums.index_add(1, attn.row_degree, prod).flatten(1)

    _assert_same_derivatives(attn.invariants, plain, x,
                             (attn.w_query_key_1.weight, attn.w_query_key_2.weight), g)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        attn.invariants(x)
    kept = {t.untyped_storage().data_ptr() for t in saved if t.shape == x.shape}
    assert kept == {x.untyped_storage().data_ptr()}  # x W1 and x W2 are not kept


@pytest.mark.parametrize("chunk_edges", [1, 5, 13])
def test_edge_degree_embedding_in_receiver_chunks_equals_one_pass(chunk_edges):
    """The chunked edge sum (whole receivers per chunk, recomputed in the backward) gives the
    same features and the same forces as one pass over all edges, with receivers that have
    no neighbours at the start, middle and end and one with more neighbours than a chunk."""
    from e2former_lammps.nn.embedding import EdgeDegreeEmbedding
    from e2former_lammps.nn.radial import GaussianBasis

    g = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    emb = EdgeDegreeEmbedding(GaussianBasis(5.0, 8), 3, 4, 2, 8, 3.0, 5.0).double()
    n_recv, n_total = 9, 12
    degrees = [0, 3, 7, 0, 0, 2, 14, 1, 0]  # receiver 6 has more edges than any chunk
    pair_i = torch.repeat_interleave(torch.arange(n_recv), torch.tensor(degrees))
    pair_j = torch.randint(0, n_total, (pair_i.numel(),), generator=g)
    species = torch.randint(0, 3, (n_total,), generator=g)
    direction = torch.nn.functional.normalize(
        torch.randn(pair_i.numel(), 3, dtype=torch.float64, generator=g), dim=1)
    lengths = 0.8 + 4.0 * torch.rand(pair_i.numel(), 1, dtype=torch.float64, generator=g)
    rij = (direction * lengths).requires_grad_()

    def features_and_grad(chunk):
        emb.chunk_edges = chunk
        x = emb(species, n_recv, pair_i, pair_j, rij)
        weights = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad((x * weights).sum(), rij)
        return x.detach(), grad

    emb.chunk_edges = chunk_edges
    bounds = emb._receiver_chunks(pair_i, n_recv)
    assert bounds[0][0] == 0 and bounds[-1][1] == n_recv and bounds[-1][3] == pair_i.numel()
    assert all(a[1] == b[0] and a[3] == b[2] for a, b in zip(bounds, bounds[1:]))
    x_chunked, grad_chunked = features_and_grad(chunk_edges)
    x_one, grad_one = features_and_grad(1 << 18)
    assert x_chunked.shape == (n_recv, 9, 4)
    assert torch.allclose(x_chunked, x_one, atol=1e-12)
    assert torch.allclose(grad_chunked, grad_one, atol=1e-12)
