"""A training step's loss and gradients: padded batches (the CUDA-graph shapes) change
nothing; the graphed step replays the eager one on the GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, distributed_charge_model, random_model, spice_molecules
from e2former_lammps.data import read_dataset
from e2former_lammps.training import TrainConfig, train
from e2former_lammps.training.batching import PackedFrames
from e2former_lammps.training.step import (BatchKey, GraphedLossAndGradients, LossAndGradients,
                                           PaddedBatch, batch_key)
from e2former_lammps.training.trainer import ema_update


def _spice_frames(charges: dict[int, int], seed: int):
    """Real spice-xtb validation frames of H, C, N, O only: charges[q] frames of charge q."""
    rng = np.random.default_rng(seed)
    frames = [f for f in read_dataset(SHARED_DATA / "val.hdf5")
              if set(f.numbers.tolist()) <= {1, 6, 7, 8}]
    out = []
    for q, n in charges.items():
        pool = [f for f in frames if round(f.charge) == q]
        out += [pool[k] for k in rng.choice(len(pool), size=n, replace=False)]
    return out


def _loss_and_grads(step: LossAndGradients, batch) -> tuple[list[float], list[torch.Tensor]]:
    res = step(batch)
    return ([float(res.loss), float(res.loss_energy), float(res.loss_force), float(res.gnorm)],
            [p.grad.clone() for p in step.params])


@pytest.mark.parametrize("extra_atoms,extra_pairs", [(None, None), (1, 0), (9, 37)])
def test_padded_batch_gives_the_loss_and_gradients_of_the_batch(extra_atoms, extra_pairs):
    """Padding atoms (one extra structure, force weight 0) and padding pairs (self-pairs of
    padding atoms at 2 r_c) change neither the loss terms nor any parameter gradient (fp64;
    distributed charge embedding, neutral and charged real frames). None: batch_key's own
    bucket."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    model = distributed_charge_model(seed)
    frames = _spice_frames({0: 4, 1: 2}, seed)
    packed = PackedFrames(frames, model.elements, model.config.atomic_numbers,
                          model.config.cutoff, dtype=torch.float64)
    batch = packed.batch(list(range(len(frames))))
    n_atoms, n_pairs = batch.graph.n_local, batch.graph.pair_i.numel()
    key = batch_key(batch) if extra_atoms is None else BatchKey(
        len(frames), n_atoms + extra_atoms, n_pairs + extra_pairs)
    assert key.n_atoms_pad > n_atoms and key.n_pairs_pad >= n_pairs
    if extra_atoms is None:
        assert key.n_pairs_pad > n_pairs
    step = LossAndGradients(model, w_energy=0.7, w_force=1.3, grad_clip=None)
    want, want_grads = _loss_and_grads(step, batch)
    padded = PaddedBatch(key, model.config.cutoff, True, torch.device("cpu"), torch.float64)
    got, got_grads = _loss_and_grads(step, padded.fill(batch))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    for g, w, (name, _) in zip(got_grads, want_grads, model.named_parameters()):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=name)
    assert sum(float(w.abs().sum()) for w in want_grads) > 0
    # refilled with another batch, the same buffers give that batch's loss
    other = packed.batch([1, 4, 0, 2, 5, 3])
    np.testing.assert_allclose(_loss_and_grads(step, padded.fill(other))[0],
                               _loss_and_grads(step, other)[0], rtol=1e-10)


def test_clipped_gradients_have_the_clip_norm():
    """grad_clip scales the gradients to that norm and reports the norm before clipping."""
    model = random_model(seed=5)
    frames = _spice_frames({0: 3}, seed=5)
    batch = PackedFrames(frames, model.elements, model.config.atomic_numbers,
                         model.config.cutoff, dtype=torch.float64).batch([0, 1, 2])
    free, _ = _loss_and_grads(LossAndGradients(model, 1.0, 1.0, None), batch)
    step = LossAndGradients(model, 1.0, 1.0, grad_clip=free[3] / 4)
    res, grads = _loss_and_grads(step, batch)
    assert res[3] == pytest.approx(free[3], rel=1e-12)
    total = torch.sqrt(sum((g * g).sum() for g in grads))
    assert float(total) == pytest.approx(free[3] / 4, rel=1e-5)


