"""Training steps per second: eager against CUDA graphs (`cuda_graphs`), torch bmm against the
Triton per-edge rotations (E2FORMER_EDGE_MATMUL), side by side.

For each batch size, runs `e2former-lammps train CONFIG` (no validation, no checkpoints) for
--steps steps four times from the same start (graphs off/on x rotations reference/triton),
timing every step (synchronised). Reports the median ms per step, the mean over all steps
(what a run sees: the graphed run captures one graph per new size bucket, about three eager
steps each), the speed-up of each over eager + reference, the graphs captured, the peak GPU
memory and the last logged loss of each run (all follow the same batches). Writes a JSON and
a PNG.

GPU machine (carry .carry/spice-xtb and .whl/mace for ASE):

    PYTHONPATH=/tmp/site:.:benchmarks python3 benchmarks/train_step_speed.py \\
        configs/spice-xtb-stage7.yaml --set init_model=spice-xtb \\
        --set train=.carry/spice-xtb/train.hdf5 --batch-sizes 32 128 --steps 200 \\
        --out $OUT/train_step_speed.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import provenance  # noqa: E402

from e2former_lammps.training import TrainConfig, train  # noqa: E402
from e2former_lammps.training.config import parse_overrides  # noqa: E402


VARIANTS = [(False, "reference"), (False, "triton"), (True, "reference"), (True, "triton")]


def variant_name(graphs: bool, edge_matmul: str) -> str:
    return f"{'graphed' if graphs else 'eager'} + {edge_matmul}"


def timed_run(cfg: TrainConfig, edge_matmul: str) -> dict:
    """Train `cfg` with the given per-edge rotations; wall time of every step, peak memory,
    captures, last loss."""
    os.environ["E2FORMER_EDGE_MATMUL"] = edge_matmul
    times: list[float] = []
    last = [0.0]

    def on_step(step: int) -> None:
        torch.cuda.synchronize()
        now = time.perf_counter()
        if step > 1:
            times.append(now - last[0])
        last[0] = now

    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    last[0] = time.perf_counter()
    res = train(cfg, on_step=on_step)
    losses = [h["loss"] for h in res["loss_history"] if "loss" in h]
    return {"cuda_graphs": cfg.cuda_graphs, "edge_matmul": edge_matmul,
            "batch_size": cfg.batch_size,
            "steps_timed": len(times),
            "median_ms_per_step": 1e3 * statistics.median(times),
            "mean_ms_per_step": 1e3 * statistics.fmean(times),
            "peak_mem_bytes": torch.cuda.max_memory_allocated(),
            "graphs": res["metrics"]["cuda_graphs"], "last_loss": losses[-1]}


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["results"]
    sizes = sorted({r["batch_size"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(VARIANTS)
    for k, (graphs, edge_matmul) in enumerate(VARIANTS):
        ms = [next(r["median_ms_per_step"] for r in rows if r["batch_size"] == b
                   and r["cuda_graphs"] == graphs and r["edge_matmul"] == edge_matmul)
              for b in sizes]
        bars = ax.bar([x + (k - (len(VARIANTS) - 1) / 2) * width for x in range(len(sizes))],
                      ms, width, label=variant_name(graphs, edge_matmul))
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(sizes)), [f"batch {b}" for b in sizes])
    ax.set_ylabel("ms per training step (median)")
    ax.set_title(f"{out['device']}, {out['dtype']}, commit {out['commit']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path, nargs="?", help="training config (YAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="change the config")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--steps", type=int, default=200)
    provenance.add_result_arguments(p, "benchmarks/results/train_step_speed.json")
    args = p.parse_args()
    if provenance.replot(args, plot):
        return
    if args.config is None:
        p.error("give a training config (or --plot JSON)")
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (CUDA graphs)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base = TrainConfig.from_yaml(args.config).replace(
                **{**parse_overrides(args.set), "val": None, "max_steps": args.steps,
                   "max_minutes": None, "max_wall_minutes": None, "epochs": None,
                   "checkpoint_every_steps": None, "checkpoint_every_minutes": None,
                   "progress": False, "resume": False, "device": "cuda"})
        except (FileNotFoundError, ValueError) as exc:
            p.error(str(exc))
        for bs in args.batch_sizes:
            for graphs, edge_matmul in VARIANTS:
                r = timed_run(base.replace(batch_size=bs, cuda_graphs=graphs,
                                           output_dir=f"{tmp}/b{bs}g{int(graphs)}{edge_matmul}"),
                              edge_matmul)
                results.append(r)
                print(f"batch {bs:4d} {variant_name(graphs, edge_matmul):20s}: median "
                      f"{r['median_ms_per_step']:7.1f} ms/step, mean {r['mean_ms_per_step']:7.1f}"
                      f", peak {r['peak_mem_bytes'] / 2**30:5.2f} GiB, graphs {r['graphs']}, "
                      f"last loss {r['last_loss']:.5g}", flush=True)
    os.environ.pop("E2FORMER_EDGE_MATMUL")
    for r in results:
        base_run = next(b for b in results if b["batch_size"] == r["batch_size"]
                        and not b["cuda_graphs"] and b["edge_matmul"] == "reference")
        r["speedup_median"] = base_run["median_ms_per_step"] / r["median_ms_per_step"]
        r["speedup_mean"] = base_run["mean_ms_per_step"] / r["mean_ms_per_step"]
        print(f"batch {r['batch_size']}: {variant_name(r['cuda_graphs'], r['edge_matmul'])}: "
              f"{r['speedup_median']:.2f}x (median), {r['speedup_mean']:.2f}x (mean, captures "
              f"included)")
    out = {"what": f"training steps, eager vs CUDA graphs, bmm vs Triton rotations, {args.config}",
           "device": torch.cuda.get_device_name(), "dtype": base.dtype,
           "commit": provenance.commit(), "command": " ".join(sys.argv), "results": results}
    provenance.write_results(out, args.out, plot)


if __name__ == "__main__":
    main()
