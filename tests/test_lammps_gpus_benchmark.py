"""benchmarks/lammps_gpus.py (the multi-GPU scaling harness) run on the CPU: real `lmp`
under mpirun with 1 and 2 ranks; its JSON holds what the GPU run will be read for."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lammps_harness import lmp_binary

REPO = Path(__file__).resolve().parents[1]


def test_lammps_gpus_harness_on_the_cpu(tmp_path):
    out = tmp_path / "lammps_gpus.json"
    env = dict(os.environ, LMP=lmp_binary(), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/lammps_gpus.py"), "--device", "cpu",
         "--dtype", "float64", "--config", "small", "--sizes", "192", "--ranks", "1", "2",
         "--steps", "2", "--warmup", "1", "--out", str(out), "--profile", "--trace",
         "--exchange", "mpi4py", "torch"],
        capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["dtype"] == "float64" and result["n_gpus"] == 0
    one, two, two_torch = result["results"]
    assert (one["ranks"], two["ranks"], two_torch["ranks"]) == (1, 2, 2)
    assert (one["exchange"], two["exchange"], two_torch["exchange"]) == (None, "mpi4py", "torch")
    assert "error" not in two and "error" not in two_torch
    # torch.distributed (gloo here, NCCL on GPUs) moves the same rows: the same energy
    assert abs(two_torch["pe_step0_minus_1_rank_eV"]) < 1e-8
    assert two_torch["exchange_s_per_step"] > 0
    assert one["n_atoms"] == two["n_atoms"] == 192
    # the same physics on 1 and 2 ranks (fp64, printed to 1e-10 eV)
    assert abs(two["pe_step0_minus_1_rank_eV"]) < 1e-8
    assert abs(two["pe_step0_eV"] - one["pe_step0_eV"]) < 1e-8 and one["pe_step0_eV"] != 0
    # the box is split: both ranks own atoms and hold the other's as ghosts they exchange
    assert sum(two["owned_per_rank"]) == 192 and min(two["owned_per_rank"]) > 0
    assert min(two["ghosts_per_rank"]) > 0 and two["exchange_s_per_step"] > 0
    # the step split: each rank's model call (its exchange inside it) within the loop time
    for row in (one, two):
        step = row["seconds_per_step"]
        assert 0 < max(row["model_s_per_step_per_rank"]) <= step
        assert row["outside_model_s_per_step"] == pytest.approx(
            step - max(row["model_s_per_step_per_rank"]))
    assert one["exchange_s_per_step_per_rank"] == [0.0]
    assert 0 < max(two["exchange_s_per_step_per_rank"]) < max(two["model_s_per_step_per_rank"])
    assert two["peak_mem_bytes_per_rank"] == [None, None]  # no GPU memory on the CPU
    assert one["speedup_vs_1_rank"] == 1.0
    assert two["parallel_efficiency"] == pytest.approx(two["speedup_vs_1_rank"] / 2)
    assert two["atom_steps_per_s"] == pytest.approx(192 * two["timesteps_per_s"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    # --profile: each rank's second timed step (model call warmup + 4 = 5) under torch.profiler
    for ranks, suffix in ((1, ""), (2, "_mpi4py"), (2, "_torch")):
        traced = tmp_path / "lammps_gpus_profiles" / f"192_atoms_{ranks}_ranks_CPU{suffix}"
        assert sorted(p.name for p in traced.iterdir()) == sorted(
            f"rank{r}_call5.{ext}" for r in range(ranks) for ext in ("json", "txt"))
        table = (traced / "rank0_call5.txt").read_text()
        assert "model call 5" in table and "Self CPU" in table and "aten::" in table
        assert json.loads((traced / "rank0_call5.json").read_text())["traceEvents"]


def test_profile_settings_are_checked(monkeypatch, tmp_path):
    """E2FORMER_PROFILE_CALL must name a model call (>= 1); without E2FORMER_PROFILE_DIR no
    call is traced."""
    from e2former_lammps.lammps.mliap import _trace_from_env
    from e2former_lammps.validation import InputError

    monkeypatch.delenv("E2FORMER_PROFILE_DIR", raising=False)
    monkeypatch.setenv("E2FORMER_PROFILE_CALL", "3")
    assert _trace_from_env() is None
    monkeypatch.setenv("E2FORMER_PROFILE_DIR", str(tmp_path / "traces"))
    assert _trace_from_env().call == 3 and (tmp_path / "traces").is_dir()
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("E2FORMER_PROFILE_CALL", bad)
        with pytest.raises(InputError, match="E2FORMER_PROFILE_CALL"):
            _trace_from_env()
    monkeypatch.setenv("E2FORMER_PROFILE_CALL", "3")
    assert _trace_from_env().chrome_trace
    monkeypatch.setenv("E2FORMER_PROFILE_TRACE", "0")
    assert not _trace_from_env().chrome_trace
    monkeypatch.setenv("E2FORMER_PROFILE_TRACE", "yes")
    with pytest.raises(InputError, match=re.escape(
            "E2FORMER_PROFILE_TRACE='yes': expected one of ('0', '1')")):
        _trace_from_env()
