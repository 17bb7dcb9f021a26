"""Model-level physics: symmetry, conservative forces, stress, persistence, bad input."""
import contextlib
import gc
import weakref

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from e2former_lammps import E2FormerCalculator, E2FormerConfig, E2FormerV2, step_plan
from e2former_lammps.validation import InputError

from conftest import distributed_charge_model, random_model, spice_molecules, water_box


def _energy_forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_rotation_translation_permutation(dtype, tol):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    calc = E2FormerCalculator(random_model(seed, dtype=dtype))
    for atoms in spice_molecules(3, min_atoms=8, seed=seed):
        e, f = _energy_forces(calc, atoms)
        atoms.calc = calc
        atoms.get_potential_energy()
        scale = np.abs(atoms.get_potential_energies()).sum()  # |e| alone may be ~0
        rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rot.T
        e_r, f_r = _energy_forces(calc, moved)
        assert abs(e_r - e) <= tol * scale
        assert _rel(f_r, f @ rot.T) <= tol * 10
        moved = atoms.copy()
        moved.positions += 500.0
        e_t, f_t = _energy_forces(calc, moved)
        assert abs(e_t - e) <= tol * scale and _rel(f_t, f) <= tol * 10
        perm = rng.permutation(len(atoms))
        e_p, f_p = _energy_forces(calc, atoms[perm])
        assert abs(e_p - e) <= tol * scale and _rel(f_p, f[perm]) <= tol * 10


def _assert_forces_are_minus_gradient(calc, atoms, forces, every: int) -> None:
    """Central differences (h = 1e-5 Å) of the energy of every `every`-th atom, fp64."""
    h = 1e-5
    for k in range(0, len(atoms), every):
        for d in range(3):
            p, m = atoms.copy(), atoms.copy()
            p.positions[k, d] += h
            m.positions[k, d] -= h
            fd = -(_energy_forces(calc, p)[0] - _energy_forces(calc, m)[0]) / (2 * h)
            assert abs(fd - forces[k, d]) < 1e-7 * max(1.0, abs(forces[k, d]))


def _assert_invariant_and_conservative(calc, atoms, rng) -> float:
    """Energy invariant and forces equivariant under a random rotation, forces = -dE/dx by
    central differences (fp64); returns the energy (eV)."""
    e, f = _energy_forces(calc, atoms)
    rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T
    e_r, f_r = _energy_forces(calc, moved)
    assert abs(e_r - e) <= 1e-10 * max(1.0, abs(e)) and _rel(f_r, f @ rot.T) <= 1e-9
    _assert_forces_are_minus_gradient(calc, atoms, f, every=4)
    return e


def test_forces_are_minus_energy_gradient_fp64(model64):
    calc = E2FormerCalculator(model64)
    atoms = spice_molecules(1, min_atoms=10)[0]
    _, f = _energy_forces(calc, atoms)
    _assert_forces_are_minus_gradient(calc, atoms, f, every=3)


def test_stress_is_strain_derivative_small_periodic_box(model64):
    atoms = water_box(2)  # 2.5 Å box: every atom sees many of its own images
    atoms.set_cell(atoms.cell @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0.02, 0, 1]]),
                   scale_atoms=True)  # triclinic
    atoms.calc = E2FormerCalculator(model64)
    stress = atoms.get_stress(voigt=False)
    h = 1e-6
    vol = atoms.get_volume()
    for a, b in [(0, 0), (1, 2), (0, 1), (2, 2)]:
        e = []
        for s in (h, -h):
            strain = np.eye(3)
            strain[a, b] += s / 2
            strain[b, a] += s / 2
            x = atoms.copy()
            x.set_cell(atoms.cell @ strain, scale_atoms=True)
            x.calc = atoms.calc
            e.append(x.get_potential_energy())
        fd = (e[0] - e[1]) / (2 * h) / vol
        assert abs(fd - stress[a, b]) < 1e-7 * max(1.0, np.abs(stress).max())


