"""The commit a benchmark result belongs to."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def commit() -> str:
    """$GIT_COMMIT if set (the GPU machine's copy of .git can lag behind the working tree it
    was sent), else `git rev-parse HEAD` with "+dirty" when tracked files differ."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo).returncode != 0
    except OSError:
        return "unknown"
    return (head + "+dirty" if dirty else head) or "unknown"
