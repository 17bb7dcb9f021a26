"""Frames packed into device tensors; a batch is one AtomGraph of many structures."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.frame import Frame, check_elements
from ..exchange import NoGhosts
from ..forces import energy_and_pair_gradient, pair_gradient_to_forces
from ..model import AtomGraph, E2FormerV2
from ..neighbors import message_passing_index
from ..validation import species_index


@dataclass
class Batch:
    graph: AtomGraph
    frame_index: Tensor  # [B] rows of the PackedFrames
    n_atoms: Tensor  # [B]
    energy: Tensor  # [B] float64, eV
    forces: Tensor  # [N, 3] eV/Å
    subset: Tensor  # [B] subset ids
    # padded batches (fixed shapes for CUDA graphs, training/step.py): the padding atoms form
    # extra structures after the B real ones, and each atom's weight in the force loss
    # (1 / real atoms, 0 for padding) replaces the plain mean
    n_padding_structures: int = 0
    atom_weight: Tensor | None = None  # [N]


class PackedFrames:
    """All frames of a data set concatenated on one device.

    Pairs of non-periodic frames are found per batch on the device (all pairs within each
    structure, filtered by the cutoff); periodic frames get ASE neighbour lists up front.
    With coulomb_cutoff (a model with the Coulomb term), charged frames' pairs reach it, and
    batches that hold such pairs say which rows are within cutoff (AtomGraph.mp_index).
    """

    def __init__(self, frames: list[Frame], elements: list[str], atomic_numbers: list[int],
                 cutoff: float, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, where: str = "data",
                 coulomb_cutoff: float | None = None):
        if not frames:
            raise ValueError(f"{where}: no frames")
        check_elements(frames, elements, where)
        missing = [f.source for f in frames if f.energy is None or f.forces is None]
        if missing:
            raise ValueError(f"{where}: frames without energy/forces labels, e.g. {missing[0]}")
        self.device, self.dtype, self.cutoff = torch.device(device), dtype, cutoff
        self.coulomb_cutoff = coulomb_cutoff
        self.n_frames = len(frames)
        natoms = np.array([len(f) for f in frames], dtype=np.int64)
        numbers = np.concatenate([f.numbers for f in frames])
        self.species = species_index(numbers, atomic_numbers, elements).to(self.device)
        self.positions = torch.tensor(np.concatenate([f.positions for f in frames]),
                                      dtype=torch.float64)
        self.forces = torch.tensor(np.concatenate([f.forces for f in frames]), dtype=dtype,
                                   device=self.device)
        self.natoms = torch.tensor(natoms, device=self.device)
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum(natoms)]), device=self.device)
        self.energy = torch.tensor([f.energy for f in frames], dtype=torch.float64,
                                   device=self.device)
        self.charge = torch.tensor([f.charge for f in frames], dtype=dtype, device=self.device)
        self.spin = torch.tensor([f.spin for f in frames], dtype=dtype, device=self.device)
        self.subset_names = sorted({f.subset for f in frames})
        lut = {s: k for k, s in enumerate(self.subset_names)}
        self.subset = torch.tensor([lut[f.subset] for f in frames], device=self.device)
        # the molecule of each frame (SPICE: its HDF5 group), for per-molecule metrics
        self.molecules = [str(f.info.get("group", f.subset)) for f in frames]
        self.counts = np.zeros((self.n_frames, len(elements)), dtype=np.float64)
        species_np = self.species.cpu().numpy()
        for k, (a, b) in enumerate(zip(np.concatenate([[0], np.cumsum(natoms)])[:-1],
                                       np.cumsum(natoms))):
            self.counts[k] = np.bincount(species_np[a:b], minlength=len(elements))
        self.periodic = any(f.periodic for f in frames)
        self.pairs = None
        if self.periodic:
            self.pairs = [self._ase_pairs(f) for f in frames]
        self.positions = self.positions.to(device=self.device, dtype=dtype)

    def _ase_pairs(self, frame: Frame):
        from ase.neighborlist import neighbor_list

        atoms = frame.to_atoms()
        cutoff = (self.coulomb_cutoff if self.coulomb_cutoff is not None and frame.charge != 0
                  else self.cutoff)
        i, j, S = neighbor_list("ijS", atoms, cutoff)
        order = np.argsort(i, kind="stable")
        i, j, S = i[order], j[order], S[order]
        cell = np.asarray(atoms.get_cell()) if atoms.cell.rank == 3 else np.zeros((3, 3))
        return (torch.as_tensor(i), torch.as_tensor(j),
                torch.tensor(S.astype(np.float64) @ cell, dtype=self.dtype))

    def __len__(self) -> int:
        return self.n_frames

    def check_model(self, config) -> None:
        """Raise if these pairs were built for another model than `config` (E2FormerConfig):
        a different cutoff, or a Coulomb term whose charged frames would see only the pairs
        within the message-passing cutoff (energies silently wrong by the missing tail)."""
        if self.cutoff != config.cutoff:
            raise ValueError(f"frames packed with cutoff {self.cutoff} Å for a model with "
                             f"cutoff {config.cutoff} Å: pack them with the model's cutoff")
        if config.coulomb_cutoff is not None and self.coulomb_cutoff != config.coulomb_cutoff:
            raise ValueError(
                f"frames packed with coulomb_cutoff {self.coulomb_cutoff} for a model with a "
                f"Coulomb term to {config.coulomb_cutoff} Å: charged frames would miss their "
                f"pairs beyond {self.cutoff} Å; pack them with "
                f"coulomb_cutoff={config.coulomb_cutoff} (evaluate_frames does)")

    def batch(self, idx: Tensor | list[int]) -> Batch:
        dev = self.device
        idx = torch.as_tensor(idx, device=dev, dtype=torch.long)
        n = self.natoms[idx]
        n_batch = int(idx.numel())
        total = int(n.sum())
        charged = self.charge[idx] != 0
        long_range = self.coulomb_cutoff is not None and bool(charged.any())
        frame_of_atom = torch.repeat_interleave(torch.arange(n_batch, device=dev), n,
                                                output_size=total)
        start_b = torch.cumsum(n, 0) - n  # batch row of each frame's first atom
        local = torch.arange(total, device=dev) - start_b[frame_of_atom]
        rows = self.offsets[idx][frame_of_atom] + local
        pos = self.positions[rows]
        species = self.species[rows]
        if self.pairs is None:
            n2 = n * n
            n_cand = int(n2.sum())
            cf = torch.repeat_interleave(torch.arange(n_batch, device=dev), n2,
                                         output_size=n_cand)
            lc = torch.arange(n_cand, device=dev) - (torch.cumsum(n2, 0) - n2)[cf]
            nf = n[cf]
            gi = start_b[cf] + torch.div(lc, nf, rounding_mode="floor")
            gj = start_b[cf] + lc % nf
            rij = pos[gj] - pos[gi]
            reach = torch.full((n_batch,), self.cutoff ** 2, dtype=rij.dtype, device=dev)
            if long_range:
                reach[charged] = self.coulomb_cutoff ** 2
            keep = (gi != gj) & ((rij * rij).sum(-1) < reach[cf])
            pair_i, pair_j, rij = gi[keep], gj[keep], rij[keep]
        else:
            pi, pj, off = [], [], []
            for b, f in enumerate(idx.tolist()):
                i, j, o = self.pairs[f]
                s = int(start_b[b])
                pi.append(i + s)
                pj.append(j + s)
                off.append(o)
            pair_i = torch.cat(pi).to(dev)
            pair_j = torch.cat(pj).to(dev)
            rij = pos[pair_j] - pos[pair_i] + torch.cat(off).to(dev)
        graph = AtomGraph(species=species, pair_i=pair_i, pair_j=pair_j, rij=rij, n_local=total,
                          exchange=NoGhosts(total), batch=frame_of_atom,
                          charge=self.charge[idx], spin=self.spin[idx])
        if long_range:
            graph.mp_index = message_passing_index(rij, self.cutoff)
        return Batch(graph=graph, frame_index=idx, n_atoms=n, energy=self.energy[idx],
                     forces=self.forces[rows], subset=self.subset[idx])

    def mean_neighbours(self, max_frames: int = 4000, batch_size: int = 64) -> float:
        """Mean number of neighbours within the cutoff per atom (for avg_degree)."""
        pairs = atoms = 0
        for s in range(0, min(self.n_frames, max_frames), batch_size):
            b = self.batch(list(range(s, min(s + batch_size, self.n_frames, max_frames))))
            pairs += int(b.graph.pair_i.numel())
            atoms += b.graph.n_local
        return pairs / max(atoms, 1)


def predict(model: E2FormerV2, batch: Batch, create_graph: bool = False
            ) -> tuple[Tensor, Tensor]:
    """(energies [B] float64 eV, forces [N, 3] eV/Å) of a batch; autograd forces."""
    g = batch.graph
    eatoms, grad = energy_and_pair_gradient(model, g, create_graph=create_graph)
    forces = pair_gradient_to_forces(grad, g.pair_i, g.pair_j, g.n_local)
    return _frame_energies(eatoms, batch), forces


def predict_direct(model: E2FormerV2, batch: Batch) -> tuple[Tensor, Tensor]:
    """(energies [B] float64 eV, forces [N, 3] eV/Å) with the direct force head."""
    eatoms, forces = model.energy_and_direct_forces(batch.graph)
    return _frame_energies(eatoms, batch), forces


def _frame_energies(eatoms: Tensor, batch: Batch) -> Tensor:
    """Per-atom energies summed per structure: [B] float64 eV (padding structures dropped)."""
    n = batch.n_atoms.numel()
    energy = torch.zeros(n + batch.n_padding_structures, dtype=torch.float64,
                         device=eatoms.device)
    return energy.index_add(0, batch.graph.batch, eatoms.to(torch.float64))[:n]


def charge_states(packed: PackedFrames) -> tuple[np.ndarray, list[int]]:
    """Each frame's total charge (integer e) and the sorted nonzero charges present."""
    charges = np.rint(packed.charge.cpu().numpy()).astype(int)
    return charges, sorted(set(charges.tolist()) - {0})


