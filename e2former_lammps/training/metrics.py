"""Energy MAE (meV/atom) and force MAE (meV/Å, per component), overall and per subset."""
from __future__ import annotations

import numpy as np


class MetricAccumulator:
    """Collects per-frame (E_pred - E_ref)/n and per-atom |dF| components, grouped by subset
    name; with keep_values, also the predicted and reference values (for parity plots)."""

    def __init__(self, keep_values: bool = False):
        self.e_err: dict[str, list[float]] = {}  # signed, eV/atom
        self.f_abs_sum: dict[str, float] = {}
        self.f_count: dict[str, int] = {}
        # subset -> lists of arrays: E/atom (pred, ref) and force components (pred, ref)
        self.values: dict[str, dict[str, list[np.ndarray]]] | None = {} if keep_values else None

    def add(self, subset: list[str], e_pred, e_ref, n_atoms, f_pred, f_ref, atom_frame) -> None:
        """Arrays of one batch (numpy, eV and eV/Å); atom_frame maps atoms to batch frames."""
        n_atoms, atom_frame = np.asarray(n_atoms), np.asarray(atom_frame)
        e_per_atom = (np.asarray(e_pred) - np.asarray(e_ref)) / n_atoms
        df = np.abs(np.asarray(f_pred) - np.asarray(f_ref))  # [N, 3]
        per_frame_f = np.zeros(len(subset))
        np.add.at(per_frame_f, atom_frame, df.sum(-1))
        if self.values is not None:  # each frame's atoms as one slice (not a mask per frame)
            order = np.argsort(atom_frame, kind="stable")
            bounds = np.searchsorted(atom_frame[order], np.arange(len(subset) + 1))
            f_pred, f_ref = np.asarray(f_pred)[order], np.asarray(f_ref)[order]
            e_pred, e_ref = np.asarray(e_pred), np.asarray(e_ref)
        for k, s in enumerate(subset):
            self.e_err.setdefault(s, []).append(float(e_per_atom[k]))
            self.f_abs_sum[s] = self.f_abs_sum.get(s, 0.0) + float(per_frame_f[k])
            self.f_count[s] = self.f_count.get(s, 0) + 3 * int(n_atoms[k])
            if self.values is not None:
                v = self.values.setdefault(s, {"e_pred": [], "e_ref": [], "f_pred": [],
                                               "f_ref": []})
                v["e_pred"].append(e_pred[k:k + 1] / n_atoms[k])
                v["e_ref"].append(e_ref[k:k + 1] / n_atoms[k])
                v["f_pred"].append(f_pred[bounds[k]:bounds[k + 1]].ravel())
                v["f_ref"].append(f_ref[bounds[k]:bounds[k + 1]].ravel())

    def parity_values(self) -> dict[str, dict[str, np.ndarray]]:
        """subset -> {"e_pred", "e_ref" (eV/atom, per frame), "f_pred", "f_ref" (eV/Å,
        components)}; needs keep_values."""
        if self.values is None:
            raise ValueError("MetricAccumulator(keep_values=True) keeps the values to plot")
        return {s: {k: np.concatenate(arrays) for k, arrays in v.items()}
                for s, v in self.values.items()}

    def errors_about_group_means(self) -> dict[str, np.ndarray]:
        """group -> its frames' energy errors (eV/atom) minus the group's mean error. With
        molecules as the groups: the error of the energies relative to each other (the
        conformational part), the molecule's offset removed."""
        return {s: np.asarray(e) - np.mean(e) for s, e in self.e_err.items()}

    def result(self) -> dict:
        """{"overall": {...}, "subsets": {name: {...}}}: energy_mae_meV_per_atom,
        force_mae_meV_per_A, energy_rmse_meV_per_atom, energy_mean_error_meV_per_atom (signed:
        predicted minus reference; near the MAE when a molecule's energies are off by one
        offset, near zero when the errors are conformational), n_frames, n_atoms."""
        def block(names):
            e = np.concatenate([self.e_err[s] for s in names]) if names else np.zeros(0)
            fs = sum(self.f_abs_sum[s] for s in names)
            fc = sum(self.f_count[s] for s in names)
            return {
                "energy_mae_meV_per_atom": float(1000 * np.abs(e).mean())
                if e.size else float("nan"),
                "energy_rmse_meV_per_atom": float(1000 * np.sqrt((e ** 2).mean()))
                if e.size else float("nan"),
                "energy_mean_error_meV_per_atom": float(1000 * e.mean())
                if e.size else float("nan"),
                "force_mae_meV_per_A": float(1000 * fs / fc) if fc else float("nan"),
                "n_frames": int(e.size),
                "n_atoms": int(fc // 3),
            }

        names = sorted(self.e_err)
        return {"overall": block(names), "subsets": {s: block([s]) for s in names}}
