"""Energy MAE (meV/atom) and force MAE (meV/Å, per component), overall and per subset."""
from __future__ import annotations

import numpy as np


class MetricAccumulator:
    """Collects per-frame |dE|/n and per-atom |dF| components, grouped by subset name."""

    def __init__(self):
        self.e_err: dict[str, list[float]] = {}
        self.f_abs_sum: dict[str, float] = {}
        self.f_count: dict[str, int] = {}
        self.e_rmse: dict[str, list[float]] = {}

    def add(self, subset: list[str], e_pred, e_ref, n_atoms, f_pred, f_ref, atom_frame) -> None:
        """Arrays of one batch (numpy, eV and eV/Å); atom_frame maps atoms to batch frames."""
        e_per_atom = np.abs(np.asarray(e_pred) - np.asarray(e_ref)) / np.asarray(n_atoms)
        df = np.abs(np.asarray(f_pred) - np.asarray(f_ref))  # [N, 3]
        per_frame_f = np.zeros(len(subset))
        np.add.at(per_frame_f, np.asarray(atom_frame), df.sum(-1))
        for k, s in enumerate(subset):
            self.e_err.setdefault(s, []).append(float(e_per_atom[k]))
            self.f_abs_sum[s] = self.f_abs_sum.get(s, 0.0) + float(per_frame_f[k])
            self.f_count[s] = self.f_count.get(s, 0) + 3 * int(n_atoms[k])

    def result(self) -> dict:
        """{"overall": {...}, "subsets": {name: {...}}}: energy_mae_meV_per_atom,
        force_mae_meV_per_A, energy_rmse_meV_per_atom, n_frames, n_atoms."""
        def block(names):
            e = np.concatenate([self.e_err[s] for s in names]) if names else np.zeros(0)
            fs = sum(self.f_abs_sum[s] for s in names)
            fc = sum(self.f_count[s] for s in names)
            return {
                "energy_mae_meV_per_atom": float(1000 * e.mean()) if e.size else float("nan"),
                "energy_rmse_meV_per_atom": float(1000 * np.sqrt((e ** 2).mean()))
                if e.size else float("nan"),
                "force_mae_meV_per_A": float(1000 * fs / fc) if fc else float("nan"),
                "n_frames": int(e.size),
                "n_atoms": int(fc // 3),
            }

        names = sorted(self.e_err)
        return {"overall": block(names), "subsets": {s: block([s]) for s in names}}