def test_isolated_atom_has_reference_energy_and_no_force():
    model = random_model(3)
    model.set_reference_energies({"O": -432.1, "H": -13.6})
    atoms = Atoms("OH", positions=[[0, 0, 0], [20.0, 0, 0]])  # far beyond the cutoff
    atoms.calc = E2FormerCalculator(model)
    assert atoms.get_potential_energies() == pytest.approx([-432.1, -13.6], abs=1e-12)
    assert np.abs(atoms.get_forces()).max() == 0.0
    # beside a molecule (pairs in the graph: the full attention and embedding run) the
    # isolated atom still gets exactly its reference energy, so the pair-free shortcuts of
    # the baseline pass compute the same network output
    atoms = molecule("H2O") + Atoms("O", positions=[[20.0, 0, 0]])
    atoms.calc = E2FormerCalculator(model)
    assert atoms.get_potential_energies()[-1] == pytest.approx(-432.1, abs=1e-10)


class _NotCopyable:
    """Stands for what an adapter may attach to a model (an MPI communicator)."""

    def __deepcopy__(self, memo):
        raise TypeError("not copyable")


def test_frozen_float32_model_caches_its_baseline_in_float64():
    """The isolated-atom baseline is subtracted from every atom, so its float32 rounding would
    add up over a system: the frozen model caches it from a float64 twin of itself, built
    from its config and weights (not deep-copied: attached objects need not copy)."""
    model = random_model(5, dtype=torch.float32).requires_grad_(False)
    twin = E2FormerV2(model.config).double()
    twin.load_state_dict(model.state_dict())
    model.communicator = _NotCopyable()
    seeded = torch.random.get_rng_state()
    assert torch.equal(model._baseline(), twin.isolated_atom_energies())
    assert torch.equal(torch.random.get_rng_state(), seeded)  # training runs stay reproducible
    trained = random_model(5, dtype=torch.float32)  # training: model dtype, differentiable
    assert trained._baseline().requires_grad


def test_energy_is_smooth_at_the_cutoff(model64):
    """A neighbour crossing r_c changes neither energy nor force discontinuously."""
    calc = E2FormerCalculator(model64)
    rc = model64.config.cutoff
    energies = []
    for d in (rc - 1e-4, rc + 1e-4):
        atoms = molecule("H2O")  # O on the z axis above both H: C at d from O, farther from H
        atoms += Atoms("C", positions=[atoms.positions[0] + [0.0, 0.0, d]])
        energies.append(_energy_forces(calc, atoms))
    assert abs(energies[0][0] - energies[1][0]) < 1e-9
    assert np.abs(energies[0][1] - energies[1][1]).max() < 1e-6


def test_save_load_roundtrip(tmp_path, model64):
    model64.set_reference_energies({"H": -1.5})
    path = tmp_path / "m.pt"
    model64.save(path, metadata={"note": "x"})
    loaded = E2FormerV2.load(path)
    assert loaded.config == model64.config and loaded.metadata == {"note": "x"}
    atoms = spice_molecules(1)[0]
    e1, f1 = _energy_forces(E2FormerCalculator(model64), atoms)
    e2, f2 = _energy_forces(E2FormerCalculator(loaded), atoms)
    assert e1 == e2 and np.array_equal(f1, f2)


def test_unknown_attention_implementation_is_refused_when_set(model64):
    """A typo (Python API, train config, export) stops at set_attention_impl, naming the
    choices, not at the first evaluation."""
    with pytest.raises(ValueError, match="unknown attention implementation 'trition'.*"
                                         "reference_chunked"):
        model64.set_attention_impl("trition")
    model64.set_attention_impl("reference_chunked")
    assert {b.attention.impl for b in model64.blocks} == {"reference_chunked"}


def test_bad_inputs_have_clear_messages(tmp_path, model64):
    calc = E2FormerCalculator(model64)
    with pytest.raises(InputError, match=r"element\(s\) \['Cl'\] not in this model"):
        _energy_forces(calc, Atoms("HCl", positions=[[0, 0, 0], [1.3, 0, 0]]))
    with pytest.raises(InputError, match="overlapping atoms"):
        _energy_forces(calc, Atoms("OH", positions=[[0, 0, 0], [0.0, 0, 0.01]]))
    with pytest.raises(InputError, match="non-finite coordinates"):
        _energy_forces(calc, Atoms("OH", positions=[[0, 0, 0], [np.nan, 0, 0]]))
    bad = tmp_path / "corrupt.pt"
    model64.save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable E2Former checkpoint"):
        E2FormerV2.load(bad)
    with pytest.raises(FileNotFoundError, match="no packaged model"):
        E2FormerV2.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown element symbol"):
        E2FormerConfig(elements=["H", "Xx"])
    # a charge mode without the charge input: it had trained, then failed on the first
    # charged frame with "energies for charges [0.0] only"
    with pytest.raises(ValueError, match="charge_spin_mode 'distributed' needs charge_spin"):
        E2FormerConfig(elements=["H", "O"], charge_spin_mode="distributed")


