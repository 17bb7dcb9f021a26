"""ASE calculator for E2Former-V2: energy, per-atom energies, forces, stress."""
from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .cuda_graphs import GraphedEnergyForces
from .forces import pair_gradient_to_forces, pair_gradient_to_virial
from .model import E2FormerV2
from .neighbors import atoms_to_graph
from .validation import check_pairs


class E2FormerCalculator(Calculator):
    """E2FormerCalculator(model_or_path, device="cpu", dtype=None).

    dtype defaults to the model's own (float64 models give float64 results). Units: eV, Å.
    Charge/spin for models trained with them come from atoms.info["charge"] / ["spin"].
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model_or_path: E2FormerV2 | str | os.PathLike, device: str = "cpu",
                 dtype: torch.dtype | None = None, **kwargs):
        super().__init__(**kwargs)
        model = model_or_path if isinstance(model_or_path, E2FormerV2) else E2FormerV2.load(
            model_or_path)
        if dtype is not None:
            model = model.to(dtype)
        # inference: frozen weights, so the backward computes forces only (no weight grads)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self._evaluate = GraphedEnergyForces(self.model)  # CUDA graphs for small systems

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes, plus the total charge and spin in atoms.info (model inputs that ASE
        does not watch: without this a changed charge would return the cached results)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and any(
                atoms.info.get(key, default) != self.atoms.info.get(key, default)
                for key, default in (("charge", 0.0), ("spin", 1.0))):
            changes.append("info")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        cfg = self.model.config
        charge = float(self.atoms.info.get("charge", 0.0))
        graph = atoms_to_graph(self.atoms, cfg.elements, cfg.atomic_numbers,
                               cfg.pair_cutoff(charge != 0), self.dtype, self.device,
                               mp_cutoff=cfg.cutoff)
        check_pairs(graph.rij, graph.pair_i, graph.pair_j)
        if cfg.charge_spin:
            graph.charge = torch.tensor([charge], device=self.device)
            graph.spin = torch.tensor([float(self.atoms.info.get("spin", 1.0))],
                                      device=self.device)
        eatoms, grad = self._evaluate(graph)
        energies = eatoms.detach().cpu().double().numpy()
        forces = pair_gradient_to_forces(grad, graph.pair_i, graph.pair_j, len(self.atoms))
        self.results["energies"] = energies
        self.results["energy"] = self.results["free_energy"] = float(energies.sum())
        self.results["forces"] = forces.cpu().double().numpy()
        if self.atoms.cell.rank == 3 and any(self.atoms.pbc):
            virial = pair_gradient_to_virial(grad, graph.rij).cpu().double().numpy()
            stress = virial / self.atoms.get_volume()  # (1/V) sum rij (x) dE/drij
            self.results["stress"] = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        else:
            self.results["stress"] = np.zeros(6)
