"""Where the time of one energy+forces step goes: torch.profiler CUDA-kernel table.

Full model (paper configuration with random weights, or a trained model with --model) on
water (r_c 5 Å) at N atoms, fp32, with the model's parameters frozen as in MD (only dE/drij is
asked for). Prints the step time and the top CUDA kernels.

"""
from __future__ import annotations

import argparse

import torch

from e2former_lammps import E2FormerV2
from bench_attention import (CUTOFF, bench, energy_grad_step, neighbour_list,
                             paper_model, water_box, water_species)


def graphed_step_ms(model, species, pair_i, pair_j, rij, n: int) -> float:
    """ms of one energy+dE/drij evaluation replayed as a CUDA graph (GraphedEnergyForces, as
    in MD); the eager step above is bound by kernel launches for small models."""
    from e2former_lammps.cuda_graphs import GraphedEnergyForces
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.model import AtomGraph

    runner = GraphedEnergyForces(model)
    if not runner.enabled or pair_i.numel() > runner.max_edges:
        raise SystemExit(f"--graphs: {pair_i.numel()} pairs, graphs take at most "
                         f"{runner.max_edges} (or E2FORMER_CUDA_GRAPHS=0)")
    graph = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij.float(),
                      n_local=n, exchange=NoGhosts(n))
    ms = bench(lambda: runner(graph), warmup=3, rep=20)
    assert runner.in_use, "the step was not captured as a CUDA graph"
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atoms", type=int, default=10000)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--shapes", action="store_true",
                    help="also a table of operators by input shape (which tensors the time is on)")
    ap.add_argument("--graphs", action="store_true",
                    help="also time the step replayed as a CUDA graph (what LAMMPS runs)")
    ap.add_argument("--model", help="a trained model (packaged name or file) instead of the "
                    "paper configuration's random weights")
    ap.add_argument("--checkpoint", choices=["auto", "off", "on"], default="auto",
                    help="block recompute in the backward: the model's rule (auto: above "
                    "CHECKPOINT_MIN_ATOMS atoms when the step would not fit the GPU), never, "
                    "or always; the mode the step ran and its peak memory are printed")
    args = ap.parse_args()

    dev = torch.device("cuda")
    pos, species, box = water_box(args.atoms, device=dev)
    n = pos.shape[0]
    pair_i, pair_j, rij = neighbour_list(pos, box, CUTOFF)
    if args.model:
        model = E2FormerV2.load(args.model).to(dev).requires_grad_(False)
        species = water_species(model, species)
    else:
        model = paper_model(dev)
    model.checkpoint_blocks = {"auto": "auto", "off": False, "on": True}[args.checkpoint]
    step = energy_grad_step(model, species, pair_i, pair_j, rij.float(), n)

    torch.cuda.reset_peak_memory_stats()
    ms = bench(step, warmup=2, rep=5)
    peak = torch.cuda.max_memory_allocated()
    print(f"N={n} edges={pair_i.numel()} step {ms:.1f} ms -> {n / ms * 1e3:.0f} atom-steps/s, "
          f"peak {peak / 1e9:.2f} GB ({peak / n / 1e3:.0f} KB/atom), checkpoint "
          f"{args.checkpoint} ({model.last_checkpoint_mode})", flush=True)
    if args.graphs:
        print(f"N={n} graphed step {graphed_step_ms(model, species, pair_i, pair_j, rij, n):.1f} ms",
              flush=True)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, record_shapes=args.shapes) as prof:
        step()
        torch.cuda.synchronize()
    # operators (with their kernels' time) and kernels, by time spent on the GPU
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows,
                                    max_name_column_width=70), flush=True)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows,
                                    max_name_column_width=70), flush=True)
    if args.shapes:
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=40,
            max_shapes_column_width=90), flush=True)


if __name__ == "__main__":
    main()