def test_shared_edge_frame_gives_the_same_training_gradients(monkeypatch):
    """The blocks of one forward share rij's edge geometry and Wigner matrices (reference
    attention): energies, forces and the parameter gradients of a force loss (double
    backward) equal those of every block making its own (fp64), and it is made once."""
    import kernels.attention.reference as reference
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.neighbors import atoms_to_graph

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    model = random_model(seed, num_layers=3)
    cfg = model.config
    atoms = spice_molecules(1, min_atoms=10, seed=seed)[0]
    made = []
    original = reference.EdgeFrame.of

    def counting(*args):
        made.append(1)
        return original(*args)

    monkeypatch.setattr(reference.EdgeFrame, "of", staticmethod(counting))
    results = {}
    for share in (True, False):
        if not share:  # every block its own frame
            monkeypatch.setattr(reference, "edge_frame",
                                lambda rij, cutoff, lmax, shared: counting(rij, cutoff, lmax))
        made.clear()
        model.zero_grad()
        graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff)
        eatoms, grad = energy_and_pair_gradient(model, graph, create_graph=True)
        (eatoms.sum() + (grad ** 2).sum()).backward()
        results[share] = (eatoms.detach(), grad.detach(),
                          [p.grad.clone() for p in model.parameters() if p.grad is not None],
                          len(made))
    assert results[True][3] == 1 and results[False][3] == cfg.num_layers
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=0, atol=1e-12)
    assert len(results[True][2]) == len(results[False][2])
    for a, b in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _recording(inputs: list, wrapped):
    """wrapped (checkpoint or keep_on_host), noting a weak reference to its first tensor
    argument (the block input)."""
    def record(*args, **kwargs):
        inputs.append(weakref.ref(next(a for a in args if isinstance(a, torch.Tensor))))
        return wrapped(*args, **kwargs)
    return record


@pytest.mark.parametrize("periodic", [False, True])
def test_block_checkpointing_gives_the_same_forces(model64, periodic, monkeypatch):
    """Recomputing blocks in the backward (large MD systems), with their inputs kept in host
    memory or not, changes nothing but memory; the offload moves each block's input once, and
    after the forward no block input is alive any more (recompute alone keeps them all)."""
    import e2former_lammps.model as model_module
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.host_offload import keep_on_host
    from e2former_lammps.neighbors import atoms_to_graph

    moved = []

    @contextlib.contextmanager
    def counting_keep_on_host(x):
        with keep_on_host(x) as count:
            yield count
        moved.append(count[0])

    monkeypatch.setattr(model_module, "keep_on_host", counting_keep_on_host)
    model = model64.eval().requires_grad_(False)
    cfg = model.config
    atoms = water_box(2) if periodic else spice_molecules(1, min_atoms=10)[0]
    results = {}
    for mode in (False, True, "offload"):
        model.checkpoint_blocks = mode
        graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff)
        results[mode] = energy_and_pair_gradient(model, graph)
    assert moved == [1] * cfg.num_layers
    assert step_plan.checkpoint_mode(model, 10)[0] == "offload"
    alive = {}
    for mode in (True, "offload"):  # the forward only: what stays for the backward
        model.checkpoint_blocks = mode
        inputs = []
        monkeypatch.setattr(model_module, "keep_on_host" if mode == "offload" else "checkpoint",
                            _recording(inputs, keep_on_host if mode == "offload"
                                       else model_module.checkpoint))
        graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff)
        graph.rij.requires_grad_(True)
        with torch.enable_grad():
            eatoms = model(graph)
        gc.collect()
        alive[mode] = sum(ref() is not None for ref in inputs[:cfg.num_layers])
        del eatoms
    assert alive == {True: cfg.num_layers, "offload": 0}
    for mode in (True, "offload"):
        assert torch.equal(results[mode][0], results[False][0])
        assert torch.allclose(results[mode][1], results[False][1], rtol=0, atol=1e-12)
    model.checkpoint_blocks = "auto"
    assert step_plan.checkpoint_mode(model, 10)[0] == "off"
    assert step_plan.checkpoint_mode(model, 10**6)[0] == "recompute"
    monkeypatch.setenv(step_plan.OFFLOAD_ENV, "1")
    assert step_plan.checkpoint_mode(model, 10)[0] == "off"
    assert step_plan.checkpoint_mode(model, 10**6)[0] == "offload"
    monkeypatch.setenv(step_plan.OFFLOAD_ENV, "yes")
    with pytest.raises(ValueError, match=step_plan.OFFLOAD_ENV):
        step_plan.checkpoint_mode(model, 10**6)
    monkeypatch.delenv(step_plan.OFFLOAD_ENV)
    model.requires_grad_(True)
    # training keeps activations (weight grads)
    assert step_plan.checkpoint_mode(model, 10**6)[0] == "off"


