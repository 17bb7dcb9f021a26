"""What the dispatchers of kernels/ share: which implementation an op runs
(`kernel_or_reference`) and where its Triton kernels run (`on_device_of`: the current CUDA
device, not their tensors' one; cuda:1 data with cuda:0 current reads the wrong memory)."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor


def on_device_of(x: Tensor) -> AbstractContextManager:
    """x's CUDA device made the current one for the block (nothing for CPU tensors)."""
    return torch.cuda.device(x.device) if x.is_cuda else nullcontext()


IMPLEMENTATIONS = ("reference", "triton", "auto")


def kernel_or_reference(op: str, impl: str, x: Tensor, setting_env: str,
                        dtypes: tuple[torch.dtype, ...] | None = None) -> str:
    """"triton" or "reference" for an op's impl argument. "auto" is Triton for CUDA tensors
    x (of one of `dtypes`, when given) unless the environment variable setting_env says
    "reference"; "triton" on CPU tensors runs the interpreter (tests). A misspelt impl or
    setting is an error naming it, not a silent fallback."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"{op} impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl != "auto":
        return impl
    from e2former_lammps.switches import env_choice  # the package imports kernels/

    setting = env_choice(setting_env, ("reference", "triton"), "triton")
    on_gpu = x.is_cuda and (dtypes is None or x.dtype in dtypes)
    return "triton" if setting == "triton" and on_gpu else "reference"
