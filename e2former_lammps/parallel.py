"""Ghost-atom maps from LAMMPS atom tags, and the mpi4py feature exchange between ranks.

Every rank knows the tags of its owned atoms (rows 0..nlocal) and of its ghosts (rows
nlocal..ntotal). A ghost is a copy (maybe a periodic image) of an atom owned by some rank,
possibly this one. The plan is built once per re-neighbouring (the ghost tag list is
unchanged in between) with one Allgather of owned tags and one Alltoallv of requests:
simple and independent of LAMMPS's processor layout (brick or tiled).

The rows themselves travel by one of two transports (E2FORMER_EXCHANGE):
- `mpi4py`: through host memory (pinned buffers for CUDA tensors), which waits for the GPU
  at every exchange;
- `torch`: torch.distributed's all_to_all_single, NCCL for CUDA tensors (device to device,
  queued on the stream without stopping the host) and gloo for CPU ones. NCCL needs one
  GPU per rank.
- `auto` (default): `torch` when the features are on CUDA and every rank has a GPU of its
  own (2 x H200, 100k atoms: 262k against 196k atom-steps/s, kernels/NOTES.md E30),
  `mpi4py` otherwise.
"""
from __future__ import annotations

import atexit
import math
import socket
import time

import numpy as np
import torch
from torch import Tensor

from .exchange import Exchange, LocalImages
from .switches import env_choice
from .validation import InputError


def owner_index(local_tags: np.ndarray, ghost_tags: np.ndarray) -> np.ndarray:
    """Row of each ghost's owner among local_tags (all owners on this rank)."""
    order = np.argsort(local_tags, kind="stable")
    pos = np.searchsorted(local_tags, ghost_tags, sorter=order)
    pos = np.minimum(pos, len(order) - 1) if len(order) else pos
    found = len(order) > 0 and np.array_equal(local_tags[order[pos]], ghost_tags)
    if not found and len(ghost_tags):
        raise RuntimeError("ghost atom whose tag is not owned by this rank (single-rank map)")
    return order[pos]


EXCHANGE_ENV = "E2FORMER_EXCHANGE"
TRANSPORTS = ("mpi4py", "torch")
SETTINGS = ("auto", *TRANSPORTS)


def exchange_transport(comm, device: torch.device) -> str:
    """The transport for features on `device`: the one E2FORMER_EXCHANGE names, or for
    `auto` (default) the one `auto_transport` picks. Collective under `auto`."""
    value = env_choice(EXCHANGE_ENV, SETTINGS, "auto")
    if value != "auto":
        return value
    import torch.distributed as dist

    index = None
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
    # each rank's NCCL too: every rank must pick the same transport
    where = comm.allgather((socket.gethostname(), index,
                            dist.is_available() and dist.is_nccl_available()))
    return auto_transport([(host, gpu) for host, gpu, _ in where],
                          all(nccl for _, _, nccl in where))


def auto_transport(gpus: list[tuple[str, int | None]], nccl: bool) -> str:
    """`torch` (NCCL) when every rank's features sit on a GPU of its own, `mpi4py` otherwise:
    gpus[r] is rank r's (host, CUDA index), index None for the CPU. Every rank sees the same
    list, so all pick the same transport."""
    on_own_gpus = all(index is not None for _, index in gpus) and len(set(gpus)) == len(gpus)
    return "torch" if nccl and on_own_gpus else "mpi4py"


def torch_process_group(comm) -> None:
    """Make torch.distributed's default group over the ranks of `comm` (once per process):
    gloo for CPU tensors, and NCCL for CUDA tensors where this torch has it. Rank 0 picks
    the rendezvous port and tells the others through comm. Collective."""
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != comm.Get_size() or dist.get_rank() != comm.Get_rank():
            raise InputError("torch.distributed is already set up for another set of ranks "
                             f"than LAMMPS's; unset {EXCHANGE_ENV} or use mpi4py")
        return
    hosts = comm.allgather(socket.gethostname())
    port = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    address = "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    backend = "cpu:gloo,cuda:nccl" if nccl else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}",
                            rank=comm.Get_rank(), world_size=comm.Get_size())
    # torch's advice: tear the group down before the interpreter ends, not in static
    # destructors after it (a 4-rank gloo CPU test once aborted at exit with "terminate
    # called without an active exception"; not reproduced in 21 runs since)
    atexit.register(dist.destroy_process_group)
    if comm.Get_rank() == 0:
        print(f"E2Former: ghost features exchanged by torch.distributed ({backend}) over "
              f"{comm.Get_size()} ranks", flush=True)