def test_auto_recomputes_blocks_only_when_the_gpu_would_run_out(monkeypatch):
    """"auto" on a GPU: large frozen-weight steps keep every block's activations when the
    estimated peak (with margin) fits the free memory, and recompute (or offload) when not;
    the estimate matches the peaks of LAMMPS runs on the H200 (E47: water at 100k and 1M
    atoms, benchmarks/results/lammps_scaling*.json and lammps_session22.log) within 5%; with
    the node work compiled (E54, E61) the model alone with every attention layer keeping its
    scores (E55) and LAMMPS since E58 (one rank's ghost rows hold keys and values only, E59)
    within 5% and 10% above (the step's margins give the slack; an estimate too high only
    recomputes sooner), LAMMPS before E58 (ghost rows ran the node work, counted as whole
    rows) up to 20% above."""

    paper = E2FormerConfig(elements=["H", "O"], channels=256, lmax=2, num_layers=4,
                           num_heads=128, head_dim=8)
    shipped = E2FormerV2.load("spice-xtb").config
    for cfg, n_atoms, n_pairs, measured in ((paper, 100_000, 5_342_958, 37.74e9),
                                            (shipped, 100_000, 5_338_720, 8.47e9),
                                            (shipped, 1_000_000, 53_761_074, 78.04e9)):
        estimate = step_plan.no_recompute_peak_bytes(cfg, n_atoms, n_pairs)
        assert abs(estimate / measured - 1) < 0.05, (cfg.channels, n_atoms, estimate)
    # compiled, LAMMPS before E58 (bfe2459): 41,106 ghost rows ran the node work too, as with
    # a collective exchange, where the rule counts every row (E61)
    for cfg, n_pairs, measured in ((paper, 5_342_958, 43.33e9), (shipped, 5_338_720, 8.95e9)):
        estimate = step_plan.no_recompute_peak_bytes(cfg, 99_999 + 41_106, n_pairs,
                                                     compiled=True)
        assert 1.0 < estimate / measured < 1.2, (cfg.channels, estimate)
    # every layer keeping its scores (E55; the model alone, results/ab_e55_keep_scores*.json)
    for n_atoms, n_pairs, measured in ((30_000, 1_603_666, 21.25e9),
                                       (99_999, 5_341_924, 68.83e9)):
        estimate = step_plan.no_recompute_peak_bytes(paper, n_atoms, n_pairs, compiled=True,
                                                     keep_scores=True)
        assert 1.0 < estimate / measured < 1.05, (n_atoms, estimate)
    # LAMMPS on one rank since E58 (results/lammps_scaling*.json at b23d0ad): the 41,106 ghost
    # rows of the 100k box hold keys and values only; as receivers' rows they were 31% high
    for cfg, n_pairs, measured in ((paper, 5_342_958, 71.44e9), (shipped, 5_338_720, 9.60e9)):
        estimate = step_plan.no_recompute_peak_bytes(cfg, 99_999, n_pairs, compiled=True,
                                                     keep_scores=True, kv_ghosts=41_106)
        assert 1.0 < estimate / measured < 1.1, (cfg.channels, estimate)
        whole_rows = step_plan.no_recompute_peak_bytes(cfg, 99_999 + 41_106, n_pairs,
                                                       compiled=True, keep_scores=True)
        assert whole_rows / measured > 1.15
    # and at 200k-250k atoms, where whole ghost rows made the rule recompute every block
    # (1.31x slower at 200k: kernels/NOTES.md E59): 200k without scores
    # (lammps_scaling_200k_auto_d1d7847), and with the refitted rows (E61,
    # lammps_scaling_150k_250k_183728b) 150k with its scores kept, 250k without
    for n_atoms, ghosts, n_pairs, scores, measured in (
            (200_001, 64_422, 10_745_378, False, 75.81e9),
            (150_000, 54_108, 8_087_370, True, 106.89e9),
            (249_999, 74_607, 13_458_208, False, 94.67e9)):
        estimate = step_plan.no_recompute_peak_bytes(paper, n_atoms, n_pairs, compiled=True,
                                                     keep_scores=scores, kv_ghosts=ghosts)
        assert 1.0 < estimate / measured < 1.05, (n_atoms, estimate)
    model = random_model(seed=3).requires_grad_(False)
    n, pairs, cuda = 100_000, 5_400_000, torch.device("cuda")
    compiled = step_plan.compiles_node_work(model, cuda)
    need = step_plan.no_recompute_peak_bytes(model.config, n, pairs, compiled)
    for free, expected in ((2 * need, "off"), (need, "recompute")):
        monkeypatch.setattr(step_plan, "available_device_bytes", lambda device: free)
        assert step_plan.checkpoint_mode(model, n, n, pairs, cuda, compiled)[0] == expected
        # small: always
        assert step_plan.checkpoint_mode(model, 10_000, 10_000, 540_000, cuda, compiled)[0] == "off"
    monkeypatch.setenv(step_plan.OFFLOAD_ENV, "1")
    assert step_plan.checkpoint_mode(model, n, n, pairs, cuda, compiled)[0] == "offload"
    # on the CPU (host memory) the atom count alone decides, as before
    assert step_plan.checkpoint_mode(model, n, n, pairs, torch.device("cpu"))[0] == "offload"


