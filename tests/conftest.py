"""Shared fixtures: small models and real molecular structures from ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from e2former_lammps import E2FormerConfig, E2FormerV2

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "spice-xtb"


def small_config(**overrides) -> E2FormerConfig:
    kw = dict(elements=["H", "C", "N", "O"], cutoff=5.0, channels=32, lmax=2, num_layers=2,
              num_heads=4)
    kw.update(overrides)
    return E2FormerConfig(**kw)


def random_model(seed: int = 0, dtype=torch.float64, **overrides) -> E2FormerV2:
    torch.manual_seed(seed)
    model = E2FormerV2(small_config(**overrides)).to(dtype)
    # Non-trivial norms/biases so that tests see every parameter path.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("scale") or "b_out" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def distributed_charge_model(seed: int, **overrides) -> E2FormerV2:
    """A random fp64 model with the distributed charge/spin embedding switched on (its value
    and neutral vectors start at zero, which would hide them; logits made larger) and
    energies for charges +1 and -1."""
    model = random_model(seed, charge_spin=True, charge_spin_mode="distributed", **overrides)
    with torch.no_grad():
        model.charge_spin.value.normal_(0.0, 0.5)
        model.charge_spin.neutral.normal_(0.0, 0.5)
        model.charge_spin.logits.weight.normal_(0.0, 0.5)
    model.set_charge_energies({"1": -3.25, "-1": 1.5})
    return model


@pytest.fixture
def model64() -> E2FormerV2:
    return random_model(seed=int(np.random.SeedSequence().entropy % 2**31))


def spice_molecules(n: int, min_atoms: int = 3, seed: int = 0, max_atoms: int = 40):
    """n real conformations (ase.Atoms, Å) from the shared SPICE-xTB validation split."""
    import h5py
    from ase import Atoms

    bohr = 0.529177210903
    rng = np.random.default_rng(seed)
    out = []
    with h5py.File(SHARED_DATA / "val.hdf5", "r") as f:
        names = sorted(f.keys())
        for k in rng.permutation(len(names)):
            g = f[names[k]]
            z = np.asarray(g["atomic_numbers"])
            if not min_atoms <= len(z) <= max_atoms or not set(z) <= {1, 6, 7, 8}:
                continue
            conf = np.asarray(g["conformations"][0], dtype=np.float64) * bohr
            out.append(Atoms(numbers=z, positions=conf))
            if len(out) == n:
                break
    return out


def water_box(n_side: int, density_g_cm3: float = 1.0, seed: int = 0):
    """n_side^3 water molecules in a periodic cubic box (random orientations)."""
    from ase import Atoms
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    n_mol = n_side**3
    volume = n_mol * 18.015 / 6.02214076e23 / density_g_cm3 * 1e24  # Å^3
    a = volume ** (1 / 3)
    spacing = a / n_side
    ang = np.deg2rad(104.5)
    mol = np.array([[0, 0, 0], [0.9572, 0, 0], [0.9572 * np.cos(ang), 0.9572 * np.sin(ang), 0]])
    pos = []
    for idx in np.ndindex(n_side, n_side, n_side):
        rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
        centre = (np.array(idx) + 0.5) * spacing + rng.normal(scale=0.1, size=3)
        pos.extend(centre + mol @ rot.T)
    return Atoms("OH2" * n_mol, positions=pos, cell=[a, a, a], pbc=True)
