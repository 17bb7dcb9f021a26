"""Write ASE structures as LAMMPS data files (atom_style atomic, units metal)."""
from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers


def _f(x) -> str:
    """Shortest text that reads back as the same double."""
    return repr(float(x))


def lammps_cell(atoms: Atoms) -> np.ndarray:
    """The cell as LAMMPS stores it (a along x, b in the xy plane), raising if it is not."""
    cell = np.asarray(atoms.get_cell())
    if abs(cell[0, 1]) > 1e-12 or abs(cell[0, 2]) > 1e-12 or abs(cell[1, 2]) > 1e-12:
        raise ValueError("cell must be lower triangular (LAMMPS orientation); "
                         "rotate the structure first")
    return cell


def write_lammps_data(atoms: Atoms, path: str | os.PathLike, elements: list[str],
                      margin: float = 10.0) -> None:
    """Types numbered in `elements` order (matching `pair_coeff * * <elements>`).

    Periodic structures keep their cell (positions wrapped into it); non-periodic ones get a
    box `margin` Å larger than the molecule on every side (use `boundary s s s` or `f`).
    """
    types = {e: k + 1 for k, e in enumerate(elements)}
    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(types))
    if missing:
        raise ValueError(f"elements {missing} are not in {elements}")
    lines = [f"# written by e2former_lammps ({atoms.get_chemical_formula()})", "",
             f"{len(atoms)} atoms", f"{len(elements)} atom types", ""]
    if atoms.pbc.all():
        cell = lammps_cell(atoms)
        wrapped = atoms.copy()
        wrapped.wrap(eps=0.0)
        pos = wrapped.get_positions()
        lines += [f"0.0 {_f(cell[0, 0])} xlo xhi", f"0.0 {_f(cell[1, 1])} ylo yhi",
                  f"0.0 {_f(cell[2, 2])} zlo zhi"]
        if np.abs(cell[[1, 2, 2], [0, 0, 1]]).max() > 0:
            lines.append(f"{_f(cell[1, 0])} {_f(cell[2, 0])} {_f(cell[2, 1])} xy xz yz")
    elif not atoms.pbc.any():
        pos = atoms.get_positions()
        lo, hi = pos.min(0) - margin, pos.max(0) + margin
        lines += [f"{_f(lo[d])} {_f(hi[d])} {a}lo {a}hi" for d, a in enumerate("xyz")]
    else:
        raise ValueError("mixed periodicity is not supported by write_lammps_data")
    lines += ["", "Masses", ""]
    lines += [f"{types[e]} {_f(atomic_masses[atomic_numbers[e]])}" for e in elements]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{k + 1} {types[s]} {_f(p[0])} {_f(p[1])} {_f(p[2])}"
              for k, (s, p) in enumerate(zip(symbols, pos))]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
