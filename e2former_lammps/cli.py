"""Command line: `e2former-lammps export|train|evaluate ...`."""
from __future__ import annotations

import argparse
import sys


def _export(args: argparse.Namespace) -> int:
    from .lammps.export import export_lammps_model

    path = export_lammps_model(args.checkpoint, args.output, dtype=args.dtype,
                               device=args.device, attention=args.attention)
    print(f"wrote {path}: use `pair_style mliap unified {path} 0` in LAMMPS")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2former-lammps", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write the file for `pair_style mliap unified FILE 0`")
    p.add_argument("checkpoint", help="model file written by E2FormerV2.save, or a packaged name")
    p.add_argument("-o", "--output", default="lammps_model.pt")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="precision inside LAMMPS (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if present)")
    p.add_argument("--attention", default="auto", help="attention implementation: auto, "
                   "reference or triton")
    p.set_defaults(func=_export)
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
