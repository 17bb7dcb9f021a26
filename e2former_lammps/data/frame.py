"""One labelled structure in eV / Å, lighter than ase.Atoms for 10^5 frames."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from ..validation import InputError

HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANGSTROM = 0.529177210903


@dataclass
class Frame:
    """numbers [n] int, positions [n, 3] Å, energy eV (total), forces [n, 3] eV/Å.

    charge: total charge (e); spin: multiplicity (2S+1); subset: name used for per-subset
    metrics; source: where the frame came from (file:group:index), for error messages.
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    charge: float = 0.0
    spin: float = 1.0
    subset: str = "all"
    cell: np.ndarray | None = None
    pbc: tuple[bool, bool, bool] = (False, False, False)
    source: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64).reshape(-1, 3)
            if self.forces.shape != self.positions.shape:
                raise ValueError(f"{self.source}: forces shape {self.forces.shape} does not "
                                 f"match positions {self.positions.shape}")
        if len(self.numbers) != len(self.positions):
            raise ValueError(f"{self.source}: {len(self.numbers)} atomic numbers but "
                             f"{len(self.positions)} positions")
        self.pbc = tuple(bool(p) for p in np.broadcast_to(self.pbc, 3))

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def periodic(self) -> bool:
        return any(self.pbc)

    def to_atoms(self) -> Atoms:
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                      pbc=self.pbc)
        atoms.info.update(self.info)
        atoms.info.update(charge=self.charge, spin=self.spin, subset=self.subset)
        if self.energy is not None or self.forces is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        return atoms

    @classmethod
    def from_atoms(cls, atoms: Atoms, energy: float | None = None,
                   forces: np.ndarray | None = None, source: str = "",
                   subset: str | None = None) -> "Frame":
        info = dict(atoms.info)
        cell = np.asarray(atoms.get_cell()) if atoms.cell.rank == 3 else None
        return cls(
            numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(),
            energy=energy, forces=forces, charge=float(info.get("charge", 0.0)),
            spin=float(info.get("spin", 1.0)),
            subset=str(subset if subset is not None else info.get("subset", "all")),
            cell=cell, pbc=tuple(atoms.pbc), source=source, info=info,
        )


def check_elements(frames: list[Frame], elements: list[str], where: str = "") -> None:
    """InputError naming the first frame that holds an element the model does not know."""
    known = set(elements)
    for f in frames:
        syms = {chemical_symbols[z] for z in np.unique(f.numbers)}
        bad = sorted(syms - known)
        if bad:
            raise InputError(
                f"{where or f.source}: element(s) {bad} (first in {f.source}) are not in the "
                f"model, which knows {elements}"
            )
