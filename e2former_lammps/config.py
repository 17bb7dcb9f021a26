"""Model configuration: a dataclass saved with the weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ase.data import atomic_numbers


def normalize_charge_energies(energies: dict) -> dict[str, float]:
    """{total charge: eV} with the charges as integer strings ("1", "-2"), as saved."""
    return {str(int(float(q))): float(e) for q, e in energies.items()}


@dataclass
class E2FormerConfig:
    """Hyper-parameters of E2Former-V2. Lengths in Å, energies in eV.

    Paper configuration: channels 256, lmax 2, num_layers 4, num_heads 128, head_dim 8,
    num_rbf 256, cutoff 5 Å (SPICE) or 6 Å (OMol25).
    """

    elements: list[str]
    cutoff: float = 5.0
    channels: int = 32
    lmax: int = 2
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 8
    num_rbf: int = 32
    radial_hidden: int = 64
    ffn_channels: int = 64
    avg_degree: float = 16.0
    # eps of the envelope-weighted softmax. Larger than a numerical guard on purpose: with
    # few neighbours, a / (sum a + eps) ~ a / eps grows smoothly instead of jumping to 1 the
    # moment the first neighbour crosses the cutoff (steep forces would break NVE).
    softmax_eps: float = 1.0
    # Width (Å) of a second envelope on the attention weight: w * a / (sum a + eps) times
    # g(d), 1 up to cutoff - width, then smoothly to 0 at the cutoff (= cutoff: g = p). Without
    # it a lone neighbour's a / (a + eps) stays ~1 until ~0.01 Å before the cutoff when its
    # learned score is large, then drops: steep forces on isolated ion pairs
    # (kernels.attention.reference's docstring; benchmarks/cutoff_smoothness.py).
    # None: no second envelope (the models trained before it).
    weight_envelope: float | None = None
    charge_spin: bool = False
    # How the total charge Q (e) and spin multiplicity S of a structure enter (charge_spin on):
    # "uniform": every atom's scalars get MLP(Q, S - 1), the same vector, so the network must
    # learn a per-structure quantity as a sum of per-atom ones and extrapolates it with the
    # molecule's size. "distributed": Q and S - 1 are spread over the atoms with weights from
    # the atoms' own features (a softmax per structure, summing to one; cf. SpookyNet's
    # electronic embedding), on top of one learned vector every atom gets (a neutral singlet
    # gets only that), plus a per-structure energy per charge state (charge_energies, least
    # squares with the element energies).
    charge_spin_mode: str = "uniform"
    # An l = 1 readout of forces, for direct-force pre-training (training.direct_force_steps):
    # cheaper than autograd forces (no double backward) but not conservative, so MD and
    # evaluation always use -dE/dx.
    direct_force_head: bool = False
    # Experimental: add the l_f = 0 paths of the convolution (sum_j alpha_ij v_j per degree,
    # the plain attention-weighted values) beside the design's l = 1-filter paths, so a
    # neighbour's features reach every degree of the receiver in one block (without them its
    # scalars reach the receiver's scalars only through two blocks). Edge-materialising
    # PyTorch for now (no fused kernel; beside the Triton path, the reference's sum): for
    # training experiments and small systems, not for large MD.
    identity_paths: bool = False
    # Electrostatics of charged structures ("distributed" charge_spin_mode): a damped,
    # shifted-force Coulomb sum over pairs within coulomb_cutoff (Å, >= cutoff) on charges
    # spread from each structure's total charge (nn/coulomb.py); erf damping width in Å.
    # None: no such term. A charged structure's pair list then reaches coulomb_cutoff and
    # message passing uses the rows within cutoff (AtomGraph.mp_index).
    coulomb_cutoff: float | None = None
    coulomb_width: float = 1.0
    reference_energies: dict[str, float] = field(default_factory=dict)
    # eV per structure by total charge ("1": E(Q = +1), ...; Q = 0 is 0), "distributed" only
    charge_energies: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.elements = list(self.elements)
        unknown = [e for e in self.elements if e not in atomic_numbers]
        if unknown:
            raise ValueError(f"unknown element symbol(s) {unknown} in E2FormerConfig.elements")
        if len(set(self.elements)) != len(self.elements):
            raise ValueError(f"duplicate elements in {self.elements}")
        if not 1 <= self.lmax <= 2:
            raise ValueError(f"lmax must be 1 or 2, got {self.lmax}")
        if self.channels % self.num_heads:
            raise ValueError(
                f"channels ({self.channels}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff} Å")
        if self.charge_spin_mode not in ("uniform", "distributed"):
            raise ValueError(f"charge_spin_mode must be 'uniform' or 'distributed', got "
                             f"{self.charge_spin_mode!r}")
        if self.charge_spin_mode == "distributed" and not self.charge_spin:
            raise ValueError("charge_spin_mode 'distributed' needs charge_spin: true (the total "
                             "charge and spin as inputs); without it the model is neutral")
        if self.charge_energies and self.charge_spin_mode != "distributed":
            raise ValueError("charge_energies need charge_spin_mode 'distributed'")
        if self.coulomb_cutoff is not None:
            if self.charge_spin_mode != "distributed":
                raise ValueError("coulomb_cutoff needs charge_spin_mode 'distributed' (the "
                                 "charges are spread from the total charge)")
            if self.coulomb_cutoff < self.cutoff:
                raise ValueError(f"coulomb_cutoff ({self.coulomb_cutoff} Å) must be at least "
                                 f"the cutoff ({self.cutoff} Å)")
            if self.coulomb_width <= 0:
                raise ValueError(f"coulomb_width must be positive, got {self.coulomb_width} Å")
        if self.weight_envelope is not None:
            self.weight_envelope = float(self.weight_envelope)
            if not 0.0 < self.weight_envelope <= self.cutoff:
                raise ValueError(f"weight_envelope {self.weight_envelope} Å: expected a width "
                                 f"in (0, cutoff = {self.cutoff} Å], or null")
        self.charge_energies = normalize_charge_energies(self.charge_energies)
        extra = set(self.reference_energies) - set(self.elements)
        if extra:
            raise ValueError(f"reference_energies for elements not in the model: {sorted(extra)}")

    @property
    def atomic_numbers(self) -> list[int]:
        return [atomic_numbers[e] for e in self.elements]

    def pair_cutoff(self, charged: bool) -> float:
        """Å: how far a structure's pair list reaches (charged ones: to the Coulomb cutoff)."""
        if charged and self.coulomb_cutoff is not None:
            return self.coulomb_cutoff
        return self.cutoff

    @property
    def distributed_charge(self) -> bool:
        """Whether the total charge and spin are inputs spread over the atoms (and charge
        states have energies): charge_spin with charge_spin_mode "distributed"."""
        return self.charge_spin and self.charge_spin_mode == "distributed"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "E2FormerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown E2FormerConfig keys {sorted(unknown)}")
        return cls(**d)
