"""Readers: SPICE HDF5 (bohr/hartree -> Å/eV), OMol25 .aselmdb, extxyz."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..validation import InputError
from .frame import BOHR_TO_ANGSTROM, HARTREE_TO_EV, Frame

# --- units -----------------------------------------------------------------------------
LENGTH_UNITS = {"bohr": BOHR_TO_ANGSTROM, "angstrom": 1.0, "ang": 1.0, "a": 1.0, "å": 1.0,
                "nm": 10.0, "nanometer": 10.0}
ENERGY_UNITS = {"hartree": HARTREE_TO_EV, "ha": HARTREE_TO_EV, "ev": 1.0,
                "kcal/mol": 0.0433641043, "kj/mol": 0.0103642688}


def _norm_unit(u) -> str:
    if isinstance(u, bytes):
        u = u.decode()
    return str(u).strip().lower().replace(" ", "").replace("angstroms", "angstrom")


def length_factor(unit, where: str) -> float:
    u = _norm_unit(unit)
    if u not in LENGTH_UNITS:
        raise ValueError(f"{where}: unknown length unit {unit!r} (known: {sorted(LENGTH_UNITS)})")
    return LENGTH_UNITS[u]


def energy_factor(unit, where: str) -> float:
    u = _norm_unit(unit)
    if u not in ENERGY_UNITS:
        raise ValueError(f"{where}: unknown energy unit {unit!r} (known: {sorted(ENERGY_UNITS)})")
    return ENERGY_UNITS[u]


def gradient_factor(unit, where: str) -> float:
    u = _norm_unit(unit)
    if "/" not in u:
        raise ValueError(f"{where}: unknown gradient unit {unit!r} (expected ENERGY/LENGTH, "
                         "e.g. hartree/bohr)")
    # kcal/mol/angstrom: the energy part may itself hold a '/'
    e, l = u.rsplit("/", 1)
    return energy_factor(e, where) / length_factor(l, where)


# --- SMILES formal charge ----------------------------------------------------------------
_BRACKET = re.compile(r"\[([^\]]+)\]")
_CHARGE = re.compile(r"(\++|-+)(\d*)$")


def smiles_formal_charge(smiles: str | bytes) -> int:
    """Sum of the formal charges of the bracket atoms ([N+:3], [O-], [Fe+2], [Ca++])."""
    if isinstance(smiles, bytes):
        smiles = smiles.decode()
    total = 0
    for atom in _BRACKET.findall(smiles):
        atom = re.sub(r":\d+$", "", atom)  # atom-map class
        m = _CHARGE.search(atom)
        if not m:
            continue
        signs, digits = m.groups()
        sign = 1 if signs[0] == "+" else -1
        total += sign * (int(digits) if digits else len(signs))
    return total


# --- SPICE HDF5 ----------------------------------------------------------------------------
SPICE_REQUIRED = ("atomic_numbers", "conformations", "dft_total_energy", "dft_total_gradient")
_DEFAULT_UNITS = {"conformations": "bohr", "energy": "hartree", "gradient": "hartree/bohr"}


def _file_units(attr, path) -> dict:
    """Parse a file attribute like 'conformations bohr; energy hartree; gradient hartree/bohr'."""
    if attr is None:
        return {}
    if isinstance(attr, bytes):
        attr = attr.decode()
    out = {}
    for part in str(attr).split(";"):
        words = part.strip().split(None, 1)
        if len(words) == 2:
            out[words[0].strip().lower()] = words[1].strip()
    return out


def _scalar_str(x) -> str:
    x = np.asarray(x)
    x = x.reshape(-1)[0] if x.size else ""
    return x.decode() if isinstance(x, bytes) else str(x)


def read_spice_hdf5(path: str | Path, energy_key: str = "dft_total_energy",
                    gradient_key: str = "dft_total_gradient", groups: list[str] | None = None,
                    max_conformations: int | None = None) -> list[Frame]:
    """SPICE layout: one group per molecule. Energies hartree -> eV, forces = -gradient.

    Units come from a dataset's `units` attribute, else the file's `units` attribute
    ('conformations bohr; energy hartree; gradient hartree/bohr'), else SPICE's defaults.
    Total charge: the `total_charge` key, else the sum of the SMILES formal charges, else 0.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SPICE HDF5 file {str(path)!r}")
    frames: list[Frame] = []
    with h5py.File(path, "r") as f:
        units = {**_DEFAULT_UNITS, **_file_units(f.attrs.get("units"), path)}
        names = groups if groups is not None else list(f.keys())
        for name in names:
            if name not in f:
                raise InputError(f"{path}: no group {name!r}")
            g = f[name]
            if not hasattr(g, "keys"):
                continue  # a stray dataset at the top level
            where = f"{path}:{name}"
            for key in (SPICE_REQUIRED[0], SPICE_REQUIRED[1], energy_key, gradient_key):
                if key not in g:
                    raise InputError(f"{where}: missing key {key!r} (group has {sorted(g.keys())})")

            def unit_of(key, kind):
                u = g[key].attrs.get("units")
                return u if u is not None else units.get(kind, _DEFAULT_UNITS[kind])

            lf = length_factor(unit_of("conformations", "conformations"), f"{where}/conformations")
            ef = energy_factor(unit_of(energy_key, "energy"), f"{where}/{energy_key}")
            gf = gradient_factor(unit_of(gradient_key, "gradient"), f"{where}/{gradient_key}")
            numbers = np.asarray(g["atomic_numbers"][()], dtype=np.int64)
            pos = np.asarray(g["conformations"][()], dtype=np.float64) * lf
            energy = np.asarray(g[energy_key][()], dtype=np.float64).reshape(-1) * ef
            forces = -np.asarray(g[gradient_key][()], dtype=np.float64) * gf
            n_conf = pos.shape[0]
            if pos.ndim != 3 or pos.shape[1:] != (len(numbers), 3):
                raise InputError(f"{where}/conformations: shape {pos.shape}, expected "
                                 f"[n_conf, {len(numbers)}, 3]")
            if energy.shape[0] != n_conf or forces.shape != pos.shape:
                raise InputError(f"{where}: {n_conf} conformations but {energy.shape[0]} "
                                 f"energies and gradient shape {forces.shape}")
            if "total_charge" in g:
                charge = float(np.asarray(g["total_charge"][()]).reshape(-1)[0])
            elif "smiles" in g:
                charge = float(smiles_formal_charge(_scalar_str(g["smiles"][()])))
            else:
                charge = 0.0
            spin = float(np.asarray(g["spin_multiplicity"][()]).reshape(-1)[0]) \
                if "spin_multiplicity" in g else 1.0
            subset = _scalar_str(g["subset"][()]) if "subset" in g else "all"
            count = n_conf if max_conformations is None else min(n_conf, max_conformations)
            for c in range(count):
                if not np.isfinite(energy[c]):
                    continue  # SPICE marks failed calculations with NaN
                frames.append(Frame(numbers=numbers, positions=pos[c], energy=float(energy[c]),
                                    forces=forces[c], charge=charge, spin=spin, subset=subset,
                                    source=f"{where}[{c}]", info={"group": name}))
    return frames


