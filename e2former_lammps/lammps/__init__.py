"""LAMMPS side: the ML-IAP unified adapter, the deck hook, model export."""
from .hook import attach, e2former_attach
from .mliap import E2FormerMLIAP

__all__ = ["E2FormerMLIAP", "attach", "e2former_attach"]
