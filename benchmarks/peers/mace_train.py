"""Peer training run: MACE (mace-torch) on the spice-xtb split for the same GPU time as ours.

Issue 5 asks for both models' validation metrics side by side after the same GPU time. This
trains a mace-torch ScaleShiftMACE with MACE's own data path (matscipy neighbour lists,
mace.data.AtomicData), loss (WeightedEnergyForcesLoss: per-atom energy MSE + force MSE) and
its documented defaults (Adam with amsgrad, lr 0.01, energy weight 1, forces weight 100,
EMA 0.99, gradient clip 10), for --max-minutes of training wall time, then evaluates the
EMA weights on the full validation split with our metrics (e2former_lammps.training.metrics:
energy MAE meV/atom, force MAE meV/Å, overall and per subset). Per-element reference
energies: least squares on the training energies, as our trainer does. MACE 0.3.16 has no
total-charge input: charged frames (Ions subset) are fitted without it; ours has charge_spin.

GPU machine (carry .whl/mace and .carry/spice-xtb):

    python3 -m pip install -q --no-deps --target /tmp/site .whl/mace/*.whl
    PYTHONPATH=/tmp/site:.:benchmarks python3 benchmarks/peers/mace_train.py \
        --train .carry/spice-xtb/train.hdf5 --val .carry/spice-xtb/val.hdf5 \
        --max-minutes 6.3 --out benchmarks/results/training-mace-spice-xtb.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import provenance  # noqa: E402
from peers.mace_peer import _mace_version, build_mace  # noqa: E402

from e2former_lammps.data import read_dataset  # noqa: E402
from e2former_lammps.data.frame import Frame  # noqa: E402
from e2former_lammps.training.metrics import MetricAccumulator  # noqa: E402


def reference_energies(frames: list[Frame], zs: list[int]) -> np.ndarray:
    """Per-element energies (eV) by least squares on the total energies."""
    counts = np.array([[np.sum(f.numbers == z) for z in zs] for f in frames], dtype=np.float64)
    energies = np.array([f.energy for f in frames])
    return np.linalg.lstsq(counts, energies, rcond=None)[0]


def mace_data(frames: list[Frame], z_table, cutoff: float) -> list:
    from mace.data import AtomicData, KeySpecification, config_from_atoms
    from tqdm import tqdm

    keys = KeySpecification(info_keys={"energy": "REF_energy"},
                            arrays_keys={"forces": "REF_forces"})
    out = []
    for f in tqdm(frames, desc="neighbour lists", unit="frame", mininterval=5):
        atoms = f.to_atoms()
        atoms.info["REF_energy"] = f.energy
        atoms.arrays["REF_forces"] = f.forces
        out.append(AtomicData.from_config(config_from_atoms(atoms, keys), z_table=z_table,
                                          cutoff=cutoff))
    return out


def evaluate(model, loader, frames: list[Frame], device) -> dict:
    acc, start = MetricAccumulator(), 0
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.to_dict(), training=False, compute_force=True)
        n_graphs = batch.num_graphs
        subsets = [f.subset for f in frames[start:start + n_graphs]]
        start += n_graphs
        n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).cpu().numpy()
        acc.add(subsets, out["energy"].detach().cpu().double().numpy(),
                batch.energy.cpu().double().numpy(), n_atoms,
                out["forces"].detach().cpu().double().numpy(),
                batch.forces.cpu().double().numpy(), batch.batch.cpu().numpy())
    return acc.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--max-minutes", type=float, default=6.3, help="training wall time")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--hidden", default="128x0e+128x1o", help="MACE hidden irreps")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--cueq", action="store_true",
                   help="train the cuEquivariance form (mace's converter; e3nn if it fails)")
    p.add_argument("--max-frames", type=int, default=0,
                   help="use every k-th frame so that at most this many per split (smoke tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from mace import modules
    from mace.tools import AtomicNumberTable, torch_geometric
    from torch_ema import ExponentialMovingAverage

    t_setup = time.perf_counter()
    train_frames, val_frames = read_dataset(args.train), read_dataset(args.val)
    if args.max_frames:
        train_frames = train_frames[::max(1, len(train_frames) // args.max_frames)]
        val_frames = val_frames[::max(1, len(val_frames) // args.max_frames)]
    zs = sorted({int(z) for f in train_frames + val_frames for z in f.numbers})
    z_table = AtomicNumberTable(zs)
    e0 = reference_energies(train_frames, zs)
    train_data = mace_data(train_frames, z_table, args.cutoff)
    val_data = mace_data(val_frames, z_table, args.cutoff)
    train_loader = torch_geometric.dataloader.DataLoader(
        train_data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = torch_geometric.dataloader.DataLoader(val_data, batch_size=64, shuffle=False)
    avg_nb = modules.compute_avg_num_neighbors(train_loader)
    mean, std = modules.scaling_classes["rms_forces_scaling"](train_loader, e0)
    device = torch.device(args.device)
    model, desc = build_mace(cutoff=args.cutoff, device=device, hidden=args.hidden, max_ell=3,
                             atomic_numbers=zs, atomic_energies=e0, avg_num_neighbors=avg_nb,
                             scale=float(np.ravel(std)[0]), shift=float(np.ravel(mean)[0]))
    form = "e3nn"
    if args.cueq:
        from peers.mace_peer import to_cueq

        try:
            model, form = to_cueq(model, device), "cueq"
        except Exception as exc:  # noqa: BLE001  (reported in the JSON, e3nn form trained)
            form = f"e3nn (cuEquivariance conversion failed: {type(exc).__name__}: {exc})"
    loss_fn = modules.WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=100.0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.99)
    setup_s = time.perf_counter() - t_setup

    steps, epochs, t0, losses = 0, 0, time.perf_counter(), []
    budget = args.max_minutes * 60
    done = False
    while not done:
        for batch in train_loader:
            batch = batch.to(device)
            opt.zero_grad(set_to_none=True)
            out = model(batch.to_dict(), training=True, compute_force=True)
            loss = loss_fn(pred=out, ref=batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            ema.update()
            steps += 1
            if steps % 50 == 0:
                losses.append((time.perf_counter() - t0, steps, float(loss)))
                print(f"step {steps} epoch {epochs} {losses[-1][0]:.0f} s loss {float(loss):.4g}",
                      flush=True)
            if time.perf_counter() - t0 > budget:
                done = True
                break
        epochs += 1
    train_s = time.perf_counter() - t0
    with ema.average_parameters():
        metrics = evaluate(model, val_loader, val_frames, device)
    result = {
        "what": f"MACE peer training on spice-xtb, {desc}",
        "mace_version": _mace_version(), "form": form,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": "float32", "commit": provenance.commit(), "command": " ".join(sys.argv),
        "recipe": f"Adam amsgrad lr {args.lr}, batch {args.batch_size}, energy weight 1 "
                  "(per-atom MSE), forces weight 100, EMA 0.99, clip 10, least-squares E0",
        "train_frames": len(train_frames), "val_frames": len(val_frames),
        "setup_s": setup_s, "train_s": train_s, "steps": steps, "epochs": epochs,
        "avg_num_neighbors": float(avg_nb), "val": metrics, "loss_curve": losses,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    o = metrics["overall"]
    print(f"MACE val: energy MAE {o['energy_mae_meV_per_atom']:.2f} meV/atom, force MAE "
          f"{o['force_mae_meV_per_A']:.1f} meV/Å after {steps} steps ({train_s:.0f} s)")
    for name, m in metrics["subsets"].items():
        print(f"  {name}: {m['energy_mae_meV_per_atom']:.2f} meV/atom, "
              f"{m['force_mae_meV_per_A']:.1f} meV/Å")


if __name__ == "__main__":
    main()
