"""Command line: `e2former-lammps export|train|evaluate|info ...`."""
from __future__ import annotations

import argparse
import sys


def _export(args: argparse.Namespace) -> int:
    from .lammps.export import export_lammps_model

    path = export_lammps_model(args.checkpoint, args.output, dtype=args.dtype,
                               device=args.device, attention=args.attention,
                               charge=args.charge, spin=args.spin)
    print(f"wrote {path}: use `pair_style mliap unified {path} 0` in LAMMPS")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train
    from .training.config import parse_overrides

    cfg = TrainConfig.from_yaml(args.config)
    overrides = {k: v for k, v in (("output_dir", args.output_dir), ("device", args.device))
                 if v is not None}
    overrides.update(parse_overrides(args.set))
    if overrides:
        cfg = cfg.replace(**overrides)
    if args.no_resume:
        cfg.resume = False
    result = train(cfg)
    print(f"wrote {result['model']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .training import evaluate_model_file

    # a progress bar on stderr when someone watches it (stdout stays clean for --json)
    res = evaluate_model_file(args.model, args.data, batch_size=args.batch_size,
                              device=args.device, data_format=args.format,
                              progress=sys.stderr.isatty(), by_molecule=args.by_molecule,
                              plot=args.plot)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    rows = [("overall", res["overall"])] + sorted(res["subsets"].items())
    if args.by_molecule:  # worst first: where the error comes from
        rows += sorted(res["molecules"].items(), key=lambda kv: -kv[1]["force_mae_meV_per_A"])
    conformer = "conformer_energy_mae_meV_per_atom"  # with --by-molecule
    print(f"{'subset / molecule':<36} {'frames':>7} {'E MAE meV/atom':>15} "
          f"{'E mean err':>11}" + (f" {'conformer E MAE':>16}" if args.by_molecule else "")
          + f" {'F MAE meV/A':>12}")
    for name, m in rows:
        print(f"{name[:36]:<36} {m['n_frames']:>7} {m['energy_mae_meV_per_atom']:>15.3f} "
              f"{m['energy_mean_error_meV_per_atom']:>11.3f}"
              + (f" {m[conformer]:>16.3f}" if args.by_molecule else "")
              + f" {m['force_mae_meV_per_A']:>12.2f}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from .info import describe, format_description

    info = describe(args.model)
    print(json.dumps(info, indent=1) if args.json else format_description(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kernels.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

    parser = argparse.ArgumentParser(prog="e2former-lammps", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write the file for `pair_style mliap unified FILE 0`")
    p.add_argument("checkpoint", help="model file written by E2FormerV2.save, or a packaged name")
    p.add_argument("-o", "--output", default="lammps_model.pt")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="precision inside LAMMPS (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if present)")
    p.add_argument("--attention", default=None, choices=ATTENTION_IMPLEMENTATIONS,
                   help="attention implementation (default: the model's own choice, auto: "
                   "triton for float32 on CUDA); reference_chunked bounds the reference's "
                   "per-edge memory (float64 on large systems)")
    p.add_argument("--charge", type=float, default=0.0,
                   help="total charge of the simulated system in e (models with charge_spin)")
    p.add_argument("--spin", type=float, default=1.0,
                   help="spin multiplicity 2S+1 of the system (models with charge_spin)")
    p.set_defaults(func=_export)

    p = sub.add_parser("train", help="train a model from a YAML config (resumes if possible)")
    p.add_argument("config", help="training config YAML (see configs/)")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config entry (YAML value), e.g. --set max_minutes=5 or "
                        "--set model.identity_paths=true")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="energy/force MAE of a model on labelled data")
    p.add_argument("--model", required=True, help="model file or packaged name")
    p.add_argument("--data", required=True, nargs="+", help="SPICE .hdf5, .aselmdb or extxyz")
    p.add_argument("--format", default=None, help="data format (default: by extension)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--by-molecule", action="store_true",
                   help="also per molecule (SPICE group), worst forces first, and the "
                        "conformer energy MAE (each molecule's mean error taken out)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write a PNG: energy-error histogram and force parity, per subset")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("info", help="what a model file holds: elements (the pair_coeff line), "
                       "cutoff, charges, export settings, validation errors")
    p.add_argument("model", help="checkpoint, packaged name, or a file written by export")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"e2former-lammps {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
