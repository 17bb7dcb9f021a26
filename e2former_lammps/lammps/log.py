"""Reading LAMMPS's screen output or log file: each run's thermo table and its loop line.

The benchmarks and tests read what LAMMPS prints instead of asking the library, so that
they time and check the same `lmp` binary a user runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

LOOP_LINE = re.compile(r"Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms")


@dataclass
class ThermoRun:
    """One `run` or `minimize`: its thermo columns and rows, and what its "Loop time" line
    says (None for a run that stopped before printing it)."""

    columns: list[str]
    rows: np.ndarray  # [n_rows, n_columns]
    loop_s: float | None = None
    procs: int | None = None
    steps: int | None = None
    n_atoms: int | None = None

    def column(self, name: str) -> np.ndarray:
        """The values of thermo column `name` (e.g. "PotEng", eV in `units metal`)."""
        if name not in self.columns:
            raise KeyError(f"thermo column {name!r} not in {self.columns}")
        return self.rows[:, self.columns.index(name)]

    def row(self, k: int) -> dict[str, float]:
        """Row k as {column: value}."""
        return dict(zip(self.columns, self.rows[k].tolist()))


def thermo_runs(text: str) -> list[ThermoRun]:
    """Every run's thermo table in LAMMPS output `text`, in order. Lines inside a table that
    are not a full row of numbers (warnings, messages from the model) are skipped."""
    runs: list[ThermoRun] = []
    columns: list[str] | None = None
    rows: list[list[float]] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            columns, rows = words, []
            continue
        if columns is None:
            continue
        loop = LOOP_LINE.match(line)
        if loop:
            runs.append(ThermoRun(columns, _table(rows, columns), float(loop[1]), int(loop[2]),
                                  int(loop[3]), int(loop[4])))
            columns = None
        elif len(words) == len(columns):
            try:
                rows.append([float(w) for w in words])
            except ValueError:
                pass
    if columns is not None:  # a run cut short: its rows, without a loop line
        runs.append(ThermoRun(columns, _table(rows, columns)))
    return runs


def _table(rows: list[list[float]], columns: list[str]) -> np.ndarray:
    return np.array(rows, dtype=float).reshape(len(rows), len(columns))