def fit_reference_energies(packed: PackedFrames, elements: list[str]) -> dict[str, float]:
    """Per-element energies (eV) by least squares: E_frame ~ sum_e count_e * ref_e."""
    return fit_energy_offsets(packed, elements, by_charge=False)[0]


def fit_energy_offsets(packed: PackedFrames, elements: list[str], by_charge: bool,
                       target: np.ndarray | None = None
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """Per-element energies (eV) and, with by_charge, one energy (eV per structure) per
    nonzero total charge, by one least squares:
    E_frame ~ sum_e count_e * ref_e + sum_{q != 0} [Q_frame = q] * E_q.
    target: what is fitted per frame instead of the label energy E_frame (eV), e.g. a
    model's residuals (`energy_residuals`)."""
    charges, states = charge_states(packed)
    states = states if by_charge else []
    A = np.concatenate([packed.counts] + [(charges == q)[:, None].astype(float)
                                          for q in states], axis=1)
    y = packed.energy.cpu().numpy() if target is None else target
    present = A.sum(0) > 0
    sol = np.zeros(A.shape[1])
    sol[present] = np.linalg.lstsq(A[:, present], y, rcond=None)[0]
    n = len(elements)
    return ({e: float(sol[k]) for k, e in enumerate(elements)},
            {str(q): float(sol[n + k]) for k, q in enumerate(states)})


def energy_residuals(model: E2FormerV2, packed: PackedFrames, rows: list[int] | None = None,
                     charge_energy: bool = True, batch_size: int = 64) -> np.ndarray:
    """E_label - E_model (eV) of each frame (of `rows`, default all), in frame order.
    charge_energy=False evaluates the model without its per-charge-state energies and charge
    input (what a charge embedding that starts afresh gives a charged frame)."""
    rows = list(range(len(packed))) if rows is None else rows
    residual = []
    with torch.no_grad():  # energies only (predict would differentiate for forces)
        for s in range(0, len(rows), batch_size):
            b = packed.batch(rows[s:s + batch_size])
            if not charge_energy:
                b.graph.charge = None
            residual.append((b.energy - _frame_energies(model(b.graph), b)).cpu().numpy())
    return np.concatenate(residual) if residual else np.zeros(0)


def fit_charge_energies_to_residuals(model: E2FormerV2, packed: PackedFrames
                                     ) -> dict[str, float]:
    """One energy (eV per structure) per nonzero total charge: the mean of E_label - E_model
    over the frames of that charge, the model evaluated without any charge energy. For a
    model whose charge embedding starts afresh (its value vectors are zero: a charged frame
    gets what a neutral one gets)."""
    charges, states = charge_states(packed)
    return {str(q): float(energy_residuals(model, packed, np.flatnonzero(charges == q).tolist(),
                                           charge_energy=False).mean())
            for q in states}


def refit_energy_offsets(model: E2FormerV2, packed: PackedFrames
                         ) -> tuple[dict[str, float], dict[str, float]]:
    """A trained model's element and charge-state energies (eV) corrected by the least-squares
    fit of its residuals on `packed`: the offsets that fit the data best given what the
    network already predicts. A model that misses no offset keeps its energies; refitting
    from the labels alone would discard the network's share of each molecule's energy."""
    by_charge = model.config.distributed_charge
    d_element, d_charge = fit_energy_offsets(packed, model.elements, by_charge,
                                             target=energy_residuals(model, packed))
    old_charge = model.config.charge_energies if by_charge else {}
    return ({e: model.config.reference_energies.get(e, 0.0) + d for e, d in d_element.items()},
            {**old_charge, **{q: old_charge.get(q, 0.0) + d for q, d in d_charge.items()}})
