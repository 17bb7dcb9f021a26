"""Kernels of E2Former-V2: each op has a plain PyTorch reference and (where written) a fused
Triton implementation behind the same interface. The model calls the dispatchers here."""
from .attention import EdgeRadialWeights, equivariant_attention

__all__ = ["EdgeRadialWeights", "equivariant_attention"]
