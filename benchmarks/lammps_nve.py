"""Energy conservation of NVE MD in LAMMPS (the `lmp` binary) with an E2Former-V2 model.

Each job is its own `lmp` process started through deploy/lmp_gpu.sh; jobs run concurrently
(small systems leave the GPU mostly idle). Per job: total-energy drift (least-squares slope,
meV/atom/ps), largest excursion |E(t) - E(0)| (meV/atom), temperature, speed, and whether any
atom left its molecule or flew off (nearest-neighbour distance in the final frame).
Writes JSON and a PNG of E(t) - E(0) per atom.

    python benchmarks/lammps_nve.py --model spice-xtb --device cuda \
        --job water:648:10000 --job serine:20000 --out benchmarks/results/lammps_nve.json
Jobs: `water:N_ATOMS:STEPS` (periodic box at 1 g/cm^3, 300 K), `serine:STEPS` (serine and 26
waters in vacuum, lammps_examples/solvated_amino_acid) and `cation:STEPS` (ethylammonium, +1 e,
in vacuum, lammps_examples/charged_molecule; the model exported with --charge 1), relaxed
first by --minimize CG iterations. Timestep 0.5 fs, neighbour list rebuilt when needed (check every step), thermo
every --every steps; --timeout stops each run
cleanly after a wall time (the JSON then says how many steps were done).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import provenance  # noqa: E402

from e2former_lammps.lammps.log import thermo_runs  # noqa: E402

TIMESTEP_PS = 0.0005
DECK = """units metal
atom_style atomic
atom_modify map array
boundary {boundary}
read_data {data}
pair_style mliap unified {model} 0
pair_coeff * * {elements}
python e2former_attach input 1 SELF format p here "from e2former_lammps.lammps import e2former_attach"
python e2former_attach invoke
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
{minimize}velocity all create 300.0 4928459 mom yes rot {rot} dist gaussian
timestep {timestep}
fix nve all nve
thermo_style custom step time temp pe ke etotal
thermo_modify norm no flush yes format float %.10f
thermo {every}
timer timeout {timeout} every 100
run {steps}
write_dump all xyz final.xyz modify element {elements}
"""


def prepare(job: str, workdir: Path, model_for_charge: Callable[[int], Path], every: int,
            timeout: str, min_iter: int) -> dict:
    kind, *rest = job.split(":")
    d = workdir / job.replace(":", "_")
    d.mkdir(parents=True, exist_ok=True)
    if kind == "water":
        from bench_attention import water_box
        from lammps_scaling import write_data

        n_req, steps = int(rest[0]), int(rest[1])
        pos, species, box = water_box(n_req, device="cpu")
        write_data(d / "system.data", pos.numpy(), species.numpy(), box)
        spec = dict(boundary="p p p", elements="H O", rot="no", periodic=box)
    elif kind == "serine":
        steps = int(rest[0])
        shutil.copy(REPO / "lammps_examples/solvated_amino_acid/serine_water.data",
                    d / "system.data")
        spec = dict(boundary="s s s", elements="H C N O", rot="yes", periodic=None)
    elif kind == "cation":
        steps = int(rest[0])
        shutil.copy(REPO / "lammps_examples/charged_molecule/ethylammonium.data",
                    d / "system.data")
        spec = dict(boundary="s s s", elements="H C N", rot="yes", periodic=None, charge=1)
    else:
        raise SystemExit(f"unknown job kind {kind!r} in {job!r} (water:N:STEPS, serine:STEPS "
                         f"or cation:STEPS)")
    (d / "in.nve").write_text(DECK.format(
        boundary=spec["boundary"], data="system.data", model=model_for_charge(
            spec.get("charge", 0)), elements=spec["elements"],
        rot=spec["rot"], timestep=TIMESTEP_PS, minimize=minimize_lines(min_iter), every=every,
        steps=steps, timeout=timeout))
    return {"job": job, "dir": d, "steps": steps, **spec}


def minimize_lines(min_iter: int) -> str:
    """Relax the start (a built box or a data file is not at the model's minimum: the released
    energy would heat an NVE run) before the velocities are drawn."""
    if min_iter <= 0:
        return ""
    return (f"min_style cg\nminimize 0.0 1.0e-3 {min_iter} {10 * min_iter}\n"
            "reset_timestep 0\n")


def parse_log(path: Path) -> tuple[np.ndarray, float | None, int]:
    """Thermo rows [step, time, temp, pe, ke, etotal] of the last run (the minimisation
    before it prints its own table), its loop wall time (s), and the atom count of the last
    loop line (the minimisation's if the MD run stopped early)."""
    runs = thermo_runs(path.read_text())
    n_atoms = next((r.n_atoms for r in reversed(runs) if r.n_atoms), 0)
    md = [r for r in runs if r.columns[:2] == ["Step", "Time"]]
    if not md:
        return np.zeros((0, 6)), None, n_atoms
    return md[-1].rows, md[-1].loop_s, n_atoms


def nearest_neighbour(path: Path, box: float | None) -> np.ndarray:
    lines = path.read_text().splitlines()
    n = int(lines[0])
    xyz = np.array([[float(v) for v in ln.split()[1:4]] for ln in lines[2:2 + n]])
    d = xyz[:, None] - xyz[None]
    if box is not None:
        d -= box * np.round(d / box)
    r = np.sqrt((d * d).sum(-1))
    np.fill_diagonal(r, np.inf)
    return r.min(1)


def analyse(spec: dict, wall_s: float, returncode: int) -> dict:
    d = spec["dir"]
    log_path = d / "log.lammps"
    rows, loop_s, n_atoms = (parse_log(log_path) if log_path.exists()  # none: LAMMPS never ran
                             else (np.zeros((0, 6)), None, 0))
    res = {"job": spec["job"], "returncode": returncode, "wall_s": wall_s, "n_atoms": n_atoms,
           "steps_requested": spec["steps"]}
    if rows.size == 0:
        res["error"] = (d / "stderr.txt").read_text()[-2000:]
        return res
    t, temp, etot = rows[:, 1], rows[:, 2], rows[:, 5]
    de = (etot - etot[0]) / n_atoms * 1e3  # meV/atom
    slope = np.polyfit(t, de, 1)[0] if len(t) > 2 else float("nan")
    # the first steps from a cold, unrelaxed start carry a one-off jump; the slope after them
    late = t >= 0.1
    slope_late = np.polyfit(t[late], de[late], 1)[0] if late.sum() > 2 else float("nan")
    res.update({
        "steps_done": int(rows[-1, 0]), "time_ps": float(t[-1]),
        "drift_meV_per_atom_per_ps": float(slope),
        "drift_after_0.1ps_meV_per_atom_per_ps": float(slope_late),
        "max_abs_dE_meV_per_atom": float(np.abs(de).max()),
        "temperature_K": {"mean": float(temp.mean()), "min": float(temp.min()),
                          "max": float(temp.max())},
        "timesteps_per_s": (rows[-1, 0] / loop_s) if loop_s else None,
        "series": {"time_ps": t.tolist(), "dE_meV_per_atom": de.tolist(), "temp": temp.tolist()},
    })
    final = d / "final.xyz"
    if final.exists():
        nn = nearest_neighbour(final, spec["periodic"])
        res["final_nearest_neighbour_A"] = {"max": float(nn.max()),
                                           "atoms_beyond_2A": int((nn > 2.0).sum()),
                                           "atoms_beyond_5A_flew_off": int((nn > 5.0).sum())}
    return res


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if "series" in r:
            s = r["series"]
            lab = (f"{r['job']} ({r['n_atoms']} atoms): "
                   f"{r['drift_meV_per_atom_per_ps']:.2g} meV/atom/ps")
            a.plot(s["time_ps"], s["dE_meV_per_atom"], label=lab)
            b.plot(s["time_ps"], s["temp"], label=r["job"])
    a.set_xlabel("time (ps)")
    a.set_ylabel("E(t) - E(0) (meV/atom)")
    b.set_xlabel("time (ps)")
    b.set_ylabel("temperature (K)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_title(out: dict) -> str:
    return (f"{out['device']}, model {out['model']}, {out['dtype']}, 0.5 fs, "
            f"commit {out['commit'][:8]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="spice-xtb", help="packaged name or checkpoint")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="model precision (float32: the default of export on the GPU)")
    p.add_argument("--job", action="append", help="a job (see above); repeat for each")
    p.add_argument("--every", type=int, default=50, help="thermo interval (steps)")
    p.add_argument("--timeout", default="off",
                   help="LAMMPS `timer timeout` (HH:MM:SS): stop a run early, cleanly")
    p.add_argument("--minimize", type=int, default=200,
                   help="conjugate-gradient iterations before NVE (0: start as built)")
    p.add_argument("--workdir", type=Path, default=Path("runs/nve"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lammps_nve.json"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--plot", type=Path, metavar="JSON",
                   help="only draw the PNG of a results JSON written earlier, and exit (on a "
                        "machine where matplotlib cannot load after LAMMPS, run with "
                        "--no-plot, then this)")
    args = p.parse_args()
    if args.plot:
        out = json.loads(args.plot.read_text())
        plot(out["results"], args.plot.with_suffix(".png"), plot_title(out))
        return
    if not args.job:
        p.error("give at least one --job (or --plot JSON)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    exported: dict[int, Path] = {}

    def model_for_charge(charge: int) -> Path:
        """The model exported once per total charge (LAMMPS has no charges to read)."""
        if charge not in exported:
            path = (args.workdir / (f"model_charge{charge}.pt" if charge else "model.pt"))
            subprocess.run([sys.executable, "-m", "e2former_lammps.cli", "export", args.model,
                            "--device", args.device, "--dtype", args.dtype, "--charge",
                            str(charge), "-o", str(path.resolve())], check=True)
            exported[charge] = path.resolve()
        return exported[charge]

    # the code the runs load: read now, not after hours of MD (commits may land meanwhile)
    commit = provenance.commit()
    specs = [prepare(job, args.workdir, model_for_charge, args.every, args.timeout,
                     args.minimize) for job in args.job]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]))
    procs = []
    for spec in specs:
        err = open(spec["dir"] / "stderr.txt", "w")
        procs.append((spec, time.perf_counter(), err, subprocess.Popen(
            ["bash", str(REPO / "deploy/lmp_gpu.sh"), "-in", "in.nve", "-screen", "none"],
            cwd=spec["dir"], env=env, stdout=err, stderr=subprocess.STDOUT)))
    results = []
    for spec, t0, err, proc in procs:
        rc = proc.wait()
        err.close()
        results.append(analyse(spec, time.perf_counter() - t0, rc))
    try:
        import torch

        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    except Exception:  # noqa: BLE001
        device = args.device
    out = {"device": device, "model": args.model, "dtype": args.dtype, "commit": commit,
           "timestep_fs": TIMESTEP_PS * 1e3, "minimize_iterations": args.minimize,
           "concurrent_jobs": len(specs),
           "command": " ".join(sys.argv), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.setdefault("settings", provenance.settings())
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{'job':>18} {'atoms':>6} {'steps':>6} {'ps':>6} {'drift meV/at/ps':>16} "
          f"{'max|dE| meV/at':>15} {'T mean':>7} {'steps/s':>8} {'nn max A':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['job']:>18} rc={r['returncode']} {r['error'][-600:]}")
            continue
        print(f"{r['job']:>18} {r['n_atoms']:>6} {r['steps_done']:>6} {r['time_ps']:>6.2f} "
              f"{r['drift_meV_per_atom_per_ps']:>16.4g} {r['max_abs_dE_meV_per_atom']:>15.4g} "
              f"{r['temperature_K']['mean']:>7.1f} {r['timesteps_per_s'] or 0:>8.1f} "
              f"{r.get('final_nearest_neighbour_A', {}).get('max', float('nan')):>8.2f}")
    if not args.no_plot:
        plot(results, args.out.with_suffix(".png"), plot_title(out))


if __name__ == "__main__":
    main()
