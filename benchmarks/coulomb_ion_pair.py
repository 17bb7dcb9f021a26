"""The val Na+ K+ pair (charge +2, 2.5-7.5 Å) against xTB: the packaged model, and the same
weights with the Coulomb term added before any training (even charges), at several Coulomb
cutoffs (training/NOTES.md T21). Energies relative to the widest frame (eV), CPU, fp64:

    python benchmarks/coulomb_ion_pair.py --cutoffs 9 12 \\
        --out benchmarks/results/coulomb_ion_pair.json      # JSON + PNG, table printed
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402

from e2former_lammps import E2FormerCalculator, E2FormerV2  # noqa: E402
from e2former_lammps.config import E2FormerConfig  # noqa: E402
from e2former_lammps.data import read_dataset  # noqa: E402
from e2former_lammps.nn.coulomb import COULOMB_EV_ANGSTROM  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def with_coulomb(base: E2FormerV2, cutoff: float, width: float) -> E2FormerV2:
    """base's weights plus an untrained Coulomb term (its charge head even)."""
    cfg = E2FormerConfig.from_dict({**base.config.to_dict(), "coulomb_cutoff": cutoff,
                                    "coulomb_width": width})
    model = E2FormerV2(cfg)
    model.load_state_dict(base.state_dict(), strict=False)
    return model.double()


def pair_energies(model: E2FormerV2, frames) -> np.ndarray:
    calc = E2FormerCalculator(model)
    out = []
    for f in frames:
        atoms = f.to_atoms()
        atoms.info.update(charge=f.charge, spin=f.spin)
        atoms.calc = calc
        out.append(atoms.get_potential_energy())
    return np.array(out)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    r = np.array(out["r_A"])
    for name, e in out["energies_eV"].items():
        ax.plot(r, e, "k-" if name == "xTB" else "-", label=name)
    ax.axvline(out["cutoff_A"], color="gray", lw=0.5)
    ax.set_xlabel("Na-K distance (Å)")
    ax.set_ylabel(f"E - E({r.max():.1f} Å) (eV)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{out['pair']}, model {out['model']}, commit {out['commit'][:8]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="spice-xtb")
    p.add_argument("--data", default=str(REPO.parent / "shared/data/spice-xtb/val.hdf5"))
    p.add_argument("--cutoffs", type=float, nargs="+", default=[9.0, 12.0])
    p.add_argument("--width", type=float, default=1.0)
    provenance.add_result_arguments(p, "benchmarks/results/coulomb_ion_pair.json")
    args = p.parse_args()
    if provenance.replot(args, plot):
        return
    frames = [f for f in read_dataset(args.data) if f.charge == 2 and len(f) == 2]
    if not frames:
        p.error(f"{args.data} has no two-atom structure of charge +2")
    r = np.array([float(np.linalg.norm(f.positions[1] - f.positions[0])) for f in frames])
    order = np.argsort(r)
    frames, r = [frames[k] for k in order], r[order]
    base = E2FormerV2.load(args.model).double()

    def relative(e: np.ndarray) -> list[float]:
        return (e - e[-1]).tolist()

    energies = {"xTB": relative(np.array([f.energy for f in frames])),
                args.model: relative(pair_energies(base, frames)),
                "14.40 eV Å / r": relative(COULOMB_EV_ANGSTROM / r)}
    for cut in args.cutoffs:
        energies[f"+ term, {cut:g} Å"] = relative(
            pair_energies(with_coulomb(base, cut, args.width), frames))
    names = list(energies)
    print(f"{'r (Å)':>6} " + " ".join(f"{n:>16}" for n in names))
    for k in range(0, len(r), 5):
        print(f"{r[k]:>6.2f} " + " ".join(f"{energies[n][k]:>+16.3f}" for n in names))
    i5 = int(np.argmin(np.abs(r - 5.0)))
    share = {n: energies[n][i5] / energies["xTB"][i5] for n in names if n != "xTB"}
    print("energy change from 5 Å to the widest frame, as a share of xTB's:",
          {n: round(v, 2) for n, v in share.items()})
    out = {"pair": "val Na+ K+ (+2 e)", "model": args.model, "commit": provenance.commit(),
           "device": "cpu", "dtype": "float64", "command": " ".join(sys.argv),
           "cutoff_A": base.config.cutoff, "coulomb_width_A": args.width, "r_A": r.tolist(),
           "energies_eV": energies, "share_of_xtb_change_from_5_A": share}
    provenance.write_results(out, args.out, plot)


if __name__ == "__main__":
    main()
