"""What arithmetic alone allows: FLOPs per atom-step of E2Former-V2 and the throughput bound.

Counts matrix-product FLOPs (mm, bmm, addmm... with torch's FlopCounterMode, on the CPU;
elementwise work is not counted) of one energy + forces evaluation of a periodic water box
(1 g/cm^3) with frozen weights, as in MD, through the PyTorch reference attention, with two
neighbour lists of the same atoms (r_c and 0.8 r_c): the count is affine in the number of
edges, so the two split it into node-wise work (the blocks' linears, whatever module runs
them) and per-edge work. The fused path's step is then estimated: the node-wise work as
counted (any implementation multiplies these matrices), the attention's per-edge forward as
benchmarks/bench_attention.py counts the kernel's work (flops_per_edge, elementwise product
included) tripled (the backward recomputes it, then takes input gradients), the embedding's
per-edge products doubled (input gradients only). The bound `ceiling / FLOPs per atom-step`
is the atom-steps/s a GPU could give if every FLOP ran at its ceiling: all on FP32 CUDA
cores (the ceiling measured on this workplace's H100), or the matrix products on TF32 or
BF16 tensor cores (NVIDIA's dense H100 SXM figures) and the rest on FP32 CUDA cores.

    python benchmarks/flop_count.py --atoms 600 --out benchmarks/results/flop_count.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from bench_attention import CFG, FP32_TFLOPS_CEIL, flops_per_edge, water_box  # noqa: E402

from ase import Atoms  # noqa: E402

from e2former_lammps import E2FormerConfig, E2FormerV2  # noqa: E402
from e2former_lammps.model import AtomGraph  # noqa: E402
from e2former_lammps.neighbors import atoms_to_graph  # noqa: E402

# dense tensor-core peaks of the H100 SXM (NVIDIA data sheet), TFLOP/s
TENSOR_TFLOPS = {"tf32": 495.0, "bf16": 989.0}


def matmul_flops(model: E2FormerV2, graph: AtomGraph, backward: bool, module: str = "Global"
                 ) -> int:
    """Matrix-product FLOPs of the energy (and, with backward, of dE/drij too); of one
    module's calls if named (forward only: backward hooks attribute loosely)."""
    rij = graph.rij.detach().requires_grad_(backward)
    graph.rij = rij
    # .backward(), not autograd.grad: FlopCounterMode's module hooks reject the latter
    with FlopCounterMode(display=False) as counter:
        energy = model(graph).sum()
        if backward:
            energy.backward()
    return sum(counter.get_flop_counts().get(module, {}).values())


