"""LAMMPS MD throughput with E2Former-V2 on one GPU, and LAMMPS's share of the step.

One process drives LAMMPS as a library (CPU build, `pair_style mliap unified`, model on the
GPU). For each water box (1 g/cm^3): NVE at 0.5 fs, timesteps/s, atom-steps/s, ns/day, peak
GPU memory, the fraction of the step spent in the model (forward + force backward, timed
with GPU syncs), and the same model alone on the same pair list. Writes JSON and a PNG.

    PYTHONPATH=. python benchmarks/lammps_scaling.py --sizes 1000 10000 100000 \
        --out benchmarks/results/lammps_scaling.json

`--config paper|small` times random weights of that size, whose atoms are tethered to their
starts (random forces hold nothing together; water_deck); `--model spice-xtb` (a packaged
name or a file) times a trained model, whose water is physical MD (the total energy at the
first and last step of the timed run is recorded). `--checkpoint-blocks` overrides the
memory rule's choice of block recompute (A/B runs).

The peer in the same run (`--peer mace`, the default): MACE (cuEquivariance where it loads,
else e3nn; `peers/mace_peer.py`, random weights) alone on the same water boxes, energy and
forces, in its own process before the LAMMPS runs; rows record it and the ratios. Needs
mace-torch (deploy/carry_peer_wheels.sh); without it the JSON says why and the rest stands.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from bench_attention import CFG, water_box, water_species  # noqa: E402

from e2former_lammps import E2FormerConfig, E2FormerV2  # noqa: E402
from e2former_lammps.forces import energy_and_pair_gradient  # noqa: E402
from e2former_lammps.lammps import E2FormerMLIAP, attach  # noqa: E402
from e2former_lammps.lammps.profiler import CallProfiler  # noqa: E402

TIMESTEP_PS = 0.0005
# Keep hwloc (MPI_Init) from loading the system libLLVM, which breaks Triton's compiler
# (see deploy/lmp_gpu.sh); the adapter would otherwise fall back to the PyTorch attention.
os.environ.setdefault("HWLOC_COMPONENTS", "-gl,-opencl")
# As deploy/lmp_gpu.sh: the 1M-atom paper configuration needs it (fragmentation otherwise).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def write_data(path: Path, pos: np.ndarray, species: np.ndarray, box: float) -> None:
    header = (f"# water box\n\n{len(pos)} atoms\n2 atom types\n\n0.0 {box!r} xlo xhi\n"
              f"0.0 {box!r} ylo yhi\n0.0 {box!r} zlo zhi\n\nMasses\n\n1 1.008\n2 15.999\n\n"
              "Atoms # atomic\n\n")
    rows = np.column_stack([np.arange(1, len(pos) + 1), species + 1, pos])
    with open(path, "w") as fh:
        fh.write(header)
        np.savetxt(fh, rows, fmt=["%d", "%d", "%.10f", "%.10f", "%.10f"])


# Random weights hold no molecule together and push no atoms apart: at 300 K water's atoms
# drift until two are closer than the input check allows (0.2 Å; 1k atoms after ~130 steps).
# Such runs tether each atom to its start (0.07 Å rms at 300 K) and rebuild the neighbour
# list every 10 steps, as real water MD about does, since tethered atoms would never trigger it.
RANDOM_WEIGHTS_TETHER_EV_PER_A2 = 5.0


def water_deck(data: Path, skin: float = 1.0, tether: float | None = None) -> str:
    """LAMMPS commands: NVE at 0.5 fs of the water data file, through the unified model that
    lammps.mliap.load_unified registered (`EXISTS`); with `tether` (eV/Å^2) each atom is held
    to its start by a spring (fix spring/self) and the neighbour list rebuilt every 10 steps."""
    # the springs' energy counted in pe and etotal (fix_modify energy), so NVE still conserves
    tethered = (f"\nfix tether all spring/self {tether}\nfix_modify tether energy yes"
                if tether else "")
    check = "no" if tether else "yes"
    return f"""units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data {data}
pair_style mliap unified EXISTS 0
pair_coeff * * H O
neighbor {skin} bin
neigh_modify every 10 delay 0 check {check}
velocity all create 300.0 4928459 mom yes rot no
timestep {TIMESTEP_PS}
fix nve all nve{tethered}"""


def model_alone_seconds(evaluate, graph, reps: int) -> float:
    """Median seconds of evaluate(graph) (energies + dE/drij), as the adapter calls it."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize() if graph.rij.is_cuda else None
        t = time.perf_counter()
        evaluate(graph)
        torch.cuda.synchronize() if graph.rij.is_cuda else None
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# The timed run lasts at least this long (--min-seconds): at 10k atoms five steps were too few
# to rank two runs (kernels/NOTES.md E58), while at 100k five take ~5 s.
MIN_TIMED_SECONDS = 2.0
MAX_TIMED_STEPS = 2000


