"""Nsight Compute's per-instruction metrics summed per source line of a Triton kernel.

ncu's source page gives metrics per SASS instruction (`--print-source sass`) and, in another
export, which source line each instruction came from (`--print-source cuda,sass`, no
metrics). This joins the two by instruction address and prints the lines that take the most
shared-memory wavefronts, excess (bank-conflict) wavefronts and warp-stall samples: which
`tl.dot` or `tl.load` of a kernel to change (kernels/NOTES.md E44, E45). On the GPU machine:

    ncu --section SourceCounters --section WarpStateStats -o rep --kernel-name regex:KERNEL ...
    ncu --import rep.ncu-rep --page source --csv --print-source sass > sass.csv
    ncu --import rep.ncu-rep --page source --csv --print-source cuda,sass > lines.csv
    python benchmarks/ncu_lines.py sass.csv lines.csv --top 20
"""
from __future__ import annotations

import argparse
import csv
import gzip
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

METRICS = {"excess": "L1 Wavefronts Shared Excessive", "shared": "L1 Wavefronts Shared",
           "stalls": "Warp Stall Sampling (All Samples)", "instructions": "Instructions Executed"}


@dataclass
class SourceLine:
    """Totals of one source line's instructions (file name, line number, its text)."""
    file: str
    line: int
    text: str
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    shared_ops: Counter = field(default_factory=Counter)


def _rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def _number(cell: str) -> float:
    """A metric cell: '-' (not applicable) or '' count as 0."""
    return float(cell.replace(",", "")) if cell not in ("-", "") else 0.0


def address_lines(path: Path) -> dict[str, tuple[str, int, str]]:
    """SASS address -> (file name, line, source text), from the cuda,sass export: a
    'File Path' row per file, then a row per source line followed by its instructions."""
    where: dict[str, tuple[str, int, str]] = {}
    file, line, text = "?", 0, ""
    for row in _rows(path):
        if not row or row[0] in ("Function Name", "Line No", "Kernel Name"):
            continue
        if row[0] == "File Path":
            file = Path(row[1]).name
            continue
        if row[0].isdigit():
            line, text = int(row[0]), row[1].strip()
        if len(row) >= 3 and row[2].startswith("0x"):
            where[row[2]] = (file, line, text)
    if not where:
        raise ValueError(f"{path}: no instruction addresses; is it an ncu source page "
                         "exported with --print-source cuda,sass?")
    return where


def per_line(sass_csv: Path, lines_csv: Path) -> tuple[list[SourceLine], dict[str, float]]:
    """Every source line with its summed metrics, and the kernel's totals."""
    rows = _rows(sass_csv)
    header_at = next((k for k, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if header_at is None:
        raise ValueError(f"{sass_csv}: no 'Address' header; is it an ncu source page exported "
                         "with --print-source sass?")
    header = rows[header_at]
    missing = [m for m in METRICS.values() if m not in header]
    if missing:
        raise ValueError(f"{sass_csv}: metrics {missing} were not collected (profile with "
                         "--section SourceCounters --section WarpStateStats)")
    col = {h: k for k, h in enumerate(header)}
    where = address_lines(lines_csv)
    by_line: dict[tuple[str, int, str], SourceLine] = {}
    totals = dict.fromkeys(METRICS, 0.0)
    unmatched = 0
    for row in rows[header_at + 1:]:
        if len(row) < len(header):
            continue
        key = where.get(row[col["Address"]])
        if key is None:
            unmatched += 1
            key = ("?", 0, "(address not in the cuda,sass export)")
        entry = by_line.setdefault(key, SourceLine(*key))
        for name, metric in METRICS.items():
            value = _number(row[col[metric]])
            entry.totals[name] += value
            totals[name] += value
        if _number(row[col[METRICS["shared"]]]) > 0:  # which instructions touch shared memory
            words = row[col["Source"]].split()
            entry.shared_ops[words[1] if words[0].startswith("@") else words[0]] += 1
    if unmatched and unmatched == len(rows) - header_at - 1:
        raise ValueError("no instruction of the sass export is in the cuda,sass export: "
                         "are both from the same report?")
    return list(by_line.values()), totals


def table(lines: list[SourceLine], totals: dict[str, float], sort_by: str, top: int) -> str:
    """Top lines by one metric, each metric as a percentage of the kernel's total."""
    out = [f"{'excess':>7} {'shared':>7} {'stalls':>7} {'instr':>7}  line"]
    for entry in sorted(lines, key=lambda e: -e.totals[sort_by])[:top]:
        pct = [100 * entry.totals[m] / totals[m] if totals[m] else 0.0 for m in METRICS]
        ops = ", ".join(f"{op} x{n}" for op, n in entry.shared_ops.most_common(2))
        out.append(" ".join(f"{p:6.1f}%" for p in pct)
                   + f"  {entry.file}:{entry.line} {entry.text[:72]}" + (f"  [{ops}]" if ops else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sass_csv", type=Path, help="--page source --csv --print-source sass")
    ap.add_argument("lines_csv", type=Path, help="--page source --csv --print-source cuda,sass")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    lines, totals = per_line(args.sass_csv, args.lines_csv)
    print("kernel totals: " + ", ".join(f"{m} {METRICS[m]!r} {v:,.0f}" for m, v in totals.items()))
    for sort_by in ("excess", "stalls"):
        print(f"\nby {sort_by} ({METRICS[sort_by]}):")
        print(table(lines, totals, sort_by, args.top))


if __name__ == "__main__":
    main()
