"""The environment switches: one reader (e2former_lammps.switches.env_choice) that refuses a
misspelt value by name, and the README's table naming every switch the code reads."""
from __future__ import annotations

import re

import pytest

from conftest import REPO
from e2former_lammps.switches import env_choice
from e2former_lammps.validation import InputError

# read by benchmarks/ only (per-rank exchange statistics), not a user setting
BENCHMARK_HOOKS = {"E2FORMER_STATS_DIR"}


def test_env_choice(monkeypatch):
    monkeypatch.delenv("E2FORMER_TEST_SWITCH", raising=False)
    assert env_choice("E2FORMER_TEST_SWITCH", ("a", "b"), "a") == "a"
    monkeypatch.setenv("E2FORMER_TEST_SWITCH", "b")
    assert env_choice("E2FORMER_TEST_SWITCH", ("a", "b"), "a") == "b"
    for bad in ("B", "", " b"):
        monkeypatch.setenv("E2FORMER_TEST_SWITCH", bad)
        with pytest.raises(InputError) as err:
            env_choice("E2FORMER_TEST_SWITCH", ("a", "b"), "a")
        assert str(err.value) == f"E2FORMER_TEST_SWITCH={bad!r}: expected one of ('a', 'b')"
    assert issubclass(InputError, ValueError)


def test_readme_lists_every_switch():
    sources = [p for d in ("e2former_lammps", "kernels") for p in (REPO / d).rglob("*.py")]
    read = {name for p in sources
            for name in re.findall(r'"(E2FORMER_[A-Z_]+)"', p.read_text())}
    assert len(read) >= 10, read
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"`(E2FORMER_[A-Z_]+)`", readme))
    # the profiler's row writes `E2FORMER_PROFILE_DIR` (`_CALL`, `_TRACE`)
    profile_row = next(line for line in readme.splitlines() if "`E2FORMER_PROFILE_DIR`" in line)
    listed |= {f"E2FORMER_PROFILE{suffix}" for suffix in re.findall(r"`(_[A-Z]+)`", profile_row)}
    assert read - BENCHMARK_HOOKS <= listed, sorted(read - BENCHMARK_HOOKS - listed)
