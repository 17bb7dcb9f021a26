"""Energy and dE/drij of small systems replayed from captured CUDA graphs.

Below a few thousand atoms an MD step is bound by kernel launches (thousands of small
kernels per energy+forces), not by arithmetic (kernels/NOTES.md E10). A CUDA graph replays
the whole forward and backward as one launch. Graphs need fixed shapes, so the inputs are
padded up to size buckets:
- padded pairs belong to `n_dummy` dummy receivers appended after the local atoms; they
  sit at 2 r_c, where the envelope and its slope are exactly 0, so they change nothing and
  no real atom has a dummy neighbour;
- padded ghost rows (periodic images) copy the first dummy atom.
One graph is captured per bucket (all share one memory pool) and replayed while the sizes
stay inside it. The results equal the eager ones up to float summation order.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from .exchange import LocalImages, NoGhosts, computed_here
from .forces import energy_and_pair_gradient
from .model import AtomGraph, E2FormerV2
from .switches import env_choice

T = TypeVar("T")

MIN_EDGE_QUANTUM = 256  # pair-list bucket granularity (at least)
MIN_GHOST_QUANTUM = 64
EDGES_PER_DUMMY = 32  # bounds the longest dummy row the attention kernels walk
# Graphs pay for their padding (up to 2/32 of the pairs) and win only while the host's
# launches bound the step: on the H200 both models ran 10k-15k water atoms (5.4e5-8e5 pairs)
# 1-5% slower graphed than eager, 1k atoms 1.5x faster (kernels/NOTES.md E46).
MAX_GRAPH_EDGES = 1 << 18
CUDA_GRAPHS_ENV = "E2FORMER_CUDA_GRAPHS"  # "1" (default) or "0": always eager


def quantum(n: int, minimum: int, parts: int = 32) -> int:
    """Bucket granularity for size n: max(minimum, next_pow2(n) / parts), at most
    max(minimum, 2 n / parts)."""
    return max(minimum, (1 << max(n - 1, 0).bit_length()) // parts)


def bucket(n: int, minimum: int, parts: int = 32) -> int:
    """n rounded up to a multiple of quantum(n): <= 2/parts padding for large n (6.25% by
    default), and sizes that drift a little during MD stay in the same bucket."""
    q = quantum(n, minimum, parts)
    return max(q, math.ceil(n / q) * q)


@dataclass(frozen=True)
class GraphKey:
    n_local: int
    n_dummy: int
    n_ghost_pad: int  # -1: no ghosts (NoGhosts)
    n_edge_pad: int
    charge_spin: bool
    n_mp_pad: int = -1  # message-passing rows (graph.mp_index; -1: every pair is one)


def graph_key(graph: AtomGraph, owner: Tensor | None, charge_spin: bool) -> GraphKey:
    """The bucket of a graph whose ghosts (if any) are images of owner [n_ghost]. With
    message-passing rows (a Coulomb term's longer pair list) at least one pair is padding,
    for the padding rows to name."""
    n_edges = graph.pair_i.numel()
    mp = graph.mp_index
    return GraphKey(
        n_local=graph.n_local,
        n_dummy=max(1, quantum(n_edges, MIN_EDGE_QUANTUM) // EDGES_PER_DUMMY),
        n_ghost_pad=-1 if owner is None else bucket(owner.numel(), MIN_GHOST_QUANTUM),
        n_edge_pad=bucket(n_edges + (mp is not None), MIN_EDGE_QUANTUM),
        charge_spin=charge_spin and graph.charge is not None,
        n_mp_pad=-1 if mp is None else bucket(mp.numel(), MIN_EDGE_QUANTUM),
    )


class PaddedGraph:
    """Static buffers of one GraphKey and an AtomGraph over them; `fill` copies a graph in.

    Rows: local atoms [0, n_local), dummies [n_local, n_local + n_dummy), then ghosts.
    With a charge, the dummies are a second structure, a neutral singlet: a distributed
    charge is spread over one structure's atoms, and would otherwise give the dummies a share.
    """

    def __init__(self, key: GraphKey, cutoff: float, device: torch.device, dtype: torch.dtype):
        self.key = key
        n_recv = key.n_local + key.n_dummy
        n_ghost = max(key.n_ghost_pad, 0)
        self.species = torch.zeros(n_recv + n_ghost, dtype=torch.long, device=device)
        self.pair_i = torch.full((key.n_edge_pad,), key.n_local, dtype=torch.long, device=device)
        self.pair_j = self.pair_i.clone()
        self.far = torch.tensor([[2.0 * cutoff, 0.0, 0.0]], dtype=dtype, device=device)
        self.rij = self.far.repeat(key.n_edge_pad, 1)
        self.owner = torch.full((n_ghost,), key.n_local, dtype=torch.long, device=device)
        # [the system's, the dummies' (0 e, singlet)]
        self.charge = torch.zeros(2, dtype=dtype, device=device)
        self.spin = torch.ones(2, dtype=dtype, device=device)
        exchange = NoGhosts(n_recv) if key.n_ghost_pad < 0 else LocalImages(self.owner, n_recv)
        self.graph = AtomGraph(species=self.species, pair_i=self.pair_i, pair_j=self.pair_j,
                               rij=self.rij, n_local=n_recv, exchange=exchange)
        if key.n_mp_pad >= 0:
            self.mp_index = torch.full((key.n_mp_pad,), key.n_edge_pad - 1, dtype=torch.long,
                                       device=device)
            self.graph.mp_index = self.mp_index
        if key.charge_spin:
            self.graph.charge, self.graph.spin = self.charge, self.spin
            self.graph.batch = (torch.arange(n_recv, device=device) >= key.n_local).long()

    def fill(self, graph: AtomGraph, owner: Tensor | None) -> None:
        key, n_local = self.key, graph.n_local
        n_edges = graph.pair_i.numel()
        n_pad = key.n_edge_pad - n_edges
        n_recv = n_local + key.n_dummy
        self.species[:n_local] = graph.species[:n_local]
        if owner is not None:
            n_ghost = owner.numel()
            self.species[n_recv:n_recv + n_ghost] = graph.species[n_local:]
            self.owner[:n_ghost] = owner
            self.owner[n_ghost:] = n_local
        self.pair_i[:n_edges] = graph.pair_i
        # ghost rows move up by n_dummy (the dummies sit between local atoms and ghosts)
        self.pair_j[:n_edges] = torch.where(graph.pair_j >= n_local, graph.pair_j + key.n_dummy,
                                            graph.pair_j)
        self.rij[:n_edges] = graph.rij
        if n_pad:
            dummy = n_local + torch.arange(n_pad, device=self.pair_i.device) * key.n_dummy // n_pad
            self.pair_i[n_edges:] = dummy
            self.pair_j[n_edges:] = dummy
            self.rij[n_edges:] = self.far
        if key.n_mp_pad >= 0:
            # the real rows, then padding pairs (far dummy self-pairs, spread over them so no
            # dummy row grows long): their receivers follow every real one, so the rows'
            # pair_i stays sorted
            n_mp = graph.mp_index.numel()
            rows = torch.arange(key.n_mp_pad - n_mp, device=self.pair_i.device)
            self.mp_index[:n_mp] = graph.mp_index
            self.mp_index[n_mp:] = n_edges + rows * n_pad // max(rows.numel(), 1)
        if key.charge_spin:
            self.charge[:1] = graph.charge.reshape(1)
            self.spin[:1] = graph.spin.reshape(1)


_capture_streams: dict[int, torch.cuda.Stream] = {}


def _capture_stream() -> torch.cuda.Stream:
    """One side stream per GPU, made on first use. torch.cuda.graph's own default is one
    stream per process, on the GPU current at the first capture, so a later capture on
    another GPU fails. A fresh stream per capture is no better: the allocator reuses a freed
    block only on the stream that freed it, so every capture then took new memory for the
    shared pool (training's graphs reached 132 GiB on an H200, 2338eff)."""
    index = torch.cuda.current_device()
    if index not in _capture_streams:
        _capture_streams[index] = torch.cuda.Stream()
    return _capture_streams[index]


def capture(run: Callable[[], T], pool, warmups: int = 2) -> tuple[torch.cuda.CUDAGraph, T]:
    """(graph, static outputs) of `run` captured in the memory pool `pool` on the current
    GPU. It first runs `warmups` times on the capture stream (Triton compiles, cached
    baselines, allocator state, cuBLAS workspaces), as torch.cuda.graph requires."""
    side = _capture_stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=side):
        outputs = run()
    return graph, outputs


def release_graphs(graphs: OrderedDict) -> None:
    """Drop captured graphs and give their pool back, so that an eager fallback after a
    failed capture (often out of memory) has the memory they held."""
    graphs.clear()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


class _Captured:
    """A PaddedGraph, its captured energy + dE/drij evaluation and the static outputs."""

    def __init__(self, key: GraphKey, model: E2FormerV2, device: torch.device,
                 dtype: torch.dtype, pool):
        self.padded = PaddedGraph(key, model.config.cutoff, device, dtype)
        self.model = model
        self.cuda_graph, (self.eatoms, self.grad) = capture(self._run, pool)

    def _run(self) -> tuple[Tensor, Tensor]:
        graph = self.padded.graph
        graph.rij = self.padded.rij  # energy_and_pair_gradient swaps in a leaf view
        return energy_and_pair_gradient(self.model, graph)

    def replay(self, graph: AtomGraph, owner: Tensor | None) -> tuple[Tensor, Tensor]:
        self.padded.fill(graph, owner)
        self.cuda_graph.replay()
        return self.eatoms[:graph.n_local], self.grad[:graph.pair_i.numel()]


class GraphedEnergyForces:
    """`(eatoms [n_local] eV, dE/drij [E, 3] eV/Å) = this(graph)`, as energy_and_pair_gradient.

    Uses CUDA graphs for frozen-weight models on CUDA when every atom of the graph is computed
    here or is a periodic image of a local atom (one LAMMPS rank, ASE) and the pair list
    (Coulomb-range pairs included) is at most `max_edges`; otherwise, or with
    E2FORMER_CUDA_GRAPHS=0, runs eagerly. The returned
    tensors are overwritten by the next call: copy what you keep.
    """

    def __init__(self, model: E2FormerV2, max_graphs: int = 4, max_edges: int | None = None):
        self.model = model
        self.max_graphs = max_graphs
        # the embedding reads its chunk bounds back from the GPU, which a graph cannot hold
        self.max_edges = max_edges or min(model.embedding.chunk_edges, MAX_GRAPH_EDGES)
        self.enabled = env_choice(CUDA_GRAPHS_ENV, ("0", "1"), "1") == "1"
        self._graphs: OrderedDict[GraphKey, _Captured] = OrderedDict()
        self._pool = None

    @property
    def in_use(self) -> bool:
        """Has any evaluation been captured (and so replayed) as a CUDA graph?"""
        return bool(self._graphs)

    def _owner(self, graph: AtomGraph) -> Tensor | None | bool:
        """Ghost owners (LocalImages), None (no ghosts), False (an exchange graphs can't hold)."""
        ex = graph.exchange
        if not computed_here(ex, graph.n_local):
            return False
        return ex.owner if type(ex) is LocalImages else None

    def __call__(self, graph: AtomGraph) -> tuple[Tensor, Tensor]:
        owner = self._owner(graph)
        n_edges = graph.pair_i.numel()
        usable = (self.enabled and graph.rij.is_cuda and owner is not False
                  and 0 < n_edges <= self.max_edges and graph.batch is None
                  and self.model.weights_frozen)
        if not usable:
            return energy_and_pair_gradient(self.model, graph)
        # capture and replay on the model's GPU, whichever is current (LAMMPS rank on cuda:1)
        with torch.cuda.device(graph.rij.device):
            return self._replay(graph, owner)

    def _replay(self, graph: AtomGraph, owner) -> tuple[Tensor, Tensor]:
        key = graph_key(graph, owner, self.model.charge_spin is not None)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._new_entry(key, graph.rij)
            except RuntimeError as exc:
                warnings.warn(f"E2Former: CUDA graph capture failed ({exc}); running eagerly "
                              "from now on", RuntimeWarning, stacklevel=2)
                self.enabled = False
                self._pool = None
                release_graphs(self._graphs)
                return energy_and_pair_gradient(self.model, graph)
        self._graphs.move_to_end(key)
        return entry.replay(graph, owner)

    def _new_entry(self, key: GraphKey, rij: Tensor) -> _Captured:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        entry = _Captured(key, self.model, rij.device, rij.dtype, self._pool)
        self._graphs[key] = entry
        return entry