def timed_steps(steps: int, min_seconds: float, probe_step_s: float) -> int:
    """Steps to time: at least `steps`, and enough for `min_seconds` at the probe's pace
    (at most MAX_TIMED_STEPS)."""
    if min_seconds <= 0 or probe_step_s <= 0:
        return steps
    return max(steps, min(MAX_TIMED_STEPS, math.ceil(min_seconds / probe_step_s)))


def run_size(n_atoms: int, make_model, device: str, steps: int, warmup: int, workdir: Path,
             min_seconds: float = MIN_TIMED_SECONDS, tether: float | None = None):
    """LAMMPS NVE on a water box of about `n_atoms` atoms; the row records the box's count.
    After the warm-up, two untimed probe steps set how many steps the timed run takes
    (timed_steps) when `min_seconds` > 0. tether: see water_deck (random weights)."""
    from lammps import lammps
    from lammps.mliap import activate_mliappy, load_unified

    pos, species, box = water_box(n_atoms, device="cpu")
    n_atoms = len(pos)  # whole molecules: 1000 asked is 999 atoms
    data = workdir / f"water_{n_atoms}.data"
    write_data(data, pos.numpy(), species.numpy(), box)
    model = make_model()
    unified = E2FormerMLIAP(model, device=device)
    unified.profiler = CallProfiler(keep_graph=True)
    lmp = lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        activate_mliappy(lmp)
        load_unified(unified)
        attach(lmp)
        lmp.commands_string(water_deck(data, tether=tether) + f"\nthermo {steps}")
        lmp.command(f"run {warmup}")
        if min_seconds > 0:
            t0 = time.perf_counter()
            lmp.command("run 2 pre no post no")
            steps = timed_steps(steps, min_seconds, (time.perf_counter() - t0) / 2)
            lmp.command(f"thermo {steps}")
        etotal_first = lmp.get_thermo("etotal")
        unified.profiler = CallProfiler(keep_graph=True)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        wall = time.perf_counter() - t0
        etotal_last = lmp.get_thermo("etotal")
        prof = unified.profiler
        per_call = prof.per_call()
        graph = prof.last_graph
        n_pairs = int(graph.rij.shape[0])
        n_rows = int(graph.species.numel())
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        checkpointing = unified.model.last_checkpoint_mode  # what the MD steps ran
        keep_scores = unified.model.last_keep_scores
        compiled = unified.model.last_compiled_node_work
        # the adapter's own evaluator: CUDA graphs where it used them
        alone = model_alone_seconds(unified._evaluate, graph, reps=3)
    finally:
        attach(None)
        lmp.close()
    step_s = wall / steps
    model_s = per_call.get("model", float("nan"))
    return {
        "n_atoms": n_atoms, "pairs": n_pairs, "steps": steps,
        "rows_with_ghosts": n_rows,  # what the memory rule counts (step_plan)
        "timesteps_per_s": 1.0 / step_s,
        "atom_steps_per_s": n_atoms / step_s,
        "ns_per_day": TIMESTEP_PS * 1e-3 * 86400 / step_s,
        "peak_mem_bytes": peak,
        "model_fraction": model_s * prof.calls / wall,
        "step_breakdown_s": {"total": step_s, **per_call},
        "model_s_each_call": prof.each_call.get("model", []),
        "model_alone_s": alone,
        "model_alone_atom_steps_per_s": n_atoms / alone,
        "lammps_overhead_ratio": step_s / alone,
        "cuda_graphs": unified._evaluate.in_use,
        "compiled_node_work": compiled,
        "block_checkpointing": checkpointing,
        "attention_keeps_scores": keep_scores,
        "etotal_eV_first_last": [etotal_first, etotal_last],
    }


