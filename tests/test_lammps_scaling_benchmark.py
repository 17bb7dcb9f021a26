"""benchmarks/lammps_scaling.py (the one-GPU scaling harness) run on the CPU: the LAMMPS
library drives the model through ML-IAP; its JSON holds the fields issue 6 asks for."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_lammps_scaling_harness_on_the_cpu(tmp_path):
    out = tmp_path / "lammps_scaling.json"
    steps = 2
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/lammps_scaling.py"), "--device", "cpu",
         "--config", "small", "--sizes", "193", "--steps", str(steps), "--warmup", "1",
         "--min-seconds", "0.2", "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] and result["commit"] and result["dtype"] == "float32"
    assert result["settings"]["OMP_NUM_THREADS"] == "1"  # the threads ML-IAP's pairs ran on
    (row,) = result["results"]
    assert "error" not in row, row
    assert row["n_atoms"] == 192  # 193 asked: whole molecules
    assert row["steps"] >= steps  # more where the probe said they take under --min-seconds
    assert row["rows_with_ghosts"] > 192  # a small periodic box: ghosts beside the atoms
    assert row["atom_steps_per_s"] == pytest.approx(192 * row["timesteps_per_s"])
    assert 0 < row["model_fraction"] <= 1
    assert row["model_alone_atom_steps_per_s"] > 0
    assert row["peak_mem_bytes"] is None  # no GPU memory on the CPU
    # how the model ran: on the CPU eagerly, the kernels' default for the kept scores
    assert row["compiled_node_work"] is False and row["attention_keeps_scores"] is None
    assert row["cuda_graphs"] is False and row["block_checkpointing"] == "off"
    # one model time per timed step, each within the step's share of the loop
    assert len(row["model_s_each_call"]) == row["steps"] and min(row["model_s_each_call"]) > 0
    first, last = row["etotal_eV_first_last"]
    assert abs(last - first) < 1e-3 * 192  # NVE over a few 0.5 fs steps: no blow-up
    assert out.with_suffix(".png").stat().st_size > 10_000  # drawn in its own process
    # the peer in the same run: MACE alone on the same box, or the reason it did not run
    if importlib.util.find_spec("mace") is None:
        assert "mace-torch is not installed" in result["peer"]["error"]
        assert "peer" not in row and "MACE not timed: mace-torch" in proc.stdout
    else:
        assert row["peer"]["atom_steps_per_s"] > 0, result["peer"]
        assert row["ours_in_lammps_over_peer"] == pytest.approx(
            row["atom_steps_per_s"] / row["peer"]["atom_steps_per_s"])


def test_lammps_host_cost_harness_splits_the_step(tmp_path):
    """benchmarks/lammps_host_cost.py: LAMMPS's own time and the adapter's phases add up to
    the step, with the model replaced by zero forces."""
    out = tmp_path / "host_cost.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/lammps_host_cost.py"), "--atoms", "192", "648",
         "--steps", "3", "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"),
        timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["environment"] == {"OMP_NUM_THREADS": "2"} and result["commit"]
    small, large = result["results"]
    for row in (small, large):
        assert set(row["adapter_s"]) == {"inputs", "model", "outputs"}
        assert row["lammps_s"] > 0
        assert row["step_s"] == pytest.approx(row["lammps_s"] + sum(row["adapter_s"].values()))
    assert (small["n_atoms"], large["n_atoms"]) == (192, 648)
    assert list(tmp_path.iterdir()) == [out]  # the data files went to a temporary folder


def test_timed_steps_last_at_least_min_seconds():
    """lammps_scaling.timed_steps: at least --steps, enough steps at the probe's pace for
    --min-seconds, at most MAX_TIMED_STEPS; --min-seconds 0 keeps --steps."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from lammps_scaling import MAX_TIMED_STEPS, timed_steps

    assert timed_steps(5, 2.0, 1.0) == 5  # 100k atoms: five 1 s steps
    assert timed_steps(5, 2.0, 0.03) == 67  # 10k atoms: 30 ms steps
    assert timed_steps(5, 2.0, 1e-5) == MAX_TIMED_STEPS
    assert timed_steps(5, 0.0, 0.03) == 5


@pytest.mark.parametrize("tether", [None, 5.0])
def test_random_weights_runs_keep_atoms_apart_by_a_tether(tmp_path, tether):
    """Random weights neither bind nor repel: at 300 K water's atoms drift freely and meet
    (the paper configuration's 1k box after ~130 steps, where the adapter's input check
    stops the run). lammps_scaling tethers them (fix spring/self); here zero forces stand
    in for the random model's (~0.1 eV/Å): untethered, some atom wanders > 1 Å in 400 steps;
    tethered, none leaves 0.5 Å."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_attention import water_box
    from lammps import lammps
    from lammps_scaling import water_deck, write_data

    pos, species, box = water_box(192, device="cpu")
    data = tmp_path / "water.data"
    write_data(data, pos.numpy(), species.numpy(), box)
    deck = water_deck(data, tether=tether).replace(
        "pair_style mliap unified EXISTS 0\npair_coeff * * H O",
        "pair_style zero 5.0\npair_coeff * *")
    assert ("spring/self" in deck) == bool(tether)
    lmp = lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        lmp.commands_string(deck + "\ncompute d all displace/atom\n"
                            "compute far all reduce max c_d[4]\nthermo_style custom step c_far\n"
                            "run 400")
        farthest = lmp.extract_compute("far", 0, 0)
    finally:
        lmp.close()
    assert (farthest < 0.5) if tether else (farthest > 1.0), farthest
