"""How a fine-tune's starting offsets change a trained model's energies (training NOTES T14).

A training run with init_model fits the per-element and per-charge-state energies (eV) on
the training split before its first step. This compares, on the val split and before any
step, the val energy error of the model
  - as saved,
  - with offsets refitted from the labels alone (what the trainer did until T14: the network's
    share of each molecule's energy is ignored),
  - with its offsets corrected by the least-squares fit of its residuals (what it does now).
Energies only (no forces), so it runs on the CPU in minutes:

    python benchmarks/init_offsets.py --model runs/spice-xtb-charge-gpu/spice-xtb.pt \\
        --out benchmarks/results/init_offsets.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import provenance  # noqa: E402

from e2former_lammps import E2FormerV2  # noqa: E402
from e2former_lammps.data import read_dataset  # noqa: E402
from e2former_lammps.training.batching import (PackedFrames, energy_residuals,  # noqa: E402
                                               fit_energy_offsets, refit_energy_offsets)


def val_energy_error(model: E2FormerV2, val: PackedFrames) -> dict:
    """MAE, RMSE and signed mean of (E_model - E_label) / n_atoms over val (meV/atom)."""
    per_atom = -energy_residuals(model, val) / val.natoms.cpu().numpy() * 1000.0
    return {"energy_mae_meV_per_atom": float(np.abs(per_atom).mean()),
            "energy_rmse_meV_per_atom": float(np.sqrt((per_atom ** 2).mean())),
            "energy_mean_error_meV_per_atom": float(per_atom.mean())}


def with_offsets(model: E2FormerV2, offsets: tuple[dict, dict]) -> E2FormerV2:
    out = copy.deepcopy(model)
    out.set_reference_energies(offsets[0])
    if offsets[1]:
        out.set_charge_energies(offsets[1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="packaged name or .pt file")
    p.add_argument("--train", default="../shared/data/spice-xtb/train.hdf5")
    p.add_argument("--val", default="../shared/data/spice-xtb/val.hdf5")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/init_offsets.json"))
    args = p.parse_args()

    torch.set_default_dtype(torch.float32)
    model = E2FormerV2.load(args.model).eval()
    cfg = model.config
    packed = {name: PackedFrames(read_dataset(path), cfg.elements, cfg.atomic_numbers,
                                 cfg.cutoff)
              for name, path in (("train", args.train), ("val", args.val))}
    by_charge = cfg.distributed_charge
    t0 = time.perf_counter()
    variants = {
        "as saved": model,
        "labels-only refit (trainer until T14)": with_offsets(
            model, fit_energy_offsets(packed["train"], cfg.elements, by_charge)),
        "residual refit (trainer since T14)": with_offsets(
            model, refit_energy_offsets(model, packed["train"])),
    }
    rows = {name: val_energy_error(m, packed["val"]) for name, m in variants.items()}
    print(f"{'offsets':40s} {'val MAE':>9s} {'RMSE':>9s} {'mean':>9s}   (meV/atom)")
    for name, r in rows.items():
        print(f"{name:40s} {r['energy_mae_meV_per_atom']:9.2f} "
              f"{r['energy_rmse_meV_per_atom']:9.2f} {r['energy_mean_error_meV_per_atom']:9.2f}")
    out = {"what": __doc__.split("\n")[0], "model": args.model, "train": args.train,
           "val": args.val, "n_train_frames": len(packed["train"]),
           "n_val_frames": len(packed["val"]), "device": "cpu", "dtype": "float32",
           "commit": provenance.commit(), "seconds": time.perf_counter() - t0,
           "command": "python " + " ".join(sys.argv), "val_before_any_step": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