def test_ema_update_is_the_weighted_mean():
    """ema <- d ema + (1 - d) model with d = min(decay, (1 + step) / (10 + step))."""
    ema, model = random_model(seed=1), random_model(seed=2)
    before = [p.clone() for p in ema.parameters()]
    for step, decay in [(0, 0.999), (1000, 0.99)]:
        d = min(decay, (1 + step) / (10 + step))
        ema_update(ema, model, decay, step)
        for b, pe, pm in zip(before, ema.parameters(), model.parameters()):
            torch.testing.assert_close(pe, d * b + (1 - d) * pm, rtol=1e-14, atol=1e-15)
        before = [p.clone() for p in ema.parameters()]


def _energy(model, atoms) -> float:
    from e2former_lammps.calculator import E2FormerCalculator

    atoms = atoms.copy()
    atoms.calc = E2FormerCalculator(model)
    return atoms.get_potential_energy()


def test_ema_energies_follow_an_update_that_leaves_versions_alone(monkeypatch):
    """The EMA is frozen, so it caches its isolated-atom baseline, keyed by the parameters'
    versions. CUDA's foreach lerp leaves the versions alone (simulated here on the CPU by
    writing through .data); the EMA's energy must still equal a fresh copy's afterwards. It
    drifted by -280 meV/atom in a 6-min GPU run before ema_update said the weights changed."""
    def lerp_without_version_bump(targets, ends, weight):
        for t, e in zip(targets, ends):
            t.data.lerp_(e.data, weight)

    monkeypatch.setattr(torch, "_foreach_lerp_", lerp_without_version_bump)
    ema, model = random_model(seed=1), random_model(seed=2)
    for p in ema.parameters():
        p.requires_grad_(False)
    atoms = spice_molecules(1, min_atoms=8)[0]
    _energy(ema, atoms)  # caches the baseline
    versions = [p._version for p in ema.parameters()]
    ema_update(ema, model, 0.5, 1000)
    assert [p._version for p in ema.parameters()] == versions  # the simulated fast path
    fresh = random_model(seed=0)
    fresh.load_state_dict(ema.state_dict())
    assert abs(_energy(fresh, atoms) - _energy(random_model(seed=1), atoms)) > 1e-3
    assert _energy(ema, atoms) == pytest.approx(_energy(fresh, atoms), rel=1e-12, abs=1e-10)


@pytest.mark.gpu
def test_gpu_ema_energies_match_the_saved_model(tmp_path):
    """After 60 graphed steps on the GPU, the in-memory EMA's validation energies (what the
    trainer reports) equal those of the saved model reloaded on the CPU. 320 training
    frames: ten batches an epoch, so a few buckets are captured and replayed instead of one
    capture per step (with 2,000 frames and the Coulomb model the test took > 2 min)."""
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run with -m gpu on the GPU machine")
    from e2former_lammps import E2FormerV2
    from e2former_lammps.training.evaluate import evaluate_frames

    cfg = TrainConfig(train=[str(SHARED_DATA / "train.hdf5")], init_model="spice-xtb",
                      val=[str(SHARED_DATA / "val.hdf5")], max_val_frames=64,
                      max_train_frames=320, batch_size=32, max_steps=60, lr=1e-3,
                      warmup_steps=0, val_every_steps=30, checkpoint_every_steps=None,
                      checkpoint_every_minutes=None, device="cuda", progress=False, seed=4,
                      cuda_graphs=True, output_dir=str(tmp_path / "run"))
    res = train(cfg)
    gpu = res["metrics"]["val"]["overall"]
    saved = E2FormerV2.load(tmp_path / "run" / cfg.model_name)
    frames = read_dataset(SHARED_DATA / "val.hdf5")
    # evaluate_frames packs the charged frames' pairs to the shipped model's Coulomb cutoff
    # (packing them to the cutoff alone gave -6.08 against -2.33 meV/atom: now an error)
    cpu = evaluate_frames(saved, frames, batch_size=32, device="cpu")["overall"]
    assert cpu["n_frames"] == gpu["n_frames"]
    assert gpu["energy_mean_error_meV_per_atom"] == pytest.approx(
        cpu["energy_mean_error_meV_per_atom"], abs=0.05)
    assert gpu["force_mae_meV_per_A"] == pytest.approx(cpu["force_mae_meV_per_A"], rel=1e-3)


