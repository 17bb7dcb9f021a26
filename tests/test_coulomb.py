"""The Coulomb term of charged structures (nn/coulomb.py): its kernel, the energy it adds,
its forces, and the pair lists that reach its cutoff (fp64)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import SHARED_DATA, distributed_charge_model, spice_molecules
from e2former_lammps import E2FormerCalculator, E2FormerV2
from e2former_lammps.config import E2FormerConfig
from e2former_lammps.data import read_dataset
from e2former_lammps.neighbors import atoms_to_graph
from e2former_lammps.nn.coulomb import COULOMB_EV_ANGSTROM, damped_shifted_force
from e2former_lammps.training.batching import PackedFrames, predict
from e2former_lammps.training.step import LossAndGradients, PaddedBatch, batch_key

CUTOFF, COULOMB_CUTOFF = 5.0, 9.0


def coulomb_model(seed: int = 0, spread: float = 0.03) -> E2FormerV2:
    """A distributed-charge model with the Coulomb term, its charge logits made nonzero."""
    model = distributed_charge_model(seed, coulomb_cutoff=COULOMB_CUTOFF, coulomb_width=1.0)
    with torch.no_grad():
        model.coulomb.logits.weight.normal_(0.0, spread)
    model.set_charge_energies({"1": -3.25, "-1": 1.5, "2": 0.75, "-2": -0.5})
    return model


def without_coulomb(model: E2FormerV2) -> E2FormerV2:
    """The same weights, no Coulomb term."""
    cfg = E2FormerConfig(**{**model.config.to_dict(), "coulomb_cutoff": None})
    plain = E2FormerV2(cfg).to(torch.float64)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("coulomb.")}
    plain.load_state_dict(state)
    plain.set_charge_energies(model.config.charge_energies)
    return plain


def energy(model: E2FormerV2, atoms: Atoms, charge: float) -> tuple[float, np.ndarray]:
    a = atoms.copy()
    a.info["charge"] = charge
    a.calc = E2FormerCalculator(model)
    return a.get_potential_energy(), a.get_forces()


def test_kernel_is_coulomb_shifted_to_zero_value_and_slope_at_the_cutoff():
    r = torch.tensor([0.5, 2.0, 4.0, 8.999, 9.0, 12.0], dtype=torch.float64,
                     requires_grad=True)
    # a vanishing width: erf(r / w) = 1, phi = 1/r - 1/rc + (r - rc)/rc^2
    phi = damped_shifted_force(r, COULOMB_CUTOFF, 1e-3)
    rc = COULOMB_CUTOFF
    expected = 1 / r - 1 / rc + (r - rc) / rc ** 2
    assert torch.allclose(phi[:5], expected[:5].detach(), rtol=1e-12, atol=1e-12)
    assert phi[4] == 0 and phi[5] == 0
    # value and slope continuous at the cutoff, with the damping on
    r = torch.tensor([rc - 1e-6, rc + 1e-6], dtype=torch.float64, requires_grad=True)
    phi = damped_shifted_force(r, rc, 1.0)
    (slope,) = torch.autograd.grad(phi.sum(), r)
    assert abs(phi[0].item()) < 1e-12 and abs(slope[0].item()) < 1e-6 and slope[1] == 0
    # finite as the atoms meet: erf(r/w)/r -> 2 / (sqrt(pi) w); with w = 1 and rc = 9,
    # f(rc) = 1/9 and f'(rc) = -1/81 to 1e-30, so phi(0) = 2/sqrt(pi) - 2/9
    phi0 = damped_shifted_force(torch.tensor([1e-9], dtype=torch.float64), rc, 1.0)
    assert phi0.item() == pytest.approx(2 / math.sqrt(math.pi) - 2 / 9, rel=1e-10)


def test_two_ions_beyond_the_cutoff_feel_each_other():
    """Two ions (+2 e in all) 3, 7 and 8.5 Å apart, the last two beyond message passing: the
    energy above the same model without the term is k_e q1 q2 phi(r) with q = Q w from the
    charge head, and beyond r_c the term alone makes the forces."""
    model = coulomb_model(seed=1)
    plain = without_coulomb(model)
    for d in (3.0, 7.0, 8.5):
        ions = Atoms("NO", positions=[[0, 0, 0], [d, 0, 0]])
        e, f = energy(model, ions, 2.0)
        e0, f0 = energy(plain, ions, 2.0)
        graph = atoms_to_graph(ions, model.elements, model.config.atomic_numbers, CUTOFF)
        graph.charge = torch.tensor([2.0])
        graph.spin = torch.tensor([1.0])
        feats = model._final_features(graph)
        w = torch.softmax(model.coulomb.logits(feats[:, 0])[:, 0], 0)
        q = 2.0 * w
        phi = damped_shifted_force(torch.tensor([d], dtype=torch.float64), COULOMB_CUTOFF,
                                   1.0)
        expected = COULOMB_EV_ANGSTROM * q[0] * q[1] * phi[0]
        assert e - e0 == pytest.approx(float(expected), rel=1e-10, abs=1e-12)
        assert abs(float(q.sum()) - 2.0) < 1e-12 and abs(float(q[0] - q[1])) > 1e-3
        assert float(q.min()) > 0.2  # both ions charged: the pair term is not negligible
        if d > CUTOFF:  # the network part sees two isolated atoms: no force from it
            assert np.abs(f0).max() < 1e-12 and np.abs(f).max() > 1e-3
        assert np.allclose(f.sum(0), 0, atol=1e-10)


def test_forces_are_minus_the_gradient_with_pairs_on_both_sides_of_the_cutoff():
    mol = spice_molecules(1, min_atoms=12, seed=3)[0]
    mol.positions[:4] += np.array([3.0, 0, 0])  # stretch: some pairs beyond 5 Å
    model = coulomb_model(seed=2)
    e, f = energy(model, mol, 1.0)
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(4):
        a, k = int(rng.integers(len(mol))), int(rng.integers(3))
        plus, minus = mol.copy(), mol.copy()
        plus.positions[a, k] += h
        minus.positions[a, k] -= h
        numeric = -(energy(model, plus, 1.0)[0] - energy(model, minus, 1.0)[0]) / (2 * h)
        assert f[a, k] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_neutral_structures_see_no_term_and_no_longer_pair_list():
    mol = spice_molecules(1, min_atoms=8, seed=4)[0]
    model = coulomb_model(seed=3)
    e, f = energy(model, mol, 0.0)
    e0, f0 = energy(without_coulomb(model), mol, 0.0)
    assert e == e0 and np.array_equal(f, f0)
    assert model.config.pair_cutoff(False) == CUTOFF
    assert model.config.pair_cutoff(True) == COULOMB_CUTOFF


def test_rows_not_computed_from_this_structure_alone_are_refused():
    """A ghost shell (every row computed, only the first n_local owned, as in LAMMPS's
    ghost-shell mode) would put copies into the charge softmax: the model refuses it by name
    instead of returning other charges."""
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.validation import InputError

    model = coulomb_model(seed=10)
    ions = Atoms("NO", positions=[[0, 0, 0], [6.0, 0, 0]])
    graph = atoms_to_graph(ions, model.elements, model.config.atomic_numbers, COULOMB_CUTOFF)
    graph.charge, graph.spin = torch.tensor([2.0]), torch.tensor([1.0])
    graph.n_local, graph.exchange = 1, NoGhosts(2)
    with pytest.raises(InputError, match="not a ghost shell"):
        model(graph)


def test_saved_and_loaded(tmp_path):
    model = coulomb_model(seed=4)
    model.save(tmp_path / "m.pt")
    back = E2FormerV2.load(tmp_path / "m.pt").to(torch.float64)
    assert back.config.coulomb_cutoff == COULOMB_CUTOFF and back.coulomb is not None
    ions = Atoms("NO", positions=[[0, 0, 0], [6.5, 0, 0]])
    assert energy(back, ions, -2.0)[0] == pytest.approx(energy(model, ions, -2.0)[0],
                                                        rel=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(coulomb_cutoff=9.0), "needs charge_spin_mode 'distributed'"),
    (dict(coulomb_cutoff=4.0, charge_spin=True, charge_spin_mode="distributed"),
     "must be at least the cutoff"),
    (dict(coulomb_cutoff=9.0, coulomb_width=0.0, charge_spin=True,
          charge_spin_mode="distributed"), "coulomb_width must be positive"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        E2FormerConfig(elements=["H", "O"], cutoff=5.0, **bad)


def test_copy_keeps_the_term():
    model = coulomb_model(seed=5)
    assert copy.deepcopy(model).coulomb is not None


def test_evaluating_frames_packed_without_the_coulomb_cutoff_is_refused():
    """Frames packed to the message-passing cutoff alone give a Coulomb model's charged frames
    a short pair list (silently wrong energies: a GPU test compared such an evaluation with
    the trainer's and was 3.75 meV/atom off); evaluate_packed names the problem instead, and
    evaluate_frames packs them right."""
    from e2former_lammps.training.evaluate import evaluate_frames, evaluate_packed

    model = coulomb_model(seed=2)
    frames = [f for f in read_dataset(SHARED_DATA / "val.hdf5")
              if f.charge != 0 and set(f.numbers.tolist()) <= {1, 6, 7, 8}][:2]
    assert len(frames) == 2
    short = PackedFrames(frames, model.elements, model.config.atomic_numbers, CUTOFF,
                         dtype=torch.float64)
    with pytest.raises(ValueError, match="coulomb_cutoff=9.0"):
        evaluate_packed(model, short)
    other = PackedFrames(frames, model.elements, model.config.atomic_numbers, 4.0,
                         dtype=torch.float64, coulomb_cutoff=COULOMB_CUTOFF)
    with pytest.raises(ValueError, match="cutoff 4.0 Å for a model with cutoff 5.0 Å"):
        evaluate_packed(model, other)
    right = PackedFrames(frames, model.elements, model.config.atomic_numbers, CUTOFF,
                         dtype=torch.float64, coulomb_cutoff=COULOMB_CUTOFF)
    assert evaluate_packed(model, right)["overall"] == evaluate_frames(
        model, frames, device="cpu")["overall"]


def test_training_batches_reach_the_coulomb_cutoff_for_charged_frames():
    """A batch of neutral and charged real frames: per-frame energies and forces equal the
    calculator's (which lists the charged frames' pairs to the Coulomb cutoff itself), and
    its padded form (the CUDA-graph shapes, mp_index padded too) gives the same loss and
    gradients."""
    model = coulomb_model(seed=6)
    trainable = copy.deepcopy(model)  # the calculator freezes the model it is given
    hcno = [f for f in read_dataset(SHARED_DATA / "train.hdf5")
            if set(f.numbers.tolist()) <= {1, 6, 7, 8}]
    # small neutral frames; charged ones wider than the cutoff (pairs on both sides of it)
    frames = ([f for f in hcno if f.charge == 0 and len(f) < 20][:3]
              + [f for f in hcno if f.charge != 0 and len(f) < 40
                 and float(np.ptp(f.positions, axis=0).max()) > CUTOFF + 1][:2]
              + [f for f in hcno if f.charge != 0 and len(f) > 80][:1])
    assert len(frames) == 6
    packed = PackedFrames(frames, model.elements, model.config.atomic_numbers, CUTOFF,
                          dtype=torch.float64, coulomb_cutoff=COULOMB_CUTOFF)
    batch = packed.batch(list(range(len(frames))))
    g = batch.graph
    assert g.mp_index is not None and 0 < g.mp_index.numel() < g.pair_i.numel()
    e_pred, f_pred = predict(model, batch)
    start = 0
    for k, frame in enumerate(frames):
        atoms = frame.to_atoms()
        e, f = energy(model, atoms, frame.charge)
        assert float(e_pred[k].detach()) == pytest.approx(e, rel=1e-10)
        np.testing.assert_allclose(f_pred[start:start + len(atoms)].detach().numpy(), f,
                                   rtol=1e-8, atol=1e-10)
        start += len(atoms)
    step = LossAndGradients(trainable, w_energy=0.7, w_force=1.3, grad_clip=None)
    assert len(step.params) == len(list(trainable.parameters()))
    want = step(batch)
    want_grads = [p.grad.clone() for p in step.params]
    key = batch_key(batch)
    assert key.n_pairs_pad > g.pair_i.numel()
    # padded to the pairs' bucket: the rows add no bucket dimension of their own
    assert key.n_mp_pad == key.n_pairs_pad >= g.mp_index.numel()
    padded = PaddedBatch(key, CUTOFF, True, torch.device("cpu"), torch.float64)
    got = step(padded.fill(batch))
    for a, b in zip(vars(got).values(), vars(want).values()):
        assert float(a) == pytest.approx(float(b), rel=1e-10)
    for p, w in zip(step.params, want_grads):
        torch.testing.assert_close(p.grad, w, rtol=1e-9, atol=1e-12)
    k = next(k for k, p in enumerate(step.params) if p is trainable.coulomb.logits.weight)
    assert float(want_grads[k].abs().sum()) > 0  # the charge head is trained


@pytest.mark.mpi
def test_lammps_on_one_two_and_four_ranks_matches_the_calculator(tmp_path):
    """A periodic cation (water box, 6.2 Å, so the 9 Å Coulomb pairs reach periodic images)
    in LAMMPS: the export lists pairs to the Coulomb cutoff, and on 1, 2 and 4 ranks (charges
    spread over the atoms of all ranks, ghosts given their owners' charges) the energies and
    forces equal the calculator's; ghost-shell mode stops with an error naming the term."""
    from conftest import water_box
    from e2former_lammps.lammps.export import export_lammps_model
    from lammps_harness import run_lammps

    model = coulomb_model(seed=7)
    path = tmp_path / "cation.pt"
    export_lammps_model(model, path, device="cpu", charge=1.0, spin=1.0)
    assert torch.load(path, weights_only=False).rcutfac == COULOMB_CUTOFF / 2
    atoms = water_box(2, seed=12)
    e, f = energy(model, atoms, 1.0)
    e0, _ = energy(without_coulomb(coulomb_model(seed=7)), atoms, 1.0)
    assert abs(e - e0) > 1e-3  # the term is there: the comparison can fail
    for nprocs, grid in [(1, "1 1 1"), (2, "2 1 1"), (4, "2 2 1")]:
        res = run_lammps(tmp_path / f"np{nprocs}", atoms, path, model.elements, nprocs=nprocs,
                         settings=f"processors {grid}")
        assert abs(res.energy - e) <= 1e-10 * max(1.0, abs(e)), nprocs
        assert np.abs(res.forces - f).max() <= 1e-10 * max(1.0, np.abs(f).max()), nprocs
    out = run_lammps(tmp_path / "shell", atoms, path, model.elements, flag=1,
                     settings="comm_modify cutoff 40", expect_fail=True)
    assert "not with a ghost shell" in out, out[-3000:]
    assert "Traceback" not in out


def test_training_from_the_shipped_model_adds_the_term(tmp_path):
    """`model: {coulomb_cutoff: 9}` with init_model spice-xtb: the term is added (the charge
    head starts even, every other weight taken over, so neutral frames keep their energies),
    trains on real frames (neutral molecules and the Na+ K+ pair, as extxyz), and the saved
    model has it."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from e2former_lammps.training import TrainConfig, train

    val = read_dataset(SHARED_DATA / "val.hdf5")
    picked = [f for f in val if f.charge == 0][:8] + [f for f in val if f.charge == 2][::10]
    structures = []
    for f in picked:
        atoms = f.to_atoms()
        atoms.info.update(charge=f.charge, spin=f.spin)
        atoms.calc = SinglePointCalculator(atoms, energy=f.energy, forces=f.forces)
        structures.append(atoms)
    data = tmp_path / "mixed.xyz"
    write(data, structures, format="extxyz")
    cfg = TrainConfig(train=[str(data)], val=[str(data)], init_model="spice-xtb",
                      model={"coulomb_cutoff": COULOMB_CUTOFF}, batch_size=8, max_steps=2,
                      lr=1e-5, warmup_steps=0, checkpoint_every_steps=None,
                      checkpoint_every_minutes=None, device="cpu", progress=False, seed=3,
                      output_dir=str(tmp_path / "run"))
    result = train(cfg)
    trained = E2FormerV2.load(result["model"])
    assert trained.config.coulomb_cutoff == COULOMB_CUTOFF and trained.coulomb is not None
    assert np.isfinite(result["metrics"]["val"]["overall"]["energy_mae_meV_per_atom"])
    shipped = E2FormerV2.load("spice-xtb")
    neutral = picked[0].to_atoms()
    # two steps at lr 1e-5 move a neutral molecule's energy by little; the term adds nothing
    e_new, _ = energy(trained.double(), neutral, 0.0)
    e_old, _ = energy(shipped.double(), neutral, 0.0)
    assert abs(e_new - e_old) < 0.05


@pytest.mark.gpu
def test_gpu_graphed_training_step_with_coulomb_rows():
    """On CUDA (fp32): a batch with charged frames (mp_index) is captured and replayed as a
    CUDA graph and gives the eager step's loss terms."""
    from e2former_lammps.training.step import GraphedLossAndGradients

    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run with -m gpu on the GPU machine")
    model = coulomb_model(seed=9).float().cuda()
    hcno = [f for f in read_dataset(SHARED_DATA / "train.hdf5")
            if set(f.numbers.tolist()) <= {1, 6, 7, 8}]
    frames = ([f for f in hcno if f.charge == 0][:6]
              + [f for f in hcno if f.charge != 0 and len(f) > 80][:2])
    packed = PackedFrames(frames, model.elements, model.config.atomic_numbers, CUTOFF,
                          device="cuda", coulomb_cutoff=COULOMB_CUTOFF)
    batch = packed.batch(list(range(len(frames))))
    assert batch.graph.mp_index is not None
    step = GraphedLossAndGradients(model, 1.0, 1.0, None)
    want = [float(x) for x in vars(LossAndGradients._eager(step, batch, False)).values()]
    for _ in range(3):
        got = [float(x) for x in vars(step(batch)).values()]
        np.testing.assert_allclose(got, want, rtol=1e-4)
    assert step.n_graphs == 1 and step.enabled
