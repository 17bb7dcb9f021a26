"""One GPU per MPI rank: the adapter's device choice from the launcher's local rank."""
from __future__ import annotations

import pytest
import torch

from e2former_lammps.lammps.mliap import LOCAL_RANK_VARS, rank_device


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for var in LOCAL_RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("var", LOCAL_RANK_VARS)
def test_local_rank_picks_a_gpu_round_robin(four_gpus, var):
    four_gpus.setenv(var, "6")
    assert rank_device("cuda") == "cuda:2"


def test_explicit_choices_are_kept(four_gpus):
    four_gpus.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert rank_device("cuda:1") == "cuda:1"
    assert rank_device("cpu") == "cpu"


def test_no_launcher_or_no_gpu_keeps_cuda(four_gpus):
    assert rank_device("cuda") == "cuda"
    four_gpus.setattr(torch.cuda, "is_available", lambda: False)
    four_gpus.setenv("SLURM_LOCALID", "1")
    assert rank_device("cuda") == "cuda"
