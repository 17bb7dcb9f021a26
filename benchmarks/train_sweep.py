"""Equal-time training variants side by side: which recipe learns fastest on this GPU?

Each variant is the base config with a few entries changed, trained from scratch (or from its
init_model) for the same --minutes of training time, one after the other in one process on
one device, then validated on the full validation split. Writes a JSON (device, dtype,
commit, per variant: changes, steps, structures/s, final val metrics overall and per subset,
the validation curve) and a PNG (val force and energy MAE against training time), and prints
a table. Use it to pick a recipe before spending a long run on it (training/NOTES.md).

GPU machine (`deploy/carry_training_data.sh` here first; carry .carry/spice-xtb, and
.whl/mace for ASE):

    python3 -m pip install -q --no-deps --target /tmp/site .whl/mace/ase-*.whl
    PYTHONPATH=/tmp/site:.:benchmarks python3 benchmarks/train_sweep.py \\
        configs/spice-xtb-long.yaml --minutes 2.5 \\
        --set train=.carry/spice-xtb/train.hdf5 --set val=.carry/spice-xtb/val.hdf5 \\
        --variant shipped: --variant wE0.5:w_energy=0.5 --variant wE0.1:w_energy=0.1 \\
        --out $OUT/train_sweep.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import provenance  # noqa: E402

from e2former_lammps.training import TrainConfig, train  # noqa: E402
from e2former_lammps.training.config import parse_overrides  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME:KEY=VALUE,KEY=VALUE` (nothing after the colon: the base config unchanged)."""
    name, sep, changes = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--variant expects NAME:KEY=VALUE[,KEY=VALUE...], got {text!r}")
    return name, parse_overrides([c for c in changes.split(",") if c.strip()])


def run_variant(base: TrainConfig, name: str, changes: dict, minutes: float,
                workdir: Path) -> dict:
    cfg = base.replace(**{**changes, "max_minutes": minutes, "max_wall_minutes": None,
                          "epochs": None, "max_steps": None, "resume": False,
                          "output_dir": str(workdir / name)})
    t0 = time.monotonic()
    result = train(cfg)
    m = result["metrics"]
    val_curve = [{"elapsed_s": h["elapsed_s"], "step": h["step"], **h["val"]}
                 for h in result["loss_history"] if "val" in h]
    return {"name": name, "changes": changes,
            "batch_size": cfg.batch_size,
            "steps": m["step"], "train_time_s": m["train_time_s"],
            "structures_per_s": m["step"] * cfg.batch_size / m["train_time_s"],
            "wall_s": time.monotonic() - t0, "skipped_steps": m["skipped_steps"],
            "val": m["val"], "val_curve": val_curve}


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, unit in (("force_mae_meV_per_A", axes[0], "val force MAE (meV/Å)"),
                          ("energy_mae_meV_per_atom", axes[1], "val energy MAE (meV/atom)")):
        for r in runs:
            c = r["val_curve"]
            ax.plot([p["elapsed_s"] / 60 for p in c], [p[key] for p in c], "o-", ms=3,
                    label=r["name"])
        ax.set_yscale("log")
        ax.set_xlabel("training time (min)")
        ax.set_ylabel(unit)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path, help="base training config (YAML)")
    p.add_argument("--variant", action="append", required=True, metavar="NAME:K=V,K=V",
                   help="a variant of the base config; repeat for each")
    p.add_argument("--minutes", type=float, required=True, help="training time per variant")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change the base config for every variant (data paths, device)")
    p.add_argument("--workdir", type=Path, default=Path("runs/sweep"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train_sweep.json"))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()

    try:
        base = TrainConfig.from_yaml(args.config).replace(**parse_overrides(args.set))
        variants = [parse_variant(v) for v in args.variant]
        for _, changes in variants:
            base.replace(**changes)  # a misspelt key fails here, not after hours of training
    except (FileNotFoundError, ValueError) as exc:
        p.error(str(exc))
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        p.error(f"variant names must differ: {names}")
    runs = []
    for name, changes in variants:
        print(f"== {name}: {changes or 'base config'}", flush=True)
        runs.append(run_variant(base, name, changes, args.minutes, args.workdir))

    device = base.device
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        device = torch.cuda.get_device_name()
    out = {"what": f"equal-time training variants of {args.config}", "device": device,
           "dtype": base.dtype, "commit": provenance.commit(),
           "command": " ".join(sys.argv), "minutes_each": args.minutes, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\n{'variant':<14} {'steps':>6} {'struct/s':>9} {'F MAE meV/Å':>12} "
          f"{'E MAE meV/atom':>15}")
    for r in runs:
        o = r["val"]["overall"] if r["val"] else {}
        print(f"{r['name']:<14} {r['steps']:>6} {r['structures_per_s']:>9.1f} "
              f"{o.get('force_mae_meV_per_A', float('nan')):>12.1f} "
              f"{o.get('energy_mae_meV_per_atom', float('nan')):>15.2f}")
    if not args.no_plot:
        plot(runs, args.out.with_suffix(".png"),
             f"{args.config.name}: {args.minutes} min each on {device}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
