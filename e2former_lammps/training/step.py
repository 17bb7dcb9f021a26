"""One training step's loss and parameter gradients: eager, or replayed from CUDA graphs.

A training step runs ~15k small operators (forces by a double backward); at batch 128 on
an H200 the GPU is busy 45% of the step and the host's dispatch takes the rest
(NOTES.md T13). A CUDA graph replays the loss, its gradients and the clipping as one
launch. Graphs need fixed shapes, so a batch is padded up to size buckets:
- padding atoms form one extra structure after the real ones; the energy loss drops it and
  their force-loss weight is 0;
- padding pairs join a padding atom to itself at 2 r_c, where the envelope and all its
  derivatives are 0, so they change no energy, force or gradient.
One graph is captured per bucket (all share one memory pool); the parameters' .grad tensors
are allocated once and zeroed inside the graph, so the eager optimiser step reads whatever
graph ran. The optimiser and EMA steps stay eager: a few foreach operators.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cuda_graphs import bucket, capture, release_graphs
from ..exchange import NoGhosts
from ..model import AtomGraph, E2FormerV2
from .batching import Batch, predict, predict_direct

ATOM_QUANTUM = 64  # bucket granularity at least; parts=16: <= 12.5% padding, ~5% on average
PAIR_QUANTUM = 1024
BUCKET_PARTS = 16


@dataclass
class StepResult:
    """Device scalars of one step; gnorm is the gradient norm before clipping."""
    loss: Tensor
    loss_energy: Tensor
    loss_force: Tensor
    gnorm: Tensor


def batch_loss(model: E2FormerV2, batch: Batch, w_energy: float, w_force: float,
               direct: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, energy term, force term): w_energy * mean |dE| / n_atoms (eV/atom) + w_force *
    mean over atoms |dF| (eV/Å); forces by -dE/dx, or by the direct force head."""
    if direct:
        e_pred, f_pred = predict_direct(model, batch)
    else:
        e_pred, f_pred = predict(model, batch, create_graph=True)
    loss_e = ((e_pred - batch.energy).abs() / batch.n_atoms).mean()
    err = (f_pred - batch.forces).norm(dim=-1)
    loss_f = err.mean() if batch.atom_weight is None else (err * batch.atom_weight).sum()
    return w_energy * loss_e.to(loss_f.dtype) + w_force * loss_f, loss_e, loss_f


class LossAndGradients:
    """`this(batch, direct)`: the batch's loss terms, with the parameters' .grad set to the
    loss gradient clipped to norm `grad_clip` (None: not clipped). No read-back from the
    device: the caller decides on one isfinite of loss and gnorm whether to step."""

    def __init__(self, model: E2FormerV2, w_energy: float, w_force: float,
                 grad_clip: float | None):
        self.model = model
        self.w_energy, self.w_force = w_energy, w_force
        self.max_norm = grad_clip if grad_clip else float("inf")
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: Batch, direct: bool = False) -> StepResult:
        return self._eager(batch, direct)

    def _eager(self, batch: Batch, direct: bool) -> StepResult:
        self._zero_grads()
        loss, loss_e, loss_f = batch_loss(self.model, batch, self.w_energy, self.w_force,
                                          direct)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        return StepResult(loss.detach(), loss_e.detach(), loss_f.detach(), gnorm)

    def _zero_grads(self) -> None:
        # None, not zero: a parameter the loss does not reach (the direct force head after
        # pre-training) then gets no optimiser update at all
        for p in self.params:
            p.grad = None


@dataclass(frozen=True)
class BatchKey:
    n_structures: int
    n_atoms_pad: int
    n_pairs_pad: int
    n_mp_pad: int | None = None  # message-passing rows (graph.mp_index), if it has them