def _check_one_gpu_per_rank(comm, device: torch.device) -> None:
    """NCCL refuses two ranks on one GPU: say so by name instead of NCCL's error. Collective."""
    where = comm.allgather((socket.gethostname(), device.index))
    mine = where[comm.Get_rank()]
    sharing = [r for r, w in enumerate(where) if w == mine]
    if len(sharing) > 1:
        raise InputError(f"{EXCHANGE_ENV}=torch exchanges CUDA features through NCCL, which "
                         f"needs one GPU per rank, but ranks {sharing} share cuda:"
                         f"{device.index}: use one rank per GPU or {EXCHANGE_ENV}=mpi4py")


class MPIExchangePlan:
    """Who sends which owned rows to which rank, and where received rows go; moves them by
    `transport` (mpi4py or torch, see the module docstring)."""

    def __init__(self, comm, tags: np.ndarray, nlocal: int, transport: str = "mpi4py"):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: expected one of {TRANSPORTS}")
        self.comm, self.transport = comm, transport
        size = comm.Get_size()
        self.nlocal, self.ntotal = nlocal, len(tags)
        local_tags = np.ascontiguousarray(tags[:nlocal], dtype=np.int64)
        ghost_tags = np.ascontiguousarray(tags[nlocal:], dtype=np.int64)

        counts = np.array(comm.allgather(nlocal), dtype=np.int64)
        all_tags = np.empty(int(counts.sum()), dtype=np.int64)
        comm.Allgatherv(local_tags, [all_tags, counts])
        all_rank = np.repeat(np.arange(size), counts)
        all_row = np.concatenate([np.arange(c) for c in counts]) if size else all_tags
        order = np.argsort(all_tags, kind="stable")
        pos = np.searchsorted(all_tags, ghost_tags, sorter=order)
        pos = np.minimum(pos, max(len(order) - 1, 0))
        if len(ghost_tags) and not np.array_equal(all_tags[order[pos]], ghost_tags):
            raise RuntimeError("a ghost atom's tag is owned by no rank: inconsistent atom ids")
        owner_rank = all_rank[order[pos]]
        owner_row = all_row[order[pos]]

        # Ghost rows grouped by the rank that owns them.
        by_rank = np.argsort(owner_rank, kind="stable")
        self.recv_rows = nlocal + by_rank  # ghost rows, in the order data arrives
        self.recv_counts = np.bincount(owner_rank, minlength=size).astype(np.int64)
        requests = np.ascontiguousarray(owner_row[by_rank], dtype=np.int64)
        self.send_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(self.recv_counts, self.send_counts)
        self.send_rows = np.empty(int(self.send_counts.sum()), dtype=np.int64)
        comm.Alltoallv([requests, self.recv_counts], [self.send_rows, self.send_counts])
        self._rows_on: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._pinned: dict[str, Tensor] = {}
        self._devices_checked: set[torch.device] = set()
        if transport == "torch":
            torch_process_group(comm)
        # Traffic counters (bytes this rank sent, seconds inside Alltoallv), for benchmarks.
        self.stats = {"calls": 0, "bytes_sent": 0, "seconds": 0.0}

    def rows_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(send rows, receive rows) as index tensors on `device`, copied there once per
        plan (i.e. per re-neighbouring), not twice per layer and direction."""
        if device not in self._rows_on:
            self._rows_on[device] = (torch.from_numpy(self.send_rows).to(device),
                                     torch.from_numpy(self.recv_rows).to(device))
        return self._rows_on[device]

    def _host(self, name: str, n: int, width: int, like: Tensor) -> Tensor:
        """Page-locked host buffer `name` with n x width elements of like's dtype, kept and
        grown between calls. Features of CUDA tensors are staged through pinned memory: a
        copy to or from pageable memory runs at a few GB/s (at 100k atoms on two H200s it
        took 323 of the 603 ms of GPU time of a step, kernels/NOTES.md E30)."""
        buf = self._pinned.get(name)
        if buf is None or buf.dtype != like.dtype or buf.numel() < n * width:
            buf = torch.empty(max(n * width, 1), dtype=like.dtype, pin_memory=True)
            self._pinned[name] = buf
        return buf[: n * width].view(n, width)

    def _to_host(self, rows: Tensor, name: str) -> Tensor:
        """rows on the host; for a CUDA tensor, in a pinned buffer, once its copy is done (the
        synchronisation also ends earlier asynchronous copies out of this plan's buffers,
        before MPI overwrites them)."""
        if not rows.is_cuda:
            return rows.detach().contiguous()
        host = self._host(name, rows.shape[0], rows.shape[1], rows)
        host.copy_(rows, non_blocking=True)
        torch.cuda.current_stream(rows.device).synchronize()
        return host

    def _alltoallv(self, send: Tensor, send_counts: np.ndarray, recv_counts: np.ndarray,
                   name: str) -> Tensor:
        """Rows of `send` (host tensor [n, width]) to the ranks, by counts; the rows received,
        as a host tensor (pinned buffer `name` when send is pinned)."""
        from mpi4py import MPI

        n_recv, width = int(recv_counts.sum()), send.shape[1]
        recv = (self._host(name, n_recv, width, send) if send.is_pinned()
                else send.new_empty(n_recv, width))
        mpi_type = MPI.DOUBLE if send.dtype == torch.float64 else MPI.FLOAT
        t0 = time.perf_counter()
        self.comm.Alltoallv([send.numpy(), send_counts * width, mpi_type],
                            [recv.numpy(), recv_counts * width, mpi_type])
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["calls"] += 1
        self.stats["bytes_sent"] += send.numel() * send.element_size()
        return recv

    def _torch_all_to_all(self, send: Tensor, send_counts: np.ndarray,
                          recv_counts: np.ndarray) -> Tensor:
        """Rows of `send` to the ranks through torch.distributed, on send's device."""
        import torch.distributed as dist

        if send.is_cuda and send.device not in self._devices_checked:
            _check_one_gpu_per_rank(self.comm, send.device)
            self._devices_checked.add(send.device)
        recv = send.new_empty(int(recv_counts.sum()), send.shape[1])
        t0 = time.perf_counter()
        dist.all_to_all_single(recv, send.contiguous(), recv_counts.tolist(),
                               send_counts.tolist())
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["calls"] += 1
        self.stats["bytes_sent"] += send.numel() * send.element_size()
        return recv

    def _move(self, rows: Tensor, send_counts: np.ndarray, recv_counts: np.ndarray,
              direction: str) -> Tensor:
        """rows [n_send, width] out to the ranks by send_counts; the rows received, by
        recv_counts, on rows' device."""
        rows = rows.detach()
        if self.transport == "torch":
            return self._torch_all_to_all(rows, send_counts, recv_counts)
        send = self._to_host(rows, f"{direction}_send")
        recv = self._alltoallv(send, send_counts, recv_counts, f"{direction}_recv")
        return recv.to(rows.device, non_blocking=True)

    def forward(self, x: Tensor) -> Tensor:
        """x [nlocal, ...] -> [ntotal, ...]: owned rows to the ghosts of every rank."""
        flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        width = flat.shape[1]
        send_rows, recv_rows = self.rows_on(x.device)
        recv = self._move(flat.index_select(0, send_rows), self.send_counts, self.recv_counts,
                          "forward")
        out = flat.new_empty(self.ntotal, width)
        out[: self.nlocal] = flat
        out[recv_rows] = recv
        return out.view(self.ntotal, *x.shape[1:])

    def reverse(self, grad: Tensor) -> Tensor:
        """grad [ntotal, ...] -> [nlocal, ...]: ghost gradients added back into owners."""
        flat = grad.reshape(grad.shape[0], math.prod(grad.shape[1:]))
        send_rows, recv_rows = self.rows_on(grad.device)
        recv = self._move(flat.index_select(0, recv_rows), self.recv_counts, self.send_counts,
                          "reverse")
        out = flat[: self.nlocal].clone()
        out.index_add_(0, send_rows, recv)
        return out.view(self.nlocal, *grad.shape[1:])


