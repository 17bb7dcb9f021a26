"""Device names from users (CLI flags, configs, export files) -> torch devices, with errors
that say what is wrong instead of torch's from deep inside the first `.to(device)`."""
from __future__ import annotations

import os

import torch

CHOICES = "cpu, cuda, cuda:N or auto (cuda if present)"


def parse_device(device: str | torch.device) -> torch.device:
    """Syntax only (a GPU need not be present): "auto" -> cuda if present, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: use {CHOICES}")
    return parsed


def resolve_device(device: str | torch.device) -> torch.device:
    """`parse_device`, and the device must exist in this process."""
    parsed = parse_device(device)
    if parsed.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        if not torch.cuda.is_available():
            raise ValueError(f"device {parsed}: this process sees no CUDA device{where}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {parsed}: this process sees "
                             f"{torch.cuda.device_count()} GPU(s){where}")
    return parsed
