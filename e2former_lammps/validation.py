"""Input checks that turn bad structures into clear messages before the model runs."""
from __future__ import annotations

import torch
from torch import Tensor

MIN_DISTANCE = 0.2  # Å: closer than any chemical bond; almost surely a duplicated atom


class InputError(ValueError):
    """A structure the model cannot evaluate; the message names the atoms and the problem."""


def check_pairs(rij: Tensor, pair_i: Tensor, pair_j: Tensor, label=lambda k: str(k)) -> None:
    """NaN/inf displacements and atoms on top of each other. `label` names an atom index."""
    if rij.numel() == 0:
        return
    finite = torch.isfinite(rij).all(dim=-1)
    if not bool(finite.all()):
        e = int(torch.nonzero(~finite)[0])
        raise InputError(
            f"non-finite coordinates: the displacement between atoms {label(int(pair_i[e]))} "
            f"and {label(int(pair_j[e]))} is {rij[e].tolist()} (NaN or inf positions?)"
        )
    dist = rij.norm(dim=-1)
    dmin, e = torch.min(dist, dim=0)
    if float(dmin) < MIN_DISTANCE:
        raise InputError(
            f"atoms {label(int(pair_i[e]))} and {label(int(pair_j[e]))} are "
            f"{float(dmin):.3g} Å apart (less than {MIN_DISTANCE} Å): overlapping atoms"
        )


def check_positions(positions: Tensor) -> None:
    bad = ~torch.isfinite(positions).all(dim=-1)
    if bool(bad.any()):
        raise InputError(
            f"non-finite coordinates (NaN or inf) for atom(s) "
            f"{torch.nonzero(bad).flatten().tolist()[:10]}"
        )


def species_index(atomic_numbers: list[int] | Tensor, model_numbers: list[int],
                  model_elements: list[str]) -> Tensor:
    """Map atomic numbers to the model's element indices; unknown elements raise."""
    from ase.data import chemical_symbols

    lut = {z: k for k, z in enumerate(model_numbers)}
    zs = [int(z) for z in atomic_numbers]
    missing = sorted({z for z in zs if z not in lut})
    if missing:
        names = [chemical_symbols[z] for z in missing]
        raise InputError(
            f"element(s) {names} not in this model, which knows {model_elements}"
        )
    return torch.tensor([lut[z] for z in zs], dtype=torch.long)
