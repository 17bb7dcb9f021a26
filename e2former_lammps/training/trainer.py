"""`e2former-lammps train CONFIG.yaml`: EMA, checkpoints, resume, per-subset validation."""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import E2FormerConfig
from ..data import read_dataset
from ..data.frame import Frame
from ..devices import resolve_device
from ..model import E2FormerV2
from .batching import (PackedFrames, charge_states, fit_charge_energies_to_residuals,
                       fit_energy_offsets, refit_energy_offsets)
from .config import TrainConfig
from .evaluate import evaluate_packed
from .plots import plot_learning_curve
from .step import GraphedLossAndGradients, LossAndGradients

CHECKPOINT = "checkpoint.pt"
MAX_BAD_STEPS = 20


class CosineSchedule:
    """Linear warm-up over `warmup` steps, then cosine from lr to lr*min_factor in progress."""

    def __init__(self, lr: float, warmup: int, min_factor: float):
        self.lr, self.warmup, self.min_factor = lr, warmup, min_factor
        self.last_lr = lr

    def __call__(self, step: int, progress: float) -> float:
        if self.warmup and step < self.warmup:
            lr = self.lr * (step + 1) / self.warmup
        else:
            p = min(max(progress, 0.0), 1.0)
            lr = self.lr * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * p)))
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "warmup": self.warmup, "min_factor": self.min_factor,
                "last_lr": self.last_lr}

    def load_state_dict(self, d: dict) -> None:
        self.lr, self.warmup, self.min_factor = d["lr"], d["warmup"], d["min_factor"]
        self.last_lr = d.get("last_lr", self.lr)


def _read_frames(paths: list[str], fmt: str | None) -> list[Frame]:
    return [f for p in paths for f in read_dataset(p, fmt)]


def _elements_of(frames: list[Frame]) -> list[str]:
    from ase.data import chemical_symbols

    zs = sorted({int(z) for f in frames for z in np.unique(f.numbers)})
    return [chemical_symbols[z] for z in zs]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace (atomic)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _init_model(cfg: TrainConfig) -> tuple[E2FormerV2, bool]:
    """(the init_model with the allowed `model` changes, whether its charge/spin embedding was
    switched). charge_spin_mode: the charge/spin embedding starts afresh, every other weight
    is taken over; from the uniform embedding, its neutral-singlet vector is kept, so neutral
    structures keep their predictions. Asking for the mode it already has changes nothing."""
    base = _with_formula_settings(E2FormerV2.load(cfg.init_model), cfg)
    if cfg.model.get("charge_spin_mode", base.config.charge_spin_mode) == \
            base.config.charge_spin_mode:
        return base, False
    mcfg = copy.deepcopy(base.config)  # charge_spin_mode is the one entry that can differ
    if not mcfg.charge_spin:
        raise ValueError(f"train config: init_model {cfg.init_model} has no charge/spin "
                         f"input, so model.charge_spin_mode cannot change")
    mcfg.charge_spin_mode = cfg.model["charge_spin_mode"]
    mcfg.charge_energies = {}  # fitted again from the training data
    mcfg.__post_init__()
    # the embedding is another module under the same name: its weights start afresh
    model = _taking_over(base, mcfg, fresh="charge_spin.", keep_fresh=False)
    if base.config.charge_spin_mode == "uniform" and mcfg.charge_spin_mode == "distributed":
        with torch.no_grad():
            zero = torch.zeros(1, dtype=next(base.parameters()).dtype)
            model.charge_spin.neutral.copy_(base.charge_spin(zero, zero + 1.0)[0])  # Q=0, S=1
            # eatoms subtract the network's isolated-atom output (computed without a charge),
            # which now includes the neutral vector: shift each element energy by the change
            iso_base = copy.deepcopy(base).double().isolated_atom_energies()
            iso_new = copy.deepcopy(model).double().isolated_atom_energies()
        model.set_reference_energies({
            e: base.config.reference_energies.get(e, 0.0) + float(iso_new[k] - iso_base[k])
            for k, e in enumerate(model.elements)})
    return model, True


