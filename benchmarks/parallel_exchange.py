"""Domain decomposition on the CPU: feature exchange (mpi4py) vs ghost-shell mode.

Water boxes of several sizes, LAMMPS under mpirun with 1 and 2 ranks, a small model (fp64,
CPU): time per MD step, exchange bytes and seconds per step (counted inside the model), atoms
per rank (owned and ghost). Writes JSON and a PNG.

    python benchmarks/parallel_exchange.py --out benchmarks/results/parallel_exchange.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import random_model, water_box  # noqa: E402

from e2former_lammps.lammps.data_file import write_lammps_data  # noqa: E402
from e2former_lammps.lammps.export import export_lammps_model  # noqa: E402
from e2former_lammps.lammps.hook import DECK_LINES  # noqa: E402
from e2former_lammps.lammps.log import thermo_runs  # noqa: E402

LMP = str(Path(sys.executable).parent / "lmp")


def run(workdir: Path, data: str, model: Path, nprocs: int, mode: str, shell_cut: float,
        steps: int) -> dict:
    stats = workdir / f"stats_{mode}_{nprocs}"
    stats.mkdir(parents=True, exist_ok=True)
    flag = 0 if mode == "exchange" else 1
    deck = f"""units metal
atom_style atomic
atom_modify map array
boundary p p p
{'' if mode == 'exchange' else f'comm_modify cutoff {shell_cut}'}
read_data {data}
pair_style mliap unified {model} {flag}
pair_coeff * * H O
{DECK_LINES if mode == 'exchange' else ''}
velocity all create 300 1234 mom yes rot no
timestep 0.0005
fix 1 all nve
thermo {steps}
run {steps}
"""
    (workdir / f"in.{mode}{nprocs}").write_text(deck)
    cmd = [LMP, "-nocite", "-in", f"in.{mode}{nprocs}"]
    if nprocs > 1:
        cmd = ["mpirun", "-np", str(nprocs)] + cmd
    env = dict(os.environ, E2FORMER_STATS_DIR=str(stats), OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env,
                         check=True).stdout
    loop = thermo_runs(out)[-1].loop_s
    ranks = [json.loads(p.read_text()) for p in sorted(stats.glob("rank*.json"))]
    calls = max(r["calls_model"] for r in ranks)
    return {
        "mode": mode, "ranks": nprocs, "seconds_per_step": loop / steps,
        "exchange_bytes_per_step": sum(r.get("bytes_sent", 0) for r in ranks) / calls,
        # the run's steps only: the set-up call (plan, first exchange) is left out
        "exchange_seconds_per_step": max(
            sum(c["exchange_s"] for c in r["call_log"][-steps:]) / steps for r in ranks),
        "owned_per_rank": [r["nlocal"] for r in ranks],
        "ghosts_per_rank": [r["ntotal"] - r["nlocal"] for r in ranks],
        "pairs_per_rank": [r["npairs"] for r in ranks],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[3, 4, 5],
                   help="water molecules per box edge")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/parallel_exchange.json")
    args = p.parse_args()
    model = random_model(seed=1, elements=["H", "O"], num_layers=2, cutoff=4.0)
    cfg = model.config
    shell_cut = (cfg.num_layers + 1) * cfg.cutoff + 2.0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "model.pt"
        export_lammps_model(model, path, device="cpu")
        for side in args.sides:
            atoms = water_box(side, seed=side)
            write_lammps_data(atoms, tmp / f"w{side}.data", ["H", "O"])
            for mode in ("exchange", "shell"):
                for nprocs in (1, 2):
                    r = run(tmp, f"w{side}.data", path, nprocs, mode, shell_cut, args.steps)
                    r.update(n_atoms=len(atoms), box_A=float(atoms.cell[0, 0]),
                             subdomain_A=float(atoms.cell[0, 0]) / (1 if nprocs == 1 else 2))
                    results.append(r)
                    print(json.dumps(r), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    out = {"device": "CPU (2 cores), LAMMPS 4 Jul 2026 + MPICH", "dtype": "float64",
           "commit": commit, "model": cfg.to_dict(), "shell_cutoff_A": shell_cut,
           "command": " ".join(sys.argv), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"{'atoms':>6} {'mode':>9} {'ranks':>5} {'s/step':>8} {'exch KB/step':>12} "
          f"{'exch ms/step':>12} {'ghosts/rank':>11}")
    for r in results:
        print(f"{r['n_atoms']:>6} {r['mode']:>9} {r['ranks']:>5} {r['seconds_per_step']:>8.3f} "
              f"{r['exchange_bytes_per_step'] / 1e3:>12.1f} "
              f"{r['exchange_seconds_per_step'] * 1e3:>12.2f} {max(r['ghosts_per_rank']):>11}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("exchange", "o"), ("shell", "s")):
        for nprocs, ls in ((1, "--"), (2, "-")):
            rs = [r for r in results if r["mode"] == mode and r["ranks"] == nprocs]
            a.plot([r["n_atoms"] for r in rs], [r["seconds_per_step"] for r in rs],
                   marker=marker, ls=ls, label=f"{mode}, {nprocs} rank(s)")
            b.plot([r["subdomain_A"] for r in rs], [max(r["ghosts_per_rank"]) for r in rs],
                   marker=marker, ls=ls, label=f"{mode}, {nprocs} rank(s)")
    a.set_xlabel("atoms")
    a.set_ylabel("seconds per MD step (CPU)")
    a.set_yscale("log")
    b.set_xlabel("sub-domain length along x (Å)")
    b.set_ylabel("ghost atoms per rank")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