# --- OMol25 ASE-LMDB ------------------------------------------------------------------------
def read_omol_lmdb(path: str | Path, max_rows: int | None = None) -> list[Frame]:
    """fairchem's ASE-LMDB (.aselmdb): energy eV, forces eV/Å from the stored calculator;
    charge, spin (multiplicity) and source/data_id from atoms.info (row data / key-values)."""
    try:
        from ase_db_backends.aselmdb import LMDBDatabase
    except ImportError as exc:
        raise ImportError("reading .aselmdb needs `pip install ase-db-backends lmdb`") from exc
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ASE-LMDB file {str(path)!r}")
    frames: list[Frame] = []
    db = LMDBDatabase(str(path), readonly=True)
    try:
        for k, row in enumerate(db.select()):
            if max_rows is not None and k >= max_rows:
                break
            where = f"{path}:id={row.id}"
            atoms = row.toatoms()
            info = {}
            info.update(row.get("key_value_pairs", {}) or {})
            data = row.get("data", {}) or {}
            if isinstance(data, dict):
                info.update(data)
            info.update(atoms.info)
            atoms.info = info
            if atoms.calc is None:
                raise InputError(f"{where}: row has no stored energy/forces (no calculator "
                                 "results)")
            try:
                energy = float(atoms.get_potential_energy())
            except Exception:
                raise InputError(f"{where}: row has no energy") from None
            try:
                forces = np.asarray(atoms.get_forces())
            except Exception:
                raise InputError(f"{where}: row has no forces") from None
            subset = info.get("data_id", info.get("subset", info.get("source", "all")))
            frame = Frame.from_atoms(atoms, energy=energy, forces=forces, source=where,
                                     subset=str(subset))
            frames.append(frame)
    finally:
        db.close()
    return frames