def batch_key(batch: Batch) -> BatchKey:
    """The bucket of a batch: at least one padding atom, so the padding structure is never
    empty; with an mp_index also at least one padding pair, which its padding rows name.
    The mp_index is padded to the pairs' bucket, not one of its own: a bucket per (pairs,
    message-passing rows) made nearly every batch with a charged frame a new graph (641
    captures in 1,704 steps, slower than eager: training/NOTES.md T23), while the rows beyond
    the model's cutoff are ~1% of a batch's pairs, so the extra padding is small."""
    g = batch.graph
    mp = g.mp_index
    n_pairs_pad = bucket(g.pair_i.numel() + (mp is not None), PAIR_QUANTUM, BUCKET_PARTS)
    return BatchKey(n_structures=batch.n_atoms.numel(),
                    n_atoms_pad=bucket(g.n_local + 1, ATOM_QUANTUM, BUCKET_PARTS),
                    n_pairs_pad=n_pairs_pad, n_mp_pad=None if mp is None else n_pairs_pad)


class PaddedBatch:
    """Static buffers of one BatchKey, a Batch over them; `fill` copies a batch in."""

    def __init__(self, key: BatchKey, cutoff: float, charge_spin: bool,
                 device: torch.device, dtype: torch.dtype):
        self.key = key
        n, b, e = key.n_atoms_pad, key.n_structures, key.n_pairs_pad
        self.far = torch.tensor([[2.0 * cutoff, 0.0, 0.0]], dtype=dtype, device=device)
        long = dict(dtype=torch.long, device=device)
        graph = AtomGraph(species=torch.zeros(n, **long), pair_i=torch.zeros(e, **long),
                          pair_j=torch.zeros(e, **long), rij=self.far.repeat(e, 1), n_local=n,
                          exchange=NoGhosts(n), batch=torch.zeros(n, **long))
        if charge_spin:
            graph.charge = torch.zeros(b + 1, dtype=dtype, device=device)
            graph.spin = torch.ones(b + 1, dtype=dtype, device=device)
        if key.n_mp_pad is not None:
            graph.mp_index = torch.zeros(key.n_mp_pad, **long)
        self.rij = graph.rij
        # padding atoms' force labels are 1 eV/Å, not 0: |0 - 0| has no gradient (NaN)
        self.batch = Batch(graph=graph, frame_index=torch.zeros(b, **long),
                           n_atoms=torch.ones(b, **long),
                           energy=torch.zeros(b, dtype=torch.float64, device=device),
                           forces=torch.ones(n, 3, dtype=dtype, device=device),
                           subset=torch.zeros(b, **long), n_padding_structures=1,
                           atom_weight=torch.zeros(n, dtype=dtype, device=device))

    def fill(self, batch: Batch) -> Batch:
        g, pg, pb = batch.graph, self.batch.graph, self.batch
        n_atoms, n_pairs = g.n_local, g.pair_i.numel()
        n_structures = self.key.n_structures
        pg.species[:n_atoms] = g.species[:n_atoms]
        pg.species[n_atoms:] = 0
        pg.batch[:n_atoms] = g.batch
        pg.batch[n_atoms:] = n_structures
        pg.pair_i[:n_pairs] = g.pair_i
        pg.pair_j[:n_pairs] = g.pair_j
        self.rij[:n_pairs] = g.rij.detach()
        # padding pairs: self-pairs of the padding atoms (pair_i stays sorted), far apart
        pad = torch.arange(self.key.n_pairs_pad - n_pairs, device=pg.pair_i.device)
        pad = n_atoms + pad * (self.key.n_atoms_pad - n_atoms) // max(pad.numel(), 1)
        pg.pair_i[n_pairs:] = pad
        pg.pair_j[n_pairs:] = pad
        self.rij[n_pairs:] = self.far
        if pg.mp_index is not None:
            # message passing: the real rows, then the last padding pair again (a far
            # self-pair of a padding atom: nothing), which keeps the rows' pair_i sorted
            n_mp = g.mp_index.numel()
            pg.mp_index[:n_mp] = g.mp_index
            pg.mp_index[n_mp:] = self.key.n_pairs_pad - 1
        if pg.charge is not None:
            pg.charge[:n_structures] = g.charge
            pg.spin[:n_structures] = g.spin
        pb.frame_index.copy_(batch.frame_index)
        pb.n_atoms.copy_(batch.n_atoms)
        pb.energy.copy_(batch.energy)
        pb.subset.copy_(batch.subset)
        pb.forces[:n_atoms] = batch.forces
        pb.forces[n_atoms:] = 1.0
        pb.atom_weight[:n_atoms] = 1.0 / n_atoms
        pb.atom_weight[n_atoms:] = 0.0
        return self.view()

    def view(self) -> Batch:
        """The padded batch as last filled."""
        self.batch.graph.rij = self.rij  # energy_and_pair_gradient swaps in a leaf view
        return self.batch


