"""Learning-curve PNG from the training history."""
from __future__ import annotations

from pathlib import Path


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
