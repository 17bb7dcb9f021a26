"""LAMMPS's host pair arrays to the model's GPU through reusable page-locked buffers.

From pageable memory (numpy views of LAMMPS's arrays) CUDA copies synchronously, staging
through a driver buffer; from page-locked memory the copy is one DMA transfer that the host
need not wait for. Each array gets a pinned buffer of its own, grown when the pair count
outgrows it (with 25% headroom, so a pair count that drifts during MD keeps its buffer), and
is converted to the model's dtype while it is staged: rij (float64 in LAMMPS) crosses the
bus as float32 for a float32 model, half the bytes.
"""
from __future__ import annotations

import torch
from torch import Tensor

HEADROOM = 1.25


class PinnedUpload:
    """`upload(name, host, device, dtype)`: host tensor -> device tensor of `dtype`."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._copied: dict[str, torch.cuda.Event] = {}

    def __call__(self, name: str, host: Tensor, device: torch.device, dtype: torch.dtype
                 ) -> Tensor:
        if device.type != "cuda" or host.is_cuda or host.numel() == 0:
            return host.to(device=device, dtype=dtype)
        done = self._copied.get(name)
        if done is not None:  # the previous call's copy from this buffer must be over
            done.synchronize()
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < host.numel():
            buf = torch.empty(int(host.numel() * HEADROOM), dtype=dtype, pin_memory=True)
            self._buffers[name] = buf
        staged = buf[:host.numel()].view(host.shape)
        staged.copy_(host)
        out = staged.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._copied[name] = event
        return out