# --- extxyz ----------------------------------------------------------------------------------
ENERGY_KEYS = ("REF_energy", "ref_energy", "energy", "DFT_energy", "dft_energy")
FORCE_KEYS = ("REF_forces", "ref_forces", "forces", "DFT_forces", "dft_forces")


def read_extxyz(path: str | Path, energy_key: str | None = None,
                forces_key: str | None = None, index=":") -> list[Frame]:
    """ase.io.read; energy from info[REF_energy|energy|...] or the calculator, forces from
    arrays[REF_forces|forces|...] or the calculator. Units are taken as eV and Å."""
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no extxyz file {str(path)!r}")
    images = read(str(path), index=index, format="extxyz")
    frames = []
    for k, atoms in enumerate(images):
        where = f"{path}:frame {k}"
        calc = atoms.calc
        calc_results = getattr(calc, "results", {}) if calc is not None else {}
        ekeys = (energy_key,) if energy_key else ENERGY_KEYS
        fkeys = (forces_key,) if forces_key else FORCE_KEYS
        energy = None
        for key in ekeys:
            if key in atoms.info:
                energy = float(atoms.info[key])
                break
            if key in calc_results:
                energy = float(calc_results[key])
                break
        forces = None
        for key in fkeys:
            if key in atoms.arrays:
                forces = np.asarray(atoms.arrays[key])
                break
            if key in calc_results:
                forces = np.asarray(calc_results[key])
                break
        if energy is None:
            raise InputError(f"{where}: no energy (looked for info/calculator keys {list(ekeys)})")
        if forces is None:
            raise InputError(f"{where}: no forces (looked for array/calculator keys {list(fkeys)})")
        frames.append(Frame.from_atoms(atoms, energy=energy, forces=forces, source=where,
                                       subset=str(atoms.info.get("subset",
                                                                 atoms.info.get("config_type",
                                                                                "all")))))
    return frames


# --- dispatch ----------------------------------------------------------------------------------
def read_dataset(path: str | Path, fmt: str | None = None, **kwargs) -> list[Frame]:
    """Pick the reader by `fmt` ('spice', 'aselmdb', 'extxyz') or by the file extension."""
    path = Path(path)
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix in (".hdf5", ".h5", ".hdf"):
            fmt = "spice"
        elif suffix in (".aselmdb", ".lmdb"):
            fmt = "aselmdb"
        elif suffix in (".xyz", ".extxyz"):
            fmt = "extxyz"
        elif path.is_dir() and any(path.glob("*.aselmdb")):
            return [f for p in sorted(path.glob("*.aselmdb")) for f in read_omol_lmdb(p, **kwargs)]
        else:
            raise ValueError(f"{path}: cannot tell the data format from the extension "
                             f"{suffix!r}; use .hdf5 (SPICE), .aselmdb (OMol25) or .xyz/.extxyz")
    readers = {"spice": read_spice_hdf5, "hdf5": read_spice_hdf5, "aselmdb": read_omol_lmdb,
               "omol": read_omol_lmdb, "lmdb": read_omol_lmdb, "extxyz": read_extxyz,
               "xyz": read_extxyz}
    if fmt not in readers:
        raise ValueError(f"unknown data format {fmt!r}; known: {sorted(readers)}")
    return readers[fmt](path, **kwargs)