def split_node_edge(model: E2FormerV2, atoms: Atoms, cutoffs: tuple[float, float],
                    backward: bool, module: str = "Global") -> tuple[float, float]:
    """(FLOPs that do not depend on the edges, FLOPs per edge): the count is affine in the
    number of edges at fixed atoms, so two neighbour lists of the same atoms (two list
    cutoffs) separate the node-wise work from the per-edge work whatever module runs it."""
    cfg = model.config
    with torch.no_grad():  # the first forward also caches the isolated atoms' energies
        model(atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cutoffs[1],
                             next(model.parameters()).dtype))
    counts = []
    for cutoff in cutoffs:
        graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cutoff, torch.float32)
        counts.append((graph.pair_i.numel(), matmul_flops(model, graph, backward, module)))
    (e1, f1), (e2, f2) = counts
    per_edge = (f1 - f2) / (e1 - e2)
    return f1 - per_edge * e1, per_edge


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--atoms", type=int, default=600)
    p.add_argument("--model", default=None,
                   help="a packaged name or .pt file instead of the paper configuration "
                        "(random weights)")
    provenance.add_result_arguments(p, "benchmarks/results/flop_count.json")
    args = p.parse_args()
    if provenance.replot(args, plot):
        return
    torch.manual_seed(0)
    model = (E2FormerV2.load(args.model) if args.model
             else E2FormerV2(E2FormerConfig(elements=["H", "O"], **CFG)))
    model = model.float().eval().requires_grad_(False)
    model.set_attention_impl("reference")
    cfg = model.config
    sizes = {k: getattr(cfg, k) for k in ("channels", "lmax", "num_layers", "num_heads",
                                         "head_dim", "num_rbf", "radial_hidden",
                                         "ffn_channels", "cutoff")}
    pos, species, box = water_box(args.atoms, device="cpu")
    if {"H", "O"} - set(cfg.elements):
        p.error(f"--model {args.model} lacks H or O: the count runs on water")
    atoms = Atoms(numbers=[(1, 8)[s] for s in species.tolist()],  # water_box: 0 = H, 1 = O
                  positions=pos.numpy(), cell=[box] * 3, pbc=True)
    graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff, torch.float32)
    n, n_edges = len(atoms), graph.pair_i.numel()
    edges = n_edges / n
    lists = (cfg.cutoff, 0.8 * cfg.cutoff)
    node_fwd, edge_fwd = split_node_edge(model, atoms, lists, backward=False)
    node_both, edge_both = split_node_edge(model, atoms, lists, backward=True)
    _, embedding_edge_fwd = split_node_edge(model, atoms, lists, False, "E2FormerV2.embedding")
    blocks = len(model.blocks)
    # the fused kernel's attention forward as the kernel benchmark counts it; of it, the
    # radial MLP's two layers are matrix products (the EAAS product, score and softmax are
    # elementwise, CUDA-core work)
    kernel_fwd = flops_per_edge(sizes) * edges * blocks
    radial_fwd = 2 * cfg.radial_hidden * (cfg.num_rbf + 2 * cfg.num_heads) * edges * blocks
    per_atom = {
        "node-wise, forward": node_fwd / n,
        "node-wise, forward + backward": node_both / n,
        "per-edge (reference), forward": edge_fwd * edges,
        "per-edge (reference), forward + backward": edge_both * edges,
        "per-edge, of which the embedding, forward": embedding_edge_fwd * edges,
        "per-edge attention (fused kernel), forward": kernel_fwd,
    }
    # the fused path's step, estimated: the node-wise work as counted (any implementation
    # multiplies the same matrices), the kernel's per-edge forward tripled (its backward
    # recomputes the per-edge work, then takes input gradients), the embedding's per-edge
    # products doubled (input gradients only)
    step = node_both / n + 3 * kernel_fwd + 2 * embedding_edge_fwd * edges
    gemm = node_both / n + 3 * radial_fwd + 2 * embedding_edge_fwd * edges
    per_atom["fused path, forward + backward (estimate)"] = step
    per_atom["of which matrix products"] = gemm
    # seconds per atom-step at the ceilings: everything on CUDA cores (fp32), or the matrix
    # products on tensor cores and the rest still on CUDA cores
    fp32 = FP32_TFLOPS_CEIL * 1e12
    seconds = {"fp32 (CUDA cores, measured ceiling)": step / fp32,
               **{f"{k} products + fp32 rest": gemm / (tc * 1e12) + (step - gemm) / fp32
                  for k, tc in TENSOR_TFLOPS.items()}}
    out = {"what": "matmul FLOPs per atom-step (energy + forces, frozen weights), "
                   "FlopCounterMode on the CPU (reference attention)",
           "model": args.model or "paper configuration, random weights",
           "commit": provenance.commit(), "config": sizes, "n_atoms": n,
           "edges_per_atom": edges, "mflop_per_atom_step": {
               k: v / 1e6 for k, v in per_atom.items()},
           "atom_steps_per_s_bound": {k: 1.0 / t for k, t in seconds.items()},
           "bound_of": "fused path, forward + backward (estimate); tensor cores: H100 SXM "
                       "dense peaks, for the matrix products only",
           "command": " ".join(sys.argv)}
    print(f"{n} atoms, {edges:.1f} edges per atom")
    for k, v in out["mflop_per_atom_step"].items():
        print(f"  {k:50s} {v:8.2f} MFLOP/atom-step")
    for k, v in out["atom_steps_per_s_bound"].items():
        print(f"  bound, {k:43s} {v / 1e6:8.2f} M atom-steps/s")
    provenance.write_results(out, args.out, plot)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = out["mflop_per_atom_step"]
    parts = {"node-wise (counted)": m["node-wise, forward + backward"],
             "attention per-edge (3 x kernel forward)":
                 3 * m["per-edge attention (fused kernel), forward"],
             "embedding per-edge (2 x forward)": 2 * m["per-edge, of which the embedding, forward"]}
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.barh(list(parts), list(parts.values()))
    a.set_xlabel("MFLOP per atom-step (energy + forces)")
    a.set_title(f"fused path estimate {m['fused path, forward + backward (estimate)']:.0f} "
                f"MFLOP/atom-step, {m['of which matrix products']:.0f} of them matrix products",
                fontsize=9)
    bounds = out["atom_steps_per_s_bound"]
    b.barh(list(bounds), [v / 1e6 for v in bounds.values()])
    b.axvline(1.0, color="k", ls="--", lw=1, label="issue 3 target: 1M at 100k atoms")
    b.axvline(0.5, color="r", ls=":", lw=1, label="issue 6 target: 0.5M in LAMMPS")
    b.set_xlabel("bound, million atom-steps/s")
    b.legend(fontsize=8)
    fig.suptitle(f"E2Former-V2, {out['model']}, {out['edges_per_atom']:.1f} edges/atom, "
                 f"commit {out['commit'][:8]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
