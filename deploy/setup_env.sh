#!/usr/bin/env bash
# One-stop, idempotent development environment for e2former-lammps (CPU machines).
#
#   deploy/setup_env.sh
#
# 1. .venv at the repo root (python3 -m venv) with torch==2.13.0 (CPU) and the
#    project's dependencies; `pip install -e .` of the repo if pyproject.toml exists.
# 2. MPI: Debian mpich + libmpich-dev via apt-get when mpicc is missing.
# 3. mpi4py built from source against that MPI (wheel cached in
#    ~/.cache/e2former-lammps/wheels).
# 4. LAMMPS with ML-IAP python support via deploy/build_lammps.sh (cached prefix
#    ~/.cache/e2former-lammps/lammps-<version>-<key>), `lammps` module in the venv,
#    .venv/bin/lmp wrapper.
# Every step is skipped when already done (a warm rerun takes seconds).
#
# Environment: PYTHON_BASE (interpreter used to create .venv, default python3),
# LAMMPS_SOURCE_DIR (use your own LAMMPS checkout), E2FORMER_LAMMPS_CACHE, JOBS,
# SKIP_LAMMPS=1 (stop after the Python/MPI steps).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${E2FORMER_LAMMPS_CACHE:-$HOME/.cache/e2former-lammps}"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
TORCH_PIN="torch==2.13.0"   # exact pin: a looser spec pulls a multi-GB CUDA build
DEPS=(numpy cython ase h5py triton pytest hypothesis scipy matplotlib tqdm pyyaml ase-db-backends lmdb)
export PIP_DISABLE_PIP_VERSION_CHECK=1

