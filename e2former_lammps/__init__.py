"""E2Former-V2 equivariant transformer potential for LAMMPS (ML-IAP unified)."""
from .calculator import E2FormerCalculator
from .config import E2FormerConfig
from .model import AtomGraph, E2FormerV2

__all__ = ["AtomGraph", "E2FormerCalculator", "E2FormerConfig", "E2FormerV2"]
__version__ = "0.1.0"
