"""Keep one tensor that autograd saves for the backward in host memory instead of the GPU.

For block recompute at the largest sizes: a checkpointed block keeps only its input until its
backward, but with many blocks those inputs add up ([atoms, 9, C] fp32 each: 9.2 KB/atom per
block in the paper configuration, 37 GB for four blocks at 1M atoms). Inside
`keep_on_host(x)`, a saved tensor that is `x` is copied to pinned host memory (asynchronously,
on the current stream) and copied back when the backward unpacks it; every other saved tensor
is left where it is. On the CPU the "host copy" is a plain copy, so the same path runs in tests.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor


def _identity(t: Tensor) -> tuple:
    return t.data_ptr(), t.shape, t.stride(), t.dtype, t.device


@contextmanager
def keep_on_host(x: Tensor) -> Iterator[list[int]]:
    """Within the block, saved copies of `x` live in host memory until the backward.

    Yields a one-element list counting the tensors moved (for tests and logs)."""
    moved = [0]
    # not x itself: autograd keeps `pack` with every tensor saved under it, and a reference to
    # x there would keep x on the device (as it did, on the H200, until this was found)
    x_identity = _identity(x)

    def pack(t: Tensor):
        if _identity(t) != x_identity:
            return t
        pinned = t.is_cuda
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pinned)
        # same stream as the kernels that later reuse t's device memory: the copy reads first
        host.copy_(t, non_blocking=pinned)
        moved[0] += 1
        return (t.device, host)

    def unpack(packed):
        if isinstance(packed, Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=True)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield moved