def test_attention_keeps_its_scores_only_where_the_step_fits(interpreter, monkeypatch):
    """E53's per-edge scores kept for the backward (beyond one prepass launch of pairs only
    with E55's switch): on a GPU whose free memory holds the step's estimated peak with them
    (step_plan.keep_scores_need_bytes), not on a smaller one; the kernels' default (None: up
    to one prepass launch) with block recompute or off the GPU. The model's choice reaches the
    kernels (the prepass runs once per layer when kept, twice when not; same forces)."""
    import kernels.attention.triton_forward as triton_forward
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.neighbors import atoms_to_graph

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    model = random_model(seed, num_layers=1).requires_grad_(False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert model.keep_scores_beyond_one_launch  # E55 on by default (GPU-checked, session 25)
    monkeypatch.setattr(step_plan, "available_device_bytes", lambda device: 1 << 50)
    model.keep_scores_beyond_one_launch = False
    assert step_plan.keeps_attention_scores(model, 100_000, 5_400_000, cuda, True, "off") is None
    model.keep_scores_beyond_one_launch = True
    for n, pairs in ((10_000, 540_000), (100_000, 5_400_000)):
        need = step_plan.keep_scores_need_bytes(model.config, n, pairs, compiled=True)
        assert need > step_plan.no_recompute_peak_bytes(model.config, n, pairs, compiled=True,
                                                        keep_scores=True)
        for free, keep in ((need, True), (0.9 * need, False)):
            monkeypatch.setattr(step_plan, "available_device_bytes", lambda device: free)
            assert step_plan.keeps_attention_scores(model, n, pairs, cuda, True, "off") is keep
            assert step_plan.keeps_attention_scores(model, n, pairs, cuda, True,
                                                    "recompute") is None
    monkeypatch.undo()
    assert step_plan.keeps_attention_scores(model, 10_000, 540_000, cpu, False, "off") is None

    model.set_attention_impl("triton")
    cfg = model.config
    graph = atoms_to_graph(molecule("CH3OH"), cfg.elements, cfg.atomic_numbers, cfg.cutoff,
                           torch.float64, "cpu")
    calls = []
    prepass = triton_forward.edge_scores
    monkeypatch.setattr(triton_forward, "edge_scores",
                        lambda *a, **kw: calls.append(1) or prepass(*a, **kw))
    grads = {}
    for keep in (True, False):
        monkeypatch.setattr(step_plan, "keeps_attention_scores", lambda *a, keep=keep: keep)
        calls.clear()
        grads[keep] = energy_and_pair_gradient(model, graph)[1]
        assert len(calls) == (1 if keep else 2) * cfg.num_layers, (keep, len(calls))
    assert torch.allclose(grads[True], grads[False], rtol=0, atol=1e-12)


def test_out_of_memory_with_activations_kept_retries_with_block_recompute(monkeypatch):
    """When the memory estimate said a step fits and the GPU still ran out, the step runs
    again with block recompute (same numbers), and later steps recompute; a collective
    exchange (other ranks wait in it) or a mode not chosen by the estimate re-raises."""
    from e2former_lammps.exchange import NoGhosts
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.neighbors import atoms_to_graph

    model = random_model(seed=4, dtype=torch.float64).requires_grad_(False)
    cfg = model.config
    atoms = water_box(2)

    def graph():
        return atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff)

    expected = energy_and_pair_gradient(model, graph())
    monkeypatch.setattr(step_plan, "CHECKPOINT_MIN_ATOMS", 1)
    monkeypatch.setattr(step_plan, "available_device_bytes", lambda device: 10**15)
    first_block = type(model.blocks[0]).forward
    failures = []

    def out_of_memory_once(block, *args, **kwargs):
        if block is model.blocks[0] and not failures:
            failures.append(model.last_checkpoint_mode)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return first_block(block, *args, **kwargs)

    monkeypatch.setattr(type(model.blocks[0]), "forward", out_of_memory_once)
    with pytest.warns(RuntimeWarning, match="recomputing blocks in the backward from now on"):
        eatoms, grad = energy_and_pair_gradient(model, graph())
    assert failures == ["off"] and not model.memory_estimate_trusted
    assert model.last_checkpoint_mode == "recompute"
    assert torch.allclose(eatoms, expected[0], rtol=0, atol=1e-12)
    assert torch.allclose(grad, expected[1], rtol=0, atol=1e-12)
    energy_and_pair_gradient(model, graph())
    assert model.last_checkpoint_mode == "recompute"

    for estimate_trusted, exchange_anchor in ((True, torch.zeros(())), (False, None)):
        model.memory_estimate_trusted = estimate_trusted
        failures.clear()
        g = graph()
        if exchange_anchor is not None:  # a collective exchange carries an anchor
            g.exchange = NoGhosts(g.n_local)
            g.exchange.anchor = exchange_anchor
        with pytest.raises(torch.OutOfMemoryError):
            energy_and_pair_gradient(model, g)


