"""Training (`e2former-lammps train CONFIG.yaml`) and evaluation of E2Former-V2 potentials."""
from .config import TrainConfig
from .evaluate import evaluate_frames, evaluate_model_file
from .trainer import train

__all__ = ["TrainConfig", "evaluate_frames", "evaluate_model_file", "train"]
