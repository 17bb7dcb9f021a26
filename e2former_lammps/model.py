"""E2Former-V2: energy of a set of atoms from a pair list (pair_i <- pair_j, rij = x_j - x_i)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kernels.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

from . import step_plan
from .config import E2FormerConfig, normalize_charge_energies
from .exchange import Exchange, NoGhosts, atoms_owned_once
from .host_offload import keep_on_host
from .nn.attention import EquivariantAttention
from .nn.coulomb import CoulombEnergy
from .nn.embedding import ChargeSpinEmbedding, DistributedChargeSpin, EdgeDegreeEmbedding
from .nn.ffn import GatedFeedForward
from .nn.norm import EquivariantRMSNorm
from .nn.radial import GaussianBasis
from .validation import InputError

FORMAT_VERSION = 1
PACKAGED_MODELS = Path(__file__).parent / "models"


@dataclass
class AtomGraph:
    """What the model sees: atoms, directed pairs and who owns which rows.

    species [n_total] element indices in config.elements order; pair_i [E] receivers
    (< exchange.n_recv, sorted ascending), pair_j [E] senders (< n_total); rij [E, 3] Å;
    the first n_local atoms are those whose energies are returned. batch [n_local] maps
    atoms to structures (for charge/spin), charge/spin [n_structures]. mp_index [E_mp]: the
    rows of the pair list within the model's cutoff, when the list reaches further (to the
    Coulomb cutoff of a charged structure); None: every row.
    """

    species: Tensor
    pair_i: Tensor
    pair_j: Tensor
    rij: Tensor
    n_local: int
    exchange: Exchange
    batch: Tensor | None = None
    charge: Tensor | None = None
    spin: Tensor | None = None
    mp_index: Tensor | None = None


class TransformerBlock(nn.Module):
    """x <- x + Attention(Norm(x)); x <- x + FFN(Norm(x)) (pre-norm)."""

    def __init__(self, cfg: E2FormerConfig, basis: GaussianBasis):
        super().__init__()
        c, lmax = cfg.channels, cfg.lmax
        self.norm_attn = EquivariantRMSNorm(c, lmax)
        self.attention = EquivariantAttention(
            basis, len(cfg.elements), c, lmax, cfg.num_heads, cfg.head_dim, cfg.radial_hidden,
            cfg.cutoff, cfg.softmax_eps, cfg.identity_paths, cfg.weight_envelope,
        )
        self.norm_ffn = EquivariantRMSNorm(c, lmax)
        self.ffn = GatedFeedForward(c, cfg.ffn_channels, lmax)

    def node_in(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Node-wise work before the attention: q, k, v of x [n, rows, C]."""
        return self.attention.project(self.norm_attn(x))

    def node_out(self, x_recv: Tensor, msg: Tensor) -> Tensor:
        """Node-wise work after the attention: the receivers' new features."""
        return self.feed_forward(x_recv + self.attention.mix_paths(msg))

    def feed_forward(self, x: Tensor) -> Tensor:
        """x <- x + FFN(Norm(x))."""
        return x + self.ffn(self.norm_ffn(x))

    def forward(self, x: Tensor, graph: AtomGraph, shared: dict | None = None,
                compiled: bool = False, keep_scores: bool | None = None) -> Tensor:
        """x [n_recv, rows, C] (or [n_total, ...], ghost rows included, from a collective
        exchange) -> receivers' new features [n_recv, rows, C]. shared: what the blocks of one
        forward share, keep_scores: whether the attention may keep per-edge scores for its
        backward (kernels.attention.equivariant_attention). compiled: the node-wise work
        through torch.compile (compiled_node_work)."""
        ex = graph.exchange
        n_recv = ex.n_recv
        node_in, node_out = compiled_node_work() if compiled else (_node_in, _node_out)
        if graph.pair_i.numel() == 0 and x.shape[0] == n_recv:
            # no pairs (isolated atoms: the per-step baseline in training): the attention
            # update is an empty sum, exactly zero; skipping it saves ~300 operators per block
            return self.feed_forward(x)
        q, k, v = node_in(self, x)
        if x.shape[0] < ex.n_total:
            # receivers only: the ghosts' keys and values are copies of their owners' (E58;
            # node_in on ghost rows was up to 3/4 of it in a small periodic LAMMPS box)
            k, v = ex(k), ex(v)
        msg = self.attention.message(q[:n_recv], k, v, graph.species, graph.pair_i,
                                     graph.pair_j, graph.rij, shared, keep_scores)
        return node_out(self, x[:n_recv], msg)


