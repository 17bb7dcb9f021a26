"""Trainer, checkpoints/resume, evaluate CLI: small CPU runs (tiny model, tiny molecules)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.calculators.morse import MorsePotential
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from e2former_lammps import E2FormerCalculator, E2FormerConfig, E2FormerV2
from e2former_lammps.cli import main as cli_main
from e2former_lammps.data import Frame, read_dataset
from e2former_lammps.training import TrainConfig, train
from e2former_lammps.training.batching import PackedFrames, fit_reference_energies, predict
from e2former_lammps.training.config import parse_overrides
from e2former_lammps.training.trainer import save_atomic

TINY = {"channels": 8, "num_heads": 2, "head_dim": 4, "num_layers": 1, "num_rbf": 8,
        "radial_hidden": 16, "ffn_channels": 16, "cutoff": 4.0}


def _molecules(n: int, seed: int = 0) -> list[Atoms]:
    """Small C/H/O molecules near a Morse minimum, labelled by the Morse potential."""
    rng = np.random.default_rng(seed)
    shapes = [("OH2", [[0, 0, 0], [1.1, 0, 0], [0, 1.1, 0]]),
              ("CH3", [[0, 0, 0], [1.1, 0, 0], [0, 1.1, 0], [0, 0, 1.1]][:4]),
              ("CO2", [[0, 0, 0], [1.15, 0, 0], [-1.15, 0, 0]]),
              ("CH4", [[0, 0, 0], [1.1, 0, 0], [0, 1.1, 0], [0, 0, 1.1], [-0.7, -0.7, -0.7]])]
    out = []
    for k in range(n):
        sym, pos = shapes[k % len(shapes)]
        a = Atoms(sym, positions=np.array(pos[:len(Atoms(sym))], float)
                  + rng.normal(scale=0.08, size=(len(Atoms(sym)), 3)))
        a.calc = MorsePotential(epsilon=0.4, r0=1.15, rho0=5.0)
        e, f = a.get_potential_energy() - 2.0 * len(a), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        a.info["config_type"] = "even" if k % 2 == 0 else "odd"
        out.append(a)
    return out


def _write(path, atoms):
    write(path, atoms, format="extxyz")
    return str(path)


def _cfg(tmp_path, data, **kw) -> TrainConfig:
    base = dict(train=[data], output_dir=str(tmp_path / "run"), model=dict(TINY), lr=1e-2,
                warmup_steps=0, batch_size=4, ema_decay=0.9, checkpoint_every_steps=None,
                checkpoint_every_minutes=None, log_every_steps=1, seed=3, device="cpu",
                progress=False, min_lr_factor=0.1)
    base.update(kw)
    return TrainConfig(**base)


def test_overfit_four_structures(tmp_path):
    torch.set_num_threads(1)
    data = _write(tmp_path / "four.xyz", _molecules(4))
    res = train(_cfg(tmp_path, data, max_steps=120, lr=2e-2, warmup_steps=5))
    losses = [h["loss"] for h in res["loss_history"] if "loss" in h]
    assert len(losses) == 120
    first, last = losses[0], min(losses[-5:])
    assert last < first / 10, (first, last)
    print("overfit loss", first, last)
    m = E2FormerV2.load(res["model"])
    assert m.metadata["config"]["max_steps"] == 120
    assert (tmp_path / "run" / "learning_curve.png").is_file()


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    data = _write(tmp_path / "six.xyz", _molecules(6, seed=1))
    val = _write(tmp_path / "val.xyz", _molecules(2, seed=2))
    kw = dict(max_steps=8, batch_size=2, checkpoint_every_steps=3, val=[val])
    ref = train(_cfg(tmp_path / "a", data, **kw))

    cfg = _cfg(tmp_path / "b", data, **kw)
    killed = train(cfg, stop_after_steps=7)  # "killed" after step 7, no final checkpoint
    assert killed["killed"]
    ckpt = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6  # lost one step: less than the checkpoint interval
    resumed = train(cfg)
    assert resumed["step"] == ref["step"] == 8

    a = torch.load(tmp_path / "a" / "run" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=False)
    for key in ("model", "ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=0, atol=1e-6, msg=f"{key} {name}")
    la = [h["loss"] for h in a["history"] if "loss" in h]
    lb = [h["loss"] for h in b["history"] if "loss" in h]
    np.testing.assert_allclose(lb[-2:], la[-2:], rtol=1e-6)
    va = ref["metrics"]["val"]["overall"]["force_mae_meV_per_A"]
    vb = resumed["metrics"]["val"]["overall"]["force_mae_meV_per_A"]
    assert vb == pytest.approx(va, rel=1e-6)


def _tiny_model(elements=("H", "C", "O")) -> E2FormerV2:
    torch.manual_seed(0)
    m = E2FormerV2(E2FormerConfig(elements=list(elements), **TINY)).double()
    m.set_reference_energies({"H": -1.0, "C": -3.0, "O": -4.0})
    return m


def test_evaluate_json_equals_hand_computation(tmp_path, capsys):
    atoms = _molecules(3, seed=5)
    data = _write(tmp_path / "eval.xyz", atoms)
    model = _tiny_model()
    path = tmp_path / "m.pt"
    model.save(path)
    png = tmp_path / "parity.png"
    assert cli_main(["evaluate", "--model", str(path), "--data", data, "--json",
                     "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    calc = E2FormerCalculator(E2FormerV2.load(path))
    e_err, f_err = {}, {}
    for a in atoms:
        ref_e, ref_f = a.get_potential_energy(), a.get_forces()
        b = a.copy()
        b.calc = calc
        s = a.info["config_type"]
        e_err.setdefault(s, []).append((b.get_potential_energy() - ref_e) / len(a))
        f_err.setdefault(s, []).append(np.abs(b.get_forces() - ref_f).ravel())
    for s in ("even", "odd"):
        got = out["subsets"][s]
        assert got["energy_mae_meV_per_atom"] == pytest.approx(
            1000 * np.mean(np.abs(e_err[s])), rel=1e-9)
        assert got["energy_mean_error_meV_per_atom"] == pytest.approx(
            1000 * np.mean(e_err[s]), rel=1e-9)
        assert got["force_mae_meV_per_A"] == pytest.approx(
            1000 * np.concatenate(f_err[s]).mean(), rel=1e-9)
    all_e = [x for v in e_err.values() for x in v]
    all_f = np.concatenate([x for v in f_err.values() for x in v])
    assert out["overall"]["energy_mae_meV_per_atom"] == pytest.approx(
        1000 * np.mean(np.abs(all_e)), rel=1e-9)
    assert out["overall"]["force_mae_meV_per_A"] == pytest.approx(1000 * all_f.mean(), rel=1e-9)
    assert out["overall"]["n_frames"] == 3


def test_evaluate_by_molecule_groups_spice_frames(capsys):
    """--by-molecule: the metrics of each SPICE molecule (HDF5 group) equal those of its
    frames evaluated alone, and the table lists the molecules."""
    from conftest import SHARED_DATA
    from e2former_lammps.training.evaluate import evaluate_frames

    frames = read_dataset(str(SHARED_DATA / "val.hdf5"))
    groups = sorted({f.info["group"] for f in frames})[:2]
    picked = [f for g in groups for f in [x for x in frames if x.info["group"] == g][:3]]
    model = _tiny_model(elements=("H", "C", "N", "O", "F", "S", "Cl"))
    out = evaluate_frames(model, picked, batch_size=4, device="cpu", by_molecule=True)
    assert sorted(out["molecules"]) == groups
    cfg = model.config
    packed = PackedFrames(picked, cfg.elements, cfg.atomic_numbers, cfg.cutoff,
                          dtype=torch.float64)
    e_pred = predict(model, packed.batch(list(range(len(picked)))))[0].detach().numpy()
    err = (e_pred - np.array([f.energy for f in picked])) / np.array([len(f) for f in picked])
    centered = []
    for g in groups:
        alone = evaluate_frames(model, [f for f in picked if f.info["group"] == g],
                                device="cpu")["overall"]
        for key in ("energy_mae_meV_per_atom", "force_mae_meV_per_A", "n_frames"):
            assert out["molecules"][g][key] == pytest.approx(alone[key], rel=1e-9)
        mine = err[[f.info["group"] == g for f in picked]]
        centered.append(mine - mine.mean())
        assert out["molecules"][g]["conformer_energy_mae_meV_per_atom"] == pytest.approx(
            1000 * np.abs(centered[-1]).mean(), rel=1e-6)
    assert out["overall"]["conformer_energy_mae_meV_per_atom"] == pytest.approx(
        1000 * np.abs(np.concatenate(centered)).mean(), rel=1e-6)
    assert out["overall"]["conformer_energy_mae_meV_per_atom"] < \
        out["overall"]["energy_mae_meV_per_atom"]


def test_batch_equals_single_structures():
    atoms = _molecules(3, seed=7)
    frames = [Frame.from_atoms(a, a.get_potential_energy(), a.get_forces()) for a in atoms]
    model = _tiny_model()
    cfg = model.config
    packed = PackedFrames(frames, cfg.elements, cfg.atomic_numbers, cfg.cutoff,
                          dtype=torch.float64)
    e, f = predict(model, packed.batch([2, 0, 1]))
    calc = E2FormerCalculator(model)
    for row, k in enumerate([2, 0, 1]):
        a = atoms[k].copy()
        a.calc = calc
        assert float(e[row].detach()) == pytest.approx(a.get_potential_energy(), abs=1e-9)
    b = atoms[2].copy()
    b.calc = calc
    np.testing.assert_allclose(f[:len(b)].detach().numpy(), b.get_forces(), atol=1e-9)


def test_reference_energies_least_squares():
    rng = np.random.default_rng(0)
    refs = {"H": -13.6, "C": -1030.0, "O": -2040.0}
    frames = []
    for k in range(8):
        n_h, n_c, n_o = rng.integers(1, 5, size=3)
        nums = [1] * n_h + [6] * n_c + [8] * n_o
        e = n_h * refs["H"] + n_c * refs["C"] + n_o * refs["O"]
        frames.append(Frame(numbers=nums, positions=rng.normal(size=(len(nums), 3)) * 3,
                            energy=e, forces=np.zeros((len(nums), 3))))
    packed = PackedFrames(frames, ["H", "C", "O", "N"], [1, 6, 8, 7], 4.0)
    fit = fit_reference_energies(packed, ["H", "C", "O", "N"])
    for k, v in refs.items():
        assert fit[k] == pytest.approx(v, abs=1e-8)
    assert fit["N"] == 0.0


def test_charge_energies_least_squares():
    """With by_charge, one energy per nonzero total charge (per structure) is fitted with the
    element energies; without it, charged frames only blur the element energies."""
    from e2former_lammps.training.batching import fit_energy_offsets

    rng = np.random.default_rng(1)
    refs, by_q = {"H": -13.6, "C": -1030.0, "O": -2040.0}, {-1: 2.5, 1: -11.75, 2: -30.0}
    frames = []
    for k in range(24):
        n_h, n_c, n_o = rng.integers(1, 6, size=3)
        q = [-1, 0, 1, 2][k % 4]
        nums = [1] * n_h + [6] * n_c + [8] * n_o
        e = n_h * refs["H"] + n_c * refs["C"] + n_o * refs["O"] + by_q.get(q, 0.0)
        frames.append(Frame(numbers=nums, positions=rng.normal(size=(len(nums), 3)) * 3,
                            energy=e, forces=np.zeros((len(nums), 3)), charge=float(q)))
    packed = PackedFrames(frames, ["H", "C", "O"], [1, 6, 8], 4.0)
    elements, charges = fit_energy_offsets(packed, ["H", "C", "O"], by_charge=True)
    assert set(charges) == {"-1", "1", "2"}
    for q, v in by_q.items():
        assert charges[str(q)] == pytest.approx(v, abs=1e-8)
    for k, v in refs.items():
        assert elements[k] == pytest.approx(v, abs=1e-8)
    assert fit_energy_offsets(packed, ["H", "C", "O"], by_charge=False)[1] == {}


def test_charged_frames_on_a_model_without_charge_input_warn(tmp_path):
    """A neutral-only model trained on charged frames says so, naming the charges; a model
    with the charge input does not."""
    mols = _molecules(6)
    for k, a in enumerate(mols):
        a.info["charge"] = [0, 1, -1][k % 3]
    data = _write(tmp_path / "q.xyz", mols)
    with pytest.warns(UserWarning, match=r"4 of 6 training frames are charged \(total "
                                         r"charges \[-1, 1\] e\)"):
        train(_cfg(tmp_path / "a", data, max_steps=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(_cfg(tmp_path / "b", data, max_steps=1,
                   model=dict(TINY, charge_spin=True, charge_spin_mode="distributed")))


def test_training_a_distributed_charge_model_fits_and_saves_charge_energies(tmp_path):
    """train() on charged frames with charge_spin_mode "distributed" stores the per-charge
    energies of the least-squares fit of its data in the saved model."""
    from e2former_lammps.training.batching import fit_energy_offsets

    mols = _molecules(8)
    for k, a in enumerate(mols):
        a.info["charge"] = [0, 1][k % 2]
        a.calc.results["energy"] += -5.0 if k % 2 else 0.0
    data = _write(tmp_path / "q.xyz", mols)
    cfg = _cfg(tmp_path, data, max_steps=3,
               model=dict(TINY, charge_spin=True, charge_spin_mode="distributed"))
    out = train(cfg)
    model = E2FormerV2.load(out["model"])
    assert model.config.charge_spin_mode == "distributed"
    packed = PackedFrames(read_dataset(data), model.elements, model.config.atomic_numbers,
                          model.config.cutoff)
    expect = fit_energy_offsets(packed, model.elements, by_charge=True)
    assert model.config.charge_energies == pytest.approx(expect[1], abs=1e-9)
    assert model.config.reference_energies == pytest.approx(expect[0], abs=1e-9)
    assert set(expect[1]) == {"1"} and expect[1]["1"] < -3.0  # the 5 eV shift, mostly


def test_init_model_switches_to_the_distributed_charge_embedding(tmp_path):
    """init_model + model.charge_spin_mode: every weight but the charge/spin embedding is
    taken over (the new one keeps the uniform embedding's neutral-singlet vector, so neutral
    frames are predicted exactly as before), the embedding starts afresh, the
    element energies are kept and each charge state's energy is the mean residual of its
    frames; any other model entry beside init_model stays an error."""
    from e2former_lammps.training.trainer import _init_model

    mols = _molecules(8)
    for k, a in enumerate(mols):
        a.info["charge"] = [0, 1][k % 2]
    data = _write(tmp_path / "q.xyz", mols)
    uniform = E2FormerV2(E2FormerConfig(elements=["H", "C", "O"], charge_spin=True, **TINY))
    uniform.double().save(tmp_path / "uniform.pt")  # fp64: the comparison below is exact
    cfg = _cfg(tmp_path, data, max_steps=2, init_model=str(tmp_path / "uniform.pt"),
               model={"charge_spin_mode": "distributed"})
    switched, was_switched = _init_model(cfg)
    assert was_switched and next(switched.parameters()).dtype == torch.float64
    assert switched.config.charge_spin_mode == "distributed"
    old = uniform.state_dict()
    new = switched.state_dict()
    assert {k for k in new if not k.startswith("charge_spin.")} == \
        {k for k in old if not k.startswith("charge_spin.")}
    for k, v in new.items():
        if not k.startswith("charge_spin.") and k != "reference_energies":  # shifted: below
            assert torch.equal(v, old[k]), k
    assert float(switched.charge_spin.neutral.detach().abs().max()) > 0
    from e2former_lammps.training.batching import fit_charge_energies_to_residuals, predict

    packed = PackedFrames(read_dataset(data), ["H", "C", "O"], [1, 6, 8], TINY["cutoff"],
                          dtype=torch.float64)
    neutral = packed.batch([0, 2, 4, 6])
    e_uniform, f_uniform = predict(uniform, neutral)
    e_switched, f_switched = predict(switched, neutral)
    torch.testing.assert_close(e_switched, e_uniform, rtol=0, atol=1e-10)
    torch.testing.assert_close(f_switched, f_uniform, rtol=0, atol=1e-10)
    # before any step, the charge energy of the +1 frames absorbs their mean residual
    switched.set_charge_energies(fit_charge_energies_to_residuals(switched, packed))
    b = packed.batch([1, 3, 5, 7])
    assert abs(float((b.energy - predict(switched, b)[0].detach()).mean())) < 1e-9
    out = E2FormerV2.load(train(cfg)["model"])
    assert out.config.charge_spin_mode == "distributed" and set(out.config.charge_energies) == {"1"}
    # init_model already distributed: nothing is reset (the trained embedding is kept)
    out.save(tmp_path / "distributed.pt")
    again, was_switched = _init_model(_cfg(tmp_path, data, max_steps=2,
                                           init_model=str(tmp_path / "distributed.pt"),
                                           model={"charge_spin_mode": "distributed"}))
    assert not was_switched
    assert all(torch.equal(v, out.state_dict()[k]) for k, v in again.state_dict().items())
    assert again.config.charge_energies == out.config.charge_energies
    assert out.config.reference_energies == switched.config.reference_energies
    with pytest.raises(ValueError, match=r"\['channels'\]"):
        _cfg(tmp_path, data, max_steps=2, init_model=str(tmp_path / "uniform.pt"),
             model={"charge_spin_mode": "distributed", "channels": 8})
    no_charge = tmp_path / "plain.pt"
    _tiny_model().save(no_charge)
    with pytest.raises(ValueError, match="no charge/spin input"):
        train(_cfg(tmp_path, data, max_steps=2, init_model=str(no_charge),
                   model={"charge_spin_mode": "distributed"},
                   output_dir=str(tmp_path / "run-plain")))


def test_config_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": "x.xyz", "max_steps": 1, "learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"train": "x.xyz"}))
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"max_steps": 3}))
    with pytest.raises(ValueError, match="train"):
        TrainConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"train": "x.xyz", "max_steps": 1, "model": {"chanels": 3}}))
    with pytest.raises(ValueError, match="chanels"):
        TrainConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"train": "x.xyz", "max_steps": 1, "init_model": "m.pt",
                                 "model": {"channels": 16}}))
    with pytest.raises(ValueError, match="init_model m.pt sets the architecture"):
        TrainConfig.from_yaml(p)
    # YAML 1.1 reads 3e-3 (no dot) as a string: accepted as the number it means
    p.write_text("train: x.xyz\nmax_steps: 2\nlr: 3e-3\n")
    cfg = TrainConfig.from_yaml(p)
    assert cfg.lr == 0.003 and isinstance(cfg.lr, float) and cfg.max_steps == 2
    for bad, name in (("lr: fast", "lr"), ("batch_size: 2.5", "batch_size"),
                      ("w_force: true", "w_force"), ("cuda_graphs: 'no'", "cuda_graphs"),
                      ("resume: 1", "resume")):
        p.write_text(f"train: x.xyz\nmax_steps: 2\n{bad}\n")
        with pytest.raises(ValueError, match=name):
            TrainConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"train": str(tmp_path / "missing.xyz"), "max_steps": 1,
                                 "output_dir": str(tmp_path / "o")}))
    assert cli_main(["train", str(p)]) == 2  # clear error, no traceback
    assert cli_main(["train", str(p), "--set", "lr"]) == 2  # KEY=VALUE expected
    assert cli_main(["train", str(p), "--set", "lr=fast"]) == 2


def test_override_of_one_model_entry():
    """`--set model.NAME=VALUE` changes that entry and keeps the rest of the mapping."""
    cfg = TrainConfig(train=["x.xyz"], max_steps=1, model={"channels": 16, "num_layers": 2})
    changed = cfg.replace(**parse_overrides(["model.identity_paths=true", "lr=0.01"]))
    assert changed.model == {"channels": 16, "num_layers": 2, "identity_paths": True}
    assert changed.lr == 0.01 and cfg.model == {"channels": 16, "num_layers": 2}
    with pytest.raises(ValueError, match="chanels"):
        cfg.replace(**{"model.chanels": 3})


def test_shipped_configs_load_and_chain():
    """Every YAML in configs/ is a valid training config with a buildable model, and each
    stage of the shipped model starts from what the stage before it writes."""
    from pathlib import Path

    configs = {p.stem: TrainConfig.from_yaml(p)
               for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")}
    stages = ["spice-xtb-long", "spice-xtb-continue", "spice-xtb-forces", "spice-xtb-charge",
              "spice-xtb-charge-continue", "spice-xtb-stage6", "spice-xtb-stage7",
              "spice-xtb-stage8", "spice-xtb-stage9", "spice-xtb-stage10",
              "spice-xtb-stage12-coulomb", "spice-xtb-stage13-envelope-w2", "spice-xtb-stage14",
              "spice-xtb-stage15"]
    assert {"spice-xtb", *stages} <= set(configs)
    for name, cfg in configs.items():
        if cfg.init_model is None:
            E2FormerConfig(elements=["H", "O"], **cfg.model)
    for before, after in zip(stages, stages[1:]):
        first, second = configs[before], configs[after]
        # from the stage before's output, or from the package it was shipped as
        assert (Path(second.init_model) == Path(first.output_dir) / first.model_name
                or second.init_model == "spice-xtb")
        # the architecture comes from the first stage (the charge embedding may switch, the
        # Coulomb term be added, the attention weight's envelope switched on)
        assert set(second.model) <= {"charge_spin_mode", "coulomb_cutoff", "coulomb_width",
                                     "weight_envelope"}
    shipped = E2FormerV2.load("spice-xtb").config
    assert shipped.charge_spin_mode == configs["spice-xtb-charge"].model["charge_spin_mode"]
    assert shipped.coulomb_cutoff == configs["spice-xtb-stage12-coulomb"].model["coulomb_cutoff"]
    assert shipped.weight_envelope == \
        configs["spice-xtb-stage13-envelope-w2"].model["weight_envelope"]


def test_init_model_switches_on_the_weight_envelope(tmp_path):
    """init_model + model.weight_envelope: every weight is taken over unchanged under the
    other attention-weight formula, and the trained model is saved with it."""
    from e2former_lammps.training.trainer import _init_model

    data = _write(tmp_path / "m.xyz", _molecules(6))
    base = E2FormerV2(E2FormerConfig(elements=["H", "C", "O"], **TINY)).double()
    base.save(tmp_path / "base.pt")
    cfg = _cfg(tmp_path, data, max_steps=1, init_model=str(tmp_path / "base.pt"),
               model={"weight_envelope": 1.0})
    switched, _ = _init_model(cfg)
    assert switched.config.weight_envelope == 1.0 and base.config.weight_envelope is None
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in switched.state_dict().items())
    assert all(b.attention.weight_envelope == 1.0 for b in switched.blocks)
    assert E2FormerV2.load(train(cfg)["model"]).config.weight_envelope == 1.0


def test_init_model_refits_only_the_offsets_its_network_misses(tmp_path):
    """A trained init_model keeps its network's energies: refit_energy_offsets fits the
    least-squares offsets of its residuals and adds them, so labels equal to the model's
    energies plus known per-element and per-charge offsets give back exactly those offsets,
    and labels equal to its energies leave its offsets as they were."""
    from e2former_lammps.training.batching import energy_residuals, refit_energy_offsets

    mols = _molecules(12, seed=3)
    for k, a in enumerate(mols):
        a.info["charge"] = [0, 1, -1][k % 3]
    data = _write(tmp_path / "q.xyz", mols)
    model = E2FormerV2(E2FormerConfig(elements=["H", "C", "O"], charge_spin=True,
                                      charge_spin_mode="distributed", **TINY)).double()
    model.set_reference_energies({"H": -13.0, "C": -1030.0, "O": -2040.0})
    model.set_charge_energies({"1": 2.0, "-1": -3.0, "2": 7.5})  # "2": absent from the data
    packed = PackedFrames(read_dataset(data), model.elements, model.config.atomic_numbers,
                          TINY["cutoff"], dtype=torch.float64)
    model_energy = packed.energy.cpu().numpy() - energy_residuals(model, packed)
    shift = {"H": 0.25, "C": -0.5, "O": 1.5}
    charges = packed.charge.cpu().numpy().round()
    packed.energy = torch.tensor(model_energy + packed.counts @ [shift[e] for e in model.elements]
                                 + np.where(charges == 1, 0.125, 0.0)
                                 + np.where(charges == -1, -0.75, 0.0), dtype=torch.float64)
    element_e, charge_e = refit_energy_offsets(model, packed)
    assert element_e == pytest.approx(
        {e: model.config.reference_energies[e] + shift[e] for e in shift}, abs=1e-9)
    assert charge_e == pytest.approx({"1": 2.125, "-1": -3.75, "2": 7.5}, abs=1e-9)
    # train() from it starts with those offsets (one step changes weights, not offsets)
    for a, e in zip(mols, packed.energy.tolist()):
        a.calc.results["energy"] = e
    model.save(tmp_path / "init.pt")
    out = E2FormerV2.load(train(_cfg(tmp_path, _write(tmp_path / "shifted.xyz", mols),
                                     max_steps=1, dtype="float64", model={},
                                     init_model=str(tmp_path / "init.pt")))["model"])
    assert out.config.reference_energies == pytest.approx(element_e, abs=1e-9)
    assert out.config.charge_energies == pytest.approx(charge_e, abs=1e-9)
    packed.energy = torch.tensor(model_energy, dtype=torch.float64)
    element_e, charge_e = refit_energy_offsets(model, packed)
    assert element_e == pytest.approx(model.config.reference_energies, abs=1e-9)
    assert charge_e == pytest.approx(model.config.charge_energies, abs=1e-9)


def test_train_rejects_unknown_elements(tmp_path):
    data = _write(tmp_path / "d.xyz", _molecules(2))
    with pytest.raises(ValueError, match=r"\['O'\]"):
        train(_cfg(tmp_path, data, max_steps=1, elements=["H", "C"]))


def test_save_atomic(tmp_path):
    path = tmp_path / "ck.pt"
    save_atomic({"a": torch.ones(2)}, path)
    save_atomic({"a": torch.zeros(2)}, path)
    assert torch.load(path)["a"].sum() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_read_dataset_frames_feed_training(tmp_path):
    data = _write(tmp_path / "d.xyz", _molecules(2))
    frames = read_dataset(data)
    assert {f.subset for f in frames} == {"even", "odd"}


def test_wall_clock_budget_stops_in_time_and_writes_everything(tmp_path):
    torch.set_num_threads(1)
    data = _write(tmp_path / "d.xyz", _molecules(8, seed=4))
    cfg = _cfg(tmp_path, data, val=[data], max_wall_minutes=0.06, final_reserve_s=1.0,
               max_steps=10**6, log_every_steps=2, val_every_steps=5)
    import time
    t = time.monotonic()
    res = train(cfg)
    wall = time.monotonic() - t
    assert wall < 0.06 * 60 + 1.5, wall  # the reserve covered the final validation/saving
    assert res["step"] > 2
    m = res["metrics"]
    assert m["attention_impl"] == "reference"  # the training default
    assert m["stopped_early"] is None and m["skipped_steps"] == 0
    for name in ("metrics.json", "history.json", "learning_curve.png", "model.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    lrs = [h["lr"] for h in res["loss_history"] if "lr" in h]
    assert lrs[-1] < 0.3 * cfg.lr  # the schedule follows the wall-clock budget
    assert all("grad_norm" in h for h in res["loss_history"] if "loss" in h)


def test_non_finite_steps_are_skipped_then_the_run_stops_with_a_model(tmp_path):
    torch.set_num_threads(1)
    mols = _molecules(4, seed=6)
    for a in mols:  # labels that give a NaN loss in every batch
        f = a.get_forces()
        f[0, 0] = np.nan
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=f)
    data = _write(tmp_path / "nan.xyz", mols)
    res = train(_cfg(tmp_path, data, max_steps=100))
    m = res["metrics"]
    assert m["skipped_steps"] == 20 and "non-finite" in m["stopped_early"]
    model = E2FormerV2.load(res["model"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_direct_force_head_is_equivariant():
    """Direct forces rotate with the structure (fp64): they come from the l = 1 features."""
    from e2former_lammps.neighbors import atoms_to_graph

    torch.manual_seed(0)
    model = E2FormerV2(E2FormerConfig(elements=["H", "C", "O"], direct_force_head=True,
                                      **TINY)).double()
    atoms = _molecules(4, seed=9)[3]
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator(
    ).manual_seed(1)))
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ q.numpy().T
    out = []
    for a in (atoms, rotated):
        cfg = model.config
        graph = atoms_to_graph(a, cfg.elements, cfg.atomic_numbers, cfg.cutoff,
                               dtype=torch.float64)
        e, f = model.energy_and_direct_forces(graph)
        out.append((e.sum(), f))
    assert float(out[0][0].detach()) == pytest.approx(float(out[1][0].detach()), abs=1e-10)
    torch.testing.assert_close(out[1][1], out[0][1] @ q.T, rtol=0, atol=1e-10)
    assert out[0][1].abs().max() > 1e-6  # not trivially zero


def test_direct_force_pretraining_then_autograd(tmp_path):
    """direct_force_steps: the first steps fit the force head, then -dE/dx; both cut the loss."""
    torch.set_num_threads(1)
    data = _write(tmp_path / "four.xyz", _molecules(4))
    res = train(_cfg(tmp_path, data, max_steps=60, lr=2e-2, warmup_steps=5,
                     direct_force_steps=30))
    hist = [h for h in res["loss_history"] if "loss" in h]
    modes = [h["forces"] for h in hist]
    assert modes[:30] == ["direct"] * 30 and modes[30:] == ["autograd"] * 30
    assert min(h["loss"] for h in hist[25:30]) < hist[0]["loss"] / 2
    assert min(h["loss"] for h in hist[55:]) < hist[30]["loss"] / 3
    m = E2FormerV2.load(res["model"])
    assert m.config.direct_force_head and m.force_head is not None
    _tiny_model().save(tmp_path / "tiny.pt")  # a model without the head
    with pytest.raises(ValueError, match="direct force head"):
        train(_cfg(tmp_path / "b", data, max_steps=1, direct_force_steps=1,
                   init_model=str(tmp_path / "tiny.pt"), model={}))


def _run_benchmark(script: str, *args: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(repo / "benchmarks" / script), *args],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": f"{repo}:{repo / 'benchmarks'}"})
    assert run.returncode == 0, run.stderr[-2000:]


def _sweep_config(tmp_path) -> str:
    data = _write(tmp_path / "d.xyz", _molecules(8))
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(dict(train=data, val=data, model=dict(TINY), batch_size=4,
                                       warmup_steps=0, device="cpu", progress=False,
                                       max_steps=1000, checkpoint_every_steps=None,
                                       checkpoint_every_minutes=None)))
    return str(cfg)


def test_profile_train_step_counts_each_batch_size(tmp_path):
    """benchmarks/profile_train_step.py profiles the requested steps of real training and
    reports per batch size the wall time, operator time and ATen calls of a step."""
    out = tmp_path / "profile.json"
    _run_benchmark("profile_train_step.py", _sweep_config(tmp_path), "--batch-sizes", "2",
                   "4", "--warmup", "1", "--active", "2", "--rows", "3", "--out", str(out))
    results = json.loads(out.read_text())["results"]
    assert [r["batch_size"] for r in results] == [2, 4]
    for r in results:
        assert r["steps_profiled"] == 2 and r["wall_s_per_step"] > 0 and r["kernel_s_per_step"] > 0
        assert r["aten_calls_per_step"] > 100 and len(r["top"]) == 3


def test_train_sweep_records_each_variant(tmp_path):
    """benchmarks/train_sweep.py trains every variant, a `model.` entry included, for the same
    time and writes one JSON with each variant's changes, steps and validation metrics."""
    out = tmp_path / "sweep.json"
    _run_benchmark("train_sweep.py", _sweep_config(tmp_path), "--minutes", "0.02",
                   "--variant", "base:", "--variant", "id:model.identity_paths=true,lr=0.005",
                   "--workdir", str(tmp_path / "runs"), "--out", str(out), "--no-plot")
    runs = {r["name"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["base"]["changes"] == {}
    assert runs["id"]["changes"] == {"model.identity_paths": True, "lr": 0.005}
    trained = E2FormerV2.load(tmp_path / "runs" / "id" / "model.pt")
    assert trained.config.identity_paths
    for r in runs.values():
        assert r["steps"] > 0 and np.isfinite(r["val"]["overall"]["force_mae_meV_per_A"])


def test_metric_accumulator_keeps_each_frames_values_in_frame_order():
    """keep_values: per subset, the energies per atom and force components of its frames in
    the order added, each frame's atoms together even when the batch interleaves them."""
    from e2former_lammps.training.metrics import MetricAccumulator

    rng = np.random.default_rng(0)
    atom_frame = np.array([1, 0, 2, 1, 0, 1])  # frames of 2, 3 and 1 atoms, interleaved
    n_atoms = np.bincount(atom_frame)
    e_pred, e_ref = rng.normal(size=3), rng.normal(size=3)
    f_pred, f_ref = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    acc = MetricAccumulator(keep_values=True)
    acc.add(["a", "b", "a"], e_pred, e_ref, n_atoms, f_pred, f_ref, atom_frame)
    got = acc.parity_values()
    np.testing.assert_array_equal(got["a"]["e_pred"], e_pred[[0, 2]] / n_atoms[[0, 2]])
    np.testing.assert_array_equal(got["b"]["e_ref"], e_ref[[1]] / n_atoms[1])
    np.testing.assert_array_equal(got["a"]["f_pred"], f_pred[[1, 4, 2]].ravel())
    np.testing.assert_array_equal(got["b"]["f_ref"], f_ref[[0, 3, 5]].ravel())
    assert acc.result()["subsets"]["b"]["n_atoms"] == 3