T0=$SECONDS
step() { printf '\n==== [setup_env %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
info() { printf '     %s\n' "$*"; }
die() { printf '\n[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"

# --------------------------------------------------------------------------------------
step "1/5 Python virtual environment ($VENV)"
if [[ -x "$PY" ]] && "$PY" -c "import sys" 2>/dev/null; then
    info "exists: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
else
    "${PYTHON_BASE:-python3}" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    info "created with $("$PY" -c 'import sys; print(sys.version.split()[0])')"
fi

# --------------------------------------------------------------------------------------
step "2/5 Python packages ($TORCH_PIN first, then ${DEPS[*]})"
# metadata/find_spec only: importing torch & co. would cost ~10 s on every rerun
torch_ver="$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)"
if [[ "${torch_ver%%+*}" == "2.13.0" ]]; then
    info "torch $torch_ver present"
else
    "$PY" -m pip install -q "$TORCH_PIN"
    info "installed torch $("$PY" -c "import importlib.metadata as m; print(m.version('torch'))")"
fi
# import names of DEPS
if "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(n) is None for n in 'numpy Cython ase h5py triton pytest hypothesis scipy matplotlib tqdm yaml ase_db_backends lmdb'.split()))" 2>/dev/null; then
    info "dependencies present"
else
    # torch stays pinned: a dependency must never replace it with a CUDA build
    "$PY" -m pip install -q "$TORCH_PIN" "${DEPS[@]}"
    info "installed ${DEPS[*]}"
fi
if [[ -f "$REPO/pyproject.toml" ]]; then
    # editable install; skipped when the installed one already points at this repo
    name="$("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
try:
    print(tomllib.load(open(sys.argv[1], "rb")).get("project", {}).get("name", ""))
except Exception:
    print("")
EOF
)"
    stamp="$VENV/.e2former-editable-stamp"
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) $REPO"
    if [[ -n "$name" ]] && "$PY" -m pip show -q "$name" >/dev/null 2>&1 && [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        info "editable install of $name up to date"
    else
        # deps first (pinned torch kept), then the package itself without resolver changes
        if ! "$PY" -m pip install -q --no-build-isolation -e "$REPO" "$TORCH_PIN" 2>/tmp/e2f-pip-e.log; then
            info "pip install -e . with dependencies failed (see /tmp/e2f-pip-e.log); retrying with --no-deps"
            "$PY" -m pip install -q --no-build-isolation --no-deps -e "$REPO" \
                || "$PY" -m pip install -q --no-deps -e "$REPO"
        fi
        echo "$want" > "$stamp"
        info "pip install -e $REPO (${name:-unnamed}) done"
    fi
else
    info "no pyproject.toml yet: skipping pip install -e ."
fi

# --------------------------------------------------------------------------------------
step "3/5 MPI"
if command -v mpicc >/dev/null && command -v mpicxx >/dev/null && command -v mpirun >/dev/null; then
    info "present: $(command -v mpicc) ($(mpichversion 2>/dev/null | head -n1 || mpirun --version 2>&1 | head -n1))"
else
    info "mpicc missing: installing Debian mpich + libmpich-dev"
    command -v apt-get >/dev/null || die "no mpicc and no apt-get: install an MPI (mpicc, mpicxx, mpirun) first"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends mpich libmpich-dev
    hash -r
    command -v mpicc >/dev/null || die "mpich installed but mpicc is still not in PATH"
    info "installed: $(mpichversion 2>/dev/null | head -n1)"
fi
# `patch` applies deploy/lammps-patches/ to a copy of the LAMMPS source (CMakeLists.txt)
if ! command -v patch >/dev/null && command -v apt-get >/dev/null; then
    info "patch missing: installing Debian patch"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends patch \
        || { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive \
             $SUDO apt-get install -y -q --no-install-recommends patch; }
fi

# --------------------------------------------------------------------------------------
step "4/5 mpi4py built against $(command -v mpicc)"
# PyPI's mpi4py wheel expects libmpi.so.12 and fails inside LAMMPS built with Debian's
# mpich (libmpich.so.12): build from source against the MPI in PATH.
mpi_id="$( (mpicc -show; mpichversion 2>/dev/null || mpirun --version 2>&1) | sha256sum | cut -c1-12)"
py_tag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
whl_dir="$CACHE/wheels/mpi4py-$py_tag-$mpi_id"
mpi4py_ok() {
    "$PY" - <<'EOF' 2>/dev/null
from mpi4py import MPI
print(MPI.Get_library_version().splitlines()[0])
EOF
}
stamp="$VENV/.e2former-mpi4py-stamp"
if [[ "$(cat "$stamp" 2>/dev/null)" == "$whl_dir" ]] && mpi4py_ok >/dev/null; then
    info "mpi4py from source present: $(mpi4py_ok)"
else
    mkdir -p "$whl_dir"
    if ! ls "$whl_dir"/mpi4py-*.whl >/dev/null 2>&1; then
        info "building the mpi4py wheel from source (~3 CPU-minutes) into $whl_dir"
        MPICC="$(command -v mpicc)" "$PY" -m pip wheel -q --no-deps --no-binary mpi4py \
            --no-cache-dir -w "$whl_dir" mpi4py
    fi
    "$PY" -m pip install -q --force-reinstall --no-deps "$(ls "$whl_dir"/mpi4py-*.whl | head -n1)"
    mpi4py_ok >/dev/null || die "mpi4py installed but does not import"
    echo "$whl_dir" > "$stamp"
    info "installed mpi4py: $(mpi4py_ok)"
fi

# --------------------------------------------------------------------------------------
step "5/5 LAMMPS (ML-IAP python / ML-SNAP / PYTHON / MPI)"
if [[ -n "${SKIP_LAMMPS:-}" ]]; then
    info "SKIP_LAMMPS set: skipping"
else
    prefix="$(PYTHON="$PY" "$REPO/deploy/build_lammps.sh" | tail -n1)"
    info "LAMMPS prefix: $prefix"
    info "lmp:           $VENV/bin/lmp (wrapper)"
fi

step "done in $((SECONDS - T0)) s. Activate with: source .venv/bin/activate"