# Free functions of the block, compiled once: one graph then serves every block (the block's
# parameters are its inputs; tests/test_compiled_node_work.py counts the graphs).
def _node_in(block: TransformerBlock, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return block.node_in(x)


def _node_out(block: TransformerBlock, x_recv: Tensor, msg: Tensor) -> Tensor:
    return block.node_out(x_recv, msg)


_COMPILED_NODE_WORK = None


def compiled_node_work() -> tuple[Callable, Callable]:
    """(node_in, node_out) through torch.compile (Inductor fuses the norms' and gates'
    elementwise work; one graph for all blocks, the atom count dynamic)."""
    global _COMPILED_NODE_WORK
    if _COMPILED_NODE_WORK is None:
        _COMPILED_NODE_WORK = (torch.compile(_node_in, dynamic=True),
                               torch.compile(_node_out, dynamic=True))
    return _COMPILED_NODE_WORK


def _message_passing_graph(graph: AtomGraph) -> AtomGraph:
    """The graph of the pairs within the model's cutoff (graph itself without mp_index)."""
    if graph.mp_index is None:
        return graph
    i = graph.mp_index
    return replace(graph, pair_i=graph.pair_i.index_select(0, i),
                   pair_j=graph.pair_j.index_select(0, i), rij=graph.rij.index_select(0, i),
                   mp_index=None)


class E2FormerV2(nn.Module):
    """Per-atom energies (eV) of E2Former-V2; forces and virial come from autograd on rij."""

    # "auto": recompute blocks in the backward for large frozen-weight systems whose
    # activations would not fit the GPU (and keep their inputs in host memory if
    # step_plan.OFFLOAD_ENV is 1); True / False; "offload": recompute and keep the inputs in
    # host memory (step_plan.checkpoint_mode)
    checkpoint_blocks: bool | str = "auto"
    last_checkpoint_mode: str | None = None  # what the latest forward chose (benchmarks)
    last_keep_scores: bool | None = None  # and whether its attention kept its scores (E53)
    last_compiled_node_work: bool | None = None  # and compiled its node-wise work (E54)
    # E55: keep the scores beyond one prepass launch (> 2^20 pairs) where memory allows
    # (1.07x the paper configuration's step at 30k-100k atoms for 1.9x its peak memory,
    # kernels/NOTES.md E55); False keeps them up to one launch only
    keep_scores_beyond_one_launch: bool = True
    # "auto" kept all activations of the latest large step because the memory estimate said
    # they fit; after an out-of-memory error the estimate is no longer trusted (forces.py)
    kept_activations_by_estimate = False
    memory_estimate_trusted = True

    def __init__(self, config: E2FormerConfig):
        super().__init__()
        self.config = cfg = config
        basis = GaussianBasis(cfg.cutoff, cfg.num_rbf)
        self.embedding = EdgeDegreeEmbedding(
            basis, len(cfg.elements), cfg.channels, cfg.lmax, cfg.radial_hidden, cfg.avg_degree,
            cfg.cutoff,
        )
        self.charge_spin = None
        if cfg.charge_spin:
            self.charge_spin = (DistributedChargeSpin if cfg.charge_spin_mode == "distributed"
                                else ChargeSpinEmbedding)(cfg.channels)
        self.coulomb = (CoulombEnergy(cfg.channels, cfg.coulomb_cutoff, cfg.coulomb_width)
                        if cfg.coulomb_cutoff is not None else None)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, basis) for _ in range(cfg.num_layers))
        self.final_norm = EquivariantRMSNorm(cfg.channels, cfg.lmax)
        self.energy_head = nn.Sequential(
            nn.Linear(cfg.channels, cfg.channels), nn.SiLU(), nn.Linear(cfg.channels, 1)
        )
        # l = 1 rows are (x, y, z): a channel mix without bias keeps them a vector
        self.force_head = nn.Linear(cfg.channels, 1, bias=False) if cfg.direct_force_head \
            else None
        self.register_buffer(
            "reference_energies",
            torch.tensor([cfg.reference_energies.get(e, 0.0) for e in cfg.elements],
                         dtype=torch.float64),
        )

        # from config.charge_energies (saved with the config, so not in the state dict)
        self.register_buffer("charge_states", torch.zeros(0, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("charge_state_energies", torch.zeros(0, dtype=torch.float64),
                             persistent=False)
        self._charge_tables_from_config()

    @property
    def elements(self) -> list[str]:
        return self.config.elements

    def set_attention_impl(self, impl: str) -> None:
        """Every block's attention implementation (kernels.attention.IMPLEMENTATIONS)."""
        if impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {impl!r}; have "
                             f"{ATTENTION_IMPLEMENTATIONS}")
        for block in self.blocks:
            block.attention.impl = impl

    def set_reference_energies(self, energies: dict[str, float]) -> None:
        """Per-element energies (eV) added to each atom; stored in the config too."""
        self.config.reference_energies = {e: float(energies.get(e, 0.0)) for e in self.elements}
        self.reference_energies.copy_(torch.tensor(
            [self.config.reference_energies[e] for e in self.elements], dtype=torch.float64))

    def set_charge_energies(self, energies: dict[str, float]) -> None:
        """eV per structure of each nonzero total charge ("1", "-1", ...); stored in the
        config too ("distributed" charge_spin_mode only)."""
        if self.config.charge_spin_mode != "distributed":
            raise ValueError("charge energies need charge_spin_mode 'distributed'")
        self.config.charge_energies = normalize_charge_energies(energies)
        self._charge_tables_from_config()

    def _charge_tables_from_config(self) -> None:
        """charge_states / charge_state_energies buffers from config.charge_energies."""
        states = sorted(self.config.charge_energies, key=int)
        dev = self.charge_states.device
        self.charge_states = torch.tensor([float(q) for q in states], dtype=torch.float64,
                                          device=dev)
        self.charge_state_energies = torch.tensor(
            [self.config.charge_energies[q] for q in states], dtype=torch.float64, device=dev)

    def charge_energy(self, charge: Tensor) -> Tensor:
        """eV per structure [B] of each structure's total charge (0 for neutral ones)."""
        match = charge.to(torch.float64)[:, None] == self.charge_states[None, :]
        capturing = charge.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing and not bool((match.any(1) | (charge == 0)).all()):
            unknown = sorted({float(q) for q in charge[~(match.any(1) | (charge == 0))]})
            raise ValueError(f"total charge(s) {unknown} e: this model has energies for "
                             f"charges {[0.0] + self.charge_states.tolist()} only (those of "
                             f"its training data)")
        return (match.to(torch.float64) * self.charge_state_energies).sum(1)

    def _node_energy(self, x_normed: Tensor) -> Tensor:
        """Network energy of each atom from its final-normed features (l = 0 rows)."""
        return self.energy_head(x_normed[:, 0]).squeeze(-1)

    @property
    def weights_frozen(self) -> bool:
        """No parameter asks for a gradient (inference / MD: forces only)."""
        return not any(p.requires_grad for p in self.parameters())

    def _features(self, graph: AtomGraph) -> Tensor:
        ex = graph.exchange
        x = self.embedding(graph.species, ex.n_recv, graph.pair_i, graph.pair_j, graph.rij)
        compiled = step_plan.compiles_node_work(self, x.device)
        # the ghost rows of a non-collective exchange get only keys and values (E58)
        kv_ghosts = 0 if ex.collective else graph.species.numel() - ex.n_recv
        n_rows, n_pairs = graph.species.numel() - kv_ghosts, graph.pair_i.numel()
        mode, self.kept_activations_by_estimate = step_plan.checkpoint_mode(
            self, ex.n_recv, n_rows, n_pairs, graph.rij.device, compiled, kv_ghosts)
        keep_scores = step_plan.keeps_attention_scores(
            self, n_rows, n_pairs, x.device, compiled, mode, kv_ghosts)
        self.last_checkpoint_mode, self.last_keep_scores = mode, keep_scores
        self.last_compiled_node_work = compiled
        distributed = isinstance(self.charge_spin, DistributedChargeSpin)
        # blocks share the edge geometry when kept in memory (a recomputed block must not
        # hold tensors made inside another's recompute)
        shared = {} if mode == "off" else None
        for block in self.blocks:
            if self.charge_spin is not None and (graph.charge is not None or distributed):
                x = self._add_charge_spin(x, graph)  # receivers; ghosts get it from owners
            if ex.collective:
                # every rank exchanges once per layer, outside any block recompute (a
                # recomputed block would call the collective again in the backward); other
                # exchanges copy only keys and values to the ghost rows, in the block (E58)
                x = ex(x)
            if mode == "off":
                x = block(x, graph, shared, compiled, keep_scores)
            elif mode == "recompute":
                x = checkpoint(block, x, graph, None, compiled, keep_scores,
                               use_reentrant=False)
            else:
                with keep_on_host(x):
                    x = checkpoint(block, x, graph, None, compiled, keep_scores,
                                   use_reentrant=False)
        return x

    @staticmethod
    def _structure_of_atom(graph: AtomGraph, n: int, device: torch.device) -> Tensor:
        """Structure index of the first n atoms (one structure when the graph has no batch)."""
        if graph.batch is None:
            return torch.zeros(n, dtype=torch.long, device=device)
        return graph.batch[:n]

    def _add_charge_spin(self, x: Tensor, graph: AtomGraph) -> Tensor:
        """x [n_recv, rows, C] of the receiving atoms, the charge/spin embedding added to the
        l = 0 rows (no charge given: a neutral singlet)."""
        if graph.charge is None:
            l0 = x[:, 0] + self.charge_spin.neutral.to(x.dtype)
            return torch.cat([l0[:, None], x[:, 1:]], dim=1)
        structure = self._structure_of_atom(graph, x.shape[0], x.device)
        charge, spin = graph.charge.to(x.dtype), graph.spin.to(x.dtype)
        if isinstance(self.charge_spin, DistributedChargeSpin):
            # spread over the owned atoms of all ranks (ghost-shell rows are copies)
            l0 = x[:, 0] + self.charge_spin(x[:, 0], structure, charge, spin,
                                            n_owned=min(graph.n_local, x.shape[0]),
                                            exchange=graph.exchange)
        else:
            l0 = x[:, 0] + self.charge_spin(charge, spin).index_select(0, structure)
        return torch.cat([l0[:, None], x[:, 1:]], dim=1)

    def isolated_atom_energies(self) -> Tensor:
        """Network output of each element with no neighbours [n_elements] (eV)."""
        ref = self.reference_energies
        dtype, device = self.energy_head[0].weight.dtype, self.energy_head[0].weight.device
        n = len(self.elements)
        graph = AtomGraph(
            species=torch.arange(n, device=device),
            pair_i=torch.zeros(0, dtype=torch.long, device=device),
            pair_j=torch.zeros(0, dtype=torch.long, device=device),
            rij=torch.zeros(0, 3, dtype=dtype, device=device),
            n_local=n, exchange=NoGhosts(n),
        )
        return self._node_energy(self.final_norm(self._features(graph))).to(ref.dtype)

    def weights_changed(self) -> None:
        """Drop the cached isolated-atom baseline. Call after changing frozen weights in place
        by a path that leaves their `_version` alone: CUDA's foreach fast paths (the EMA
        update) do, so the cache kept the first baseline and the energies drifted."""
        self._baseline_key = None

    def _baseline(self) -> Tensor:
        """isolated_atom_energies(), cached while the weights are frozen and unchanged (MD):
        it is a whole network pass of its own, as long as a small system's step. Unchanged
        means the same parameter versions and no `weights_changed()` since.

        The cached value is computed in float64 whatever the model's dtype: each atom's
        energy is a small difference of its network output and this baseline, and the
        baseline's float32 rounding (5e-7 eV for O on the H200) is the same for every atom of
        an element, so it adds up coherently over a system (4.5e-5 of the paper model's total
        energy, kernels/NOTES.md E43). An isolated atom then gets its reference energy to
        float32 rounding rather than exactly."""
        if not self.weights_frozen:
            return self.isolated_atom_energies()
        key = tuple(p._version for p in self.parameters()) + tuple(
            (p.device, p.dtype) for p in self.parameters())[:1]
        if getattr(self, "_baseline_key", None) != key:
            with torch.no_grad():
                self._baseline_value = self._float64_twin().isolated_atom_energies()
            self._baseline_key = key
        return self._baseline_value

    def _float64_twin(self) -> "E2FormerV2":
        """This model (config and weights) in float64 on the same device; itself if it is.
        Built from the config rather than deep-copied: what callers attach to a model (LAMMPS
        exchanges, MPI communicators) need not be copyable."""
        weight = self.energy_head[0].weight
        if weight.dtype == torch.float64:
            return self
        with torch.random.fork_rng(devices=[]):  # its random init must not move the seed
            twin = type(self)(self.config)
        twin = twin.to(device=weight.device, dtype=torch.float64)
        twin.load_state_dict(self.state_dict())
        return twin.requires_grad_(False)

    def forward(self, graph: AtomGraph) -> Tensor:
        """Per-atom energies eatoms [n_local] in eV (model dtype promoted to the rij dtype).

        Each atom's energy is measured from the same element with no neighbours, so an
        isolated atom has its reference energy (exactly in float64; to float32 rounding in a
        frozen float32 model, whose baseline is computed in float64: `_baseline`).
        """
        return self._atom_energies(self._final_features(graph), graph)

    def _final_features(self, graph: AtomGraph) -> Tensor:
        """Final-normed features of the local atoms [n_local, rows, C] (the Coulomb term runs
        only where the receivers are exactly the local atoms, exchange.atoms_owned_once)."""
        x = self._features(_message_passing_graph(graph))
        return self.final_norm(x[:graph.n_local])

    def _atom_energies(self, x_normed: Tensor, graph: AtomGraph) -> Tensor:
        """eatoms from the final-normed features of the local atoms (_final_features)."""
        species = graph.species[:graph.n_local]
        baseline = self._baseline()
        e_node = self._node_energy(x_normed)
        eatoms = e_node - baseline[species].to(e_node.dtype) + self.reference_energies[
            species].to(e_node.dtype)
        if graph.charge is not None and self.config.distributed_charge:
            # the per-structure charge energy, split evenly over the atoms of all ranks: a
            # constant, so no force (and no gradient through the count)
            structure = self._structure_of_atom(graph, graph.n_local, eatoms.device)
            # index_add, not bincount: bincount reads its size back from the GPU, which a
            # CUDA graph capture cannot do
            n_atoms = graph.exchange.sum_over_ranks(torch.zeros(
                graph.charge.shape[0], dtype=torch.float64, device=eatoms.device).index_add_(
                0, structure, torch.ones(structure.shape, dtype=torch.float64,
                                         device=eatoms.device))).detach()
            per_atom = self.charge_energy(graph.charge) / n_atoms.clamp(min=1)
            eatoms = eatoms + per_atom[structure].to(eatoms.dtype)
        if self.coulomb is not None and graph.charge is not None:
            eatoms = eatoms + self._coulomb_energies(x_normed, graph).to(eatoms.dtype)
        return eatoms

    def _coulomb_energies(self, x_normed: Tensor, graph: AtomGraph) -> Tensor:
        """Electrostatic eatoms [n_local] (eV) over the whole pair list (nn/coulomb.py)."""
        if not atoms_owned_once(graph.exchange, graph.n_local):
            # a ghost shell computes copies as receivers: they would enter the charge softmax
            raise InputError("the Coulomb term of this model needs each atom computed on one "
                             "rank (an ASE calculator, or LAMMPS in feature-exchange mode: "
                             "pair_style mliap unified FILE 0), not a ghost shell")
        structure = self._structure_of_atom(graph, graph.n_local, x_normed.device)
        q = self.coulomb.charges(x_normed[:, 0], structure, graph.charge, graph.n_local,
                                 graph.exchange)
        return self.coulomb(q, graph.pair_i, graph.pair_j, graph.rij, graph.exchange,
                            graph.n_local)

    def energy_and_direct_forces(self, graph: AtomGraph) -> tuple[Tensor, Tensor]:
        """(eatoms [n_local] eV, forces [n_local, 3] eV/Å read from the l = 1 features).

        The direct (non-conservative) readout of direct-force pre-training; needs
        `direct_force_head=True`. MD and evaluation use -dE/dx instead.
        """
        if self.force_head is None:
            raise ValueError("this model has no direct force head "
                             "(E2FormerConfig.direct_force_head=False)")
        x_normed = self._final_features(graph)
        forces = self.force_head(x_normed[:, 1:4]).squeeze(-1)
        return self._atom_energies(x_normed, graph), forces

    # --- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write config + weights (+ metadata such as training metrics) to one file."""
        torch.save(
            {
                "format": "e2former-lammps",
                "format_version": FORMAT_VERSION,
                "config": self.config.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                "dtype": str(self.energy_head[0].weight.dtype).removeprefix("torch."),
                "metadata": metadata or {},
            },
            path,
        )

    @classmethod
    def load(cls, path_or_name: str | os.PathLike, map_location: str = "cpu") -> "E2FormerV2":
        """Load a file written by `save`, or a model shipped with the package by name."""
        return cls.from_checkpoint(read_checkpoint(resolve_model_path(path_or_name),
                                                   map_location))

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "E2FormerV2":
        """The model of a dict read by `read_checkpoint`."""
        model = cls(E2FormerConfig.from_dict(ckpt["config"]))
        model.to(getattr(torch, ckpt.get("dtype", "float32")))
        model.load_state_dict(ckpt["state_dict"])
        model.metadata = ckpt.get("metadata", {})
        return model


def packaged_models() -> list[str]:
    return sorted(p.stem for p in PACKAGED_MODELS.glob("*.pt"))


def resolve_model_path(path_or_name: str | os.PathLike) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    named = PACKAGED_MODELS / f"{path_or_name}.pt"
    if named.is_file():
        return named
    raise FileNotFoundError(
        f"no model file {str(path)!r} and no packaged model of that name "
        f"(packaged: {packaged_models() or 'none'})"
    )


def read_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """torch.load with a clear error for files that are not E2Former checkpoints."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise ValueError(
            f"{path} is not a readable E2Former checkpoint (corrupt or not a torch file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "e2former-lammps":
        raise ValueError(f"{path} is a torch file but not an E2Former checkpoint")
    missing = {"config", "state_dict"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {sorted(missing)}")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this "
            f"e2former-lammps understands ({FORMAT_VERSION}); upgrade the package"
        )
    return ckpt
