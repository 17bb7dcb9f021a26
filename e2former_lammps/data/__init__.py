"""Training-data readers: SPICE HDF5, OMol25 ASE-LMDB (.aselmdb), extxyz -> `Frame` lists.

Every reader returns frames in eV and Å (forces eV/Å). `read_dataset` picks the reader from
the file extension (or `fmt`).
"""
from .frame import Frame, HARTREE_TO_EV, BOHR_TO_ANGSTROM, check_elements
from .readers import (read_dataset, read_extxyz, read_omol_lmdb, read_spice_hdf5,
                      smiles_formal_charge)

__all__ = [
    "BOHR_TO_ANGSTROM", "Frame", "HARTREE_TO_EV", "check_elements", "read_dataset",
    "read_extxyz", "read_omol_lmdb", "read_spice_hdf5", "smiles_formal_charge",
]
