"""Where Triton kernels run: on the current CUDA device, not their tensors' one (cuda:1 data
with cuda:0 current reads the wrong memory), so the dispatchers launch under this."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor


def on_device_of(x: Tensor) -> AbstractContextManager:
    """x's CUDA device made the current one for the block (nothing for CPU tensors)."""
    return torch.cuda.device(x.device) if x.is_cuda else nullcontext()
