"""The adapter's pair upload (lammps/upload.py): LAMMPS's host arrays reach the model's
device in the model's dtype, and a pinned buffer is not refilled while its last copy to the
GPU may still be running."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from e2former_lammps.lammps.upload import HEADROOM, PinnedUpload


def test_cpu_device_gets_the_array_in_the_models_dtype():
    upload = PinnedUpload()
    rij = torch.from_numpy(np.random.default_rng(0).normal(size=(7, 3)))
    out = upload("rij", rij, torch.device("cpu"), torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out, rij.float())
    assert upload._buffers == {}  # nothing pinned without a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_uploads_through_reused_pinned_buffers_match_the_host_arrays():
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**31))
    dev = torch.device("cuda")
    upload = PinnedUpload()
    sent = []
    for n in (1000, 900, 1200, 50_000):  # shrinks inside the buffer, then outgrows it
        host = torch.from_numpy(rng.normal(size=(n, 3)))
        sent.append((host.clone(), upload("rij", host, dev, torch.float32)))
        host.zero_()  # LAMMPS reuses its arrays: the staged copy must not depend on them
        buf = upload._buffers["rij"]
        assert buf.is_pinned() and buf.dtype == torch.float32
        assert buf.numel() >= n * 3 and buf.numel() <= int(max(n, 1200) * 3 * HEADROOM)
    # every upload kept its own values although the buffer was refilled after each
    for host, dev_tensor in sent:
        assert dev_tensor.is_cuda
        assert torch.equal(dev_tensor.cpu(), host.float())
    idx = torch.from_numpy(rng.integers(0, 100, size=5000, dtype=np.int32))
    assert torch.equal(upload("pair_i", idx, dev, torch.int32).cpu(), idx)
