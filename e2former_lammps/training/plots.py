"""Learning-curve PNG from the training history; error and parity PNG of an evaluation."""
from __future__ import annotations

from pathlib import Path


def _save(fig, path: str | Path, title: str) -> Path:
    """Title, layout, PNG at 110 dpi, figure closed."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(history: list[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "loss" in h]
    val = [h for h in history if "val" in h]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if train:
        steps = [h["step"] for h in train]
        ax.plot(steps, [h["loss"] for h in train], label="loss", lw=1)
        ax.plot(steps, [h["loss_energy"] for h in train], label="|dE|/atom (eV)",
                lw=0.8, alpha=0.8)
        ax.plot(steps, [h["loss_force"] for h in train], label="|dF| (eV/Å)", lw=0.8, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss")
    if train:
        ax.legend()
    ax = axes[1]
    if val:
        steps = [h["step"] for h in val]
        ax.plot(steps, [h["val"]["force_mae_meV_per_A"] for h in val], "o-",
                label="force MAE (meV/Å)")
        ax.plot(steps, [h["val"]["energy_mae_meV_per_atom"] for h in val], "s-",
                label="energy MAE (meV/atom)")
        ax.axhline(30, color="C0", ls=":", lw=0.8)
        ax.axhline(1.5, color="C1", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("validation (EMA weights)")
    if val:
        ax.legend()
    return _save(fig, path, title)


def plot_parity(values: dict[str, dict], metrics: dict, path: str | Path,
                title: str = "") -> Path:
    """Left: each frame's signed energy error per atom (meV/atom), a histogram per subset (the
    energies themselves span ~100 eV/atom by composition, so a parity plot of them shows
    nothing). Right: predicted against reference force components (eV/Å). One colour per
    subset, its MAE in the legend. values: MetricAccumulator.parity_values(); metrics: its
    result()."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    errors = {name: 1000 * (v["e_pred"] - v["e_ref"]) for name, v in values.items()}
    bound = max(float(np.abs(e).max()) for e in errors.values()) or 1.0
    bins = np.linspace(-bound, bound, 61)
    for k, name in enumerate(sorted(values)):
        m, v = metrics["subsets"][name], values[name]
        axes[0].hist(errors[name], bins=bins, histtype="step", lw=1.2, color=f"C{k % 10}",
                     label=f"{name}: MAE {m['energy_mae_meV_per_atom']:.1f}, "
                           f"mean {m['energy_mean_error_meV_per_atom']:+.1f} meV/atom")
        axes[1].scatter(v["f_ref"], v["f_pred"], s=2, alpha=0.3, color=f"C{k % 10}",
                        label=f"{name}: {m['force_mae_meV_per_A']:.1f} meV/Å")
    o = metrics["overall"]
    ax = axes[0]
    ax.axvline(0.0, color="k", lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("predicted - reference energy (meV/atom)")
    ax.set_ylabel("frames")
    ax.set_title(f"energy: MAE {o['energy_mae_meV_per_atom']:.2f} meV/atom "
                 f"({o['n_frames']} frames)")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.6)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("reference force component (eV/Å)")
    ax.set_ylabel("predicted (eV/Å)")
    ax.set_title(f"forces: MAE {o['force_mae_meV_per_A']:.1f} meV/Å")
    ax.legend(fontsize=7, markerscale=3)
    return _save(fig, path, title)