def peer_rows(sizes: list[int], device: str, timeout: float) -> dict:
    """MACE alone on the same boxes (peers/mace_peer.py in a child process, which has the GPU
    to itself). Returns {"rows": [...]} (one per N and form) or {"error": why}."""
    if importlib.util.find_spec("mace") is None:
        return {"error": "mace-torch is not installed (deploy/carry_peer_wheels.sh, then pip "
                         "install .whl/mace/*.whl)"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "mace.json"
        cmd = [sys.executable, str(Path(__file__).parent / "peers/mace_peer.py"), "--sizes",
               *map(str, sizes), "--cueq", "auto", "--device", device, "--json", str(report)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"error": f"MACE did not finish in {timeout:.0f} s (--peer-timeout)"}
        if proc.returncode != 0 or not report.exists():
            return {"error": f"MACE failed (exit {proc.returncode}): "
                             f"{(proc.stdout + proc.stderr)[-500:]}"}
        got = json.loads(report.read_text())
    return {"rows": got["results"], "mace_version": got["mace_version"]}


def best_peer_row(rows: list[dict], n_atoms: int) -> dict | None:
    """The faster form of MACE that ran at this size (cuEquivariance where it loaded)."""
    done = [r for r in rows if r.get("n_atoms") == n_atoms and r.get("atom_steps_per_s")]
    return max(done, key=lambda r: r["atom_steps_per_s"], default=None)


def warm_up_kernels(model: E2FormerV2, device: str) -> None:
    """Compile the Triton kernels before liblammps is loaded: LAMMPS's Python module loads
    it with RTLD_GLOBAL, and a first Triton compilation after that failed in MLIR passes."""
    from bench_attention import neighbour_list

    pos, species, box = water_box(300, device=device)
    pair_i, pair_j, rij = neighbour_list(pos, box, model.config.cutoff)
    species = water_species(model, species)
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.model import AtomGraph

    graph = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij.float(),
                      n_local=len(pos), exchange=NoGhosts(len(pos)))
    energy_and_pair_gradient(model, graph)
    torch.cuda.synchronize()


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "atom_steps_per_s" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["n_atoms"] for r in ok]
    a.loglog(n, [r["atom_steps_per_s"] for r in ok], "o-", label="LAMMPS + E2Former")
    a.loglog(n, [r["model_alone_atom_steps_per_s"] for r in ok], "s--", label="model alone")
    peer = [r for r in ok if r.get("peer")]
    if peer:
        a.loglog([r["n_atoms"] for r in peer], [r["peer"]["atom_steps_per_s"] for r in peer],
                 "kx:", label=f"MACE alone ({peer[0]['peer']['form']})")
    a.set_xlabel("atoms")
    a.set_ylabel("atom-steps / s")
    a.legend()
    a.grid(True, which="both", alpha=0.3)
    if all(r["peak_mem_bytes"] for r in ok):
        b.loglog(n, [r["peak_mem_bytes"] / 2**30 for r in ok], "o-")
        b.set_ylabel("peak GPU memory (GiB)")
    b.set_xlabel("atoms")
    b.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_json(path: Path) -> None:
    """PNG beside a results JSON of this script."""
    out = json.loads(Path(path).read_text())
    plot(out["results"], Path(path).with_suffix(".png"),
         f"{out['device']}, {out.get('model', 'random weights')}, commit {out['commit'][:8]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--steps", type=int, default=5, help="fewest timed steps per size")
    p.add_argument("--min-seconds", type=float, default=MIN_TIMED_SECONDS,
                   help="time at least this long per size (more steps than --steps where a "
                        "step is short; 0: exactly --steps)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", choices=["paper", "small"], default="paper",
                   help="random weights of this size (ignored with --model)")
    p.add_argument("--model", help="a trained model: packaged name (spice-xtb) or .pt file")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lammps_scaling.json"))
    p.add_argument("--plot", type=Path, metavar="JSON",
                   help="only draw the PNG of a results JSON written earlier, and exit")
    p.add_argument("--peer", choices=["mace", "off"], default="mace",
                   help="time MACE alone on the same boxes before the LAMMPS runs (default)")
    p.add_argument("--peer-timeout", type=float, default=900, help="seconds for the peer")
    p.add_argument("--checkpoint-blocks", choices=["auto", "on", "off", "offload"],
                   default="auto", help="block recompute in the backward: as the memory "
                   "estimate decides (auto, the default), always, never, or with the block "
                   "inputs in host memory (model.checkpoint_blocks)")
    p.add_argument("--workdir", type=Path,
                   help="where the water data files are written (default: a temporary folder, "
                        "removed at exit; 1M atoms is ~100 MB)")
    args = p.parse_args()
    if args.plot:
        plot_json(args.plot)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this machine has no CUDA device (--device cpu runs "
                f"the model on the CPU)")

    def with_checkpointing(model: E2FormerV2) -> E2FormerV2:
        model.checkpoint_blocks = {"auto": "auto", "on": True, "off": False,
                                   "offload": "offload"}[args.checkpoint_blocks]
        return model

    tether = None if args.model else RANDOM_WEIGHTS_TETHER_EV_PER_A2
    if args.model:
        trained = E2FormerV2.load(args.model)
        missing = {"H", "O"} - set(trained.elements)
        if missing:
            p.error(f"--model {args.model} has no {sorted(missing)}: water needs H and O")
        cfg = trained.config.to_dict()

        def make_model() -> E2FormerV2:
            return with_checkpointing(E2FormerV2.load(args.model).to(args.device))
    else:
        cfg = dict(CFG) if args.config == "paper" else dict(
            channels=32, lmax=2, num_layers=2, num_heads=4, head_dim=8, num_rbf=32, cutoff=5.0)

        def make_model() -> E2FormerV2:
            torch.manual_seed(0)
            return with_checkpointing(
                E2FormerV2(E2FormerConfig(elements=["H", "O"], **cfg)).to(args.device))
    # As deploy/lmp_gpu.sh for one rank: ML-IAP's pair handling (deploy/lammps-patches/0002)
    # on up to 8 cores; LAMMPS reads the variable when each instance starts (its own default
    # is one thread). Here, not at import: lammps_host_cost.py imports this module.
    os.environ.setdefault("OMP_NUM_THREADS", str(min(8, len(os.sched_getaffinity(0)))))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="lammps_scaling_")
    workdir = args.workdir or Path(scratch.name)
    workdir.mkdir(parents=True, exist_ok=True)
    # the peer first, while this process holds no GPU memory (MACE at 100k atoms peaks at
    # ~141 GB on an H200: benchmarks/results/kernels.json)
    peer = {"error": "not run (--peer off)"}
    if args.peer == "mace":
        print(f"MACE alone on {args.sizes} atoms ...", flush=True)
        peer = peer_rows(args.sizes, args.device, args.peer_timeout)
        if "error" in peer:
            print(f"MACE not timed: {peer['error']}")
    if args.device.startswith("cuda"):
        warm_up_kernels(make_model(), args.device)
    results = []
    for n in args.sizes:
        try:
            r = run_size(n, make_model, args.device, args.steps, args.warmup, workdir,
                         args.min_seconds, tether)
        except Exception as exc:  # OOM inside LAMMPS arrives as a LAMMPS exception
            r = {"n_atoms": n, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        results.append(r)
        print(json.dumps(r), flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    for r in results:
        best = best_peer_row(peer.get("rows", []), r["n_atoms"]) if "error" not in r else None
        if best is not None:
            r["peer"] = {"name": "MACE", "form": best["form"],
                         "atom_steps_per_s": best["atom_steps_per_s"],
                         "peak_mem_bytes": best["peak_mem_bytes"]}
            r["ours_in_lammps_over_peer"] = r["atom_steps_per_s"] / best["atom_steps_per_s"]
            r["model_alone_over_peer"] = r["model_alone_atom_steps_per_s"] / best["atom_steps_per_s"]
    commit = provenance.commit()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = {"device": device, "dtype": "float32", "commit": commit, "config": cfg,
           "model": args.model or f"random weights, {args.config} config",
           "system": "water 1 g/cm^3, NVE 0.5 fs, LAMMPS 4 Jul 2026 CPU build, 1 MPI rank, "
                     "model on the GPU" + (f"; random weights: atoms tethered to their start "
                                           f"(fix spring/self {tether} eV/A^2), neighbour list "
                                           f"rebuilt every 10 steps" if tether else ""),
           "command": " ".join(sys.argv),
           "results": results, "peer": peer}
    out.setdefault("settings", provenance.settings())
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{'N':>8} {'steps/s':>9} {'atom-steps/s':>13} {'model frac':>10} {'alone':>12} "
          f"{'MACE alone':>12} {'ours/MACE':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['n_atoms']:>8} {r['error']}")
            continue
        mace = (f"{r['peer']['atom_steps_per_s']:>12.0f} {r['ours_in_lammps_over_peer']:>9.2f}"
                if r.get("peer") else f"{'-':>12} {'-':>9}")
        print(f"{r['n_atoms']:>8} {r['timesteps_per_s']:>9.3f} {r['atom_steps_per_s']:>13.0f} "
              f"{r['model_fraction']:>10.2f} {r['model_alone_atom_steps_per_s']:>12.0f} {mace}")
    # in a fresh process: matplotlib's C++ modules failed to load after liblammps's in this
    # one (SystemError from pybind11 on the GPU machine, session 19)
    plotted = subprocess.run([sys.executable, __file__, "--plot", str(args.out)])
    if plotted.returncode != 0:
        print(f"no plot; the JSON is written: python {__file__} --plot {args.out}")


if __name__ == "__main__":
    main()
