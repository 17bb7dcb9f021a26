"""Registers, spills and shared memory of every Triton kernel at its default tiles, compiled
for sm_90 (H100/H200) on this machine, GPU or not (kernels/ahead_of_time.py).

The kernels are launched through their real wrappers on a small CPU water box: the attention
forward, its backward with frozen radial weights (MD) and with all gradients (training),
each reduction mode, and the per-edge rotation products. Every distinct launch is compiled;
a compile error fails the run. What it prints is what ptxas reports for this machine's
Triton, a check on a tile change before GPU time is spent on it (kernels/NOTES.md E40).

    python benchmarks/kernel_resources.py --config paper \
        --out benchmarks/results/kernel_resources.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_resources.py compiles the kernels: run it with TRITON_INTERPRET unset")

import torch  # noqa: E402
import triton  # noqa: E402

from bench_attention import (CFG, CUTOFF, attention_problem, frozen_weights,  # noqa: E402
                             use_config_of)
from kernels.ahead_of_time import (Launch, compile_launch, recorded_launches,  # noqa: E402
                                   resource_usage)


def record_all(n_atoms: int, weight_envelope: float | None) -> list[Launch]:
    """The distinct launches (Launch.variant) of the attention op (forward, both backwards,
    each REDUCE mode), the edge products and the receiver sums (forward and backward), in
    first-seen order."""
    import kernels.attention.triton_backward as tb
    from kernels.attention import equivariant_attention
    from kernels.edge_matmul import edge_matmul, edge_outer
    from kernels.receiver_sum import receiver_outer_sum

    n, species, pair_i, pair_j, rij, q, k, v, mlp = attention_problem(n_atoms, "cpu")

    def attention(weights, leaves):
        return equivariant_attention(*leaves, pair_i, pair_j, species, weights, CUTOFF, 1.0,
                                     CFG["lmax"], impl="triton", weight_envelope=weight_envelope)

    with recorded_launches() as launches:
        with torch.no_grad():
            attention(mlp.weights(), (q, k, v, rij))
        for mode in tb.REDUCE_MODES:
            tb_reduce, tb.REDUCE = tb.REDUCE, mode
            try:
                for weights in (frozen_weights(mlp), mlp.weights()):
                    leaves = [t.detach().requires_grad_() for t in (q, k, v, rij)]
                    out = attention(weights, leaves)
                    out.backward(torch.ones_like(out))
            finally:
                tb.REDUCE = tb_reduce
        edges = rij.shape[0]
        a = torch.randn(edges, 5, 5, requires_grad=True)
        b = torch.randn(edges, 5, CFG["channels"], requires_grad=True)
        edge_matmul(a, b, impl="triton").sum().backward()
        edge_outer(b, b.detach(), impl="triton").sum().backward()
        # the edge-degree embedding's sum over each receiver's edges ((lmax+1)^2 x hidden+1)
        sh = torch.randn(edges, (CFG["lmax"] + 1) ** 2, requires_grad=True)
        hidden = torch.randn(edges, CFG["radial_hidden"] + 1, requires_grad=True)
        receiver_outer_sum(sh, hidden, pair_i, n, impl="triton").sum().backward()
    distinct: dict[tuple, Launch] = {}
    for launch in launches:
        distinct.setdefault(launch.variant(), launch)
    return list(distinct.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper",
                    help="'paper' (C 256, 128 heads x 8) or a packaged model's name "
                         "(its sizes and weight envelope)")
    ap.add_argument("--atoms", type=int, default=200, help="water box size (tiles do not "
                    "depend on it)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    ap.add_argument("--out", default=None, help="JSON file")
    args = ap.parse_args()

    weight_envelope = None
    if args.config != "paper":
        from e2former_lammps.model import E2FormerV2

        use_config_of(args.config)
        weight_envelope = E2FormerV2.load(args.config).config.weight_envelope
    launches = record_all(args.atoms, weight_envelope)
    rows = []
    print(f"{'kernel (tiles, switches, options)':<96} {'regs':>5} {'spill B':>8} {'smem B':>8} "
          f"{'s':>5}")
    for launch in launches:
        t0 = time.time()
        usage = resource_usage(compile_launch(launch, args.arch))
        rows.append({"kernel": launch.kernel, "label": launch.label(),
                     "constexprs": {k: v for k, v in launch.constexprs},
                     "options": dict(launch.options), **usage,
                     "compile_s": time.time() - t0})
        print(f"{launch.label():<96} {usage['registers']:>5} {usage['local_bytes']:>8} "
              f"{usage['shared_bytes']:>8} {time.time() - t0:>5.1f}", flush=True)
    result = {"arch": f"sm_{args.arch}", "triton": triton.__version__,
              "torch": torch.__version__, "machine": platform.machine(),
              "config": args.config, "sizes": dict(CFG), "weight_envelope": weight_envelope,
              "command": " ".join(sys.argv), "kernels": rows}
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
