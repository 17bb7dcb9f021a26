"""Where the time of each ML-IAP call goes (inputs to the device, model, outputs to LAMMPS)."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class CallProfiler:
    """Attach as `E2FormerMLIAP.profiler`; synchronises the GPU at each mark (costs a little)."""

    def __init__(self, keep_graph: bool = False):
        # each call's seconds per phase: a slow first call or a recompiling one stands out
        self.each_call: dict[str, list[float]] = defaultdict(list)
        self.calls = 0
        self.keep_graph = keep_graph
        self.last_graph = None
        self._t = 0.0

    def _sync(self, graph) -> None:
        if graph is not None and graph.rij.is_cuda:
            torch.cuda.synchronize(graph.rij.device)

    def start(self) -> None:
        self.calls += 1
        self._t = time.perf_counter()

    def mark(self, name: str, graph=None) -> None:
        self._sync(graph)
        now = time.perf_counter()
        self.each_call[name].append(now - self._t)
        self._t = now
        if name == "inputs" and self.keep_graph:
            self.last_graph = graph

    def per_call(self) -> dict[str, float]:
        return {k: sum(v) / max(self.calls, 1) for k, v in self.each_call.items()}


class TraceOneCall:
    """Runs one chosen model call of this rank under torch.profiler and writes, into
    `directory`, `rank{r}_call{n}.txt` (operators by self device time on CUDA, by self CPU
    time otherwise, plus the call's wall time) and `rank{r}_call{n}.json` (a Chrome trace:
    on several ranks it shows where each one waits; ~10 MB a step at 100k atoms, so
    optional). Set up by the adapter from E2FORMER_PROFILE_DIR, E2FORMER_PROFILE_CALL and
    E2FORMER_PROFILE_TRACE (benchmarks/lammps_gpus.py --profile [--trace])."""

    def __init__(self, directory: str, call: int = 5, chrome_trace: bool = True):
        if call < 1:
            raise ValueError(f"E2FORMER_PROFILE_CALL must be >= 1, got {call}")
        self.directory, self.call, self.calls = directory, call, 0
        self.chrome_trace = chrome_trace

    @contextmanager
    def __call__(self, rank: int, cuda: bool):
        self.calls += 1
        if self.calls != self.call:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        start = time.perf_counter()
        with profile(activities=acts) as prof:
            yield
            if cuda:
                torch.cuda.synchronize()
        wall = time.perf_counter() - start
        stem = os.path.join(self.directory, f"rank{rank}_call{self.call}")
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        with open(stem + ".txt", "w") as fh:
            fh.write(f"rank {rank}, model call {self.call}: {wall:.4f} s wall\n")
            fh.write(prof.key_averages().table(sort_by=sort, row_limit=40))
        if self.chrome_trace:
            prof.export_chrome_trace(stem + ".json")
