"""The commit a benchmark result belongs to, and writing the result (JSON, PNG beside)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path


def commit() -> str:
    """$GIT_COMMIT if set (the GPU machine's copy of .git can lag behind the working tree it
    was sent), else `git rev-parse HEAD` with "+dirty" when tracked files differ."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo).returncode != 0
    except OSError:
        return "unknown"
    return (head + "+dirty" if dirty else head) or "unknown"


# Not ours but they change what is measured: ML-IAP's pair-handling threads
# (deploy/lammps-patches/0002) and the CUDA allocator's segments.
OTHER_SETTINGS = ("OMP_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF")


def settings() -> dict[str, str]:
    """The E2FORMER_* environment variables set for this run (precision, CUDA graphs,
    offload...) and OTHER_SETTINGS: they change what is measured, so results record them."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("E2FORMER_") or k in OTHER_SETTINGS}


def write_results(out: dict, path: Path, plot: Callable[[dict, Path], None]) -> None:
    """The JSON at `path` (with the run's `settings()`) and `plot(out, PNG beside it)`; a
    plot that fails (no backend, as after LAMMPS on the GPU machine) leaves the JSON and
    says how to draw it later."""
    out.setdefault("settings", settings())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    try:
        plot(out, path.with_suffix(".png"))
    except Exception as exc:  # a missing backend must not lose the measurement
        print(f"plot failed ({exc}); rerun with --plot {path}")


def add_result_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    """--out JSON (the PNG goes beside it) and --plot JSON (redraw an earlier result)."""
    p.add_argument("--out", type=Path, default=Path(default_out))
    p.add_argument("--plot", type=Path, metavar="JSON",
                   help="only draw the PNG of a results JSON written earlier, and exit")


def replot(args: argparse.Namespace, plot: Callable[[dict, Path], None]) -> bool:
    """With --plot JSON: draws its PNG and returns True (the caller then exits)."""
    if args.plot is None:
        return False
    plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
    return True
