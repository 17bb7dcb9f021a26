"""Every deck in lammps_examples/ runs as shipped (real LAMMPS binary, the packaged spice-xtb
model exported for the CPU), a few steps each; the charged deck's energy is the ASE
calculator's for the cation on 1 and 2 MPI ranks."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from conftest import REPO, water_box
from e2former_lammps import E2FormerCalculator, E2FormerV2
from e2former_lammps.lammps.data_file import write_lammps_data
from e2former_lammps.lammps.export import export_lammps_model
from e2former_lammps.lammps.log import thermo_runs
from lammps_harness import launch

EXAMPLES = REPO / "lammps_examples"


def run_deck(folder: Path, deck: str, variables: dict[str, str], nprocs: int = 1) -> str:
    proc = launch(folder, deck, nprocs, variables)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR" not in out, out[-4000:]
    return out


def thermo_rows(log: str) -> list[dict[str, float]]:
    """Every thermo row of every run in a LAMMPS log, as {column: value}."""
    return [run.row(k) for run in thermo_runs(log) for k in range(len(run.rows))]


def copy_example(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES / name, tmp_path / name))


@pytest.fixture(scope="module")
def shipped():
    return E2FormerV2.load("spice-xtb")


def test_serine_water_deck(tmp_path, shipped):
    folder = copy_example("solvated_amino_acid", tmp_path)
    export_lammps_model(shipped, folder / "lammps_model.pt", device="cpu")
    rows = thermo_rows(run_deck(folder, "in.serine_water", {"min_iter": "2", "steps": "10"}))
    assert rows[-1]["Step"] == 10 and all(np.isfinite(list(r.values())).all() for r in rows)
    assert abs(rows[-1]["TotEng"] - rows[-2]["TotEng"]) < 0.01  # NVE: eV, 83 atoms


def test_water_box_deck_on_two_ranks(tmp_path, shipped):
    folder = copy_example("water_box", tmp_path)
    export_lammps_model(shipped, folder / "lammps_model.pt", device="cpu")
    log = run_deck(folder, "in.water_box", {"nvt_steps": "2", "nve_steps": "2"}, nprocs=2)
    rows = thermo_rows(log)
    assert [r["Step"] for r in rows] == [0, 2, 2, 4]
    assert all(np.isfinite(list(r.values())).all() for r in rows)


def test_gpu_water_benchmark_deck_runs_on_the_cpu(tmp_path, shipped):
    """The throughput deck itself (the model on the CPU here, a 3 x 3 x 3 water box)."""
    folder = copy_example("gpu_water_benchmark", tmp_path)
    export_lammps_model(shipped, folder / "lammps_model.pt", device="cpu")
    write_lammps_data(water_box(3, seed=2), folder / "water_81.data", ["H", "O"])
    rows = thermo_rows(run_deck(folder, "in.water_bench", {"data": "water_81.data",
                                                           "steps": "2"}))
    assert rows[-1]["Step"] == 2 and np.isfinite(rows[-1]["TotEng"])


@pytest.mark.parametrize("nprocs", [1, 2])
def test_charged_molecule_deck_matches_the_calculator(tmp_path, shipped, nprocs):
    """The cation's energy in LAMMPS (model exported with --charge 1, the deck as shipped) is
    the ASE calculator's with charge +1, on 1 and 2 ranks; the neutral export differs."""
    folder = copy_example("charged_molecule", tmp_path)
    export_lammps_model(shipped, folder / "lammps_model_charge1.pt", device="cpu", charge=1.0)
    export_lammps_model(shipped, folder / "neutral.pt", device="cpu")
    no_md = {"min_iter": "0", "steps": "0"}
    e_lammps = thermo_rows(run_deck(folder, "in.ethylammonium", no_md, nprocs))[0]["PotEng"]
    e_neutral = thermo_rows(run_deck(folder, "in.ethylammonium",
                                     {**no_md, "model": "neutral.pt"}))[0]["PotEng"]
    atoms = read(folder / "ethylammonium.data", format="lammps-data", atom_style="atomic",
                 Z_of_type={1: 1, 2: 6, 3: 7}, units="metal")
    atoms.pbc = False
    atoms.info["charge"] = 1
    atoms.calc = E2FormerCalculator(shipped)
    e_ase = atoms.get_potential_energy()
    assert e_lammps == pytest.approx(e_ase, abs=2e-4)  # fp32; the log prints 1e-6 eV
    assert abs(e_neutral - e_ase) > 0.1