def _with_formula_settings(base: E2FormerV2, cfg: TrainConfig) -> E2FormerV2:
    """base with cfg.model's Coulomb term (coulomb_cutoff, coulomb_width: added, its charge
    head starting even, the offsets refitted by the caller; or changed) and attention-weight
    envelope (weight_envelope: the same weights under the other formula), or as it is.
    Every other weight is taken over."""
    changes = {k: cfg.model[k] for k in ("coulomb_cutoff", "coulomb_width", "weight_envelope")
               if k in cfg.model}
    if all(getattr(base.config, k) == v for k, v in changes.items()):
        return base
    mcfg = E2FormerConfig.from_dict({**base.config.to_dict(), **changes})
    # a new cutoff or width keeps the charge head
    return _taking_over(base, mcfg, fresh="coulomb.", keep_fresh=True)


def _taking_over(base: E2FormerV2, config: E2FormerConfig, fresh: str,
                 keep_fresh: bool) -> E2FormerV2:
    """A model of `config` (base's with a changed entry) holding every weight of base, in its
    dtype, except those under the `fresh` prefix: the new model may lack them or have new
    ones there, which start as initialised; keep_fresh takes over base's where both have
    them."""
    model = E2FormerV2(config)
    state = {k: v for k, v in base.state_dict().items()
             if keep_fresh or not k.startswith(fresh)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert all(k.startswith(fresh) for k in missing + unexpected), (missing, unexpected)
    return model.to(next(base.parameters()).dtype)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Frame order of one epoch: a function of (seed, epoch) only, so resume is exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@torch.no_grad()
def ema_update(ema: E2FormerV2, model: E2FormerV2, decay: float, step: int) -> None:
    """ema <- d ema + (1 - d) model, d = min(decay, (1 + step) / (10 + step)); buffers copied.
    foreach operators: two launches instead of two per parameter. On CUDA these do not bump
    the parameters' versions, so the EMA is told its weights changed (its cached baseline)."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))
    ema.weights_changed()


def _warn_if_charges_are_ignored(train_set: PackedFrames, mcfg: E2FormerConfig) -> None:
    """A model without the charge input fits charged frames as if they were neutral: legal
    (a neutral-only potential), but rarely meant, so it is said once."""
    charges, states = charge_states(train_set)
    if mcfg.charge_spin or not states:
        return
    warnings.warn(f"{int((charges != 0).sum())} of {len(charges)} training frames are charged "
                  f"(total charges {states} e) but the model has no charge input "
                  f"(model.charge_spin: false), so they are fitted as if neutral; set "
                  f"model.charge_spin: true and model.charge_spin_mode: distributed to learn "
                  f"the charge", UserWarning, stacklevel=3)


def _fresh_sums() -> dict:
    """Running sums of the logged training quantities between two history entries."""
    return {"loss": 0.0, "loss_energy": 0.0, "loss_force": 0.0, "grad_norm": 0.0, "n": 0}


def train(cfg: TrainConfig, stop_after_steps: int | None = None,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train as `cfg` says; returns {"model": path, "metrics": ..., "step": ...}.

    stop_after_steps simulates a kill: the run stops after that many (total) steps without
    a final checkpoint, so a resumed run restarts from the last periodic checkpoint.
    on_step(step) is called after each optimiser step (profilers, benchmarks).
    """
    t_start = time.monotonic()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    ckpt_path = out / CHECKPOINT
    log = (lambda *a: print(*a, flush=True)) if cfg.progress else (lambda *a: None)

    train_frames = _read_frames(cfg.train, cfg.data_format)
    if cfg.max_train_frames is not None and cfg.max_train_frames < len(train_frames):
        keep = np.random.default_rng(cfg.seed).permutation(len(train_frames))[:cfg.max_train_frames]
        train_frames = [train_frames[k] for k in sorted(keep)]
    val_frames = _read_frames(cfg.val, cfg.data_format) if cfg.val else []

    resumed = cfg.resume and ckpt_path.is_file()
    switched_embedding = False
    if resumed:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        mcfg = E2FormerConfig.from_dict(ckpt["model_config"])
        log(f"resuming from {ckpt_path} at step {ckpt['step']}")
    elif cfg.init_model:
        base, switched_embedding = _init_model(cfg)
        mcfg = base.config
    else:
        elements = list(cfg.elements) if cfg.elements else _elements_of(train_frames)
        mcfg = E2FormerConfig(elements=elements, **{k: v for k, v in cfg.model.items()
                                                    if k != "avg_degree"})
        if cfg.direct_force_steps:
            mcfg.direct_force_head = True
    train_set = PackedFrames(train_frames, mcfg.elements, mcfg.atomic_numbers, mcfg.cutoff,
                             device, dtype, where="training data",
                             coulomb_cutoff=mcfg.coulomb_cutoff)
    val_set = PackedFrames(val_frames, mcfg.elements, mcfg.atomic_numbers, mcfg.cutoff,
                           device, dtype, where="validation data",
                           coulomb_cutoff=mcfg.coulomb_cutoff) if val_frames else None
    _warn_if_charges_are_ignored(train_set, mcfg)

    if not resumed:
        if cfg.init_model:
            model = base
        else:
            mcfg.avg_degree = float(cfg.model.get("avg_degree") or
                                    max(train_set.mean_neighbours(), 1.0))
            torch.manual_seed(cfg.seed)
            model = E2FormerV2(mcfg)
        by_charge = mcfg.distributed_charge
        if switched_embedding:
            # switched embedding: keep the element energies the weights were trained with
            # (a joint refit would move every neutral molecule's energy; _init_model only
            # shifts them by the neutral vector's isolated-atom effect) and give each
            # charge state the mean energy the network misses on it
            model.set_charge_energies(fit_charge_energies_to_residuals(
                model.to(device=device, dtype=dtype), train_set))
        else:
            # a trained init_model keeps what its network predicts: only the offsets it misses
            # are fitted (a refit from the labels alone cost stage 5 ~1000 steps: T14)
            element_e, charge_e = (
                refit_energy_offsets(model.to(device=device, dtype=dtype), train_set)
                if cfg.init_model else fit_energy_offsets(train_set, mcfg.elements, by_charge))
            model.set_reference_energies(element_e)
            if by_charge:
                model.set_charge_energies(charge_e)
    else:
        model = E2FormerV2(mcfg)
    model = model.to(device=device, dtype=dtype)
    if cfg.direct_force_steps and model.force_head is None:
        raise ValueError(f"train config: direct_force_steps needs a model with a direct force "
                         f"head; init_model {cfg.init_model} has none")
    # The force loss differentiates forces (a double backward). The reference attention does
    # that directly; the fused Triton path would run its forward and then recompute the
    # reference anyway, so "reference" is the default while training.
    attention_impl = cfg.attention_impl or "reference"
    model.set_attention_impl(attention_impl)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    graphed = cfg.cuda_graphs and device.type == "cuda"
    if cfg.cuda_graphs and not graphed:
        log(f"cuda_graphs: off on {device} (CUDA only)")
    loss_and_gradients = (GraphedLossAndGradients if graphed else LossAndGradients)(
        model, cfg.w_energy, cfg.w_force, cfg.grad_clip)
    sched = CosineSchedule(cfg.lr, cfg.warmup_steps, cfg.min_lr_factor)

    step, epoch, pos, elapsed_before, history = 0, 0, 0, 0.0, []
    if resumed:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, epoch, pos = ckpt["step"], ckpt["epoch"], ckpt["pos"]
        elapsed_before, history = ckpt["elapsed_s"], ckpt["history"]
        _set_rng_state(ckpt["rng"])
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

    n_train = len(train_set)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters, elements "
        f"{mcfg.elements}, avg_degree {mcfg.avg_degree:.2f}; {n_train} training frames, "
        f"{len(val_frames)} validation frames; device {device}")

    # Hard wall-clock budget: what is left for training once data and model are ready,
    # keeping final_reserve_s for the final validation, the plots and the saving.
    wall_train_s = None
    if cfg.max_wall_minutes is not None:
        wall_train_s = 60 * cfg.max_wall_minutes - (time.monotonic() - t_start) - \
            cfg.final_reserve_s
        if wall_train_s <= 0:
            raise ValueError(f"max_wall_minutes {cfg.max_wall_minutes} leaves no time to train "
                             f"(setup took {time.monotonic() - t_start:.0f} s, final reserve "
                             f"{cfg.final_reserve_s:.0f} s)")
        log(f"wall-clock budget: {wall_train_s:.0f} s of training in this run")

    def progress_fraction(step: int, elapsed: float) -> float:
        fr = []
        if wall_train_s is not None:
            fr.append((time.monotonic() - t0) / wall_train_s)
        if cfg.max_steps:
            fr.append(step / cfg.max_steps)
        if cfg.epochs:
            fr.append(step / (cfg.epochs * steps_per_epoch))
        if cfg.max_minutes:
            fr.append(elapsed / (60 * cfg.max_minutes))
        return max(fr) if fr else 0.0

    def checkpoint(elapsed: float) -> None:
        save_atomic({
            "model_config": model.config.to_dict(), "train_config": cfg.to_dict(),
            "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "step": step, "epoch": epoch, "pos": pos, "elapsed_s": elapsed,
            "history": history, "rng": _rng_state(),
        }, ckpt_path)

    def validate(max_frames=None) -> dict | None:
        if val_set is None:
            return None
        return evaluate_packed(ema, val_set, batch_size=max(cfg.batch_size, 32),
                               max_frames=max_frames)

    total = cfg.max_steps or (cfg.epochs * steps_per_epoch if cfg.epochs else None)
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=1.0 if os.isatty(2) else 15.0)
    t0 = time.monotonic()
    last_ckpt_t = t0
    acc = _fresh_sums()
    order = epoch_order(n_train, cfg.seed, epoch)

    def done(elapsed: float) -> bool:
        return ((cfg.max_steps is not None and step >= cfg.max_steps)
                or (cfg.epochs is not None and epoch >= cfg.epochs)
                or (cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes)
                or (wall_train_s is not None and time.monotonic() - t0 >= wall_train_s))

    model.train()
    killed = False
    stopped_early = None
    bad_steps = skipped = 0
    while not done(elapsed_before + time.monotonic() - t0):
        if stop_after_steps is not None and step >= stop_after_steps:
            killed = True
            break
        idx = order[pos:pos + cfg.batch_size]
        batch = train_set.batch(idx)
        elapsed = elapsed_before + time.monotonic() - t0
        lr = sched(step, progress_fraction(step, elapsed))
        for g in opt.param_groups:
            g["lr"] = lr
        res = loss_and_gradients(batch, direct=step < cfg.direct_force_steps)
        # one read-back per step: a non-finite loss gives non-finite gradients too
        finite = bool(torch.isfinite(res.loss) & torch.isfinite(res.gnorm))
        if finite:
            opt.step()
            ema_update(ema, model, cfg.ema_decay, step)
            bad_steps = 0
        else:  # skip the update: one bad batch must not poison the weights
            bad_steps += 1
            skipped += 1
            if bar is not None:
                bar.write(f"step {step}: non-finite loss or gradient, update skipped "
                          f"({skipped} so far)")
            if bad_steps >= MAX_BAD_STEPS:
                # The weights are still finite (bad updates were skipped): stop here and
                # write the EMA model and the metrics instead of losing the run.
                stopped_early = (f"{MAX_BAD_STEPS} consecutive steps with non-finite "
                                 f"loss/gradients at step {step}; lower lr or check the data")
                log(f"stopping early: {stopped_early}")
                break
        step += 1
        if on_step is not None:
            on_step(step)
        pos += cfg.batch_size
        if pos >= n_train:
            epoch, pos = epoch + 1, 0
            order = epoch_order(n_train, cfg.seed, epoch)
        if finite:
            loss = float(res.loss)
            acc["loss"] += loss
            acc["loss_energy"] += float(res.loss_energy)
            acc["loss_force"] += float(res.loss_force)
            acc["grad_norm"] += float(res.gnorm)
            acc["n"] += 1
        elapsed = elapsed_before + time.monotonic() - t0
        if bar is not None:
            bar.update(1)
            if finite:
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", ep=epoch, refresh=False)
        if step % cfg.log_every_steps == 0 and acc["n"]:
            n = acc.pop("n")
            history.append({"step": step, "epoch": epoch, "elapsed_s": elapsed, "lr": lr,
                            "skipped_steps": skipped,
                            "forces": "direct" if step <= cfg.direct_force_steps else "autograd",
                            **{k: v / n for k, v in acc.items()}})
            acc = _fresh_sums()
        val_due = (cfg.val_every_steps and step % cfg.val_every_steps == 0) or \
            (not cfg.val_every_steps and pos == 0)
        if val_due and val_set is not None and not done(elapsed):
            m = validate(cfg.max_val_frames)
            history.append({"step": step, "epoch": epoch, "elapsed_s": elapsed,
                            "val": m["overall"]})
            if bar is not None:
                bar.write(f"step {step} epoch {epoch}: val energy MAE "
                          f"{m['overall']['energy_mae_meV_per_atom']:.2f} meV/atom, force MAE "
                          f"{m['overall']['force_mae_meV_per_A']:.1f} meV/Å")
        now = time.monotonic()
        if (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0) or \
                (cfg.checkpoint_every_minutes and now - last_ckpt_t >= 60 * cfg.checkpoint_every_minutes):
            checkpoint(elapsed_before + now - t0)
            last_ckpt_t = now
    if bar is not None:
        bar.close()
    elapsed = elapsed_before + time.monotonic() - t0
    if killed:
        return {"step": step, "killed": True, "checkpoint": str(ckpt_path)}
    checkpoint(elapsed)

    device_name = str(device)
    if device.type == "cuda":
        device_name = f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    metrics = {"val": validate() if val_set is not None else None,
               "step": step, "epoch": epoch, "train_time_s": elapsed, "device": str(device),
               "device_name": device_name, "attention_impl": attention_impl,
               "skipped_steps": skipped, "stopped_early": stopped_early,
               "epochs_float": step * cfg.batch_size / n_train,
               "cuda_graphs": ({"captures": loss_and_gradients.captures,
                                "still_enabled": loss_and_gradients.enabled}
                               if graphed else None)}
    if metrics["val"] is not None:
        history.append({"step": step, "epoch": epoch, "elapsed_s": elapsed,
                        "val": metrics["val"]["overall"]})
    model_path = out / cfg.model_name
    ema.save(model_path, metadata={"metrics": metrics, "config": cfg.to_dict(),
                                   "model_config": ema.config.to_dict()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "history.json").write_text(json.dumps(history))
    try:
        plot_learning_curve(history, out / "learning_curve.png",
                            title=f"E2Former-V2 {Path(cfg.train[0]).name}")
    except Exception as exc:  # a missing backend must not lose a finished run
        log(f"learning-curve plot failed: {exc}")
    if metrics["val"] is not None:
        o = metrics["val"]["overall"]
        log(f"final (EMA) val: energy MAE {o['energy_mae_meV_per_atom']:.3f} meV/atom, "
            f"force MAE {o['force_mae_meV_per_A']:.2f} meV/Å")
    log(f"{step} steps, {metrics['epochs_float']:.2f} epochs, {elapsed:.1f} s of training, "
        f"{skipped} skipped steps; whole run {time.monotonic() - t_start:.1f} s")
    return {"model": str(model_path), "metrics": metrics, "step": step, "loss_history": history}
