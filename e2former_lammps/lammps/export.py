"""Write the file read by `pair_style mliap unified FILE 0` (a pickled E2FormerMLIAP)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..devices import parse_device
from ..model import E2FormerV2
from .mliap import E2FormerMLIAP


def export_lammps_model(checkpoint: str | os.PathLike | E2FormerV2, output: str | os.PathLike,
                        dtype: str | None = None, device: str = "auto",
                        attention: str | None = None, charge: float = 0.0,
                        spin: float = 1.0) -> Path:
    """Checkpoint (path, packaged name or model) -> LAMMPS model file. Returns its path.

    charge (e) and spin (multiplicity) describe the whole simulated system; they reach
    models trained with charge_spin and must be the defaults (0, 1) for the others."""
    # a copy: the dtype, attention and device changes below must not reach the caller's model
    model = (copy.deepcopy(checkpoint) if isinstance(checkpoint, E2FormerV2)
             else E2FormerV2.load(checkpoint))
    if (charge, spin) != (0.0, 1.0) and not model.config.charge_spin:
        raise ValueError(f"charge {charge} / spin {spin}: this model has no charge/spin input "
                         f"(trained without charge_spin)")
    if spin < 1.0:
        raise ValueError(f"spin is the multiplicity 2S+1 (>= 1), got {spin}")
    if model.config.charge_spin_mode == "distributed" and charge != 0.0:
        # a charge the model has an energy for, or a clear error now rather than in LAMMPS
        model.charge_energy(torch.tensor([charge], device=model.charge_states.device))
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    device = str(parse_device(device))  # a GPU need not be present where the file is written
    if attention is not None:
        model.set_attention_impl(attention)
    # The file holds host tensors and the device name: it can be written where there is no
    # GPU (a login node) and LAMMPS moves the model to `device` when it loads the file.
    model = model.to("cpu")
    output = Path(output)
    if output.suffix not in (".pt", ".pth"):
        raise ValueError(f"LAMMPS reads a torch file only if it ends in .pt or .pth: {output}")
    unified = E2FormerMLIAP(model, device=device)
    unified.charge, unified.spin = float(charge), float(spin)
    # a charged system's pairs reach the Coulomb cutoff of a model with that term
    unified.rcutfac = 0.5 * model.config.pair_cutoff(charge != 0.0)
    torch.save(unified, output)
    return output