def test_identity_paths_model_is_equivariant_conservative_and_differs():
    """identity_paths (the l_f = 0 paths, sum_j alpha_ij v_j): energy invariant and forces
    equivariant under rotation, forces = -dE/dx (central differences), fp64; and the extra
    paths change the energy (they are used), while a saved model reloads with them."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    model = random_model(seed, identity_paths=True)
    calc = E2FormerCalculator(model)
    atoms = spice_molecules(1, min_atoms=10, seed=seed)[0]
    e = _assert_invariant_and_conservative(calc, atoms, rng)
    with torch.no_grad():  # the identity path's block of each path mix carries the values
        for block in model.blocks:
            for mix in block.attention.path_mix:
                mix[-mix.shape[1]:] = 0.0
    e_off, _ = _energy_forces(E2FormerCalculator(model), atoms)
    assert abs(e_off - e) > 1e-6


def test_weight_envelope_model_is_equivariant_conservative_and_saved(tmp_path):
    """weight_envelope (alpha's weight w g(d), here over the outer 2 Å): energy invariant, forces = -dE/dx, fp64; the same
    weights give another energy without it (it is used); a saved model reloads with it."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    model = random_model(seed, weight_envelope=2.0)
    atoms = spice_molecules(1, min_atoms=10, seed=seed)[0]
    e = _assert_invariant_and_conservative(E2FormerCalculator(model), atoms, rng)
    plain = random_model(seed)
    plain.load_state_dict(model.state_dict())
    e_plain, _ = _energy_forces(E2FormerCalculator(plain), atoms)
    assert abs(e_plain - e) > 1e-6
    model.save(tmp_path / "m.pt")
    back = E2FormerV2.load(tmp_path / "m.pt").double()
    assert back.config.weight_envelope == 2.0
    e_back, _ = _energy_forces(E2FormerCalculator(back), atoms)
    assert abs(e_back - e) < 1e-10


@pytest.mark.parametrize("width", [0.0, -1.0, 5.5, float("nan")])
def test_weight_envelope_outside_the_cutoff_is_refused(width):
    with pytest.raises(ValueError, match=r"weight_envelope .* expected a width in \(0, cutoff"):
        E2FormerConfig(elements=["H", "O"], cutoff=5.0, weight_envelope=width)


def test_identity_paths_model_saves_and_loads(tmp_path):
    model = random_model(3, identity_paths=True)
    model.save(tmp_path / "m.pt")
    back = E2FormerV2.load(tmp_path / "m.pt").double()
    assert back.config.identity_paths
    atoms = spice_molecules(1, min_atoms=6)[0]
    e1, f1 = _energy_forces(E2FormerCalculator(model), atoms)
    e2, f2 = _energy_forces(E2FormerCalculator(back), atoms)
    assert abs(e1 - e2) < 1e-10 and _rel(f2, f1) < 1e-10


@pytest.mark.gpu
def test_gpu_offloaded_block_inputs_same_forces_less_memory():
    """On the GPU (Triton attention), block inputs kept in pinned host memory give the
    recompute path's energies and pair gradients, and after the forward the device holds
    none of the block inputs (recompute alone keeps all of them until the backward)."""
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.neighbors import atoms_to_graph

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    model = random_model(seed, dtype=torch.float32, channels=128, num_heads=16,
                         num_layers=4).cuda().eval().requires_grad_(False)
    cfg = model.config
    atoms = water_box(12, seed=seed)  # 5,184 atoms
    graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff, torch.float32,
                           "cuda")
    x_bytes = len(atoms) * (cfg.lmax + 1) ** 2 * cfg.channels * 4
    results, peaks, retained = {}, {}, {}
    for mode in (True, "offload"):
        model.checkpoint_blocks = mode
        energy_and_pair_gradient(model, graph)  # compile and cache first
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        results[mode] = energy_and_pair_gradient(model, graph)
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() - base
        # what the forward leaves on the device for the backward
        graph.rij = graph.rij.detach().requires_grad_(True)
        base = torch.cuda.memory_allocated()
        with torch.enable_grad():
            eatoms = model(graph)
        torch.cuda.synchronize()
        retained[mode] = torch.cuda.memory_allocated() - base
        del eatoms
    model.checkpoint_blocks = "auto"
    # the same inputs and kernels; the backward kernels' atomics may reorder sums (ulps)
    for got, ref in zip(results["offload"], results[True]):
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6
    # (the peak itself may come from elsewhere, e.g. the edge embedding: printed, not checked)
    print("peaks", peaks, "retained", retained, "x_bytes", x_bytes)
    assert retained[True] - retained["offload"] >= (cfg.num_layers - 0.5) * x_bytes