class _MPIExchangeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, anchor: Tensor, plan: MPIExchangePlan) -> Tensor:
        ctx.plan = plan
        return plan.forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.plan.reverse(grad.contiguous()), None, None


class _AllreduceSum(torch.autograd.Function):
    """Sum over the ranks of comm; its gradient is the sum of every rank's gradient (each rank
    holds the same total, and each rank's energy depends on it)."""

    @staticmethod
    def forward(ctx, t: Tensor, anchor: Tensor, comm) -> Tensor:
        ctx.comm = comm
        return _allreduce(comm, t, "sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _allreduce(ctx.comm, grad.contiguous(), "sum"), None, None


def _allreduce(comm, t: Tensor, op: str) -> Tensor:
    """Allreduce of a small tensor through host memory (mpi4py)."""
    from mpi4py import MPI

    send = np.ascontiguousarray(t.detach().cpu().numpy())
    recv = np.empty_like(send)
    comm.Allreduce(send, recv, op=MPI.SUM if op == "sum" else MPI.MAX)
    return torch.from_numpy(recv).to(device=t.device, dtype=t.dtype)


class _RankReductions(Exchange):
    """sum_over_ranks / max_over_ranks through `comm` (mpi4py; None: one rank), the sum and
    the subclass's exchange kept on every rank's backward path by `anchor` (see MPIExchange)."""

    def __init__(self, comm):
        self.comm = comm
        self.anchor = torch.zeros((), requires_grad=True)

    def sum_over_ranks(self, t: Tensor) -> Tensor:
        return t if self.comm is None else _AllreduceSum.apply(t, self.anchor, self.comm)

    def max_over_ranks(self, t: Tensor) -> Tensor:
        return t if self.comm is None else _allreduce(self.comm, t, "max")


class GhostShell(_RankReductions):
    """LAMMPS ghost-shell mode on several ranks: each rank computes its owned atoms and a
    shell of ghosts deep enough that its owned energies are exact, so rows need no exchange;
    only sums over a whole structure (the charge spread) are reduced across ranks."""

    def __init__(self, n_atoms: int, comm):
        super().__init__(comm)
        self.n_recv = self.n_total = n_atoms

    def __call__(self, x: Tensor) -> Tensor:
        return x


class MPIExchange(_RankReductions):
    """Exchange through mpi4py. Collective: every rank calls it once per layer, in forward
    and in backward. `anchor` (requires grad) keeps each exchange on the backward path of
    every rank, also of ranks whose own atoms have no pairs, so no rank skips a collective:
    differentiate with respect to it as well (see forces.energy_and_pair_gradient)."""

    receivers_are_owned_atoms = True
    collective = True

    def __init__(self, plan: MPIExchangePlan):
        super().__init__(plan.comm)
        self.plan = plan
        self.n_recv, self.n_total = plan.nlocal, plan.ntotal

    def __call__(self, x: Tensor) -> Tensor:
        return _MPIExchangeFunction.apply(x, self.anchor, self.plan)


def build_exchange(tags: np.ndarray, nlocal: int, comm=None,
                   device: torch.device = torch.device("cpu")) -> Exchange:
    """LocalImages on one rank, MPIExchange across ranks (transport from E2FORMER_EXCHANGE,
    for features on `device`). tags [ntotal] (owned then ghosts)."""
    if comm is None or comm.Get_size() == 1:
        owner = owner_index(np.asarray(tags[:nlocal]), np.asarray(tags[nlocal:]))
        return LocalImages(torch.as_tensor(owner, dtype=torch.long), nlocal)
    transport = exchange_transport(comm, torch.device(device))
    return MPIExchange(MPIExchangePlan(comm, np.asarray(tags), nlocal, transport))


class _KokkosExchangeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, anchor: Tensor, data, nlocal: int, ntotal: int) -> Tensor:
        ctx.data, ctx.nlocal = data, nlocal
        flat = x.reshape(nlocal, math.prod(x.shape[1:]))
        src = torch.cat([flat, flat.new_zeros(ntotal - nlocal, flat.shape[1])]).contiguous()
        dst = src.clone()
        data.forward_exchange(src, dst, flat.shape[1])  # owners -> ghost rows (LAMMPS comm)
        return dst.view(ntotal, *x.shape[1:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat = grad.reshape(grad.shape[0], math.prod(grad.shape[1:])).contiguous()
        dst = flat.clone()
        ctx.data.reverse_exchange(flat, dst, flat.shape[1])  # ghost rows added into owners
        return dst[: ctx.nlocal].view(ctx.nlocal, *grad.shape[1:]), None, None, None, None


class KokkosExchange(_RankReductions):
    """Exchange through LAMMPS's own (Kokkos, GPU-resident) ghost communication:
    `data.forward_exchange` / `data.reverse_exchange`. No tags needed; mpi4py (comm) only for
    sums over a whole structure on several ranks."""

    collective = True

    def __init__(self, data, nlocal: int, ntotal: int, comm=None):
        super().__init__(comm)
        self.data = data
        self.n_recv, self.n_total = nlocal, ntotal

    def __call__(self, x: Tensor) -> Tensor:
        return _KokkosExchangeFunction.apply(x, self.anchor, self.data, self.n_recv,
                                             self.n_total)
