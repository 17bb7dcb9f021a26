"""Small exact mathematical objects: spherical harmonics, Wigner matrices, CG, tensor products."""
from .clebsch_gordan import clebsch_gordan
from .layout import row_degrees
from .spherical_harmonics import sh_l1, sh_l2, spherical_harmonics
from .tensor_product import (
    eaas_paths,
    n_path_rows,
    path_rows,
    tp_dense,
    tp_eaas,
    tp_paths,
    tp_pole_frame,
)
from .wigner import rotation_to_pole, so3_generator, wigner_d

__all__ = [
    "clebsch_gordan", "row_degrees", "sh_l1", "sh_l2", "spherical_harmonics", "eaas_paths", "n_path_rows",
    "path_rows", "tp_dense", "tp_eaas", "tp_paths", "tp_pole_frame", "rotation_to_pole",
    "so3_generator", "wigner_d",
]
