"""What autograd keeps per atom for energy + forces, by module.

The activation memory of a force evaluation is what autograd saves between the forward and
the backward. This counts it exactly with `torch.autograd.graph.saved_tensors_hooks` (each
storage once, parameters excluded), attributed to the innermost module running when the
tensor was saved, for the full model (paper configuration) on a water box, with the fused
Triton attention or the edge-materialising reference. Saved bytes do not depend on the
device; on CUDA the peak allocated memory of the step is printed too (it adds the backward's
transient buffers). Run it on the GPU machine with >= 10k atoms: the Triton interpreter on
the CPU needs more than 20 minutes for the paper configuration even at 150 atoms, and below
~10k atoms constant-size tensors (per-row weight gathers) dominate the per-atom figures.

    PYTHONPATH=.:benchmarks python benchmarks/memory_per_atom.py --atoms 10000 --impl triton
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from bench_attention import (CFG, CUTOFF, neighbour_list, paper_model,  # noqa: E402
                             water_box)


def saved_bytes_by_module(model, graph) -> tuple[dict[str, int], int]:
    """{module path: bytes saved for backward} and the total, for one energy evaluation."""
    from e2former_lammps.forces import energy_and_pair_gradient

    names = {m: n or "model" for n, m in model.named_modules()}
    stack: list[str] = ["model"]

    def enter(mod, args) -> None:
        stack.append(names[mod])

    def leave(mod, args, out) -> None:  # a forward hook's return value would replace `out`
        stack.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in model.modules()]
    hooks += [m.register_forward_hook(leave) for m in model.modules()]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: set[int] = set()
    by_module: dict[str, int] = defaultdict(int)

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in params:
            seen.add(ptr)
            by_module[stack[-1]] += t.untyped_storage().nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            energy_and_pair_gradient(model, graph)
    finally:
        for h in hooks:
            h.remove()
    return dict(by_module), sum(by_module.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--atoms", type=int, default=150)
    ap.add_argument("--impl", choices=["triton", "reference"], default="triton")
    ap.add_argument("--checkpoint", choices=["off", "on", "offload"], default="off",
                    help="recompute blocks in the backward (what large MD systems do); "
                         "offload: and keep their inputs in host memory")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.model import AtomGraph

    dev = torch.device(args.device)
    pos, species, box = water_box(args.atoms, device=dev)
    pair_i, pair_j, rij = neighbour_list(pos, box, CUTOFF)
    n = pos.shape[0]
    model = paper_model(dev).eval()
    model.set_attention_impl(args.impl)
    model.checkpoint_blocks = {"off": False, "on": True, "offload": "offload"}[args.checkpoint]
    graph = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij.float(),
                      n_local=n, exchange=NoGhosts(n))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    by_module, total = saved_bytes_by_module(model, graph)
    peak = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else None
    # group "blocks.0.attention.value" -> "block.attention.value" summed over the blocks
    grouped: dict[str, int] = defaultdict(int)
    for name, b in by_module.items():
        parts = name.split(".")
        if parts[0] == "blocks":
            parts = ["blocks"] + parts[2:]
        grouped[".".join(parts)] += b
    rows = sorted(grouped.items(), key=lambda kv: -kv[1])
    print(f"N={n} edges={pair_i.numel()} impl={args.impl} checkpoint={args.checkpoint}: "
          f"{total / n / 1e3:.1f} KB saved per atom ({total / 1e6:.1f} MB)"
          + (f", peak {peak / n / 1e3:.1f} KB/atom above the inputs" if peak else ""))
    for name, b in rows:
        print(f"  {name:45s} {b / n / 1e3:8.1f} KB/atom")
    if args.json:
        args.json.write_text(json.dumps({
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "commit": provenance.commit(), "dtype": "float32", "command": " ".join(sys.argv),
            "n_atoms": n, "edges": int(pair_i.numel()), "impl": args.impl,
            "checkpoint": args.checkpoint, "config": CFG, "device": str(dev),
            "saved_bytes_per_atom": total / n,
            "peak_bytes_per_atom": peak / n if peak else None,
            "by_module_bytes_per_atom": {k: v / n for k, v in rows}}, indent=1))


if __name__ == "__main__":
    main()
