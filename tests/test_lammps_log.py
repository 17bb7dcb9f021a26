"""The LAMMPS output reader (e2former_lammps.lammps.log) on a real `lmp` run's output."""
from __future__ import annotations

import numpy as np
import pytest

from e2former_lammps.lammps.log import thermo_runs
from lammps_harness import launch

DECK = """units lj
lattice fcc 0.8442
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
displace_atoms all random 0.05 0.05 0.05 4321
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
thermo_style custom step pe etotal
minimize 1e-8 1e-8 20 200
reset_timestep 0
velocity all create 1.0 87287
fix 1 all nve
thermo_style custom step time temp pe ke etotal
thermo 5
run 10
run 20
"""


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("lj")
    (workdir / "in.lj").write_text(DECK)
    proc = launch(workdir, "in.lj")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_every_run_with_its_loop_line(output):
    mini, first, second = thermo_runs(output)
    assert mini.columns == ["Step", "PotEng", "TotEng"]
    assert first.columns == second.columns == ["Step", "Time", "Temp", "PotEng", "KinEng",
                                               "TotEng"]
    assert first.column("Step").tolist() == [0, 5, 10]
    assert second.column("Step").tolist() == [10, 15, 20, 25, 30]
    assert (first.steps, second.steps, first.n_atoms, first.procs) == (10, 20, 108, 1)
    assert mini.n_atoms == 108 and mini.column("PotEng")[-1] < mini.column("PotEng")[0]
    assert first.loop_s > 0 and second.loop_s > 0
    assert second.row(0) == pytest.approx(first.row(2))  # run 2 starts where run 1 ended
    e = second.column("PotEng") + second.column("KinEng")
    assert np.allclose(e, second.column("TotEng"), atol=1e-3)
    with pytest.raises(KeyError, match="'Press' not in"):
        first.column("Press")


def test_messages_inside_a_table_are_skipped(output):
    lines = output.splitlines()
    k = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "Time"])
    lines.insert(k + 2, "WARNING: E2Former: something worth saying (src/whatever.cpp:1)")
    lines.insert(k + 2, "1 2 3 4 5 six")
    runs = thermo_runs("\n".join(lines))
    assert runs[1].column("Step").tolist() == [0, 5, 10]


def test_a_run_cut_short_keeps_its_rows(output):
    cut = output[: output.rindex("Loop time of")]
    runs = thermo_runs(cut)
    assert len(runs) == 3 and runs[-1].loop_s is None and runs[-1].steps is None
    assert runs[-1].column("Step").tolist() == [10, 15, 20, 25, 30]
    assert thermo_runs("no thermo output at all") == []