def _charged_batch(model, atoms_list, charges, spins):
    from e2former_lammps.data import Frame
    from e2former_lammps.training.batching import PackedFrames

    frames = [Frame(numbers=a.numbers, positions=a.positions, energy=0.0,
                    forces=np.zeros((len(a), 3)), charge=q, spin=s)
              for a, q, s in zip(atoms_list, charges, spins)]
    cfg = model.config
    return PackedFrames(frames, cfg.elements, cfg.atomic_numbers, cfg.cutoff,
                        dtype=torch.float64)


def test_distributed_charge_is_per_structure():
    """charge_spin_mode "distributed": each structure of a batch gets what it gets alone (the
    softmax never mixes structures), a neutral singlet gets only the neutral vector (as when
    no charge is given; without it the energy changes), the charge energy
    is per structure (split evenly: no force), an unknown charge is a named error, and the
    embedding a structure receives sums to Q value_q + (S - 1) value_s whatever its size."""
    from e2former_lammps.nn.embedding import DistributedChargeSpin
    from e2former_lammps.training.batching import predict

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    model = distributed_charge_model(seed)
    mols = spice_molecules(3, min_atoms=6, seed=seed)
    charges, spins = [1.0, 0.0, -1.0], [2.0, 1.0, 1.0]
    packed = _charged_batch(model, mols, charges, spins)
    e_all, f_all = predict(model, packed.batch([0, 1, 2]))
    for k in range(3):
        e_k, f_k = predict(model, packed.batch([k]))
        rows = slice(int(packed.offsets[k]), int(packed.offsets[k + 1]))
        assert torch.allclose(e_all[k], e_k[0], rtol=0, atol=1e-10)
        assert torch.allclose(f_all[rows], f_k, rtol=0, atol=1e-10)
    # a neutral singlet: the same energy and forces as a model without the embedding input
    b = packed.batch([1])
    e_neutral, f_neutral = predict(model, b)
    b.graph.charge = None
    e_none, f_none = predict(model, b)
    assert torch.equal(e_neutral, e_none) and torch.equal(f_neutral, f_none)
    with torch.no_grad():
        neutral = model.charge_spin.neutral.clone()
        model.charge_spin.neutral.zero_()
        assert abs(float((predict(model, b)[0] - e_none).detach())) > 1e-6
        model.charge_spin.neutral.copy_(neutral)
    # the charge energy: -3.25 eV on the cation's total, with the same forces when shifted
    model.set_charge_energies({"1": 0.0, "-1": 1.5})
    e_zero, f_zero = predict(model, packed.batch([0]))
    assert abs(float((e_all[0] - e_zero[0]).detach()) - (-3.25)) < 1e-10
    assert torch.allclose(f_zero, f_all[:len(mols[0])], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"total charge\(s\) \[2.0\]"):
        predict(model, _charged_batch(model, mols[:1], [2.0], [1.0]).batch([0]))
    # weights sum to one per structure: the embedding's total is size independent
    emb = DistributedChargeSpin(8).double()
    torch.nn.init.normal_(emb.value)
    torch.nn.init.normal_(emb.neutral)
    structure = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    q, s = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([2.0, 1.0],
                                                                           dtype=torch.float64)
    out = emb(torch.randn(10, 8, dtype=torch.float64), structure, q, s)
    total = torch.zeros(2, 8, dtype=torch.float64).index_add(0, structure, out)
    expect = (q[:, None] * emb.value[0] + (s - 1.0)[:, None] * emb.value[1]
              + torch.bincount(structure)[:, None] * emb.neutral)
    assert torch.allclose(total, expect, rtol=0, atol=1e-12)


