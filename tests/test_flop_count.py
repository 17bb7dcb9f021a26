"""benchmarks/flop_count.py: the split of FLOPs into node-wise and per-edge work rests on the
count being affine in the number of edges at fixed atoms; a third neighbour list checks it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flop_count import matmul_flops, split_node_edge  # noqa: E402

from e2former_lammps.neighbors import atoms_to_graph  # noqa: E402

from conftest import random_model  # noqa: E402


@pytest.mark.parametrize("backward", [False, True])
def test_flops_are_affine_in_the_edges(backward):
    model = random_model(seed=3, dtype=torch.float32).eval().requires_grad_(False)
    model.set_attention_impl("reference")
    cfg = model.config
    atoms = bulk("H", "sc", a=1.6, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=1)
    node, per_edge = split_node_edge(model, atoms, (cfg.cutoff, 0.8 * cfg.cutoff), backward)
    assert node > 0 and per_edge > 0
    graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, 0.6 * cfg.cutoff,
                           torch.float32)
    third = matmul_flops(model, graph, backward)
    assert third == pytest.approx(node + per_edge * graph.pair_i.numel(), rel=1e-12)
