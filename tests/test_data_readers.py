"""Readers on small files written in each format; unit conversions checked by number."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from e2former_lammps.data import (BOHR_TO_ANGSTROM, HARTREE_TO_EV, Frame, check_elements,
                                  read_dataset, read_extxyz, read_omol_lmdb, read_spice_hdf5,
                                  smiles_formal_charge)
from e2former_lammps.validation import InputError


def test_constants():
    assert HARTREE_TO_EV == 27.211386245988
    assert BOHR_TO_ANGSTROM == 0.529177210903


@pytest.mark.parametrize("smiles,charge", [
    ("[O:1]([H:2])[H:3]", 0),
    ("[C:1]([N+:3]([H:9])([H:10])[H:11])", 1),
    ("[NH4+]", 1),
    ("[O-]C(=O)C", -1),
    ("[Fe+2]", 2),
    ("[Ca++]", 2),
    ("[O--:4]", -2),
    ("[Na+:1].[Cl-:2]", 0),
    ("[Br-:1].[Br-:2]", -2),
    ("[C@@H:3](N)(O)C", 0),
    (b"[K+:1].[K+:2]", 2),
])
def test_smiles_formal_charge(smiles, charge):
    assert smiles_formal_charge(smiles) == charge


def _write_spice(path, with_charge=True, smiles="[O:1]([H:2])[H:3]", units=True):
    pos_bohr = np.array([[[0.0, 0.0, 0.0], [1.8, 0.0, 0.0], [0.0, 1.8, 0.0]],
                         [[0.0, 0.0, 0.1], [1.9, 0.0, 0.0], [0.0, 1.7, 0.0]]], dtype=np.float32)
    grad = np.zeros((2, 3, 3), dtype=np.float32)
    grad[0, 1, 0] = 0.5  # hartree/bohr
    grad[1, 2, 1] = -0.25
    with h5py.File(path, "w") as f:
        if units:
            f.attrs["units"] = "conformations bohr; energy hartree; gradient hartree/bohr"
        g = f.create_group("water")
        g["atomic_numbers"] = np.array([8, 1, 1], dtype=np.int16)
        g["conformations"] = pos_bohr
        g["dft_total_energy"] = np.array([-1.0, -2.5])
        g["dft_total_gradient"] = grad
        g["smiles"] = np.array([smiles.encode()], dtype=object)
        g["subset"] = np.array([b"Water"], dtype=object)
        if with_charge:
            g["total_charge"] = np.int16(0)
        g2 = f.create_group("ammonium")
        g2["atomic_numbers"] = np.array([7, 1, 1, 1, 1], dtype=np.int16)
        g2["conformations"] = np.random.default_rng(0).normal(size=(1, 5, 3)).astype(np.float32) * 2
        g2["dft_total_energy"] = np.array([-3.0])
        g2["dft_total_gradient"] = np.zeros((1, 5, 3), dtype=np.float32)
        g2["smiles"] = np.array([b"[N+:1]([H:2])([H:3])([H:4])[H:5]"], dtype=object)
        g2["subset"] = np.array([b"DES370K Monomers"], dtype=object)
    return pos_bohr, grad


def test_spice_units_by_number(tmp_path):
    path = tmp_path / "spice.hdf5"
    pos_bohr, grad = _write_spice(path)
    frames = read_spice_hdf5(path)
    assert len(frames) == 3
    w0, w1 = [f for f in frames if f.info["group"] == "water"]
    (nh4,) = [f for f in frames if f.info["group"] == "ammonium"]
    assert w0.energy == -27.211386245988  # 1 hartree, exactly
    assert w1.energy == pytest.approx(-2.5 * 27.211386245988, rel=1e-15)
    assert np.allclose(w0.positions, pos_bohr[0].astype(np.float64) * 0.529177210903, rtol=0,
                       atol=1e-12)
    assert w0.positions[1, 0] == pytest.approx(1.8 * 0.529177210903, rel=1e-7)
    # forces = -gradient, hartree/bohr -> eV/Å
    assert w0.forces[1, 0] == pytest.approx(-0.5 * 27.211386245988 / 0.529177210903, rel=1e-12)
    assert w1.forces[2, 1] == pytest.approx(0.25 * 51.422067476325886, rel=1e-12)
    assert np.count_nonzero(w0.forces) == 1
    assert w0.subset == "Water" and nh4.subset == "DES370K Monomers"
    assert w0.charge == 0.0
    assert nh4.charge == 1.0  # from the SMILES formal charges (no total_charge key)
    assert list(w0.numbers) == [8, 1, 1]


def test_spice_default_units_without_attribute(tmp_path):
    path = tmp_path / "spice.hdf5"
    _write_spice(path, units=False)
    assert read_spice_hdf5(path, groups=["water"])[0].energy == -27.211386245988


def test_spice_total_charge_key_wins(tmp_path):
    path = tmp_path / "spice.hdf5"
    _write_spice(path, with_charge=True, smiles="[O-:1][H:2].[H+:3]")
    with h5py.File(path, "a") as f:
        del f["water/total_charge"]
        f["water/total_charge"] = np.int16(-1)
    assert read_spice_hdf5(path, groups=["water"])[0].charge == -1.0


def test_spice_missing_key_names_group_and_key(tmp_path):
    path = tmp_path / "spice.hdf5"
    _write_spice(path)
    with h5py.File(path, "a") as f:
        del f["water/dft_total_gradient"]
    with pytest.raises(InputError, match=r"water.*dft_total_gradient"):
        read_spice_hdf5(path)


def test_spice_unknown_unit(tmp_path):
    path = tmp_path / "spice.hdf5"
    _write_spice(path)
    with h5py.File(path, "a") as f:
        f["water/dft_total_energy"].attrs["units"] = "furlong"
    with pytest.raises(ValueError, match=r"water/dft_total_energy.*furlong"):
        read_spice_hdf5(path)


def test_spice_dataset_unit_attribute(tmp_path):
    path = tmp_path / "spice.hdf5"
    _write_spice(path)
    with h5py.File(path, "a") as f:
        f["water/dft_total_energy"].attrs["units"] = "eV"
        f["water/conformations"].attrs["units"] = "angstrom"
    w0 = read_spice_hdf5(path, groups=["water"])[0]
    assert w0.energy == -1.0
    assert w0.positions[1, 0] == pytest.approx(1.8, rel=1e-7)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        read_dataset("nope.hdf5")


def test_unknown_extension(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("x")
    with pytest.raises(ValueError, match="extension"):
        read_dataset(p)


def _atoms(energy=-3.0, shift=0.0):
    a = Atoms("OH2", positions=[[0, 0, shift], [0.96, 0, 0], [0, 0.96, 0]])
    forces = np.arange(9, dtype=float).reshape(3, 3) / 10
    return a, energy, forces


def test_extxyz_calculator_keys(tmp_path):
    from ase.io import write

    images = []
    for k in range(2):
        a, e, f = _atoms(-3.0 - k, 0.01 * k)
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        a.info["config_type"] = "water"
        images.append(a)
    path = tmp_path / "d.xyz"
    write(path, images, format="extxyz")
    frames = read_dataset(path)
    assert [f.energy for f in frames] == [-3.0, -4.0]
    assert np.allclose(frames[1].forces, np.arange(9).reshape(3, 3) / 10)
    assert frames[0].subset == "water"


def test_extxyz_ref_keys(tmp_path):
    from ase.io import write

    a, e, f = _atoms()
    a.info["REF_energy"] = -7.5
    a.arrays["REF_forces"] = f * 2
    a.info["charge"] = -1
    path = tmp_path / "ref.extxyz"
    write(path, [a], format="extxyz")
    (fr,) = read_extxyz(path)
    assert fr.energy == -7.5
    assert np.allclose(fr.forces, f * 2)
    assert fr.charge == -1.0


def test_extxyz_missing_energy(tmp_path):
    from ase.io import write

    a, _, _ = _atoms()
    path = tmp_path / "bare.xyz"
    write(path, [a], format="extxyz")
    with pytest.raises(InputError, match="no energy"):
        read_extxyz(path)


def test_aselmdb(tmp_path):
    from ase_db_backends import aselmdb  # installed by deploy/setup_env.sh: never skipped
    path = tmp_path / "omol.aselmdb"
    db = aselmdb.LMDBDatabase(str(path), readonly=False)
    for k in range(3):
        a, e, f = _atoms(-10.0 - k, 0.02 * k)
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        db.write(a, data={"charge": k - 1, "spin": 2 if k == 2 else 1, "data_id": "elytes",
                          "source": "test"})
    db.close()
    frames = read_dataset(path)
    assert len(frames) == 3
    assert [f.energy for f in frames] == [-10.0, -11.0, -12.0]
    assert np.allclose(frames[0].forces, np.arange(9).reshape(3, 3) / 10)
    assert [f.charge for f in frames] == [-1.0, 0.0, 1.0]
    assert [f.spin for f in frames] == [1.0, 1.0, 2.0]
    assert frames[0].subset == "elytes"
    assert np.allclose(frames[2].positions[0], [0, 0, 0.04])
    assert read_omol_lmdb(path, max_rows=2)[-1].energy == -11.0


def test_elements_not_in_model():
    fr = Frame(numbers=[8, 1, 1], positions=np.zeros((3, 3)), energy=0.0,
               forces=np.zeros((3, 3)), source="x.hdf5:water[0]")
    check_elements([fr], ["H", "O"])
    with pytest.raises(InputError, match=r"\['O'\].*x.hdf5:water\[0\]"):
        check_elements([fr], ["H", "C"])


def test_frame_roundtrip_atoms():
    a, e, f = _atoms()
    fr = Frame.from_atoms(a, energy=e, forces=f)
    b = fr.to_atoms()
    assert b.get_potential_energy() == e
    assert np.allclose(b.get_forces(), f)
    assert b.info["charge"] == 0.0
