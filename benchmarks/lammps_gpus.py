"""LAMMPS on several GPUs: one MPI rank per GPU (domain decomposition), strong scaling.

For each water box (1 g/cm^3) and rank count R, the throughput deck
lammps_examples/gpu_water_benchmark/in.water_bench under `mpirun -np R` (through
deploy/lmp_gpu.sh), the model exported for "cuda" without an index, so each rank takes GPU
`local rank mod GPUs` (the adapter prints which; recorded). NVE at 0.5 fs: the deck's warm-up
run (Triton compilation, CUDA-graph capture), then the timed run. Per (N, R): timesteps/s
and atom-steps/s from LAMMPS's own loop time, speed-up and parallel efficiency against one
rank, the potential energy at step 0 (the same physics on 1 or R ranks: the difference is
recorded), and each rank's owned/ghost atoms, peak GPU memory, and its seconds per timed
step in the model call and, within it, in the ghost-feature exchange (the Alltoallv, waiting
for slower ranks included); the rest of the step (`outside_model_s_per_step`) is LAMMPS and
the ML-IAP glue. `--share` adds the same R ranks all on GPU 0 (model exported for
cuda:0): what several ranks per GPU give. `--exchange mpi4py torch` runs each R > 1 with
each transport of the ghost features (E2FORMER_EXCHANGE: pinned host buffers and mpi4py,
or torch.distributed with NCCL on the GPU), side by side; NCCL runs on the GPU's stream,
so its exchange seconds are only the host's launch time, and the model seconds hold the
rest. Writes JSON and a PNG.

    python benchmarks/lammps_gpus.py --sizes 10000 100000 --ranks 1 2 --share \
        --out benchmarks/results/lammps_gpus.json

`--profile` also traces one timed step of every rank with torch.profiler (operator table per
rank under OUT_profiles/, and with `--trace` a Chrome trace, ~10 MB a rank at 100k atoms; the
adapter's E2FORMER_PROFILE_DIR, E2FORMER_PROFILE_CALL and E2FORMER_PROFILE_TRACE, usable
with any deck). `--model spice-xtb` (default; a packaged name
or a .pt file) or `--config paper|small` (random weights of that size). `--device cpu
--dtype float64` runs the same harness on the CPU (the tests do, with a few hundred atoms).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from bench_attention import CFG, water_box  # noqa: E402
from lammps_scaling import write_data  # noqa: E402

from e2former_lammps import E2FormerConfig, E2FormerV2  # noqa: E402
from e2former_lammps.lammps.export import export_lammps_model  # noqa: E402
from e2former_lammps.lammps.log import thermo_runs  # noqa: E402
from e2former_lammps.parallel import EXCHANGE_ENV, TRANSPORTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the user-facing throughput deck itself (its warm-up run, then the timed one)
DECK = REPO / "lammps_examples/gpu_water_benchmark/in.water_bench"
SMALL = dict(channels=32, lmax=2, num_layers=2, num_heads=4, head_dim=8, num_rbf=32, cutoff=5.0)
GPU_LINE = re.compile(r"E2Former: rank (\d+) of \d+ runs the model on cuda:(\d+)")


def run_lammps(workdir: Path, data: Path, model: Path, ranks: int, warmup: int, steps: int,
               timeout: float, profile_dir: Path | None = None,
               transport: str = "mpi4py", chrome_trace: bool = False) -> dict:
    stats = workdir / "stats"
    stats.mkdir(parents=True, exist_ok=True)
    cmd = ["bash", str(REPO / "deploy/lmp_gpu.sh")]
    if ranks > 1:  # not bound to one core each: the host side of the model uses threads
        cmd += ["-np", str(ranks), "--bind-to", "none", "--"]
    cmd += ["-nocite", "-in", str(DECK), "-log", "log.lammps", "-var", "model", str(model),
            "-var", "data", str(data), "-var", "steps", str(steps), "-var", "warmup", str(warmup)]
    env = dict(os.environ, E2FORMER_STATS_DIR=str(stats), PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env[EXCHANGE_ENV] = transport
    if profile_dir is not None:
        # the warm-up run calls the model warmup + 1 times, the timed run's set-up once:
        # trace the timed run's second step
        env.update(E2FORMER_PROFILE_DIR=str(profile_dir), E2FORMER_PROFILE_CALL=str(warmup + 4),
                   E2FORMER_PROFILE_TRACE=str(int(chrome_trace)))
    if ranks > 1 and os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed (exit {proc.returncode}): {out[-2000:]}")
    runs = thermo_runs(out)
    if len(runs) != 2 or runs[-1].loop_s is None:
        raise RuntimeError(f"expected two runs' loop times in the LAMMPS output: {out[-2000:]}")
    step_s, timed_steps = runs[-1].loop_s / runs[-1].steps, runs[-1].steps
    per_rank = [json.loads(p.read_text()) for p in sorted(stats.glob("rank*.json"))]
    # the timed run's steps: the last `steps` model calls of each rank (a run of N steps
    # calls the model N + 1 times, the first at set-up, outside LAMMPS's loop time)
    timed = [r["call_log"][-timed_steps:] for r in per_rank]
    model_s = [sum(c["call_s"] for c in log) / len(log) for log in timed]
    exchange_s = [sum(c["exchange_s"] for c in log) / len(log) for log in timed]
    gpus = {int(r): int(g) for r, g in GPU_LINE.findall(out)}
    return {
        "seconds_per_step": step_s,
        "pe_step0_eV": runs[0].row(0)["PotEng"],
        "gpu_of_rank": [gpus[r] for r in sorted(gpus)],
        "owned_per_rank": [r["nlocal"] for r in per_rank],
        "ghosts_per_rank": [r["ntotal"] - r["nlocal"] for r in per_rank],
        "pairs_per_rank": [r["npairs"] for r in per_rank],
        "peak_mem_bytes_per_rank": [r["peak_mem_bytes"] for r in per_rank],
        "model_s_per_step_per_rank": model_s,
        "exchange_s_per_step_per_rank": exchange_s,
        "exchange_s_per_step": max(exchange_s),
        # the rest of the step: LAMMPS (integration, neighbour lists, its own ghost
        # communication) and the ML-IAP glue before the model is called
        "outside_model_s_per_step": step_s - max(model_s),
    }


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = sorted({r["n_atoms"] for r in out["results"]})
    styles = {("one GPU per rank", "mpi4py"): "o-", ("one GPU per rank", "torch"): "D-.",
              ("ranks share GPU 0", "mpi4py"): "s--", ("CPU", "mpi4py"): "^:",
              ("CPU", "torch"): "v:"}
    for n in sizes:
        done = [r for r in out["results"] if r["n_atoms"] == n and "parallel_efficiency" in r]
        one = [r for r in done if r["ranks"] == 1]
        for (placement, transport), style in styles.items():
            rows = one + [r for r in done if r["ranks"] > 1 and r["placement"] == placement
                          and r.get("exchange", "mpi4py") == transport]
            if len(rows) <= len(one):
                continue
            rows.sort(key=lambda r: r["ranks"])
            label = f"{n:,} atoms, {placement}, {transport}"
            ranks = [r["ranks"] for r in rows]
            a.plot(ranks, [r["atom_steps_per_s"] for r in rows], style, label=label)
            b.plot(ranks, [r["parallel_efficiency"] for r in rows], style, label=label)
    a.set_xlabel("MPI ranks")
    a.set_ylabel("atom-steps / s")
    a.set_yscale("log")
    b.set_xlabel("MPI ranks")
    b.set_ylabel("parallel efficiency (vs 1 rank)")
    b.axhline(1.0, color="k", lw=0.5)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"LAMMPS + E2Former-V2 on {out['n_gpus']} x {out['device']}, {out['model']}, "
                 f"{out['dtype']}, commit {out['commit'][:8]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--share", action="store_true",
                   help="also run each R > 1 with all ranks on GPU 0")
    p.add_argument("--exchange", nargs="+", choices=TRANSPORTS, default=["mpi4py"],
                   help="transports of the ghost features to run each R > 1 with (torch: "
                        "NCCL, one GPU per rank, so not with --share)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--model", default="spice-xtb",
                   help="packaged name or .pt file (ignored with --config)")
    p.add_argument("--config", choices=["paper", "small"], help="random weights of this size")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--timeout", type=float, default=540, help="seconds per LAMMPS run")
    p.add_argument("--profile", action="store_true",
                   help="trace the second timed step of every rank with torch.profiler: "
                        "tables in OUT_profiles/ (the trace slows that step)")
    p.add_argument("--trace", action="store_true",
                   help="with --profile, also a Chrome trace per rank (large)")
    provenance.add_result_arguments(p, "benchmarks/results/lammps_gpus.json")
    args = p.parse_args()
    if provenance.replot(args, plot):
        return
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the timed run is the second one)")
    if 1 not in args.ranks:
        p.error("--ranks must include 1 (the reference for speed-up and energies)")
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and n_gpus == 0:
        p.error("--device cuda but no CUDA GPU is visible")
    if args.config:
        torch.manual_seed(0)
        model = E2FormerV2(E2FormerConfig(elements=["H", "O"],
                                          **(CFG if args.config == "paper" else SMALL)))
        label = f"random weights, {args.config} config"
    else:
        model = E2FormerV2.load(args.model)
        label = args.model
        if {"H", "O"} - set(model.elements):
            p.error(f"--model {args.model} lacks H or O: the benchmark is water")
    placements = [("one GPU per rank" if args.device == "cuda" else "CPU", args.device)]
    if args.share and args.device == "cuda":
        placements.append(("ranks share GPU 0", "cuda:0"))

    results = []
    with tempfile.TemporaryDirectory(prefix="lammps_gpus_") as tmp:
        tmp = Path(tmp)
        files = {}
        for name, device in placements:
            files[name] = tmp / f"model_{device.replace(':', '')}.pt"
            export_lammps_model(model, files[name], device=device, dtype=args.dtype)
        for n in args.sizes:
            pos, species, box = water_box(n, device="cpu")
            data = tmp / f"water_{n}.data"
            write_data(data, pos.numpy(), species.numpy(), box)
            base = None
            runs = [(name, ranks, None if ranks == 1 else transport)
                    for name, _ in placements for ranks in sorted(args.ranks)
                    for transport in (args.exchange[:1] if ranks == 1 else args.exchange)
                    # one rank on GPU 0 is the first placement's run; NCCL needs a GPU per rank
                    if not (name == "ranks share GPU 0" and (ranks == 1 or transport == "torch"))]
            for name, ranks, transport in runs:
                row = {"n_atoms": len(pos), "ranks": ranks, "placement": name,
                       "exchange": transport}
                tag = f"{n}_atoms_{ranks}_ranks_{name[:3]}" + (f"_{transport}" if transport else "")
                try:
                    profile = (args.out.parent / f"{args.out.stem}_profiles" / tag
                               if args.profile else None)
                    r = run_lammps(tmp / tag, data, files[name], ranks, args.warmup, args.steps,
                                   args.timeout, profile, transport or "mpi4py", args.trace)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    row["error"] = str(exc)[-600:]
                    results.append(row)
                    print(f"{tag}: {row['error']}", flush=True)
                    continue
                base = r if ranks == 1 else base
                row.update(r, timesteps_per_s=1.0 / r["seconds_per_step"],
                           atom_steps_per_s=len(pos) / r["seconds_per_step"])
                if base is not None:
                    row["speedup_vs_1_rank"] = base["seconds_per_step"] / r["seconds_per_step"]
                    row["parallel_efficiency"] = row["speedup_vs_1_rank"] / ranks
                    row["pe_step0_minus_1_rank_eV"] = r["pe_step0_eV"] - base["pe_step0_eV"]
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if "per_rank" not in k}),
                      flush=True)

    out = {"device": torch.cuda.get_device_name(0) if n_gpus else "cpu", "n_gpus": n_gpus,
           "dtype": args.dtype, "commit": provenance.commit(), "model": label,
           "system": "water 1 g/cm^3, NVE 0.5 fs, LAMMPS 4 Jul 2026 CPU build, mpirun -np R, "
                     "ghost features exchanged between ranks by the row's `exchange` transport",
           "command": " ".join(sys.argv), "warmup_steps": args.warmup, "timed_steps": args.steps,
           "results": results}
    print(f"{'atoms':>8} {'ranks':>5} {'placement':>18} {'exchange':>8} {'GPUs':>8} {'steps/s':>9} "
          f"{'atom-steps/s':>13} {'speed-up':>8} {'eff.':>5} {'model s':>8} {'xchg s':>7} "
          f"{'other s':>7} {'dPE eV':>9} "
          f"{'peak GB':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['n_atoms']:>8} {r['ranks']:>5} {r['placement']:>18} "
                  f"{r['exchange'] or '-':>8}  failed")
            continue
        print(f"{r['n_atoms']:>8} {r['ranks']:>5} {r['placement']:>18} "
              f"{r['exchange'] or '-':>8} {','.join(map(str, r['gpu_of_rank'])) or 'cpu':>8} "
              f"{r['timesteps_per_s']:>9.3f} "
              f"{r['atom_steps_per_s']:>13.0f} {r.get('speedup_vs_1_rank', float('nan')):>8.2f} "
              f"{r.get('parallel_efficiency', float('nan')):>5.2f} "
              f"{max(r['model_s_per_step_per_rank']):>8.4f} {r['exchange_s_per_step']:>7.4f} "
              f"{r['outside_model_s_per_step']:>7.4f} "
              f"{r.get('pe_step0_minus_1_rank_eV', float('nan')):>9.2e} "
              f"{max(m or 0 for m in r['peak_mem_bytes_per_rank']) / 1e9:>7.1f}")
    provenance.write_results(out, args.out, plot)


if __name__ == "__main__":
    main()
