"""How an energy + forces step of E2FormerV2 runs, decided per step from the model, the sizes
and the device: blocks recomputed in the backward or not (kernels/NOTES.md E47), the
attention's per-edge scores kept for its backward or not (E53, E55), the blocks' node-wise
work compiled or not (E54). None of it changes what the model computes, only its time and
memory."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kernels.attention.common import PRE_CHUNK_EDGES, kept_scores_bytes

from .config import E2FormerConfig
from .switches import env_choice

if TYPE_CHECKING:
    from .model import E2FormerV2

# Forces of at least this many receiving atoms with frozen weights (MD) recompute each block
# in the backward (activations kept for one block instead of all, kernels/NOTES.md E11) when
# the GPU could not hold all blocks' activations: recompute makes the step ~1.3x longer (paper
# configuration in LAMMPS at 200k-250k atoms, kernels/NOTES.md E59, E61).
CHECKPOINT_MIN_ATOMS = 20_000
# Peak bytes of an energy + forces step without block recompute: a fixed workspace, the pair
# data, and each block's node activations (float32 copies of its [(lmax + 1)^2, C] and
# [heads, head_dim] rows), fitted to LAMMPS runs on the H200 (E47: paper configuration 37.7 GB
# at 100k water atoms, shipped model 8.5 GB at 100k and 78.0 GB at 1M), plus the attention
# scores each layer keeps for its backward when it keeps them (E53; none in those runs), and
# kept only with RECOMPUTE_MARGIN to spare.
NO_RECOMPUTE_FIXED_BYTES = 3 << 28
NO_RECOMPUTE_BYTES_PER_PAIR = 520
NO_RECOMPUTE_ROW_COPIES = 6.4
# with the node-wise work compiled (E54), Inductor keeps more for the backward (paper
# configuration at 100k atoms 36.0 GB against 30.0 eager). Fitted to the model alone at 30k
# and 100k atoms and to LAMMPS at 200k (6.0-6.1 copies, 2-4% to spare; kernels/NOTES.md
# E61): the former 7.6 came from LAMMPS runs whose ghost rows ran the node work too (E58)
NO_RECOMPUTE_ROW_COPIES_COMPILED = 6.3
# A ghost row of a non-collective exchange (one rank) holds only the keys and values its
# owner's row gave it (E58), [heads x head_dim] + [(lmax + 1)^2 x C] per layer: LAMMPS at 100k
# water atoms peaked 2.6 GB above the model alone with 41,106 ghost rows, 1.2 copies of
# them (kernels/NOTES.md E59); counted as receivers' rows they made the estimate 31% high.
KV_GHOST_ROW_COPIES = 1.5
RECOMPUTE_MARGIN = 1.25
# Whether the attention layers keep their per-edge scores for the backward (E53, E55) is
# decided with this margin and slack: the estimate above is low by ~1 GB for small steps
# (paper configuration at 10k atoms in LAMMPS: 8.6 GB against 9.8) and 2% high for large
# ones (100k with all scores kept: 70.0 GB against 68.8 measured alone, 71.4 in LAMMPS).
KEEP_SCORES_MARGIN = 1.15
KEEP_SCORES_SLACK_BYTES = 4e9
# With block recompute, E2FORMER_OFFLOAD_BLOCK_INPUTS=1 also keeps each block's input in host
# memory until its backward (the paper configuration at 1M atoms: kernels/NOTES.md E24).
OFFLOAD_ENV = "E2FORMER_OFFLOAD_BLOCK_INPUTS"
# The blocks' node-wise work (norms, projections, FFN) through torch.compile, with frozen
# weights only (a compiled backward cannot be differentiated again: force-loss training runs
# eager): E2FORMER_COMPILE_NODES=auto (default: on CUDA, any E2FORMER_NODE_MATMUL), 1 (also on
# the CPU, which needs a C++ compiler) or 0. Inductor fuses the elementwise work: the step
# 1.2-1.3x faster on the H200 (kernels/NOTES.md E54); the first step compiles (~10 s).
COMPILE_NODES_ENV = "E2FORMER_COMPILE_NODES"


def no_recompute_peak_bytes(config: E2FormerConfig, n_atoms: int, n_pairs: int,
                            compiled: bool = False, keep_scores: bool = False,
                            kv_ghosts: int = 0) -> float:
    """Estimated peak bytes of an energy + forces step without block recompute (E47) of
    n_atoms rows that run the blocks' node-wise work (receivers, and the ghosts of a
    collective exchange) and kv_ghosts ghost rows that only receive keys and values (E58),
    with the node-wise work eager or compiled (E54), and with each attention layer keeping its
    per-edge scores for the backward or not (E53)."""
    row = (config.lmax + 1) ** 2 * config.channels + config.num_heads * config.head_dim
    copies = NO_RECOMPUTE_ROW_COPIES_COMPILED if compiled else NO_RECOMPUTE_ROW_COPIES
    kept = kept_scores_bytes(config.num_heads, n_pairs) if keep_scores else 0
    # the keys and values of a ghost are the same sizes as a row: one per head and one per
    # degree and channel
    row_copies = copies * n_atoms + KV_GHOST_ROW_COPIES * kv_ghosts
    return (NO_RECOMPUTE_FIXED_BYTES + NO_RECOMPUTE_BYTES_PER_PAIR * n_pairs
            + 4 * row * config.num_layers * row_copies + config.num_layers * kept)


def available_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device plus what PyTorch holds there cached but unused; None
    for other devices (host memory is not estimated)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def compiles_node_work(model: E2FormerV2, device: torch.device) -> bool:
    """Whether a forward of `model` on `device` runs the blocks' node-wise work compiled
    (COMPILE_NODES_ENV)."""
    value = env_choice(COMPILE_NODES_ENV, ("auto", "0", "1"), "auto")
    if value == "0" or not model.weights_frozen:
        return False
    # any E2FORMER_NODE_MATMUL: the tf32 product is a custom operator the graph holds (E56)
    return value == "1" or device.type == "cuda"


def checkpoint_mode(model: E2FormerV2, n_recv: int, n_atoms: int = 0, n_pairs: int = 0,
                    device: torch.device | None = None, compiled: bool = False,
                    kv_ghosts: int = 0) -> tuple[str, bool]:
    """How blocks keep what their backward needs, and whether the memory estimate chose it:
    "off" (all activations), "recompute" (only each block's input; the block runs again in
    the backward) or "offload" (recompute, with the inputs in host memory).
    `model.checkpoint_blocks` "auto" keeps all activations unless the weights are frozen,
    there are >= CHECKPOINT_MIN_ATOMS receivers and the step (n_atoms rows with node-wise
    work, kv_ghosts rows with keys and values only, n_pairs: no_recompute_peak_bytes) would
    not fit the free memory of CUDA `device` with the node work `compiled` or not (without
    the attention's kept scores, which give way first: keeps_attention_scores)."""
    mode = model.checkpoint_blocks
    if mode == "offload":
        return mode, False
    if mode != "auto":
        return ("recompute" if mode else "off"), False
    if not (model.weights_frozen and torch.is_grad_enabled()
            and n_recv >= CHECKPOINT_MIN_ATOMS):
        return "off", False
    available = (available_device_bytes(device)
                 if device is not None and model.memory_estimate_trusted else None)
    if available is not None and (RECOMPUTE_MARGIN * no_recompute_peak_bytes(
            model.config, n_atoms, n_pairs, compiled, kv_ghosts=kv_ghosts) <= available):
        return "off", True
    offload = env_choice(OFFLOAD_ENV, ("0", "1"), "0") == "1"
    return ("offload" if offload else "recompute"), False


def keeps_attention_scores(model: E2FormerV2, n_atoms: int, n_pairs: int,
                           device: torch.device, compiled: bool, mode: str,
                           kv_ghosts: int = 0) -> bool | None:
    """Whether the attention layers keep their per-edge scores for the backward (E53):
    with all activations kept ("off") on a GPU whose free memory holds the step with them
    (keep_scores_need_bytes), up to one prepass launch of pairs, or any number with
    `model.keep_scores_beyond_one_launch` (E55); not on a GPU too small for that (the
    backward then recomputes them, ~6% of a step). None (the kernels' default: up to one
    launch) with block recompute, off the GPU, inside a CUDA-graph capture (<= 2^18 pairs),
    or beyond one launch without that switch."""
    if (mode != "off" or device.type != "cuda"
            or torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
            or n_pairs > PRE_CHUNK_EDGES and not model.keep_scores_beyond_one_launch):
        return None
    return (keep_scores_need_bytes(model.config, n_atoms, n_pairs, compiled, kv_ghosts)
            <= available_device_bytes(device))


def keep_scores_need_bytes(config: E2FormerConfig, n_atoms: int, n_pairs: int,
                           compiled: bool, kv_ghosts: int = 0) -> float:
    """Free device memory a step must find for its attention layers to keep their scores:
    the step's estimate with them (no_recompute_peak_bytes), KEEP_SCORES_MARGIN and
    KEEP_SCORES_SLACK_BYTES to spare."""
    return KEEP_SCORES_MARGIN * no_recompute_peak_bytes(
        config, n_atoms, n_pairs, compiled, keep_scores=True,
        kv_ghosts=kv_ghosts) + KEEP_SCORES_SLACK_BYTES
