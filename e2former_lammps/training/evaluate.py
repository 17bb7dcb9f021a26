"""Model evaluation on labelled frames: `e2former-lammps evaluate --model M --data FILE`."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import read_dataset
from ..data.frame import Frame
from ..devices import resolve_device
from ..model import E2FormerV2
from .batching import PackedFrames, predict
from .metrics import MetricAccumulator


def evaluate_packed(model: E2FormerV2, packed: PackedFrames, batch_size: int = 32,
                    progress: bool = False, max_frames: int | None = None,
                    by_molecule: bool = False, plot: str | Path | None = None) -> dict:
    """Metrics of all frames, or of max_frames evenly spaced ones (same frames every call,
    spread over the file so every subset is represented); by_molecule adds "molecules", the
    same metrics per molecule (SPICE group; other formats: per subset) and the conformer
    energy MAE everywhere (`add_conformer_energy_mae`); plot: a PNG of the energy errors and
    of predicted against reference forces, per subset (plots.plot_parity)."""
    import numpy as np

    packed.check_model(model.config)
    acc, acc_mol = MetricAccumulator(keep_values=plot is not None), MetricAccumulator()
    rows = np.arange(len(packed))
    if max_frames is not None and max_frames < len(packed):
        rows = np.unique(np.linspace(0, len(packed) - 1, max_frames).round().astype(np.int64))
    n = len(rows)
    was_training = model.training
    model.eval()
    it = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="evaluate", unit="batch", leave=False)
    for s in it:
        b = packed.batch(rows[s:s + batch_size].tolist())
        e, f = predict(model, b, create_graph=False)
        arrays = (e.detach().cpu().numpy(), b.energy.cpu().numpy(), b.n_atoms.cpu().numpy(),
                  f.detach().cpu().double().numpy(), b.forces.cpu().double().numpy(),
                  b.graph.batch.cpu().numpy())
        acc.add([packed.subset_names[k] for k in b.subset.tolist()], *arrays)
        if by_molecule:
            acc_mol.add([packed.molecules[k] for k in b.frame_index.tolist()], *arrays)
    model.train(was_training)
    out = acc.result()
    if by_molecule:
        out["molecules"] = acc_mol.result()["subsets"]
        subset_ids = packed.subset.cpu().numpy()
        add_conformer_energy_mae(out, acc_mol, {
            packed.molecules[k]: packed.subset_names[subset_ids[k]] for k in rows})
    if plot is not None:
        from .plots import plot_parity

        plot_parity(acc.parity_values(), out, plot)
    return out


def add_conformer_energy_mae(out: dict, by_molecule: MetricAccumulator,
                             subset_of: dict[str, str]) -> None:
    """Adds conformer_energy_mae_meV_per_atom to each molecule, subset and the overall block
    of `out`: the energy MAE once each molecule's mean error is taken out, i.e. the error of
    the energies of its conformations relative to each other. energy_mae minus this is what
    per-molecule offsets cost."""
    import numpy as np

    centered = by_molecule.errors_about_group_means()

    def mae(arrays: list) -> float:
        return float(1000 * np.abs(np.concatenate(arrays)).mean()) if arrays else float("nan")

    for mol, err in centered.items():
        out["molecules"][mol]["conformer_energy_mae_meV_per_atom"] = mae([err])
    for subset, block in out["subsets"].items():
        block["conformer_energy_mae_meV_per_atom"] = mae(
            [err for mol, err in centered.items() if subset_of[mol] == subset])
    out["overall"]["conformer_energy_mae_meV_per_atom"] = mae(list(centered.values()))


def evaluate_frames(model: E2FormerV2, frames: list[Frame], batch_size: int = 32,
                    device: str = "auto", progress: bool = False,
                    by_molecule: bool = False, plot: str | Path | None = None) -> dict:
    dev = resolve_device(device)
    model = model.to(dev)
    dtype = next(model.parameters()).dtype
    cfg = model.config
    packed = PackedFrames(frames, cfg.elements, cfg.atomic_numbers, cfg.cutoff, dev, dtype,
                          coulomb_cutoff=cfg.coulomb_cutoff)
    return evaluate_packed(model, packed, batch_size, progress, by_molecule=by_molecule,
                           plot=plot)


def evaluate_model_file(model: str, data: list[str] | str, batch_size: int = 32,
                        device: str = "auto", data_format: str | None = None,
                        progress: bool = False, by_molecule: bool = False,
                        plot: str | Path | None = None) -> dict:
    """Metrics of a saved (or packaged) model on one or more data files (plot: a PNG, see
    evaluate_packed)."""
    m = E2FormerV2.load(model)
    paths = [data] if isinstance(data, str) else list(data)
    frames = [f for p in paths for f in read_dataset(p, data_format)]
    out = evaluate_frames(m, frames, batch_size, device, progress, by_molecule, plot)
    out["model"] = str(model)
    out["data"] = paths
    return out
