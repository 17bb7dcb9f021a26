"""Row-layout helpers of the node blocks against their definitions (slice per degree)."""
import pytest
import torch

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
