"""Domain decomposition: 1 vs N MPI ranks (real mpirun + LAMMPS) give the same physics, fp64."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from e2former_lammps.lammps.export import export_lammps_model
from e2former_lammps.parallel import auto_transport

from conftest import distributed_charge_model, random_model, water_box
from lammps_harness import run_lammps

pytestmark = pytest.mark.mpi
ELEMENTS = ["H", "C", "N", "O"]
TOL = 1e-10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    exchange, shell = d / "exchange.pt", d / "shell.pt"
    export_lammps_model(random_model(seed=21), exchange, device="cpu")
    shell_model = random_model(seed=22, num_layers=1, cutoff=4.0)
    export_lammps_model(shell_model, shell, device="cpu")
    shell_cut = (shell_model.config.num_layers + 1) * shell_model.config.cutoff + 1.0
    return {"exchange": (exchange, 0, ""), "shell": (shell, 1, f"comm_modify cutoff {shell_cut}")}


def _same(a, b, tol=TOL):
    scale = max(1.0, np.abs(b.forces).max())
    assert abs(a.energy - b.energy) <= tol * max(1.0, np.abs(b.eatoms).sum())
    assert np.abs(a.eatoms - b.eatoms).max() <= tol * max(1.0, np.abs(b.eatoms).max())
    assert np.abs(a.forces - b.forces).max() <= tol * scale
    p = max(1.0, np.abs(b.pressure_virial).max())
    assert np.abs(a.pressure_virial - b.pressure_virial).max() <= tol * p


@pytest.mark.parametrize("mode", ["exchange", "shell"])
def test_ranks_and_grids_match_one_rank(tmp_path, models, mode):
    model, flag, settings = models[mode]
    atoms = water_box(2, seed=8)  # 6.2 Å box: ghosts include self-images on every rank
    ref = run_lammps(tmp_path / "np1", atoms, model, ELEMENTS, flag=flag, hook=flag == 0,
                     settings=settings)
    for nprocs, grid in [(2, "1 1 2"), (4, "2 2 1"), (4, "1 2 2")]:
        res = run_lammps(tmp_path / f"np{nprocs}_{grid.replace(' ', '')}", atoms, model,
                         ELEMENTS, nprocs=nprocs, flag=flag, hook=flag == 0,
                         settings=f"processors {grid}\n{settings}")
        _same(res, ref)


def test_torch_distributed_transport_matches_one_rank(tmp_path, models, monkeypatch):
    """E2FORMER_EXCHANGE=torch (gloo on the CPU: the code path NCCL takes on GPUs) on 2 and
    4 ranks gives the one-rank energies, forces and virial."""
    model, _, _ = models["exchange"]
    atoms = water_box(2, seed=10)
    ref = run_lammps(tmp_path / "np1", atoms, model, ELEMENTS)
    monkeypatch.setenv("E2FORMER_EXCHANGE", "torch")
    for nprocs, grid in [(2, "2 1 1"), (4, "2 2 1")]:
        res = run_lammps(tmp_path / f"np{nprocs}", atoms, model, ELEMENTS, nprocs=nprocs,
                         settings=f"processors {grid}")
        assert f"exchanged by torch.distributed (gloo) over {nprocs} ranks" in res.log
        _same(res, ref)


def test_auto_transport_takes_nccl_only_when_every_rank_has_its_own_gpu():
    own = [("node0", 0), ("node0", 1), ("node1", 0), ("node1", 1)]
    assert auto_transport(own, nccl=True) == "torch"
    assert auto_transport(own, nccl=False) == "mpi4py"  # a torch built without NCCL
    assert auto_transport([("node0", 0), ("node0", 0)], nccl=True) == "mpi4py"  # shared GPU
    assert auto_transport([("node0", None), ("node0", None)], nccl=True) == "mpi4py"  # CPU
    assert auto_transport([("node0", 0), ("node0", None)], nccl=True) == "mpi4py"


def test_unknown_transport_stops_the_run_by_name(tmp_path, models, monkeypatch):
    model, _, _ = models["exchange"]
    monkeypatch.setenv("E2FORMER_EXCHANGE", "nccl")
    out = run_lammps(tmp_path / "np2", water_box(2, seed=10), model, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1", expect_fail=True)
    expected = "E2FORMER_EXCHANGE='nccl': expected one of ('auto', 'mpi4py', 'torch')"
    assert expected in out, out[-3000:]
    assert "Traceback" not in out  # a named setting, not a stack from inside


def test_nve_trajectory_with_migration_matches_one_rank(tmp_path, models):
    """100 NVE steps with a drift of 20 Å/ps along x: atoms cross rank boundaries."""
    model, _, _ = models["exchange"]
    atoms = water_box(2, seed=9)
    run = ("velocity all create 30 12345 mom yes rot no\n"
           "velocity all set 20.0 NULL NULL sum yes\n"
           "neigh_modify every 1 delay 0 check yes\ntimestep 0.0005\nfix 1 all nve\n"
           "run 100")
    ref = run_lammps(tmp_path / "np1", atoms, model, ELEMENTS, run=run)
    res = run_lammps(tmp_path / "np2", atoms, model, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1", run=run)
    _same(res, ref, tol=1e-8)


def test_rank_without_atoms(tmp_path, models):
    """Atoms only in one quarter of the box: two of four ranks own none (and have no pairs)."""
    model, _, _ = models["exchange"]
    water = water_box(2, seed=10)
    atoms = Atoms(water.get_chemical_symbols(), positions=water.positions * [0.9, 1, 1],
                  cell=np.diag([4 * water.cell[0, 0], water.cell[1, 1], water.cell[2, 2]]),
                  pbc=True)
    ref = run_lammps(tmp_path / "np1", atoms, model, ELEMENTS)
    res = run_lammps(tmp_path / "np4", atoms, model, ELEMENTS, nprocs=4,
                     settings="processors 4 1 1")
    _same(res, ref)


def test_error_on_one_rank_stops_the_run(tmp_path, models):
    """Bad input seen by one rank only must stop every rank (no hang in a collective)."""
    model, _, _ = models["exchange"]
    atoms = water_box(2, seed=8)
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    out = run_lammps(tmp_path, atoms, model, ELEMENTS, nprocs=2,
                     settings="processors 2 1 1", expect_fail=True, timeout=180)
    assert "overlapping atoms" in out


def test_distributed_charge_matches_calculator_on_any_number_of_ranks(tmp_path):
    """A model that spreads the total charge over all atoms, exported for a cation (--charge 1
    --spin 2): one rank gives the ASE calculator's numbers for that charge, and 2 and 4 ranks
    (the softmax over atoms summed across ranks), ghost-shell mode on 1 and 2 ranks, and 4
    ranks of which two own no atom give the same. Without the LAMMPS handle the run stops
    with a clear error. A charge without an energy in the model is refused at export."""
    from e2former_lammps import E2FormerCalculator

    model = distributed_charge_model(23)
    cation = tmp_path / "cation.pt"
    export_lammps_model(model, cation, device="cpu", charge=1.0, spin=2.0)
    atoms = water_box(2, seed=11)
    res = run_lammps(tmp_path / "cation1", atoms, cation, ELEMENTS)
    ref = atoms.copy()
    ref.info.update(charge=1, spin=2)
    ref.calc = E2FormerCalculator(model)
    e, f = ref.get_potential_energy(), ref.get_forces()
    assert abs(res.energy - e) <= TOL * max(1.0, abs(e))
    assert np.abs(res.forces - f).max() <= TOL * max(1.0, np.abs(f).max())
    ref.info.update(charge=0, spin=1)  # the charge changes the answer: the test can fail
    assert abs(ref.get_potential_energy() - e) > 1.0
    for nprocs, grid in [(2, "1 1 2"), (4, "2 2 1")]:
        _same(run_lammps(tmp_path / f"cation{nprocs}", atoms, cation, ELEMENTS, nprocs=nprocs,
                         settings=f"processors {grid}"), res)

    sparse = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions * [0.9, 1, 1],
                   cell=np.diag([4 * atoms.cell[0, 0], atoms.cell[1, 1], atoms.cell[2, 2]]),
                   pbc=True)  # two of four ranks own no atom
    _same(run_lammps(tmp_path / "sparse4", sparse, cation, ELEMENTS, nprocs=4,
                     settings="processors 4 1 1"),
          run_lammps(tmp_path / "sparse1", sparse, cation, ELEMENTS))

    shell_model = distributed_charge_model(24, num_layers=1, cutoff=4.0)
    shell = tmp_path / "shell.pt"
    export_lammps_model(shell_model, shell, device="cpu", charge=1.0, spin=2.0)
    shell_cut = (shell_model.config.num_layers + 1) * shell_model.config.cutoff + 1.0
    one = run_lammps(tmp_path / "shell-exchange1", atoms, shell, ELEMENTS)
    for nprocs in (1, 2):
        _same(run_lammps(tmp_path / f"shell{nprocs}", atoms, shell, ELEMENTS, nprocs=nprocs,
                         flag=1, settings=f"processors {nprocs} 1 1\n"
                                          f"comm_modify cutoff {shell_cut}"), one)

    out = run_lammps(tmp_path / "nohook", atoms, shell, ELEMENTS, flag=1, hook=False,
                     settings=f"comm_modify cutoff {shell_cut}", expect_fail=True)
    assert "hand LAMMPS to the model" in out and "Traceback" not in out
    with pytest.raises(ValueError, match=r"total charge\(s\) \[2.0\]"):
        export_lammps_model(model, tmp_path / "x.pt", device="cpu", charge=2.0)
