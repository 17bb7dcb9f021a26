"""Training configuration (YAML <-> dataclass)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

MODEL_KEYS = ("cutoff", "channels", "lmax", "num_layers", "num_heads", "head_dim", "num_rbf",
              "radial_hidden", "ffn_channels", "softmax_eps", "charge_spin", "charge_spin_mode",
              "avg_degree", "direct_force_head", "identity_paths", "coulomb_cutoff",
              "coulomb_width", "weight_envelope")

# model entries that may change when training starts from init_model: the weights they touch
# start afresh, all others are taken over (weight_envelope touches none: a change of formula)
INIT_MODEL_CHANGES = ("charge_spin_mode", "coulomb_cutoff", "coulomb_width", "weight_envelope")

# annotation (as written, postponed) -> the number type the entry must hold
_NUMERIC_FIELDS = {"float": float, "float | None": float, "int": int, "int | None": int}


@dataclass
class TrainConfig:
    """Everything `e2former-lammps train` reads from its YAML file.

    Data: `train` / `val` are a path or a list of paths (SPICE .hdf5, OMol25 .aselmdb,
    extxyz), read with `data_format` or by extension. `elements` defaults to those in the
    training data. `model` holds E2FormerConfig keys (avg_degree is measured on the training
    data unless given). Stopping: the first of epochs / max_steps / max_minutes reached
    (training time only, summed over resumes). Loss: w_energy * mean |dE|/n_atoms +
    w_force * mean over atoms |dF| (Euclidean norm per atom). Learning rate: linear warm-up,
    then cosine decay to lr * min_lr_factor over the run's progress (the largest of the
    step, epoch and time fractions).
    max_wall_minutes: a hard wall-clock budget for the whole `train` call (data loading,
    training, final validation and saving): training stops `final_reserve_s` seconds before
    it, and the learning-rate schedule ends there too. attention_impl: the attention used
    while training; None means "reference" (the force loss needs a double backward, which
    the fused Triton path only does by recomputing the reference, so it would add a forward
    for nothing).
    direct_force_steps: the first steps fit forces read directly from the l = 1 features (a
    force head; no double backward, as the paper's pre-training), the rest fit -dE/dx; the
    model gets the head automatically. Validation and the saved model's use are -dE/dx.
    cuda_graphs: on CUDA, replay each -dE/dx step's loss and gradients from CUDA graphs, one
    per size bucket of padded batches (training/step.py); the host's operator dispatch
    bounds the eager step (1.55x at batch 128, 3.5x at batch 32 on the H200; 2.2x and
    4.2x with the Triton per-edge rotations: NOTES T16).
    On by default; has no effect on the CPU.
    """

    train: list[str]
    val: list[str] = field(default_factory=list)
    data_format: str | None = None
    output_dir: str = "runs/e2former"
    elements: list[str] | None = None
    model: dict = field(default_factory=dict)
    init_model: str | None = None
    lr: float = 1e-3
    min_lr_factor: float = 0.01
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0
    batch_size: int = 16
    epochs: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    max_wall_minutes: float | None = None
    final_reserve_s: float = 45.0
    w_energy: float = 1.0
    w_force: float = 1.0
    direct_force_steps: int = 0
    ema_decay: float = 0.999
    checkpoint_every_steps: int | None = 500
    checkpoint_every_minutes: float | None = 5.0
    val_every_steps: int | None = None
    max_val_frames: int | None = None
    max_train_frames: int | None = None
    log_every_steps: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    attention_impl: str | None = None
    cuda_graphs: bool = True
    resume: bool = True
    progress: bool = True
    model_name: str = "model.pt"

    def __post_init__(self) -> None:
        self._check_numbers()
        if isinstance(self.train, (str, Path)):
            self.train = [str(self.train)]
        if isinstance(self.val, (str, Path)):
            self.val = [str(self.val)]
        self.train = [str(p) for p in self.train]
        self.val = [str(p) for p in (self.val or [])]
        if not self.train:
            raise ValueError("train config: `train` needs at least one data file")
        unknown = set(self.model) - set(MODEL_KEYS)
        if unknown:
            raise ValueError(f"train config: unknown model keys {sorted(unknown)}; "
                             f"known: {list(MODEL_KEYS)}")
        fixed = sorted(set(self.model) - set(INIT_MODEL_CHANGES))
        if self.init_model and fixed:
            raise ValueError(f"train config: init_model {self.init_model} sets the architecture, "
                             f"so the `model` entries {fixed} would be ignored; remove them "
                             f"(with init_model only {list(INIT_MODEL_CHANGES)} may change)")
        if self.epochs is None and self.max_steps is None and self.max_minutes is None \
                and self.max_wall_minutes is None:
            raise ValueError("train config: set at least one of epochs, max_steps, max_minutes, "
                             "max_wall_minutes")
        if self.direct_force_steps < 0:
            raise ValueError(f"train config: direct_force_steps must be >= 0, got "
                             f"{self.direct_force_steps}")
        if self.batch_size < 1:
            raise ValueError(f"train config: batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train config: dtype must be float32 or float64, got {self.dtype}")

    def _check_numbers(self) -> None:
        """Numeric entries as numbers: YAML 1.1 reads `3e-3` (no dot) as a string, which
        would otherwise fail deep inside the optimiser."""
        for f in fields(self):
            kind = _NUMERIC_FIELDS.get(f.type)
            value = getattr(self, f.name)
            if kind is None or value is None:
                continue
            try:
                if isinstance(value, bool):
                    raise ValueError
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"train config: {f.name} must be a number, got {value!r}") \
                    from None
            if kind is int:
                if not number.is_integer():
                    raise ValueError(f"train config: {f.name} must be an integer, got {value!r}")
                number = int(number)
            setattr(self, f.name, number)
        for f in fields(self):  # a string such as "no" would otherwise count as true
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"train config: {f.name} must be true or false, got "
                                 f"{getattr(self, f.name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, base_dir: str | Path | None = None) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"train config: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if "train" not in d:
            raise ValueError("train config: missing required key 'train'")
        return cls(**d)

    def replace(self, **overrides) -> "TrainConfig":
        """A copy with some entries changed (checked like a YAML file's keys); a key
        `model.NAME` changes one entry of the `model` mapping."""
        d = self.to_dict()
        d["model"] = dict(d["model"])
        for key, value in overrides.items():
            if key.startswith("model."):
                d["model"][key.removeprefix("model.")] = value
            else:
                d[key] = value
        return TrainConfig.from_dict(d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training config {str(path)!r}")
        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a YAML mapping of training options")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


def parse_overrides(items: list[str] | None) -> dict:
    """`KEY=VALUE` strings (VALUE read as YAML: 5, 1e-3, null, [a, b]) -> {KEY: value}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
