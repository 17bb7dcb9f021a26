"""Device names from users -> torch devices, with errors naming the problem (devices.py)."""
from __future__ import annotations

import pytest
import torch

from e2former_lammps.devices import parse_device, resolve_device


def test_device_names_parse_without_a_gpu_and_typos_are_named():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("cuda:3") == torch.device("cuda", 3)  # no GPU needed to name one
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for typo in ("gpu", "cuda:x", "mps", ""):
        with pytest.raises(ValueError, match="use cpu, cuda, cuda:N or auto"):
            parse_device(typo)


def test_a_device_this_process_lacks_is_named(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = "sees no CUDA device" if n_gpus == 0 else f"sees {n_gpus} GPU"
    with pytest.raises(ValueError, match=f"device cuda:{n_gpus}: this process {missing}"):
        resolve_device(f"cuda:{n_gpus}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if n_gpus == 0:  # the variable is named where it may be the reason
        with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=''"):
            resolve_device("cuda")
