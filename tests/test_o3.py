"""Exact tests of the small mathematical objects: SH, Wigner D, CG, EAAS tensor product."""
import numpy as np
import pytest
import torch

from e2former_lammps.o3 import (clebsch_gordan, eaas_paths, rotation_to_pole, so3_generator,
                                spherical_harmonics, tp_dense, tp_eaas, tp_paths,
                                tp_pole_frame, wigner_d)
from e2former_lammps.o3.clebsch_gordan import _random_rotations


def _rng_seed() -> int:
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    return seed


def _unit(n, gen):
    r = torch.randn(n, 3, dtype=torch.float64, generator=gen)
    return r / r.norm(dim=-1, keepdim=True)


def test_sh_component_normalisation_and_pole():
    gen = torch.Generator().manual_seed(_rng_seed())
    y = spherical_harmonics(_unit(50, gen), 2)
    for l in range(3):
        norm = y[:, l * l:(l + 1) ** 2].pow(2).sum(-1)
        assert torch.allclose(norm, torch.full_like(norm, 2 * l + 1), atol=1e-12)
    pole = spherical_harmonics(torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), 2)[0]
    # On the pole only m = 0 survives (rows 0, 2, 6).
    assert torch.count_nonzero(pole.abs() > 1e-14) == 3 and pole[2] > 0 and pole[6] > 0


@pytest.mark.parametrize("l", [1, 2])
def test_wigner_d_is_the_rotation_representation(l):
    gen = torch.Generator().manual_seed(_rng_seed())
    rot = _random_rotations(20, gen)
    r = _unit(20, gen)
    d = wigner_d(rot, l)
    y = spherical_harmonics(r, l)[:, l * l:]
    y_rot = spherical_harmonics((rot @ r[..., None])[..., 0], l)[:, l * l:]
    assert torch.allclose((d @ y[..., None])[..., 0], y_rot, atol=1e-12)
    eye = torch.eye(2 * l + 1, dtype=torch.float64)
    assert torch.allclose(d @ d.transpose(-1, -2), eye.expand_as(d), atol=1e-12)
    # Homomorphism: D(R1 R2) = D(R1) D(R2).
    assert torch.allclose(wigner_d(rot[:10] @ rot[10:], l), d[:10] @ d[10:], atol=1e-12)


def test_rotation_to_pole_both_branches_and_near_singular():
    gen = torch.Generator().manual_seed(_rng_seed())
    r = torch.cat([_unit(100, gen),
                   torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [1e-9, -1.0, 0.0],
                                 [1.0, 0.0, 0.0]], dtype=torch.float64)])
    r = r / r.norm(dim=-1, keepdim=True)
    rot = rotation_to_pole(r)
    assert torch.allclose((rot @ r[..., None])[..., 0],
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(r),
                          atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(r), dtype=torch.float64))


@pytest.mark.parametrize("l1,l2,l3", [(1, 1, 0), (1, 1, 1), (1, 1, 2), (2, 1, 1), (2, 1, 2),
                                      (0, 1, 1), (2, 2, 2)])
def test_clebsch_gordan_is_invariant(l1, l2, l3):
    c = clebsch_gordan(l1, l2, l3)
    assert abs(c.norm() - 1) < 1e-12
    rot = _random_rotations(3, torch.Generator().manual_seed(_rng_seed()))
    for r in rot:
        rotated = torch.einsum("abc,ia,jb,kc->ijk", c, wigner_d(r, l1), wigner_d(r, l2),
                               wigner_d(r, l3))
        assert torch.allclose(rotated, c, atol=1e-12)


def test_clebsch_gordan_l1_1_1_is_the_cross_product():
    c = clebsch_gordan(1, 1, 1)
    a, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    out = torch.einsum("ijk,i,j->k", c, a, b)
    cross = torch.linalg.cross(a, b)
    assert torch.allclose(out / out.norm(), cross / cross.norm(), atol=1e-12) or \
        torch.allclose(out / out.norm(), -cross / cross.norm(), atol=1e-12)


def test_eaas_paths_are_one_to_one_with_parity_reindexing():
    assert tp_paths(2) == ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2))
    for p in eaas_paths(2):
        for m3, (src, s) in enumerate(zip(p.src, p.scale)):
            if s == 0.0:
                continue
            m_in, m_out = src - p.l1, m3 - p.l3
            if (p.l1 + 1 + p.l3) % 2 == 0:
                assert m_in == m_out
            else:
                assert m_in == -m_out and m_out != 0