def test_distributed_charge_model_is_equivariant_conservative_and_saves(tmp_path):
    """A charged structure through the ASE calculator (atoms.info charge/spin): energy
    invariant and forces equivariant under rotation, forces = -dE/dx (fp64); the mode and the
    charge energies survive save/load."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    model = distributed_charge_model(seed)
    calc = E2FormerCalculator(model)
    atoms = spice_molecules(1, min_atoms=10, seed=seed)[0]
    atoms.info.update(charge=1, spin=2)
    e = _assert_invariant_and_conservative(calc, atoms, rng)
    model.save(tmp_path / "m.pt")
    back = E2FormerV2.load(tmp_path / "m.pt").double()
    assert back.config.charge_spin_mode == "distributed"
    assert back.config.charge_energies == {"1": -3.25, "-1": 1.5}
    e_back, _ = _energy_forces(E2FormerCalculator(back), atoms)
    assert abs(e_back - e) < 1e-10


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_model_on_the_second_gpu_while_the_first_is_current():
    """Triton launches on the current CUDA device: a model on cuda:1 called while cuda:0 is
    current (as a LAMMPS rank on its own GPU was) gives cuda:0's energies and pair
    gradients, Triton rotations and attention included, eager and from CUDA graphs."""
    from e2former_lammps.cuda_graphs import GraphedEnergyForces
    from e2former_lammps.forces import energy_and_pair_gradient
    from e2former_lammps.neighbors import atoms_to_graph

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    model = random_model(seed, dtype=torch.float32).eval().requires_grad_(False)
    cfg = model.config
    atoms = water_box(4, seed=seed)
    out = {}
    for gpu in (0, 1):
        model.to(f"cuda:{gpu}")
        graph = atoms_to_graph(atoms, cfg.elements, cfg.atomic_numbers, cfg.cutoff,
                               torch.float32, f"cuda:{gpu}")
        with torch.cuda.device(0):
            eager = energy_and_pair_gradient(model, graph)
            graphed = GraphedEnergyForces(model)
            replay = graphed(graph)
            assert graphed.in_use
        out[gpu] = [t.cpu().double() for t in (*eager, *replay)]
    for a, b in zip(out[1], out[0]):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 1e-5 * max(b.abs().max(), 1e-3)
