"""Write the file read by `pair_style mliap unified FILE 0` (a pickled E2FormerMLIAP)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model import E2FormerV2
from .mliap import E2FormerMLIAP


def export_lammps_model(checkpoint: str | os.PathLike | E2FormerV2, output: str | os.PathLike,
                        dtype: str | None = None, device: str = "auto",
                        attention: str | None = None) -> Path:
    """Checkpoint (path, packaged name or model) -> LAMMPS model file. Returns its path."""
    model = checkpoint if isinstance(checkpoint, E2FormerV2) else E2FormerV2.load(checkpoint)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if attention is not None:
        model.set_attention_impl(attention)
    model = model.to(device)
    output = Path(output)
    if output.suffix not in (".pt", ".pth"):
        raise ValueError(f"LAMMPS reads a torch file only if it ends in .pt or .pth: {output}")
    torch.save(E2FormerMLIAP(model, device=device), output)
    return output
