"""How smoothly a model's energy of an isolated pair goes to zero at the cutoff: two atoms
in vacuum scanned from r_c - 0.6 Å to r_c + 0.02 Å, energy and the force on the second atom
along the axis (CPU, fp64; a finer grid over the last 0.02 Å). Per model and pair: the
largest |force| over the last 0.5 Å and the energy change over the last 0.02 Å.

A steep fall just inside r_c means the attention weight of a lone neighbour stays near 1
until its envelope is tiny (p e^s against eps when the score s is large; training/NOTES.md
T22). In MD that is an impulse whenever such a pair crosses the cutoff.

    python benchmarks/cutoff_smoothness.py --models spice-xtb runs/x/spice-xtb.pt \\
        --out benchmarks/results/cutoff_smoothness.json      # JSON + PNG, table printed
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402

from e2former_lammps import E2FormerCalculator, E2FormerV2  # noqa: E402

# (label, symbols, total charge): ion pairs like SPICE's, and covalent-element pairs
PAIRS = [("Na Cl (0)", "NaCl", 0), ("Na K (+2)", "NaK", 2), ("O O (0)", "OO", 0),
         ("C H (0)", "CH", 0)]


def scan(model: E2FormerV2, symbols: str, charge: int, r: np.ndarray) -> tuple[list, list]:
    """Energies (eV) and the second atom's force along the axis (eV/Å) at distances r (Å)."""
    calc = E2FormerCalculator(model)
    energies, forces = [], []
    for d in r:
        atoms = Atoms(symbols, positions=[[0.0, 0.0, 0.0], [float(d), 0.0, 0.0]])
        atoms.info.update(charge=charge, spin=1)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(float(atoms.get_forces()[1, 0]))
    return energies, forces


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(next(iter(out["scans"].values())))
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.2 * len(pairs), 5.5), sharex=True,
                             squeeze=False)
    r = np.array(out["r_A"])
    for name, scans in out["scans"].items():
        for col, pair in enumerate(pairs):
            e = np.array(scans[pair]["energy_eV"])
            axes[0, col].plot(r, e - e[-1], label=name)
            axes[1, col].plot(r, scans[pair]["force_eV_per_A"], label=name)
            axes[0, col].set_title(pair, fontsize=9)
    for col in range(len(pairs)):
        for row in range(2):
            axes[row, col].axvline(out["cutoff_A"], color="gray", lw=0.5)
            axes[row, col].grid(True, alpha=0.3)
        axes[1, col].set_xlabel("distance (Å)")
    axes[0, 0].set_ylabel("E - E(beyond r_c) (eV)")
    axes[1, 0].set_ylabel("force on atom 2 along r (eV/Å)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"isolated pairs at the cutoff, commit {out['commit'][:8]}, fp64", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["spice-xtb"],
                   help="packaged names or model files (same cutoff)")
    p.add_argument("--step", type=float, default=0.002,
                   help="scan step (Å); a tenth of it over the last 0.02 Å before r_c")
    provenance.add_result_arguments(p, "benchmarks/results/cutoff_smoothness.json")
    args = p.parse_args()
    if provenance.replot(args, plot):
        return
    models = {name: E2FormerV2.load(name).double() for name in args.models}
    cutoffs = {m.config.cutoff for m in models.values()}
    if len(cutoffs) != 1:
        p.error(f"the models have different cutoffs {sorted(cutoffs)}: scan them separately")
    rc = cutoffs.pop()
    # the last 0.02 Å ten times finer: the steep part is narrower than the coarse step
    r = np.unique(np.round(np.concatenate([
        np.arange(rc - 0.6, rc - 0.02, args.step),
        np.arange(rc - 0.02, rc, args.step / 10),
        np.arange(rc, rc + 0.02 + 1e-9, min(args.step, 0.005))]),  # a few points beyond r_c
        10))
    inside = (r > rc - 0.5) & (r < rc)
    last = int(np.argmin(np.abs(r - (rc - 0.02))))
    out = {"commit": provenance.commit(), "device": "cpu", "dtype": "float64",
           "command": " ".join(sys.argv), "cutoff_A": rc, "r_A": r.tolist(), "scans": {},
           "summary": {}}
    print(f"{'model':>28} {'pair':>10} {'max |F| last 0.5 Å':>20} {'dE last 0.02 Å':>16}")
    with tqdm(total=len(models) * len(PAIRS), desc="pair scans", disable=None) as bar:
        for name, model in models.items():
            out["scans"][name], out["summary"][name] = {}, {}
            for label, symbols, charge in PAIRS:
                e, f = scan(model, symbols, charge, r)
                e_beyond = e[-1]
                summary = {"max_abs_force_last_0.5_A_eV_per_A": float(np.abs(f)[inside].max()),
                           "energy_change_last_0.02_A_eV": float(e[last] - e_beyond),
                           "energy_at_r_c_minus_0.5_A_eV": float(e[int(np.argmax(inside))]
                                                                 - e_beyond)}
                out["scans"][name][label] = {"energy_eV": e, "force_eV_per_A": f}
                out["summary"][name][label] = summary
                tqdm.write(f"{name[-28:]:>28} {label:>10} "
                           f"{summary['max_abs_force_last_0.5_A_eV_per_A']:>20.2f} "
                           f"{summary['energy_change_last_0.02_A_eV']:>+16.3f}")
                bar.update()
    provenance.write_results(out, args.out, plot)


if __name__ == "__main__":
    main()
