"""Benchmark of the fused Triton attention vs the edge-materialising PyTorch reference.

Water at 1 g/cm^3 (O-H 0.96 Å, H-O-H 104.5°, random orientations on a cubic lattice,
periodic), r_c = 5 Å, paper configuration of the attention op (C = 256, lmax 2, 128 heads of
width 8, 256 Gaussians, radial hidden 64). Per N: the attention stage forward and
forward+backward (grads of q, k, v, rij and the radial weights), peak memory, and the full
model (E2FormerV2, 4 blocks) energy+forces: time, atom-steps/s, peak memory; a full-model
fp32 check triton vs reference where the reference fits.

    PYTHONPATH=. python benchmarks/bench_attention.py --sizes 1000 10000 100000 \
        --out benchmarks/results/kernels.json
    python benchmarks/bench_attention.py --plot benchmarks/results/kernels.json   # PNG
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

DENSITY_MOL_PER_A3 = 0.033427  # 1 g/cm^3 of H2O
CUTOFF = 5.0
CFG = dict(channels=256, lmax=2, num_layers=4, num_heads=128, head_dim=8, num_rbf=256,
           radial_hidden=64, ffn_channels=256, cutoff=CUTOFF, avg_degree=50.0)
# Ceilings measured on the H100 of this workplace (shared/design/performance.md).
FP32_TFLOPS_CEIL = 52.0
HBM_GBPS_CEIL = 3000.0
# MACE measured earlier on the same H100 model (performance.md), not in this run.
MACE_CITED = {
    "source": "shared/design/performance.md (measured earlier on this workplace's H100, "
              "not in this run): mace-torch 0.3.16 + cuEquivariance 0.13, 2 layers "
              "128x0e+128x1o+128x2e, fp32, water r_c 6 Å",
    "atom_steps_per_s": {"999": 13400, "9999": 116700, "50001": "out of memory"},
}


def water_box(n_atoms: int, seed: int = 0, device="cuda"):
    """Positions [N, 3] (float64), species [N] (0 = H, 1 = O), cubic box length L (Å)."""
    g = torch.Generator().manual_seed(seed)
    n_mol = max(1, round(n_atoms / 3))
    box = (n_mol / DENSITY_MOL_PER_A3) ** (1.0 / 3.0)
    n_side = math.ceil(n_mol ** (1.0 / 3.0))
    a = box / n_side
    idx = torch.arange(n_side ** 3)
    sites = torch.stack([idx // (n_side * n_side), (idx // n_side) % n_side, idx % n_side], -1)
    sites = sites[torch.randperm(n_side ** 3, generator=g)[:n_mol].sort().values]
    o = (sites.double() + 0.5) * a + 0.1 * a * (torch.rand(n_mol, 3, generator=g) - 0.5)
    half = math.radians(104.5) / 2
    local = 0.96 * torch.tensor([[math.sin(half), math.cos(half), 0.0],
                                 [-math.sin(half), math.cos(half), 0.0]], dtype=torch.float64)
    qrt = torch.randn(n_mol, 4, generator=g, dtype=torch.float64)
    qrt = qrt / qrt.norm(dim=-1, keepdim=True)
    w, x, y, z = qrt.unbind(-1)
    rot = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    h = o[:, None, :] + torch.einsum("mab,kb->mka", rot, local)
    pos = torch.cat([o[:, None], h], 1).reshape(-1, 3) % box
    species = torch.tensor([1, 0, 0]).repeat(n_mol)
    return pos.to(device), species.to(device), box


def water_species(model, species: torch.Tensor) -> torch.Tensor:
    """water_box's species (0 = H, 1 = O) as `model`'s element indices (a trained model
    numbers its own elements; one without H or O raises, naming them)."""
    from e2former_lammps.validation import species_index

    cfg = model.config
    return species_index([1, 8], cfg.atomic_numbers, cfg.elements).to(species.device)[species]


def neighbour_list(pos, box: float, cutoff: float, chunk: int = 1 << 16):
    """Cell-list pairs (all j != i with |r_ij| < cutoff, minimum image; needs box > 2 r_c).

    Returns pair_i (sorted), pair_j, rij = x_j - x_i (float64) on pos.device.
    """
    assert box > 2 * cutoff
    n = pos.shape[0]
    nc = max(3, int(box // cutoff))
    cs = box / nc
    cell3 = (pos / cs).long().clamp_(0, nc - 1)
    cell = (cell3[:, 0] * nc + cell3[:, 1]) * nc + cell3[:, 2]
    order = torch.argsort(cell)
    counts = torch.bincount(cell, minlength=nc ** 3)
    m = int(counts.max())
    start = torch.zeros_like(counts)
    start[1:] = torch.cumsum(counts, 0)[:-1]
    rank = torch.arange(n, device=pos.device) - start[cell[order]]
    table = torch.full((nc ** 3, m), -1, dtype=torch.long, device=pos.device)
    table[cell[order], rank] = order
    off = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=pos.device)] * 3,
                                     indexing="ij"), -1).reshape(-1, 3)
    pis, pjs, rs = [], [], []
    for i0 in range(0, n, chunk):
        ii = torch.arange(i0, min(n, i0 + chunk), device=pos.device)
        nb = (cell3[ii][:, None, :] + off[None]) % nc  # [c, 27, 3]
        nb = (nb[..., 0] * nc + nb[..., 1]) * nc + nb[..., 2]
        cand = table[nb].reshape(len(ii), -1)  # [c, 27 m]
        valid = (cand >= 0) & (cand != ii[:, None])
        cj = cand.clamp(min=0)
        r = pos[cj] - pos[ii][:, None]
        r = r - box * torch.round(r / box)
        valid &= (r * r).sum(-1) < cutoff * cutoff
        ci, cjj = valid.nonzero(as_tuple=True)
        pis.append(ii[ci])
        pjs.append(cand[ci, cjj])
        rs.append(r[ci, cjj])
    pair_i, pair_j, rij = torch.cat(pis), torch.cat(pjs), torch.cat(rs)
    o = torch.argsort(pair_i, stable=True)
    return pair_i[o], pair_j[o], rij[o]


def attention_inputs(n, species, dtype, device, seed=0):
    from e2former_lammps.nn.radial import EdgeRadialMLP, GaussianBasis

    g = torch.Generator(device="cpu").manual_seed(seed)
    h, dk, c = CFG["num_heads"], CFG["head_dim"], CFG["channels"]
    q = torch.randn(n, h, dk, generator=g).to(device, dtype)
    k = torch.randn(n, h, dk, generator=g).to(device, dtype)
    v = torch.randn(n, 9, c, generator=g).to(device, dtype)
    torch.manual_seed(seed)
    mlp = EdgeRadialMLP(GaussianBasis(CUTOFF, CFG["num_rbf"]), 2, CFG["radial_hidden"],
                        2 * h).to(device, dtype)
    with torch.no_grad():
        mlp.b_out.normal_(0, 0.1)
    return q, k, v, mlp


def attention_problem(n_atoms: int, dev):
    """Water box of ~n_atoms on dev, its pair list (rij float32) and random attention inputs:
    (n, species, pair_i, pair_j, rij, q, k, v, radial MLP)."""
    pos, species, box = water_box(n_atoms, device=dev)
    n = pos.shape[0]
    pair_i, pair_j, rij = neighbour_list(pos, box, CUTOFF)
    q, k, v, mlp = attention_inputs(n, species, torch.float32, dev)
    return n, species, pair_i, pair_j, rij.float(), q, k, v, mlp


def frozen_weights(mlp):
    """The radial weights without gradients: the MD case (forces only)."""
    import dataclasses

    w = mlp.weights()
    return dataclasses.replace(w, **{f.name: getattr(w, f.name).detach()
                                     for f in dataclasses.fields(w)
                                     if torch.is_tensor(getattr(w, f.name))})


def use_config_of(name: str) -> None:
    """Every benchmark here at the sizes of a packaged model (CFG updated in place)."""
    from e2former_lammps.model import E2FormerV2

    cfg = E2FormerV2.load(name).config
    if cfg.cutoff != CUTOFF:
        raise SystemExit(f"{name}: cutoff {cfg.cutoff} Å, the water boxes here use {CUTOFF}")
    CFG.update({k: getattr(cfg, k) for k in CFG})


def paper_model(device):
    """The paper-configuration E2FormerV2 (H, O) with seed-0 random weights, frozen as in MD
    (calculator, LAMMPS: forces only)."""
    from e2former_lammps.config import E2FormerConfig
    from e2former_lammps.model import E2FormerV2

    torch.manual_seed(0)
    model = E2FormerV2(E2FormerConfig(elements=["H", "O"], **CFG)).to(device)
    return model.requires_grad_(False)


def energy_grad_step(model, species, pair_i, pair_j, rij, n_atoms: int):
    """One eager energy + dE/drij evaluation of `model` on a pair list without ghosts, as a
    closure returning (E eV, dE/drij [E, 3] eV/Å)."""
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.model import AtomGraph

    graph = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij, n_local=n_atoms,
                      exchange=NoGhosts(n_atoms))

    def step():
        eatoms, grad = energy_and_pair_gradient(model, graph)
        return eatoms.sum().detach(), grad
    return step


def flops_per_edge(cfg: dict = CFG) -> float:
    """Algorithmic FLOPs of the forward per edge as the operation is defined (radial MLP over
    all num_rbf Gaussians, score, TP and sums) for a config (channels, num_heads, head_dim,
    num_rbf, radial_hidden; default the paper's). Since E17 the kernels skip the Gaussians far
    from each distance (~30k of these FLOPs), so TFLOP/s from this count is an effective rate."""
    c, h, dk = cfg["channels"], cfg["num_heads"], cfg["head_dim"]
    r, hid = cfg["num_rbf"], cfg["radial_hidden"]
    mlp = 2 * r * hid + 2 * hid * 2 * h + 4 * r  # two layers + rbf
    score = 2 * h * dk + 10 * h
    # per channel: weight 9 rows, R v1 (9 FMA), D2 v2 (25), rotate back 54 FMA, 20 adds
    tp = c * (9 + 2 * (9 + 25 + 54) + 20)
    return mlp + score + tp + 300  # + rotation / D2 construction


def bytes_per_edge() -> float:
    """Bytes gathered per edge without reuse: v_j rows, k_j, rij, pair_j, species_j."""
    return 4 * (9 * CFG["channels"] + CFG["num_heads"] * CFG["head_dim"] + 3) + 8 + 8


def bench(fn, warmup=10, rep=50, budget_s=0.6):
    """Median ms: triton.testing.do_bench for fast calls, else CUDA events over a few runs."""
    import triton.testing

    torch.cuda.synchronize()
    t0 = time.time()
    fn()
    torch.cuda.synchronize()
    first = time.time() - t0
    if first < 0.05:
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    n = max(2, min(10, int(budget_s / first)))
    times = [cuda_event_ms(fn) for _ in range(n)]
    return sorted(times)[len(times) // 2]


def cuda_event_ms(fn) -> float:
    """Milliseconds of one call of fn, between CUDA events on the current stream."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b)


def peak_mem(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def attention_stage(n_atoms, graph, impls, log, do_bwd_ref=True):
    from kernels.attention import equivariant_attention

    pos, species, pair_i, pair_j, rij = graph
    dtype, dev = torch.float32, pos.device
    q, k, v, mlp = attention_inputs(n_atoms, species, dtype, dev)
    rij32 = rij.to(dtype)
    leaves = [q, k, v, rij32] + [mlp.w_rbf, mlp.emb_recv, mlp.emb_send, mlp.w_out, mlp.b_out]
    res = {}

    def run(impl, backward):
        """backward: None (forward only), "forces" (q, k, v, rij: the MD case) or "all"
        (also the radial weights: training without a force loss)."""
        ls = [t.detach().requires_grad_(backward is not None) for t in leaves[:4]]
        w = mlp.weights() if backward == "all" else frozen_weights(mlp)
        out = equivariant_attention(ls[0], ls[1], ls[2], ls[3], pair_i, pair_j, species, w,
                                    CUTOFF, 1.0, 2, impl=impl)
        if backward is not None:
            extra = list(mlp.parameters()) if backward == "all" else []
            torch.autograd.grad(out, ls + extra, grad_out)
        return out

    grad_out = torch.randn(n_atoms, 20, CFG["channels"], device=dev, dtype=dtype)
    outs = {}
    for impl in impls:
        r = {}
        for mode, bwd in (("fwd", None), ("fwd_bwd_forces", "forces"), ("fwd_bwd", "all")):
            if impl == "reference" and bwd and not do_bwd_ref:
                r[mode] = None
                continue
            try:
                with torch.no_grad() if not bwd else torch.enable_grad():
                    if not bwd:
                        outs[impl] = run(impl, None).detach()
                    r[mode + "_ms"] = bench(lambda: run(impl, bwd))
                    r[mode + "_peak_bytes"] = peak_mem(lambda: run(impl, bwd))
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                r[mode + "_ms"] = None
                r[mode + "_peak_bytes"] = "out of memory"
                torch.cuda.empty_cache()
            log(f"  attention {impl:9s} {mode:14s} {r.get(mode + '_ms')} ms  "
                f"peak {r.get(mode + '_peak_bytes')}")
        res[impl] = r
    if "reference" in outs and "triton" in outs and n_atoms <= 20000:
        ls = [t.detach().requires_grad_() for t in leaves[:4]]
        gr = {}
        for impl in ("triton", "reference"):
            out = equivariant_attention(ls[0], ls[1], ls[2], ls[3], pair_i, pair_j, species,
                                        mlp.weights(), CUTOFF, 1.0, 2, impl=impl)
            gr[impl] = torch.autograd.grad(out, ls + list(mlp.parameters()), grad_out)
        res["grad_rel_err_fp32"] = {
            name: float((a - b).norm() / b.norm()) for name, a, b in zip(
                ("q", "k", "v", "rij", "w_rbf", "emb_recv", "emb_send", "w_out", "b_out"),
                gr["triton"], gr["reference"])}
        log(f"  attention grad rel err triton vs reference (fp32): {res['grad_rel_err_fp32']}")
        del gr
    if "reference" in outs and "triton" in outs:
        ref, tri = outs["reference"], outs["triton"]
        res["fwd_rel_err_fp32"] = float((tri - ref).norm() / ref.norm())
        log(f"  attention fwd rel err triton vs reference (fp32): {res['fwd_rel_err_fp32']:.2e}")
    return res


def full_model(n_atoms, graph, impls, log, check=False):
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.model import AtomGraph

    pos, species, pair_i, pair_j, rij = graph
    model = paper_model(pos.device)
    step = energy_grad_step(model, species, pair_i, pair_j, rij.float(), n_atoms)
    g = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij.float(),
                  n_local=n_atoms, exchange=NoGhosts(n_atoms))

    res, vals = {}, {}
    for impl in impls:
        model.set_attention_impl(impl)
        try:
            vals[impl] = step()
            ms = bench(step, warmup=3, rep=20)
            peak = peak_mem(step)
            res[impl] = {"ms": ms, "atom_steps_per_s": n_atoms / (ms * 1e-3), "peak_bytes": peak,
                         "peak_bytes_per_atom": peak / n_atoms,
                         "compiled_node_work": model.last_compiled_node_work}
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            res[impl] = {"ms": None, "atom_steps_per_s": None, "peak_bytes": "out of memory"}
            torch.cuda.empty_cache()
        log(f"  model {impl:9s} {res[impl]}")
    if "triton" in impls and res["triton"]["ms"] is not None:
        # what MD gets below the graph size limit: the same evaluation replayed as a CUDA graph
        from e2former_lammps.cuda_graphs import GraphedEnergyForces

        model.set_attention_impl("triton")
        runner = GraphedEnergyForces(model)
        if pair_i.numel() <= runner.max_edges:
            graphed = lambda: runner(g)  # noqa: E731
            e_g, f_g = (t.detach().clone() for t in graphed())
            ms = bench(graphed, warmup=3, rep=20)
            res["triton_graphs"] = {"ms": ms, "atom_steps_per_s": n_atoms / (ms * 1e-3),
                                    # graphs allocate their pool at capture: what is held
                                    "reserved_bytes": torch.cuda.memory_reserved(),
                                    "energy_rel_err_vs_eager": float(
                                        (e_g.sum() - vals["triton"][0]).abs()
                                        / vals["triton"][0].abs()),
                                    "pair_grad_rel_err_vs_eager": float(
                                        (f_g - vals["triton"][1]).norm()
                                        / vals["triton"][1].norm())}
            log(f"  model triton+CUDA graphs {res['triton_graphs']}")
    if check and "reference" in vals and "triton" in vals:
        (e_r, f_r), (e_t, f_t) = vals["reference"], vals["triton"]
        res["energy_rel_err"] = float((e_t - e_r).abs() / e_r.abs())
        res["pair_grad_rel_err"] = float((f_t - f_r).norm() / f_r.norm())
        log(f"  model check fp32 triton vs reference: energy rel {res['energy_rel_err']:.2e}, "
            f"dE/drij rel {res['pair_grad_rel_err']:.2e}")
    return res


# precision options: environment variable -> the values compared (the first is the default)
PRECISION_OPTIONS = {
    "E2FORMER_DOT_PRECISION": ("ieee", "tf32"),  # radial-MLP dots inside the kernels
    "E2FORMER_NODE_MATMUL": ("fp32", "tf32", "bf16"),  # node-wise products (degree_matmul)
}


def precision_study(env: str, n_time: int, n_err: int, out: str, log) -> dict:
    """Each value of the precision option `env` (PRECISION_OPTIONS): model energy and dE/drij
    error against the float64 reference model at n_err atoms, and the energy+forces step
    time at n_time atoms as the model runs it (node work compiled on CUDA with frozen weights,
    E54; recorded per value). Writes `out` (JSON)."""
    dev = torch.device("cuda")
    model = paper_model(dev)

    def energy_grad(n_atoms, dtype, impl):
        pos, species, box = water_box(n_atoms, device=dev)
        n = pos.shape[0]
        pair_i, pair_j, rij = neighbour_list(pos, box, CUTOFF)
        model.to(dtype).set_attention_impl(impl)
        return n, energy_grad_step(model, species, pair_i, pair_j, rij.to(dtype), n)

    res = {"device": torch.cuda.get_device_name(), "commit": provenance.commit(),
           "command": " ".join(sys.argv), "config": CFG, "option": env, "what":
           "random-weight paper-config model on water; error vs the float64 reference model"}
    n, ref_step = energy_grad(n_err, torch.float64, "reference")
    e_ref, g_ref = ref_step()
    res["n_atoms_error"] = n
    for value in PRECISION_OPTIONS[env]:
        os.environ[env] = value
        _, step = energy_grad(n_err, torch.float32, "triton")
        e, g = step()
        nt, step_t = energy_grad(n_time, torch.float32, "triton")
        ms = bench(step_t, warmup=3, rep=20)
        res[value] = {"energy_rel_err": float((e.double() - e_ref).abs() / e_ref.abs()),
                      "pair_grad_rel_err": float((g.double() - g_ref).norm() / g_ref.norm()),
                      "pair_grad_max_abs_err": float((g.double() - g_ref).abs().max()),
                      "n_atoms_time": nt, "step_ms": ms, "atom_steps_per_s": nt / (ms * 1e-3),
                      "compiled_node_work": model.last_compiled_node_work}
        log(f"{env}={value}: {res[value]}")
    os.environ.pop(env)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    return res


def mace_rows(sizes: list[int], cueq: str, log) -> list[dict]:
    """MACE energy+forces on the same water boxes (peers/mace_peer.py; water_box(n) of each
    returned n_atoms); an import failure is recorded, not raised, so the rest stands."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
    try:
        from mace_peer import mace_atom_steps
    except ImportError as exc:
        log(f"[mace] not run: {exc}")
        return [{"error": f"import: {exc}"}]
    try:
        rows = mace_atom_steps(sizes, cutoff=CUTOFF, cueq=cueq, log=log)
    except Exception as exc:  # noqa: BLE001  (a peer's failure must not lose our numbers)
        log(f"[mace] failed: {type(exc).__name__}: {exc}")
        rows = [{"error": f"{type(exc).__name__}: {str(exc)[:500]}"}]
    torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--model-sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--ref-max", type=int, default=100000, help="largest N for the reference")
    ap.add_argument("--config", default="paper",
                    help="model sizes: 'paper' (C 256, 4 blocks, 128 heads x 8) or a packaged "
                         "model's name (e.g. spice-xtb: C 64, 3 blocks, 8 heads), random "
                         "weights either way")
    ap.add_argument("--out", default=None,
                    help="JSON (default benchmarks/results/kernels.json, with --config NAME "
                         "kernels_NAME.json)")
    ap.add_argument("--plot", default=None, help="only draw the PNG from this JSON")
    ap.add_argument("--blocks", default=None, help="JSON tile sizes for the forward kernel")
    ap.add_argument("--sweep", type=int, default=0, help="only time forward tile sizes at N")
    ap.add_argument("--autotune", type=int, default=0,
                    help="first time the kernel variants at N atoms and use the fastest")
    ap.add_argument("--autotune-stages", default="fwd,reduce,bwd,head",
                    help="comma-separated subset of fwd,reduce,bwd,head to time")
    ap.add_argument("--mace", default="off", choices=["off", "auto", "both"],
                    help="time MACE (benchmarks/peers/mace_peer.py) at the model sizes, in this "
                         "process: auto = cuEquivariance where it imports, both = e3nn and cuEq")
    ap.add_argument("--profile", type=int, default=0,
                    help="only profile forward+backward at N atoms (both head-backward modes)")
    ap.add_argument("--dot-precision", type=int, nargs=2, default=None,
                    metavar=("N_TIME", "N_ERR"),
                    help="only compare the radial-MLP dots ieee vs tf32: step time at N_TIME "
                         "atoms, error vs the float64 reference at N_ERR atoms "
                         "(writes benchmarks/results/dot_precision.json)")
    ap.add_argument("--node-matmul", type=int, nargs=2, default=None,
                    metavar=("N_TIME", "N_ERR"),
                    help="only compare the node-wise products in fp32, tf32 and bf16 "
                         "(E2FORMER_NODE_MATMUL), as --dot-precision does "
                         "(writes benchmarks/results/node_matmul.json)")
    args = ap.parse_args()
    if args.config != "paper":
        use_config_of(args.config)
    out_given = args.out
    args.out = args.out or ("benchmarks/results/kernels.json" if args.config == "paper" else
                            f"benchmarks/results/kernels_{args.config}.json")
    if args.dot_precision:
        precision_study("E2FORMER_DOT_PRECISION", *args.dot_precision,
                        out_given or "benchmarks/results/dot_precision.json", print)
        return
    if args.node_matmul:
        precision_study("E2FORMER_NODE_MATMUL", *args.node_matmul,
                        out_given or "benchmarks/results/node_matmul.json", print)
        return
    if args.profile:
        profile(args.profile)
        return
    if args.sweep:
        sweep(args.sweep)
        return
    if args.plot:
        plot(args.plot)
        return
    if args.blocks:
        import kernels.attention.triton_forward as tf

        bl = json.loads(args.blocks)
        tf.default_blocks = lambda n_heads, ch, device: bl
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    dev = torch.device("cuda")
    commit = provenance.commit()
    result = {
        "device": torch.cuda.get_device_name(),
        "dtype": "float32 (radial-MLP tl.dot input_precision "
                 f"{os.environ.get('E2FORMER_DOT_PRECISION', 'ieee')})",
        "commit": commit,
        "torch": torch.__version__, "command": " ".join(sys.argv),
        "config": CFG, "settings": provenance.settings(),
        "system": "water 1 g/cm^3, periodic cubic box, r_c 5 A",
        "flops_per_edge": flops_per_edge(),
        "bytes_per_edge_no_reuse": bytes_per_edge(),
        "ceilings": {"fp32_tflops": FP32_TFLOPS_CEIL, "hbm_gbps": HBM_GBPS_CEIL,
                     "measured_on": "H100 80GB HBM3 (shared/design/performance.md)"},
        "mace_cited": MACE_CITED,
        "mace_in_this_run": args.mace,
        "sizes": [],
    }
    if args.autotune:
        result["autotune"] = autotune(args.autotune, log, args.autotune_stages.split(","))
    for n_req in args.sizes:
        t0 = time.time()
        pos, species, box = water_box(n_req, device=dev)
        n = pos.shape[0]
        pair_i, pair_j, rij = neighbour_list(pos, box, CUTOFF)
        edges = int(pair_i.numel())
        log(f"N={n} box={box:.1f} A edges={edges} ({edges / n:.1f}/atom) "
            f"[built in {time.time() - t0:.1f}s]")
        graph = (pos, species, pair_i, pair_j, rij)
        impls = ["triton"] + (["reference"] if n_req <= args.ref_max else [])
        att = attention_stage(n, graph, impls, log)
        entry = {"n_atoms": n, "edges": edges, "neighbours_per_atom": edges / n,
                 "attention": att}
        t = att["triton"]
        rref = att.get("reference", {})
        sp = {}
        for mode in ("fwd", "fwd_bwd_forces", "fwd_bwd"):
            a, b = t.get(mode + "_ms"), rref.get(mode + "_ms")
            sp[mode] = (b / a) if (a and b) else None
        entry["speedup_vs_edge_reference"] = sp
        if t.get("fwd_ms"):
            sec = t["fwd_ms"] * 1e-3
            entry["tflops"] = {"fwd": edges * flops_per_edge() / sec / 1e12,
                               "fraction_of_fp32_ceiling":
                                   edges * flops_per_edge() / sec / 1e12 / FP32_TFLOPS_CEIL}
            entry["gbps"] = {"fwd_gathered_no_reuse": edges * bytes_per_edge() / sec / 1e9,
                             "fwd_unique_min": n * 4 * (9 * 256 + 20 * 256 + 2 * 1024) / sec
                             / 1e9}
        entry["peak_mem_bytes"] = {
            "ours": t.get("fwd_bwd_forces_peak_bytes"),
            "reference": rref.get("fwd_bwd_forces_peak_bytes"),
            "what": "attention stage forward+backward (forces), above the inputs",
        }
        if n_req in args.model_sizes:
            try:
                mres = full_model(n, graph, impls, log, check=n_req <= args.ref_max)
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                mres = {"error": "out of memory"}
                torch.cuda.empty_cache()
            entry["model_energy_forces"] = mres
            ours = mres.get("triton_graphs", mres.get("triton", {}))
            entry["atom_steps_per_s"] = {
                "ours": ours.get("atom_steps_per_s"),
                "ours_eager": mres.get("triton", {}).get("atom_steps_per_s"),
                "reference": mres.get("reference", {}).get("atom_steps_per_s"),
                "mace": None,
            }

            entry["peak_mem_bytes"]["model_energy_forces"] = {
                "ours": mres.get("triton", {}).get("peak_bytes"),
                "reference": mres.get("reference", {}).get("peak_bytes")}
        result["sizes"].append(entry)
        del graph, pos, pair_i, pair_j, rij
        torch.cuda.empty_cache()
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.mace != "off":
        # after our runs (their memory freed), same process, same boxes and pair lists
        rows = mace_rows([e["n_atoms"] for e in result["sizes"] if "atom_steps_per_s" in e],
                         args.mace, log)
        for entry in result["sizes"]:
            mine = [r for r in rows if r.get("n_atoms") == entry["n_atoms"]]
            if not mine or "atom_steps_per_s" not in entry:
                continue
            entry["mace"] = mine
            best = max((r for r in mine if r.get("atom_steps_per_s")),
                       key=lambda r: r["atom_steps_per_s"], default=None)
            if best is not None:
                entry["atom_steps_per_s"]["mace"] = best["atom_steps_per_s"]
                entry["atom_steps_per_s"]["mace_form"] = best["form"]
                result["mace_form"] = best["form"]
                ours = entry["atom_steps_per_s"]["ours"]
                entry["ours_over_mace"] = ours / best["atom_steps_per_s"] if ours else None
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    log("N        edges      fwd ms(tri/ref)      fwd+bwd ms(tri/ref)   speedup f/fb   "
        "TFLOP/s  model atom-steps/s (tri/ref)")
    for e in result["sizes"]:
        a = e["attention"]
        t, r = a["triton"], a.get("reference", {})
        m = e.get("atom_steps_per_s", {})
        log(f"{e['n_atoms']:<8d} {e['edges']:<10d} {t.get('fwd_ms')}/{r.get('fwd_ms')}  "
            f"{t.get('fwd_bwd_ms')}/{r.get('fwd_bwd_ms')}  "
            f"{e['speedup_vs_edge_reference']}  {e.get('tflops', {}).get('fwd')}  "
            f"{m.get('ours')}/{m.get('reference')}")


SWEEP = [dict(BLOCK_E=16, BLOCK_H=64, BLOCK_R=32, num_warps=4),
         dict(BLOCK_E=16, BLOCK_H=32, BLOCK_R=32, num_warps=4),
         dict(BLOCK_E=16, BLOCK_H=128, BLOCK_R=32, num_warps=8),
         dict(BLOCK_E=32, BLOCK_H=64, BLOCK_R=32, num_warps=8),
         dict(BLOCK_E=16, BLOCK_H=64, BLOCK_R=64, num_warps=8)]


def sweep(n_atoms):
    """Forward time of a few tile shapes (first = default) on the water box."""
    import kernels.attention.triton_forward as tf
    from kernels.attention import equivariant_attention

    dev = torch.device("cuda")
    n, species, pair_i, pair_j, rij, q, k, v, mlp = attention_problem(n_atoms, dev)
    with torch.no_grad():
        for bl in SWEEP:
            tf.default_blocks = lambda n_heads, ch, device, bl=bl: bl
            t0 = time.time()
            fn = lambda: equivariant_attention(q, k, v, rij, pair_i, pair_j, species,  # noqa
                                               mlp.weights(), CUTOFF, 1.0, 2, impl="triton")
            fn()
            torch.cuda.synchronize()
            comp = time.time() - t0
            ms = bench(fn)
            print(f"sweep N={n} E={pair_i.numel()} {bl}: {ms:.3f} ms "
                  f"({pair_i.numel() * flops_per_edge() / ms / 1e9:.1f} TFLOP/s; "
                  f"first call {comp:.1f}s)", flush=True)


FWD_VARIANTS = [  # run 2 (commit c4d3849) at 10k: PRE+DEFER E16 H16 w4 7.84 ms, best of 5
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=32, num_warps=4),
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=32, num_warps=8),
    dict(PRE=True, DEFER=True, BLOCK_E=8, BLOCK_H=32, BLOCK_R=32, num_warps=4),
    dict(PRE=True, DEFER=True, BLOCK_E=16, BLOCK_H=16, BLOCK_R=32, num_warps=4),
    # the score prepass (PRE_*: triton_forward.edge_scores; default E32 H32 w8)
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=32, num_warps=4,
         PRE_BLOCK_E=16, PRE_BLOCK_H=32, PRE_NUM_WARPS=8),
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=32, num_warps=4,
         PRE_BLOCK_E=32, PRE_BLOCK_H=16, PRE_NUM_WARPS=8),
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=32, num_warps=4,
         PRE_BLOCK_E=32, PRE_BLOCK_H=32, PRE_NUM_WARPS=4),
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=16, num_warps=4,
         PRE_BLOCK_E=32, PRE_BLOCK_H=32, PRE_NUM_WARPS=8),
    # the prepass without software pipelining (27.6 -> 17.4 KB of shared memory, E41)
    dict(PRE=True, DEFER=True, BLOCK_E=4, BLOCK_H=64, BLOCK_R=32, num_warps=4,
         PRE_NUM_STAGES=1),
]
# channel backward (BLOCK_H heads; at the paper's 2 channels per head the tile is 2 x BLOCK_H
# lanes wide). Session 19 (E37): E4 H32 w4 (now the default) 16.8 ms against E16 H16 w4 20.6.
BWD_VARIANTS = [dict(BLOCK_E=4, BLOCK_H=32, num_warps=4),
                dict(BLOCK_E=16, BLOCK_H=16, num_warps=4),
                dict(BLOCK_E=8, BLOCK_H=16, num_warps=4),
                dict(BLOCK_E=2, BLOCK_H=32, num_warps=4),
                dict(BLOCK_E=2, BLOCK_H=64, num_warps=4),
                dict(BLOCK_E=4, BLOCK_H=64, num_warps=4),
                dict(BLOCK_E=4, BLOCK_H=64, num_warps=8),
                dict(BLOCK_E=4, BLOCK_H=32, num_warps=2),
                dict(BLOCK_E=2, BLOCK_H=32, num_warps=2),
                dict(BLOCK_E=8, BLOCK_H=32, num_warps=4),
                dict(BLOCK_E=8, BLOCK_H=64, num_warps=8)]
# head backward (triton_head_backward since E52): the head kernel's edges x heads per tile,
# then the radial kernel's edges per program and warps
HEAD_VARIANTS = [dict(BLOCK_E=be, BLOCK_H=bh, num_warps=nw, RADIAL_BLOCK_E=rbe,
                      RADIAL_NUM_WARPS=rnw, BLOCK_R=32)
                 for be, bh, nw, rbe, rnw in ((8, 32, 4, 16, 4), (8, 32, 4, 16, 2),
                                              (8, 32, 4, 32, 4), (8, 32, 4, 32, 8),
                                              (8, 32, 4, 64, 8), (16, 32, 4, 16, 4),
                                              (4, 32, 4, 16, 4), (8, 16, 4, 16, 4),
                                              (8, 64, 4, 16, 4), (8, 32, 2, 16, 4))]

# how dv, dk reach the senders (triton_backward.REDUCE) and the sender kernel's tiles (E15)
REDUCE_VARIANTS = [dict(REDUCE="atomic"),
                   dict(REDUCE="sorted", BLOCK_E=16, BLOCK_H=16, num_warps=4),
                   dict(REDUCE="sorted", BLOCK_E=8, BLOCK_H=32, num_warps=4),
                   dict(REDUCE="sorted", BLOCK_E=32, BLOCK_H=16, num_warps=8),
                   dict(REDUCE="sorted", BLOCK_E=16, BLOCK_H=32, num_warps=8)]


def launched_resources(run, arch: int | None = None) -> dict:
    """Registers, spilled bytes per thread and shared memory of every Triton kernel that
    `run()` launches, as that call launches them: its launches are recorded (nothing runs)
    and compiled for this GPU, or sm_{arch} (kernels/ahead_of_time.py; Triton's cache makes
    a variant already compiled free). Keyed by kernel name, or by kernel and tiles where one
    call launches a kernel in several variants."""
    from kernels.ahead_of_time import compile_launch, recorded_launches, resource_usage

    if arch is None:
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    with recorded_launches() as launches:
        run()
    variants = {launch.variant(): launch for launch in launches}.values()
    per_kernel = [launch.kernel for launch in variants]
    out = {}
    for launch in variants:
        usage = resource_usage(compile_launch(launch, arch))
        key = launch.kernel if per_kernel.count(launch.kernel) == 1 else launch.label()
        out[key] = {"regs": usage["registers"], "spill_bytes": usage["local_bytes"],
                    "smem_bytes": usage["shared_bytes"]}
    return out


def autotune(n_atoms, log, stages=("fwd", "reduce", "bwd", "head")):
    """Time forward variants, then backward (sender reduction, channel, head kernel) variants
    at n_atoms, forces only (frozen radial weights, as in MD); install the fastest. stages:
    which of these to time (the others keep their defaults)."""
    import kernels.attention.triton_backward as tb
    import kernels.attention.triton_forward as tf
    import kernels.attention.triton_head_backward as th
    import kernels.attention.triton_sender_backward as ts
    from kernels.attention import equivariant_attention

    dev = torch.device("cuda")
    n, species, pair_i, pair_j, rij, q, k, v, mlp = attention_problem(n_atoms, dev)
    ref = None
    res = {"n_atoms": n, "edges": int(pair_i.numel()), "forward": [], "reduce": [],
           "backward": [], "head_backward": []}
    with torch.no_grad():
        ref = equivariant_attention(q, k, v, rij, pair_i, pair_j, species, mlp.weights(),
                                    CUTOFF, 1.0, 2, impl="reference")
    best = (float("inf"), tf.default_blocks(CFG["num_heads"],
                                            CFG["channels"] // CFG["num_heads"], dev))
    for bl in FWD_VARIANTS if "fwd" in stages else []:
        tf.default_blocks = lambda n_heads, ch, device, bl=bl: bl
        fn = lambda: equivariant_attention(q, k, v, rij, pair_i, pair_j, species,  # noqa
                                           mlp.weights(), CUTOFF, 1.0, 2, impl="triton")
        with torch.no_grad():
            t0 = time.time()
            out = fn()
            torch.cuda.synchronize()
            comp = time.time() - t0
            err = float((out - ref).norm() / ref.norm())
            ms = bench(fn)
        regs = launched_resources(fn)
        log(f"autotune fwd {bl}: {ms:.3f} ms, rel err {err:.1e}, first call {comp:.1f}s, "
            f"{regs}")
        res["forward"].append({"blocks": bl, "ms": ms, "rel_err": err, "registers": regs})
        if ms < best[0] and err < 1e-5:
            best = (ms, bl)
    fwd_best = best[1]
    tf.default_blocks = lambda n_heads, ch, device: fwd_best
    del ref
    leaves = [q, k, v, rij]
    g_out = torch.randn(n, 20, CFG["channels"], device=dev)

    frozen = frozen_weights(mlp)

    def fb():
        ls = [t.detach().requires_grad_() for t in leaves]
        out = equivariant_attention(ls[0], ls[1], ls[2], ls[3], pair_i, pair_j, species,
                                    frozen, CUTOFF, 1.0, 2, impl="triton")
        return torch.autograd.grad(out, ls, g_out)

    def fastest(variants, install, label, key):
        best = (float("inf"), None)
        for bl in variants:
            install(bl)
            t0 = time.time()
            fb()
            torch.cuda.synchronize()
            comp = time.time() - t0
            ms = bench(fb)
            regs = launched_resources(fb)
            log(f"autotune fwd+bwd {label}{bl}: {ms:.3f} ms, first call {comp:.1f}s, {regs}")
            res[key].append({"blocks": bl, "fwd_bwd_ms": ms, "registers": regs})
            if ms < best[0]:
                best = (ms, bl)
        install(best[1])
        return best[1]

    def set_bwd(bl):
        tb.default_bwd_blocks = lambda n_heads, ch: bl

    def set_head(bl):
        th.default_head_blocks = lambda n_heads: bl

    def set_reduce(bl):
        tb.REDUCE = bl["REDUCE"]
        sender = {key: bl[key] for key in ("BLOCK_E", "BLOCK_H", "num_warps") if key in bl}
        if sender:
            ts.default_sender_blocks = lambda n_heads, ch: sender

    reduce_best = fastest(REDUCE_VARIANTS, set_reduce, "reduce ", "reduce") \
        if "reduce" in stages else None
    bwd_best = fastest(BWD_VARIANTS, set_bwd, "", "backward") if "bwd" in stages else None
    head_best = fastest(HEAD_VARIANTS, set_head, "head ", "head_backward") \
        if "head" in stages else None
    res["chosen"] = {"forward": fwd_best, "reduce": reduce_best, "backward": bwd_best,
                     "head_backward": head_best}
    log(f"autotune chosen {res['chosen']}")
    return res


def profile(n_atoms):
    """torch.profiler table of one attention forward+backward, forces only and with weights."""
    from kernels.attention import equivariant_attention

    dev = torch.device("cuda")
    n, species, pair_i, pair_j, rij, q, k, v, mlp = attention_problem(n_atoms, dev)
    g_out = torch.randn(n, 20, CFG["channels"], device=dev)
    for mode in ("forces", "weights"):
        def fb():
            ls = [t.detach().requires_grad_() for t in (q, k, v, rij)]
            w = frozen_weights(mlp) if mode == "forces" else mlp.weights()
            out = equivariant_attention(ls[0], ls[1], ls[2], ls[3], pair_i, pair_j, species,
                                        w, CUTOFF, 1.0, 2, impl="triton")
            extra = [] if mode == "forces" else list(mlp.parameters())
            return torch.autograd.grad(out, ls + extra, g_out)

        fb()
        print(f"fwd+bwd ({mode}): {bench(fb):.2f} ms", flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fb()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)


def plot(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        res = json.load(f)
    sizes = res["sizes"]
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.5))
    for impl, mk in (("triton", "o-"), ("reference", "s--")):
        for mode in ("fwd", "fwd_bwd_forces"):
            xs = [e["n_atoms"] for e in sizes if e["attention"].get(impl, {}).get(mode + "_ms")]
            ys = [e["attention"][impl][mode + "_ms"] for e in sizes
                  if e["attention"].get(impl, {}).get(mode + "_ms")]
            if xs:
                axs[0].plot(xs, ys, mk, label=f"{impl} {mode}")
            ys = [e["attention"][impl][mode + "_peak_bytes"] / e["n_atoms"] / 1e3 for e in sizes
                  if isinstance(e["attention"].get(impl, {}).get(mode + "_peak_bytes"), int)]
            xs = [e["n_atoms"] for e in sizes
                  if isinstance(e["attention"].get(impl, {}).get(mode + "_peak_bytes"), int)]
            if xs and mode == "fwd_bwd_forces":
                axs[1].plot(xs, ys, mk, label=f"attention {impl} fwd+bwd (forces)")
        xs = [e["n_atoms"] for e in sizes
              if (e.get("atom_steps_per_s") or {}).get("ours" if impl == "triton" else impl)]
        ys = [e["atom_steps_per_s"]["ours" if impl == "triton" else impl] for e in sizes
              if (e.get("atom_steps_per_s") or {}).get("ours" if impl == "triton" else impl)]
        if xs:
            what = ("triton attention; CUDA graphs where they apply" if impl == "triton"
                    else f"{impl} attention")
            axs[2].plot(xs, ys, mk, label=f"E2Former-V2 model ({what})")
        xs = [e["n_atoms"] for e in sizes if isinstance(
            ((e.get("peak_mem_bytes") or {}).get("model_energy_forces") or {}).get(
                "ours" if impl == "triton" else impl), int)]
        ys = [e["peak_mem_bytes"]["model_energy_forces"]["ours" if impl == "triton" else impl]
              / e["n_atoms"] / 1e3 for e in sizes if e["n_atoms"] in xs]
        if xs:
            axs[1].plot(xs, ys, mk.replace("o", "^").replace("s", "v"),
                        label=f"full model E+F ({impl})")
    mace = [(e["n_atoms"], e["atom_steps_per_s"]["mace"]) for e in sizes
            if isinstance((e.get("atom_steps_per_s") or {}).get("mace"), (int, float))]
    if mace:
        axs[2].plot(*zip(*mace), "k:", marker="x", label=f"MACE ({res.get('mace_form')}, this run)")
    axs[0].set_title("attention stage time (ms)")
    axs[1].set_title("peak memory per atom (kB)")
    axs[2].set_title("energy+forces atom-steps/s")
    for ax in axs:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{res['device']}, {res['dtype'].split(' ')[0]}, commit {res['commit'][:8]}")
    fig.tight_layout()
    out = os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":
    sys.exit(main())
