"""benchmarks/cutoff_smoothness.py on the packaged model with a coarse grid: its forces are
the energy's slope, neutral pairs do not interact beyond the cutoff, and the JSON/PNG are
written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_cutoff_scan_forces_are_the_energy_slope(tmp_path):
    out = tmp_path / "cutoff.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/cutoff_smoothness.py"), "--models", "spice-xtb",
         "--step", "0.05", "--out", str(out)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    r, rc = np.array(result["r_A"]), result["cutoff_A"]
    assert np.all(np.diff(r) > 0) and r[0] < rc - 0.5 and r[-1] > rc
    for pair, scan in result["scans"]["spice-xtb"].items():
        e, f = np.array(scan["energy_eV"]), np.array(scan["force_eV_per_A"])
        assert np.all(np.isfinite(e)) and np.all(np.isfinite(f)), pair
        beyond = r >= rc
        if pair.endswith("(0)"):  # neutral: no pair beyond r_c (a Coulomb term sees ions there)
            assert np.ptp(e[beyond]) < 1e-9 and np.all(f[beyond] == 0), pair
        summary = result["summary"]["spice-xtb"][pair]
        inside = (r > rc - 0.5) & (r < rc)
        assert summary["max_abs_force_last_0.5_A_eV_per_A"] == np.abs(f[inside]).max()
    # on the smooth O-O pair, the force on atom 2 is -dE/dr (central differences, 0.05 Å)
    oo = result["scans"]["spice-xtb"]["O O (0)"]
    e, f = np.array(oo["energy_eV"]), np.array(oo["force_eV_per_A"])
    coarse = np.flatnonzero(r < rc - 0.1)[1:-1]
    slope = (e[coarse + 1] - e[coarse - 1]) / (r[coarse + 1] - r[coarse - 1])
    np.testing.assert_allclose(f[coarse], -slope, atol=0.02 * np.abs(f).max() + 1e-4)