def test_eaas_equals_dense_cg_product():
    gen = torch.Generator().manual_seed(_rng_seed())
    n, c = 200, 5
    r = _unit(n, gen)
    r[0] = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)  # the other branch's pole
    v = {l: torch.randn(n, 2 * l + 1, c, dtype=torch.float64, generator=gen) for l in range(3)}
    rot = rotation_to_pole(r)
    sparse = tp_eaas(v, {l: wigner_d(rot, l) for l in range(3)}, 2)
    dense = tp_dense(v, r, 2)
    for a, b in zip(sparse, dense):
        assert (a - b).abs().max() < 1e-12


def test_dense_tp_is_equivariant():
    gen = torch.Generator().manual_seed(_rng_seed())
    rot = _random_rotations(1, gen)[0]
    r = _unit(10, gen)
    v = {l: torch.randn(10, 2 * l + 1, 3, dtype=torch.float64, generator=gen) for l in range(3)}
    out = tp_dense(v, r, 2)
    v_rot = {l: wigner_d(rot, l) @ v[l] for l in v}
    out_rot = tp_dense(v_rot, r @ rot.T, 2)
    for (l1, l3), a, b in zip(tp_paths(2), out, out_rot):
        assert torch.allclose(wigner_d(rot, l3) @ a, b, atol=1e-12)


S3 = 3.0 ** 0.5
# the generators written out in kernels/attention/triton_backward._frame_torque:
# (row, column) -> entry of J^2_x and J^2_z
KERNEL_J2 = {0: {(0, 1): 1.0, (1, 0): -1.0, (2, 3): -S3, (3, 2): S3, (3, 4): -1.0, (4, 3): 1.0},
             2: {(0, 3): -1.0, (1, 2): -S3, (1, 4): -1.0, (2, 1): S3, (3, 0): 1.0, (4, 1): 1.0}}


@pytest.mark.parametrize("l", [1, 2])
def test_so3_generators_turn_wigner_d_and_match_the_kernel(l):
    """J^l_k generates D^l: D^l(exp(t [e_k]_x)) = exp(t J^l_k) for a finite t; J^1_k =
    [e_k]_x; the kernel's J^2_x and J^2_z tables are these matrices, entry by entry."""
    gen = torch.Generator().manual_seed(_rng_seed())
    t = float(torch.rand((), generator=gen, dtype=torch.float64)) * 2.0 - 1.0
    for k in range(3):
        j = so3_generator(l, k)
        assert torch.allclose(j, -j.T, atol=1e-14)
        skew = torch.zeros(3, 3, dtype=torch.float64)
        a, b = (k + 1) % 3, (k + 2) % 3
        skew[b, a], skew[a, b] = 1.0, -1.0  # [e_k]_x
        if l == 1:
            assert torch.allclose(j, skew, atol=1e-14)
        assert torch.allclose(torch.linalg.matrix_exp(t * j),
                              wigner_d(torch.linalg.matrix_exp(t * skew), l), atol=1e-12)
        if l == 2 and k in KERNEL_J2:
            table = torch.zeros(5, 5, dtype=torch.float64)
            for (row, col), value in KERNEL_J2[k].items():
                table[row, col] = value
            assert torch.allclose(j, table, atol=1e-12)


def test_pole_frame_product_commutes_with_turns_about_the_pole_only():
    """What the backward kernel's frame torque relies on (E34): the EAAS product S is
    SO(2)-equivariant about the pole y, S(J_y u) = J_y S(u) on every path, so turning the
    frame about the pole changes nothing; turns about x and z do not commute."""
    gen = torch.Generator().manual_seed(_rng_seed())
    u = {l: torch.randn(2 * l + 1, 4, dtype=torch.float64, generator=gen) for l in range(3)}
    out = tp_pole_frame(u, 2)
    for k, commutes in ((1, True), (0, False), (2, False)):
        turned = tp_pole_frame({l: so3_generator(l, k) @ u[l] for l in u}, 2)
        gaps = [(t - so3_generator(l3, k) @ o).abs().max()
                for (_, l3), t, o in zip(tp_paths(2), turned, out)]
        assert (max(gaps) < 1e-12) == commutes
