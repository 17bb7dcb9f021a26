"""Benchmark results record the E2FORMER_* settings they ran with, and the threads and
allocator settings that change what is measured (benchmarks/provenance.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import provenance  # noqa: E402


def test_results_record_the_e2former_settings(tmp_path, monkeypatch):
    for key in [k for k in os.environ
                if k.startswith("E2FORMER_") or k in provenance.OTHER_SETTINGS]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("E2FORMER_NODE_MATMUL", "bf16")
    monkeypatch.setenv("E2FORMER_CUDA_GRAPHS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # ML-IAP's pair-handling threads
    monkeypatch.setenv("OTHER_SETTING", "1")
    drawn = []
    provenance.write_results({"value": 1.5}, tmp_path / "r.json",
                             lambda out, png: drawn.append((out["value"], png.name)))
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"] == {"E2FORMER_CUDA_GRAPHS": "0", "E2FORMER_NODE_MATMUL": "bf16",
                                  "OMP_NUM_THREADS": "8"}
    assert result["value"] == 1.5 and drawn == [(1.5, "r.png")]
