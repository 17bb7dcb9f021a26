"""Peer benchmark: MACE (mace-torch) energy+forces on the same water boxes as our model.

GPU machine (no network; one device call, carry = [".whl/mace", ".whl/cueq-ops"], ~35 MB;
make the folders here first with `deploy/carry_peer_wheels.sh`):

    python3 -m pip install -q --no-deps --target /tmp/site .whl/mace/*.whl .whl/cueq-ops/*.whl \
      && PYTHONPATH=/tmp/site:.:benchmarks python3 benchmarks/peers/mace_peer.py \
         --sizes 1000 10000 50000 --cueq both --json $OUT/mace.json

`--cueq both` times both forms and gives the cuEquivariance form's energy/force error
against the e3nn form at each N; `--self-check` checks the hand-built inputs against
MACE's own data path (ase + matscipy neighbour list) at 192 atoms.
Without the cuEq ops (CPU) the conversion builds cuequivariance_torch's naive fx fallback
(~3-5 min here); with them it takes their uniform_1d path instead (not timed yet; the result
records convert_s). On this CPU machine (Python 3.11,
so the cp312 wheels of .whl/mace don't install: take the cp311 builds of matscipy, lmdb,
orjson, plus torchmetrics, lightning-utilities, pandas, pytz that the GPU image has):

    .venv/bin/pip install -q --no-deps --target /tmp/macesite \
        $(ls .whl/mace/*.whl | grep -v cp312) <cp311 wheels of the above>
    PYTHONPATH=/tmp/macesite:.:benchmarks .venv/bin/python benchmarks/peers/mace_peer.py \
        --device cpu --cueq off --self-check --sizes 120 300

What runs: for each N, `water_box(N)` and `neighbour_list(pos, box, cutoff)` from
bench_attention.py (same boxes, same pair list as our benchmarks), a MACE ScaleShiftMACE
with random weights (2 interaction layers, hidden 128x0e+128x1o+128x2e, max_ell 3,
correlation 3, 8 Bessel functions, r_max = cutoff, elements H and O, radial MLP
[64, 64, 64], MLP_irreps 16x0e: mace's defaults otherwise), converted to cuEquivariance
with mace's own `mace.cli.convert_e3nn_cueq.run` (fused convolution on CUDA) where
cuequivariance_torch and its ops import. The input dict is built by hand from our pair list
in MACE's convention (edge_index = [sender, receiver], vectors = pos[receiver] -
pos[sender] + shifts, shifts = unit_shifts @ cell from the minimum image), so no
ase/matscipy neighbour list is needed; `--self-check` compares it with MACE's own path
(ase.Atoms -> mace.data.AtomicData, matscipy neighbour list). Parameters are frozen
(requires_grad False, as mace's ASE calculator does); forces are MACE's own autograd of the
energy with respect to positions. Timing: CUDA events (perf_counter on CPU), median of 5
after 2 warm-ups; memory: torch.cuda.max_memory_allocated over one step.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_attention import (DENSITY_MOL_PER_A3, cuda_event_ms, neighbour_list,  # noqa: E402
                             water_box)

Z_TABLE = [1, 8]  # species 0 = H, 1 = O in water_box
HIDDEN = "128x0e+128x1o+128x2e"


def _mace_version() -> str:
    from mace.__version__ import __version__

    return __version__


def cueq_importable() -> tuple[bool, str]:
    try:
        import cuequivariance  # noqa: F401  (imports checked, not used here)
        import cuequivariance_ops_torch  # noqa: F401
        import cuequivariance_torch  # noqa: F401
        from mace.modules.wrapper_ops import CUET_AVAILABLE
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"
    return bool(CUET_AVAILABLE), "" if CUET_AVAILABLE else "mace: CUET_AVAILABLE False"


def build_mace(cutoff=5.0, dtype=torch.float32, device="cpu", max_ell=3, hidden=HIDDEN,
               correlation=3, num_interactions=2, num_bessel=8, seed=0,
               atomic_numbers=tuple(Z_TABLE), atomic_energies=(-13.6, -2041.0),
               avg_num_neighbors=None, scale=1.0, shift=0.0):
    """ScaleShiftMACE with random weights (mace's `--model MACE` defaults otherwise).
    avg_num_neighbors defaults to that of water at 1 g/cm^3 within the cutoff."""
    import numpy as np
    from e3nn import o3
    from mace import modules

    n_density = 3 * DENSITY_MOL_PER_A3  # atoms / Å^3
    avg_nb = avg_num_neighbors or n_density * 4.0 / 3.0 * math.pi * cutoff ** 3
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=cutoff, num_bessel=num_bessel, num_polynomial_cutoff=5, max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=num_interactions, num_elements=len(atomic_numbers),
            hidden_irreps=o3.Irreps(hidden), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.asarray(atomic_energies), avg_num_neighbors=avg_nb,
            atomic_numbers=list(atomic_numbers), correlation=correlation,
            gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64], radial_type="bessel",
            atomic_inter_scale=scale, atomic_inter_shift=shift,
        )
    finally:
        torch.set_default_dtype(old)
    model = model.to(device)
    n_par = sum(p.numel() for p in model.parameters())
    desc = (f"mace-torch {_mace_version()} ScaleShiftMACE, random weights, {num_interactions} "
            f"layers, hidden {hidden}, max_ell {max_ell}, correlation {correlation}, "
            f"{num_bessel} bessel, radial MLP [64,64,64], r_max {cutoff}, Z {list(atomic_numbers)}, "
            f"avg_num_neighbors {avg_nb:.1f}, {n_par} parameters, {str(dtype)[6:]}")
    return model, desc


def to_cueq(model, device):
    """mace's own e3nn -> cuEquivariance conversion (fused conv on CUDA)."""
    from mace.cli.convert_e3nn_cueq import run

    old = torch.get_default_dtype()
    try:
        return run(model, device=str(torch.device(device).type))
    finally:
        torch.set_default_dtype(old)  # run() sets it to the model's dtype


def mace_inputs(pos, species, box, cutoff, dtype=torch.float32, pairs=None):
    """MACE's input dict (one graph) from our water box and minimum-image pair list."""
    pair_i, pair_j, rij = neighbour_list(pos, box, cutoff) if pairs is None else pairs
    n, dev = pos.shape[0], pos.device
    # MACE: vectors = pos[receiver] - pos[sender] + shifts, shifts = unit_shifts @ cell.
    # Ours: rij = x_j - x_i (minimum image). Sender i, receiver j (matscipy's i, j order).
    unit = torch.round((rij - (pos[pair_j] - pos[pair_i])) / box)
    cell = torch.eye(3, dtype=torch.float64, device=dev) * box
    return {
        "positions": pos.to(dtype),
        "node_attrs": torch.nn.functional.one_hot(species.long(), len(Z_TABLE)).to(dtype),
        "edge_index": torch.stack([pair_i, pair_j]).long(),
        "shifts": (unit * box).to(dtype),
        "unit_shifts": unit.to(dtype),
        "cell": cell.to(dtype),
        "batch": torch.zeros(n, dtype=torch.long, device=dev),
        "ptr": torch.tensor([0, n], dtype=torch.long, device=dev),
        "head": torch.zeros(1, dtype=torch.long, device=dev),
    }


def mace_own_inputs(pos, species, box, cutoff, dtype=torch.float64, device="cpu"):
    """The same box through MACE's own data path (ase.Atoms, matscipy neighbour list)."""
    import ase
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    atoms = ase.Atoms(numbers=[Z_TABLE[int(s)] for s in species.cpu()],
                      positions=pos.detach().cpu().double().numpy(), cell=[box] * 3, pbc=True)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        cfg = mace_data.config_from_atoms(atoms)
        graph = mace_data.AtomicData.from_config(cfg, z_table=AtomicNumberTable(Z_TABLE),
                                                 cutoff=cutoff)
        batch = torch_geometric.Batch.from_data_list([graph]).to(device)
    finally:
        torch.set_default_dtype(old)
    return batch.to_dict()


def energy_forces(model, data, interaction=False):
    """Total energy (or, interaction=True, the energy less the E0s) and forces."""
    out = model(dict(data), training=False, compute_force=True)
    e = out["interaction_energy"] if interaction else out["energy"]
    return e.detach(), out["forces"].detach()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_step(fn, device, warmup=2, rep=5) -> float:
    """Median ms of `fn` over `rep` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(rep):
        if torch.device(device).type == "cuda":
            times.append(cuda_event_ms(fn))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _forms(cueq, device) -> tuple[list[str], str]:
    if cueq in (False, "off", "e3nn"):
        return ["e3nn"], "cueq off"
    ok, why = cueq_importable()
    if cueq in ("auto",):
        if ok and torch.device(device).type == "cuda":
            return ["cueq"], ""
        return ["e3nn"], why or "cueq auto: not on CUDA"
    if not ok:  # True, "on", "both": asked for it
        if cueq == "both":
            return ["e3nn"], why
        raise RuntimeError(f"cuEquivariance asked for but not importable: {why}")
    return (["e3nn", "cueq"] if cueq == "both" else ["cueq"]), ""


def mace_atom_steps(n_atoms_list, cutoff=5.0, cueq="auto", dtype=torch.float32,
                    device="cuda", max_ell=3, hidden=HIDDEN, warmup=2, rep=5, log=print):
    """Energy+forces throughput of MACE per N. cueq: True/"on", False/"off", "auto", "both".

    Returns one dict per (N, form): n_atoms, edges, form ("cueq" or "e3nn"),
    atom_steps_per_s, ms, peak_mem_bytes (max_memory_allocated during one step, model and
    inputs included), peak_mem_above_base_bytes (the same less what was allocated before
    the step: bench_attention's convention), mace version, model description; on OOM
    ms/atom_steps_per_s are None and peak_mem_bytes is "out of memory".
    """
    forms, why = _forms(cueq, device)
    if why:
        log(f"[mace] cuEquivariance not used: {why}")
    base_model, desc = build_mace(cutoff, dtype, device, max_ell=max_ell, hidden=hidden)
    models, convert_s = {}, None
    for form in forms:
        t0 = time.perf_counter()
        m = base_model if form == "e3nn" else to_cueq(base_model, device)
        if form == "cueq":
            convert_s = time.perf_counter() - t0
            log(f"[mace] converted to cuEquivariance in {convert_s:.0f} s")
        m.requires_grad_(False)  # as mace's ASE calculator: forces only
        models[form] = m
    version, cuda = _mace_version(), torch.device(device).type == "cuda"
    results = []
    for n in n_atoms_list:
        try:
            pos, species, box = water_box(n, seed=0, device=device)
            pairs = neighbour_list(pos, box, cutoff)
            data = mace_inputs(pos, species, box, cutoff, dtype, pairs)
            n_real, edges = pos.shape[0], int(pairs[0].numel())
            del pairs
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            log(f"[mace] N={n}: out of memory building the inputs")
            results.append({"n_atoms": n, "form": forms[0], "ms": None, "atom_steps_per_s": None,
                            "peak_mem_bytes": "out of memory (inputs)", "mace_version": version,
                            "model": desc})
            if cuda:
                torch.cuda.empty_cache()
            continue
        ref = None
        for form in forms:
            model = models[form]
            res = {"n_atoms": n_real, "edges": edges, "form": form, "device": str(device),
                   "dtype": str(dtype)[6:], "cutoff": cutoff, "mace_version": version,
                   "model": desc + ("" if form == "e3nn" else ", cuEquivariance 0.13 "
                                    "(mace convert_e3nn_cueq, ir_mul"
                                    + (", fused conv)" if cuda else ")")),
                   "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
            if form == "cueq":
                res["convert_s"] = convert_s

            def step(model=model, data=data):
                return energy_forces(model, data, interaction=True)

            try:
                e, f = step()
                ms = time_step(step, device, warmup=warmup, rep=rep)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    step()
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated()
                    res.update(peak_mem_bytes=int(peak), peak_mem_above_base_bytes=int(peak - base),
                               peak_mem_per_atom_bytes=int(peak - base) // n_real)
                else:
                    res.update(peak_mem_bytes=None, peak_mem_above_base_bytes=None)
                res.update(ms=ms, atom_steps_per_s=n_real / (ms * 1e-3),
                           interaction_energy=float(e.sum()))
                if ref is None:
                    ref = (e, f)
                else:  # second form vs the first on the same inputs
                    res["vs_e3nn_energy_rel"] = float((e - ref[0]).abs().sum() / ref[0].abs().sum())
                    res["vs_e3nn_force_rel"] = float((f - ref[1]).norm() / ref[1].norm())
                del e, f
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                res.update(ms=None, atom_steps_per_s=None, peak_mem_bytes="out of memory")
            if cuda:
                torch.cuda.empty_cache()
            log(f"[mace] N={n_real} edges={edges} {form}: " + (
                f"{res['ms']:.2f} ms, {res['atom_steps_per_s']:.0f} atom-steps/s, peak "
                f"{res['peak_mem_bytes']} B" if res["ms"] is not None else "out of memory")
                + (f", vs e3nn: E rel {res['vs_e3nn_energy_rel']:.1e}, F rel "
                   f"{res['vs_e3nn_force_rel']:.1e}" if "vs_e3nn_force_rel" in res else ""))
            results.append(res)
        del data, ref
    return results


def self_check(n_atoms=192, cutoff=5.0, device="cpu", max_ell=3, hidden=HIDDEN, log=print):
    """Hand-built inputs vs MACE's own data path (the e3nn form).

    Energies compared are the interaction energies (total less the atomic E0s, which
    would hide any error in the total); forces by the relative norm of the difference.
    The cuEquivariance form is checked against the e3nn form by `--cueq both`, at each N.
    """
    out, ok = {"n_atoms": n_atoms, "cutoff": cutoff, "device": str(device)}, True
    pos, species, box = water_box(n_atoms, seed=1, device=device)
    pairs = neighbour_list(pos, box, cutoff)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        model, _ = build_mace(cutoff, dtype, device, max_ell=max_ell, hidden=hidden)
        mine = mace_inputs(pos, species, box, cutoff, dtype, pairs)
        theirs = mace_own_inputs(pos, species, box, cutoff, dtype, device)
        # same edge set: (sender, receiver, unit shift)
        def keys(d):
            ei, us = d["edge_index"].cpu(), d["unit_shifts"].cpu().round().long()
            return sorted(zip(ei[0].tolist(), ei[1].tolist(), map(tuple, us.tolist())))
        same_edges = keys(mine) == keys(theirs)
        e1, f1 = energy_forces(model, mine, interaction=True)
        e2, f2 = energy_forces(model, theirs, interaction=True)
        r = {"edges_mine": int(mine["edge_index"].shape[1]),
             "edges_mace": int(theirs["edge_index"].shape[1]), "same_edge_set": same_edges,
             "e_inter_mine": float(e1.sum()), "e_inter_mace": float(e2.sum()),
             "energy_rel": float((e1 - e2).abs().sum() / e2.abs().sum()),
             "force_rel": float((f1 - f2).norm() / f2.norm()),
             "force_max_abs": float((f1 - f2).abs().max()),
             "force_rms": float(f2.pow(2).mean().sqrt()),
             "tol": tol}
        r["pass"] = same_edges and r["energy_rel"] < tol and r["force_rel"] < tol
        ok &= r["pass"]
        out[str(dtype)[6:]] = r
        log(f"[mace self-check] {str(dtype)[6:]} N={pos.shape[0]}: {r}")
    out["pass"] = ok
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 50000])
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--cueq", default="auto", choices=["auto", "on", "off", "both"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-ell", type=int, default=3)
    ap.add_argument("--hidden", default=HIDDEN)
    ap.add_argument("--self-check", nargs="?", type=int, const=192, default=None, metavar="N",
                    help="check the hand-built inputs against MACE's own path (N atoms, 192)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    report = {"mace_version": _mace_version(), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else "cpu"}
    if args.self_check:
        report["self_check"] = self_check(args.self_check, args.cutoff, args.device,
                                          args.max_ell, args.hidden)
    if args.sizes:
        report["results"] = mace_atom_steps(
            args.sizes, cutoff=args.cutoff, cueq=args.cueq, dtype=getattr(torch, args.dtype),
            device=args.device, max_ell=args.max_ell, hidden=args.hidden)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    if args.self_check and not report["self_check"]["pass"]:
        sys.exit("MACE self-check FAILED")


if __name__ == "__main__":
    main()
