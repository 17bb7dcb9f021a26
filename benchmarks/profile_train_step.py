"""Where the time of a training step goes: GPU busy time against wall time, and the kernels.

Runs `e2former-lammps train CONFIG` for --warmup + --active steps (no validation, no
checkpoints) under torch.profiler and reports, per active step: wall time, the summed time of
the device kernels (CUDA; on the CPU the operators' self time), the number of ATen operator
calls, and the top operators. busy = kernel time / wall time: well below 1 means the step is
bound by the host (operator dispatch, synchronisations), not by the GPU: CUDA graphs or fewer
operators pay; near 1 means faster kernels pay. Writes a JSON with the table's numbers.

GPU machine (carry .carry/spice-xtb and .whl/mace for ASE):

    PYTHONPATH=/tmp/site:.:benchmarks python3 benchmarks/profile_train_step.py \\
        configs/spice-xtb-long.yaml --set train=.carry/spice-xtb/train.hdf5 \\
        --batch-sizes 32 128 --out $OUT/profile_train_step.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import provenance  # noqa: E402

from e2former_lammps.training import TrainConfig, train  # noqa: E402
from e2former_lammps.training.config import parse_overrides  # noqa: E402


def profile_steps(cfg: TrainConfig, warmup: int, active: int, rows: int) -> dict:
    """Profile `active` training steps after `warmup` unprofiled ones."""
    on_gpu = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    step_times: list[float] = []
    last = [time.perf_counter()]

    captured = []
    with profile(activities=activities,
                 schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1),
                 on_trace_ready=lambda pr: captured.append(pr.key_averages())) as prof:
        def on_step(step: int) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if step > warmup:
                step_times.append(now - last[0])
            last[0] = now
            prof.step()

        train(cfg, on_step=on_step)
    if not captured:
        raise RuntimeError(f"the run stopped before {warmup + active} steps: nothing profiled")
    # Ranges of record_function (ProfilerStep#N, Optimizer.step#...) appear on the GPU
    # timeline too, as user annotations spanning the kernels inside them: summed with the
    # kernels they counted the step twice (busy > 1 before this filter).
    events = [e for e in captured[0] if not getattr(e, "is_user_annotation", False)
              and not e.key.startswith("ProfilerStep")]
    device_attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    kernel_us = sum(getattr(e, device_attr) for e in events
                    if (on_gpu and e.device_type.name == "CUDA")
                    or (not on_gpu and e.key.startswith("aten::")))
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::"))
    top = sorted(events, key=lambda e: -getattr(e, device_attr))[:rows]
    wall = sum(step_times) / max(len(step_times), 1)
    return {
        "batch_size": cfg.batch_size, "steps_profiled": len(step_times),
        "wall_s_per_step": wall,
        "kernel_s_per_step": kernel_us * 1e-6 / active,
        "busy": kernel_us * 1e-6 / active / wall if wall else None,
        "aten_calls_per_step": aten_calls / active,
        "top": [{"name": e.key, "calls_per_step": e.count / active,
                 "ms_per_step": getattr(e, device_attr) * 1e-3 / active} for e in top],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path, help="training config (YAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="change the config")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--active", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_train_step.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base = TrainConfig.from_yaml(args.config).replace(
                **{**parse_overrides(args.set), "val": None, "max_steps": args.warmup + args.active,
                   "max_minutes": None, "max_wall_minutes": None, "epochs": None,
                   "checkpoint_every_steps": None, "checkpoint_every_minutes": None,
                   "progress": False, "resume": False, "output_dir": tmp})
        except (FileNotFoundError, ValueError) as exc:
            p.error(str(exc))
        results = []
        for bs in args.batch_sizes:
            r = profile_steps(base.replace(batch_size=bs), args.warmup, args.active, args.rows)
            results.append(r)
            print(f"batch {bs}: {r['wall_s_per_step'] * 1e3:.1f} ms/step wall, "
                  f"{r['kernel_s_per_step'] * 1e3:.1f} ms kernels (busy {r['busy']:.2f}), "
                  f"{r['aten_calls_per_step']:.0f} ATen calls/step", flush=True)
            for t in r["top"]:
                print(f"  {t['ms_per_step']:9.2f} ms {t['calls_per_step']:8.1f}x  {t['name'][:90]}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and \
        base.device in ("auto", "cuda") else "cpu"
    out = {"what": f"training-step profile of {args.config}", "device": device,
           "dtype": base.dtype, "commit": provenance.commit(), "command": " ".join(sys.argv),
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
