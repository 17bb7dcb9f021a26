"""Where the time of each ML-IAP call goes (inputs to the device, model, outputs to LAMMPS)."""
from __future__ import annotations

import time
from collections import defaultdict

import torch


class CallProfiler:
    """Attach as `E2FormerMLIAP.profiler`; synchronises the GPU at each mark (costs a little)."""

    def __init__(self, keep_graph: bool = False):
        self.totals: dict[str, float] = defaultdict(float)
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
        self.totals[name] += now - self._t
        self._t = now
        if name == "inputs" and self.keep_graph:
            self.last_graph = graph

    def per_call(self) -> dict[str, float]:
        return {k: v / max(self.calls, 1) for k, v in self.totals.items()}
