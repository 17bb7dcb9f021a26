"""The blocks' node-wise work through torch.compile (E2FORMER_COMPILE_NODES, kernels/NOTES.md
E54): the same energies and forces as eager, one compiled graph for every atom count and
block, and compiled only where its backward need not be differentiated again."""
import re

import numpy as np
import pytest
import torch

from e2former_lammps import step_plan
from e2former_lammps.forces import energy_and_pair_gradient
from e2former_lammps.neighbors import atoms_to_graph

from conftest import random_model, water_box


def _energy_and_gradient(model, atoms):
    cfg = model.config
    graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff, torch.float64,
                           "cpu")
    eatoms, grad = energy_and_pair_gradient(model, graph)
    return eatoms.sum().item(), grad


def test_compiled_node_work_equals_eager_for_any_atom_count(monkeypatch):
    """fp64 on the CPU (Inductor's C++ backend): energies and dE/drij of the compiled node
    work equal eager's to rounding, for two box sizes and with blocks recomputed in the
    backward, from one compiled graph per function (the atom count is dynamic)."""
    from torch._dynamo.utils import counters

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    torch._dynamo.reset()
    counters.clear()
    model = random_model(seed, num_layers=2).requires_grad_(False)
    for n_side, checkpoint in ((3, "auto"), (4, "auto"), (3, True)):
        atoms = water_box(n_side, seed=seed + n_side)
        model.checkpoint_blocks = checkpoint
        monkeypatch.setenv(step_plan.COMPILE_NODES_ENV, "0")
        e_eager, g_eager = _energy_and_gradient(model, atoms)
        monkeypatch.setenv(step_plan.COMPILE_NODES_ENV, "1")
        assert step_plan.compiles_node_work(model, torch.device("cpu"))
        e_compiled, g_compiled = _energy_and_gradient(model, atoms)
        assert abs(e_compiled - e_eager) <= 1e-10 * abs(e_eager), (n_side, checkpoint)
        assert torch.allclose(g_compiled, g_eager, rtol=0, atol=1e-10 * g_eager.abs().max())
    # node_in and node_out: one graph each for both blocks and all three calls
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_compiled_only_with_frozen_weights_and_on_cuda_by_default(monkeypatch):
    """auto compiles on CUDA, whatever the node products' precision (the tf32 product is a
    custom operator the graph holds, E56); training (weights that ask for gradients, a force
    loss differentiates the backward again) never compiles; a bad value is named."""
    model = random_model(0)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(step_plan.COMPILE_NODES_ENV, raising=False)
    monkeypatch.delenv("E2FORMER_NODE_MATMUL", raising=False)
    assert not step_plan.compiles_node_work(model, cuda)  # weights train
    model.requires_grad_(False)
    assert step_plan.compiles_node_work(model, cuda)
    assert not step_plan.compiles_node_work(model, cpu)
    for precision in ("tf32", "bf16"):
        monkeypatch.setenv("E2FORMER_NODE_MATMUL", precision)
        assert step_plan.compiles_node_work(model, cuda)
        assert not step_plan.compiles_node_work(model, cpu)
    monkeypatch.setenv(step_plan.COMPILE_NODES_ENV, "1")
    assert step_plan.compiles_node_work(model, cpu) and step_plan.compiles_node_work(model, cuda)
    monkeypatch.setenv(step_plan.COMPILE_NODES_ENV, "0")
    assert not step_plan.compiles_node_work(model, cuda)
    monkeypatch.setenv(step_plan.COMPILE_NODES_ENV, "yes")
    with pytest.raises(ValueError, match=re.escape(
            "E2FORMER_COMPILE_NODES='yes': expected one of ('auto', '0', '1')")):
        step_plan.compiles_node_work(model, cuda)
