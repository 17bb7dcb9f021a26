"""Compile the Triton kernels for a GPU architecture on a machine without a GPU.

The CPU tests run the kernels in Triton's interpreter, which executes them as Python and
compiles nothing: an error only the compiler sees (types, layouts, constexpr use) or a tile
that spills registers used to show only on the GPU machine. Here the real wrappers run on
CPU tensors with every kernel launch recorded instead of executed (`recorded_launches`);
each distinct launch is then compiled to a cubin for sm_90 (H100/H200) by Triton's own
compiler and bundled ptxas (`compile_launch`), and cuobjdump reads its registers, spills and
shared memory (`resource_usage`).

Triton must be imported with TRITON_INTERPRET unset (the interpreter replaces the kernels
at import time). Register counts are those of the Triton installed here, which may differ
from the GPU machine's.
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_POINTER_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
                  torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32",
                  torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the compiler sees it: argument types, constexpr values, the
    arguments Triton would mark as divisible by 16, and the launch options."""
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible_by_16: tuple[str, ...]
    options: tuple[tuple[str, int], ...]

    def label(self) -> str:
        """Kernel, tiles (BLOCK_*), switches (bool constexprs) and launch options."""
        shown = [f"{k}={v}" for k, v in self.constexprs
                 if k.startswith("BLOCK") or isinstance(v, bool)]
        shown += [f"{k}={v}" for k, v in self.options]
        return f"{self.kernel}({', '.join(shown)})"

    def variant(self) -> tuple:
        """What decides the compiled code up to alignment: kernel, constexprs, options."""
        return self.kernel, self.constexprs, self.options


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _arg_type(name: str, value) -> str:
    if isinstance(value, torch.Tensor):
        if value.dtype not in _POINTER_TYPES:
            raise TypeError(f"argument {name}: no Triton pointer type for {value.dtype}")
        return "*" + _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"argument {name}: cannot type {type(value).__name__} for the compiler")


def _describe(jit_fn, args: tuple, kwargs: dict) -> Launch:
    """The Launch of jit_fn(*args, **kwargs): kwargs that are not parameters are options."""
    sig = inspect.signature(jit_fn.fn)
    names = list(sig.parameters)
    options = {k: v for k, v in kwargs.items() if k not in names}
    bound = sig.bind(*args, **{k: v for k, v in kwargs.items() if k in names})
    bound.apply_defaults()
    signature, constexprs, divisible = [], [], []
    for param in jit_fn.params:
        value = bound.arguments[param.name]
        if param.is_constexpr:
            signature.append((param.name, "constexpr"))
            constexprs.append((param.name, value))
            continue
        signature.append((param.name, _arg_type(param.name, value)))
        # what Triton's launcher specialises on: 16-byte aligned pointers, and integers
        # that are multiples of 16 unless the kernel opted out (do_not_specialize)
        if isinstance(value, torch.Tensor):
            if value.data_ptr() % 16 == 0:
                divisible.append(param.name)
        elif (isinstance(value, int) and not isinstance(value, bool)
              and not param.do_not_specialize and value % 16 == 0):
            divisible.append(param.name)
    return Launch(jit_fn.fn.__name__, tuple(signature), tuple(constexprs), tuple(divisible),
                  tuple(sorted((k, int(v)) for k, v in options.items())))


@contextmanager
def recorded_launches() -> Iterator[list[Launch]]:
    """Within the block, launching any Triton kernel records its Launch (in order, repeats
    kept) and runs nothing: the kernels' outputs stay as allocated."""
    if _interpreter_on():
        raise RuntimeError("recorded_launches needs TRITON_INTERPRET unset when triton is "
                           "first imported (the interpreter replaces the kernels)")
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []

    def record(self, *args, grid, warmup=False, **kwargs):
        launches.append(_describe(self, args, kwargs))
        return None

    original = JITFunction.run
    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def _find_kernel(name: str):
    """The JITFunction called name in the kernels package."""
    from .attention import (triton_backward, triton_forward, triton_head_backward,
                            triton_sender_backward)
    from .edge_matmul import triton_edge_matmul
    from .receiver_sum import triton_receiver_sum
    for module in (triton_forward, triton_backward, triton_head_backward,
                   triton_sender_backward, triton_edge_matmul, triton_receiver_sum):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(f"no Triton kernel named {name} in kernels/")


def compile_launch(launch: Launch, arch: int = 90):
    """Compile launch for sm_{arch} (no GPU needed): Triton's CompiledKernel (asm: ttir,
    ttgir, llir, ptx, cubin; metadata.shared: dynamic shared memory in bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _find_kernel(launch.kernel)
    index = {name: i for i, (name, _) in enumerate(launch.signature)}
    src = ASTSource(fn=fn, signature=dict(launch.signature),
                    constexprs={(index[k],): v for k, v in launch.constexprs},
                    attrs={(index[k],): [["tt.divisibility", 16]]
                           for k in launch.divisible_by_16})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))


def resource_usage(compiled) -> dict[str, int]:
    """Registers per thread, spill stores (local memory bytes per thread) and shared memory
    (static + Triton's dynamic, bytes per program) of a compiled kernel, from cuobjdump.
    ptxas puts register spills in the thread's stack frame (STACK), not in LOCAL: a Triton
    kernel makes no calls, so its stack is spills (kernels/NOTES.md E52: 3 KB of it, 32
    registers, had read as "no spill")."""
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in usage:
        raise RuntimeError(f"cuobjdump gave no resource usage:\n{text}")
    local = int(usage.get("LOCAL", 0)) + int(usage.get("STACK", 0))
    return {"registers": int(usage["REG"]), "local_bytes": local,
            "shared_bytes": int(usage.get("SHARED", 0)) + int(compiled.metadata.shared)}
