"""Which implementation each kernels/ op runs (kernels/launch.kernel_or_reference): "auto"
is the reference for CPU tensors whatever the op's environment setting says (the kernels
are for CUDA; the interpreter is for tests), and a misspelt setting or impl is an error that
names it, not a silent fallback."""
from __future__ import annotations

import re

import pytest
import torch

import kernels.edge_matmul as edge_matmul
import kernels.receiver_sum as receiver_sum

OPS = [(edge_matmul, "edge_matmul", "E2FORMER_EDGE_MATMUL"),
       (receiver_sum, "receiver_outer_sum", "E2FORMER_RECEIVER_SUM")]


@pytest.mark.parametrize("module, op, setting_env", OPS)
def test_auto_is_the_reference_on_the_cpu_and_bad_names_are_refused(monkeypatch, module, op,
                                                                     setting_env):
    x = torch.zeros(2, 3, 4)
    for setting in ("triton", "reference"):
        monkeypatch.setenv(setting_env, setting)
        assert module.resolve_impl("auto", x) == "reference"
    assert module.resolve_impl("triton", x) == "triton"  # the interpreter, in tests
    monkeypatch.setenv(setting_env, "trition")
    with pytest.raises(ValueError, match=re.escape(
            f"{setting_env}='trition': expected one of ('reference', 'triton')")):
        module.resolve_impl("auto", x)
    with pytest.raises(ValueError, match=f"{op} impl must be one of"):
        module.resolve_impl("cuda", x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_follows_the_setting_and_the_dtype(monkeypatch):
    x32 = torch.zeros(2, 3, device="cuda")
    assert edge_matmul.resolve_impl("auto", x32) == "triton"
    assert receiver_sum.resolve_impl("auto", x32) == "triton"
    assert receiver_sum.resolve_impl("auto", x32.double()) == "reference"  # fp32 kernels only
    monkeypatch.setenv("E2FORMER_RECEIVER_SUM", "reference")
    assert receiver_sum.resolve_impl("auto", x32) == "reference"
