"""What a model file holds: `e2former-lammps info MODEL`.

MODEL is a checkpoint written by E2FormerV2.save, a packaged name, or a file written by
`e2former-lammps export` for LAMMPS. The description gives what a deck needs (the
`pair_coeff` elements, the cutoff LAMMPS uses, the charge set at export) and what the file
says of its training (validation errors), without running the model.
"""
from __future__ import annotations

import os
from pathlib import Path

from .model import E2FormerV2, read_checkpoint, resolve_model_path

ARCHITECTURE_KEYS = ("channels", "lmax", "num_layers", "num_heads", "head_dim", "num_rbf",
                     "radial_hidden", "ffn_channels", "identity_paths", "direct_force_head",
                     "weight_envelope")


def _load(path: Path) -> tuple[E2FormerV2, dict | None]:
    """(model, export settings or None for a checkpoint)."""
    try:
        ckpt = read_checkpoint(path)
    except ValueError:
        # an export is a pickled ML-IAP object, unpickled as LAMMPS does but left on the host
        from .lammps.mliap import E2FormerMLIAP, inspect_export

        neither = ValueError(f"{path} is neither an E2Former checkpoint nor a file written "
                             f"by `e2former-lammps export`")
        try:
            unified = inspect_export(path)
        except Exception:  # noqa: BLE001 (foreign files fail to unpickle in many ways)
            raise neither from None
        if not isinstance(unified, E2FormerMLIAP):
            raise neither from None
        return unified.model, {"charge_e": unified.charge, "spin_multiplicity": unified.spin,
                               "device": str(unified.device)}
    return E2FormerV2.from_checkpoint(ckpt), None


def describe(path_or_name: str | os.PathLike) -> dict:
    """A JSON-able description of a model file (see the module docstring)."""
    path = resolve_model_path(path_or_name)
    model, export = _load(path)
    cfg = model.config
    info = {
        "model": str(path_or_name), "file": str(path),
        "kind": "LAMMPS export" if export else "checkpoint",
        "elements": list(model.elements),
        "pair_coeff": "pair_coeff * * " + " ".join(model.elements),
        "cutoff_A": cfg.cutoff,
        "architecture": {k: getattr(cfg, k) for k in ARCHITECTURE_KEYS},
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "charge_spin": cfg.charge_spin_mode if cfg.charge_spin else None,
        "charges_with_an_energy_e": (sorted([0] + [int(q) for q in cfg.charge_energies])
                                     if cfg.distributed_charge else None),
        "coulomb_cutoff_A": cfg.coulomb_cutoff,
        "export": export,
    }
    metrics = getattr(model, "metadata", {}).get("metrics") or {}
    val = (metrics.get("val") or {}).get("overall")
    if val:
        info["validation"] = {k: val[k] for k in ("energy_mae_meV_per_atom",
                                                  "force_mae_meV_per_A", "n_frames") if k in val}
    return info


def format_description(info: dict) -> str:
    a = info["architecture"]
    lines = [
        f"{info['model']}: {info['kind']} ({info['file']})",
        f"elements: {' '.join(info['elements'])}",
        f"  {info['pair_coeff']}   (list the elements of your atom types, in type order)",
        f"cutoff: {info['cutoff_A']} Å; {a['num_layers']} layers, {a['channels']} channels, "
        f"lmax {a['lmax']}, {a['num_heads']} heads x {a['head_dim']}; "
        f"{info['parameters']:,} parameters, {info['dtype']}",
    ]
    if info["charge_spin"] is None:
        lines.append("charge/spin: not an input (every system is treated alike)")
    else:
        states = info["charges_with_an_energy_e"]
        lines.append(f"charge/spin: inputs ({info['charge_spin']})"
                     + (f"; total charges it has an energy for: {states} e" if states else ""))
    if info.get("coulomb_cutoff_A") is not None:
        lines.append(f"Coulomb term for charged systems: pairs to {info['coulomb_cutoff_A']:g} Å "
                     f"(LAMMPS pair cutoff of a charged export)")
    if info["export"]:
        e = info["export"]
        lines.append(f"exported for LAMMPS: total charge {e['charge_e']:g} e, spin "
                     f"multiplicity {e['spin_multiplicity']:g}, device {e['device']}")
    elif info["charge_spin"] is not None:
        lines.append("for LAMMPS: e2former-lammps export MODEL --charge Q --spin S "
                     "(default: neutral singlet)")
    if "validation" in info:
        v = info["validation"]
        lines.append(f"validation (as trained): force MAE {v['force_mae_meV_per_A']:.1f} meV/Å, "
                     f"energy MAE {v['energy_mae_meV_per_atom']:.2f} meV/atom "
                     f"({v.get('n_frames', '?')} frames)")
    return "\n".join(lines)
