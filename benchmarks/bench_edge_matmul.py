"""Per-edge rotations (kernels/edge_matmul): torch's batched GEMM against the Triton kernel.

Side by side in one run on the GPU:
1. the op alone, [E, M, K] @ [E, K, C] for the Wigner blocks of lmax 2 (M = K = 3, 5), at
   training and MD edge counts: forward, and forward + backward (both inputs), median time,
   achieved GB/s (each operand read once, the result written once), speed-up, and the
   largest error of each against an fp64 reference;
2. a whole training step (loss, double backward, clipping: training/step.py, eager) of the
   shipped model's architecture on a real spice-xtb batch, with E2FORMER_EDGE_MATMUL unset
   and =triton.
Writes a JSON and a PNG.

GPU machine (carry .carry/spice-xtb and .whl/mace for ASE):

    PYTHONPATH=/tmp/site:.:benchmarks python3 benchmarks/bench_edge_matmul.py \\
        --data .carry/spice-xtb/train.hdf5 --out $OUT/edge_matmul.json
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import provenance  # noqa: E402
from bench_attention import bench  # noqa: E402  (median ms of a call)

import e2former_lammps  # noqa: E402,F401  (the package before kernels)
from kernels.edge_matmul import edge_matmul  # noqa: E402


def op_rows(edges: list[int], channels: list[int]) -> list[dict]:
    rows = []
    for n_edges in edges:
        for c in channels:
            for m in (3, 5):
                a64 = torch.randn(n_edges, m, m, dtype=torch.float64, device="cuda")
                b64 = torch.randn(n_edges, m, c, dtype=torch.float64, device="cuda")
                want = a64 @ b64
                a, b = a64.float().requires_grad_(True), b64.float().requires_grad_(True)
                grad = torch.randn(n_edges, m, c, device="cuda")
                row = {"n_edges": n_edges, "m": m, "k": m, "channels": c}
                for impl in ("reference", "triton"):
                    out = edge_matmul(a, b, impl=impl)
                    # compile every specialisation first: bench's timed runs would catch it
                    torch.autograd.grad(edge_matmul(a, b, impl=impl), (a, b), grad)
                    row[f"max_abs_err_{impl}"] = float((out.double() - want).abs().max())
                    row[f"fwd_ms_{impl}"] = bench(lambda: edge_matmul(a, b, impl=impl))
                    row[f"fwd_bwd_ms_{impl}"] = bench(lambda: torch.autograd.grad(
                        edge_matmul(a, b, impl=impl), (a, b), grad))
                    moved = 4 * n_edges * (m * m + 2 * m * c)  # bytes: a, b read; out written
                    row[f"fwd_gbps_{impl}"] = moved / row[f"fwd_ms_{impl}"] / 1e6
                row["speedup_fwd"] = row["fwd_ms_reference"] / row["fwd_ms_triton"]
                row["speedup_fwd_bwd"] = row["fwd_bwd_ms_reference"] / row["fwd_bwd_ms_triton"]
                rows.append(row)
                print(f"E {n_edges:>7} {m}x{m} C {c:>3}: fwd {row['fwd_ms_reference']:.3f} -> "
                      f"{row['fwd_ms_triton']:.3f} ms ({row['speedup_fwd']:.1f}x, "
                      f"{row['fwd_gbps_triton']:.0f} GB/s), fwd+bwd "
                      f"{row['fwd_bwd_ms_reference']:.3f} -> {row['fwd_bwd_ms_triton']:.3f} ms "
                      f"({row['speedup_fwd_bwd']:.1f}x); err {row['max_abs_err_reference']:.1e}"
                      f" / {row['max_abs_err_triton']:.1e}", flush=True)
    return rows


def training_step_rows(data: str, batch_size: int) -> list[dict]:
    from e2former_lammps import E2FormerV2
    from e2former_lammps.data import read_dataset
    from e2former_lammps.training.batching import PackedFrames
    from e2former_lammps.training.step import LossAndGradients

    model = E2FormerV2.load("spice-xtb").cuda()
    model.set_attention_impl("reference")
    frames = read_dataset(data)[:batch_size]
    packed = PackedFrames(frames, model.elements, model.config.atomic_numbers,
                          model.config.cutoff, device="cuda")
    batch = packed.batch(list(range(len(frames))))
    step = LossAndGradients(model, 0.1, 1.0, 5.0)
    rows = []
    for setting in ("reference", "triton"):
        os.environ["E2FORMER_EDGE_MATMUL"] = setting
        res = step(batch)
        # a host-bound eager step swings with the host: 2 samples (bench's default budget
        # for a 0.4 s call) gave 427 -> 277 ms in one run and 429 -> 411 in the next
        ms = bench(lambda: step(batch), budget_s=5.0)
        rows.append({"edge_matmul": setting, "batch_size": len(frames),
                     "n_pairs": int(batch.graph.pair_i.numel()), "ms_per_step": ms,
                     "loss": float(res.loss), "grad_norm": float(res.gnorm)})
        print(f"training step, batch {len(frames)}, edge_matmul {setting}: {ms:.1f} ms "
              f"(loss {float(res.loss):.6g}, grad norm {float(res.gnorm):.6g})", flush=True)
    os.environ.pop("E2FORMER_EDGE_MATMUL")
    return rows


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in (3, 5):
        for c in sorted({r["channels"] for r in out["ops"]}):
            rows = [r for r in out["ops"] if r["m"] == m and r["channels"] == c]
            ax.plot([r["n_edges"] for r in rows], [r["speedup_fwd_bwd"] for r in rows], "o-",
                    label=f"{m}x{m} @ {m}x{c}, fwd+bwd")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("edges")
    ax.set_ylabel("speed-up of the Triton kernel over torch bmm")
    steps = {r["edge_matmul"]: r["ms_per_step"] for r in out["training_step"]}
    if steps:
        ax.set_title(f"{out['device']}, fp32, {out['commit']}; training step "
                     f"{steps['reference']:.0f} -> {steps['triton']:.0f} ms", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--edges", type=int, nargs="+", default=[10_000, 52_000, 500_000])
    p.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    p.add_argument("--data", help="spice-xtb HDF5 for the training-step comparison")
    p.add_argument("--batch-size", type=int, default=128)
    provenance.add_result_arguments(p, "benchmarks/results/edge_matmul.json")
    args = p.parse_args()
    if provenance.replot(args, plot):
        return
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    out = {"what": "per-edge rotations: torch bmm vs the Triton kernel (kernels/edge_matmul)",
           "device": torch.cuda.get_device_name(), "dtype": "float32",
           "commit": provenance.commit(), "command": " ".join(sys.argv),
           "ops": op_rows(args.edges, args.channels),
           "training_step": training_step_rows(args.data, args.batch_size) if args.data
           else []}
    provenance.write_results(out, args.out, plot)


if __name__ == "__main__":
    main()