@pytest.mark.gpu
def test_gpu_graphed_training_matches_eager(tmp_path):
    """40 steps of spice-xtb training (fp32, batch 32) with cuda_graphs on and off from the
    same start: the same losses step by step up to float summation order, and the graphed
    run did replay graphs."""
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA GPU: run with -m gpu on the GPU machine")
    base = TrainConfig(train=[str(SHARED_DATA / "train.hdf5")], init_model="spice-xtb",
                       max_train_frames=320, batch_size=32, max_steps=40, lr=2e-4,
                       warmup_steps=0, log_every_steps=1, checkpoint_every_steps=None,
                       checkpoint_every_minutes=None, device="cuda", progress=False, seed=4)
    runs = {}
    for graphs in (False, True):
        cfg = base.replace(cuda_graphs=graphs, output_dir=str(tmp_path / f"g{int(graphs)}"))
        runs[graphs] = [h["loss"] for h in train(cfg)["loss_history"] if "loss" in h]
    eager, graphed = np.array(runs[False]), np.array(runs[True])
    assert len(eager) == len(graphed) == 40
    # step 0 is the same parameters on the same batch: only the summation order differs
    np.testing.assert_allclose(graphed[0], eager[0], rtol=1e-5)
    # then Adam divides by sqrt(v): fp32 differences in small gradients grow per step
    # (step 2 differed by 1.04e-4 relative at 2338eff, H200)
    np.testing.assert_allclose(graphed[:5], eager[:5], rtol=5e-4)
    np.testing.assert_allclose(graphed, eager, rtol=2e-2)  # fp32 trajectories drift apart
    step = GraphedLossAndGradients(random_model(seed=0, dtype=torch.float32).cuda(),
                                   1.0, 1.0, None)
    frames = _spice_frames({0: 8}, seed=0)
    packed = PackedFrames(frames, step.model.elements, step.model.config.atomic_numbers,
                          step.model.config.cutoff, device="cuda")
    batch = packed.batch(list(range(8)))
    want = [float(x) for x in vars(LossAndGradients._eager(step, batch, False)).values()]
    for _ in range(3):
        got = [float(x) for x in vars(step(batch)).values()]
        np.testing.assert_allclose(got, want, rtol=1e-4)
    assert step.n_graphs == 1 and step.enabled


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_graphed_step_on_the_second_gpu_while_the_first_is_current():
    """Training on cuda:1 while cuda:0 is current: the graphed step captures and replays
    on cuda:1 (its tensors' GPU) and gives the eager step's loss and gradients."""
    step = GraphedLossAndGradients(random_model(seed=1, dtype=torch.float32).to("cuda:1"),
                                   1.0, 1.0, None)
    frames = _spice_frames({0: 8}, seed=1)
    packed = PackedFrames(frames, step.model.elements, step.model.config.atomic_numbers,
                          step.model.config.cutoff, device="cuda:1")
    batch = packed.batch(list(range(8)))
    with torch.cuda.device(0):
        want = [float(x) for x in vars(LossAndGradients._eager(step, batch, False)).values()]
        for _ in range(3):
            got = [float(x) for x in vars(step(batch)).values()]
            np.testing.assert_allclose(got, want, rtol=1e-4)
    assert step.n_graphs == 1 and step.enabled


def test_cuda_graphs_on_the_cpu_train_eagerly(tmp_path, capsys):
    """cuda_graphs: true on a CPU device says it is off and trains exactly as without it."""
    from test_training import _cfg, _molecules, _write

    data = _write(tmp_path / "m.xyz", _molecules(8, seed=2))
    runs = {}
    for graphs in (False, True):
        cfg = _cfg(tmp_path / f"g{int(graphs)}", data, max_steps=4, cuda_graphs=graphs,
                   progress=True)
        res = train(cfg)
        assert res["metrics"]["cuda_graphs"] is None
        runs[graphs] = [h["loss"] for h in res["loss_history"] if "loss" in h]
    assert runs[True] == runs[False] and len(runs[True]) == 4
    assert "cuda_graphs: off on cpu (CUDA only)" in capsys.readouterr().out