class _Captured:
    """A PaddedBatch and its captured loss + gradients + clipping."""

    def __init__(self, key: BatchKey, step: "GraphedLossAndGradients", batch: Batch, pool):
        model = step.model
        self.padded = PaddedBatch(key, model.config.cutoff, batch.graph.charge is not None,
                                  batch.graph.rij.device, batch.graph.rij.dtype)
        self.padded.fill(batch)
        self.step = step
        # the warm-up runs only write the .grad tensors, which every run zeroes first
        self.cuda_graph, self.result = capture(self._run, pool)

    def _run(self) -> StepResult:
        return self.step._eager(self.padded.view(), direct=False)

    def replay(self, batch: Batch) -> StepResult:
        self.padded.fill(batch)
        self.cuda_graph.replay()
        return self.result


class GraphedLossAndGradients(LossAndGradients):
    """LossAndGradients replayed from CUDA graphs for autograd-force steps on CUDA; eager for
    direct-force steps, on the CPU, or after a failed capture (with a warning)."""

    def __init__(self, model: E2FormerV2, w_energy: float, w_force: float,
                 grad_clip: float | None, max_graphs: int = 64):
        super().__init__(model, w_energy, w_force, grad_clip)
        self.max_graphs = max_graphs
        self.enabled = True
        self.captures = 0
        self._reached: list[Tensor] | None = None  # parameters the -dE/dx loss reaches
        self._unreached: list[Tensor] = []
        self._graphs: OrderedDict[BatchKey, _Captured] = OrderedDict()
        self._pool = None

    @property
    def n_graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, batch: Batch, direct: bool = False) -> StepResult:
        usable = (self.enabled and not direct and batch.graph.rij.is_cuda
                  and batch.graph.pair_i.numel() <= self.model.embedding.chunk_edges)
        if not usable:
            return self._eager(batch, direct)
        # capture and replay on the batch's GPU, whichever is current (training on cuda:1)
        with torch.cuda.device(batch.graph.rij.device):
            return self._replay(batch, direct)

    def _replay(self, batch: Batch, direct: bool) -> StepResult:
        key = batch_key(batch)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(key, batch)
            except RuntimeError as exc:
                warnings.warn(f"E2Former training: CUDA graph capture failed ({exc}); "
                              "training eagerly from now on", RuntimeWarning, stacklevel=2)
                self.enabled = False
                self._pool = None
                release_graphs(self._graphs)
                return self._eager(batch, direct)
        self._graphs.move_to_end(key)
        return entry.replay(batch)

    def _zero_grads(self) -> None:
        if self._reached is None:
            return super()._zero_grads()
        # in place: the captured graphs accumulate into these very tensors
        torch._foreach_zero_([p.grad for p in self._reached])
        for p in self._unreached:
            p.grad = None

    def _capture(self, key: BatchKey, batch: Batch) -> _Captured:
        if self._reached is None:
            # one eager pass finds the parameters the loss reaches; their .grad tensors are
            # then allocated once, for all graphs
            self._eager(batch, direct=False)
            self._unreached = [p for p in self.params if p.grad is None]
            self._reached = [p for p in self.params if p.grad is not None]
            for p in self._reached:
                p.grad = torch.zeros_like(p)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # least recently used out first. spice-xtb at batch 128 with the Coulomb term visits
        # ~35 buckets in two epochs: at 32 graphs the LRU kept evicting ones it needed again
        # (T23); the graphs share one pool, so more of them cost only their padded inputs
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        entry = _Captured(key, self, batch, self._pool)
        self._graphs[key] = entry
        self.captures += 1
        return entry
