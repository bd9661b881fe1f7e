"""Reading and writing MAT (v4, v5/v7, v7.3), HDF5 and Octave text files; forward matrices.

Public API
----------
detect_mat_format, list_mat_variables, load_mat_file, load_mat_field, save_mat_file, fits_in_mat_v5,
mat_strings,
load_forward_matrix, orient_forward_matrix, FORWARD_KEYS, ForwardMatrixKeyError;
ForwardModel, load_forward_model, save_forward_model, montage_dict (leadfields with
their channel names and positions); atomic_write_bytes, atomic_write_text,
atomic_write_json, atomic_output, remove_stale_temporaries (writes a kill cannot leave half done).
"""

from esikit.io._mat import (
    MAT_FORMATS,
    SAVE_FORMATS,
    detect_mat_format,
    fits_in_mat_v5,
    list_mat_variables,
    load_mat_field,
    load_mat_file,
    mat_strings,
    save_mat_file,
)
from esikit.io.atomic import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from esikit.io.forward import (
    FORWARD_KEYS,
    ForwardMatrixKeyError,
    load_forward_matrix,
    orient_forward_matrix,
)
from esikit.io.forward_model import (
    ForwardModel,
    load_forward_model,
    montage_dict,
    save_forward_model,
)

__all__ = [
    "FORWARD_KEYS",
    "MAT_FORMATS",
    "SAVE_FORMATS",
    "ForwardMatrixKeyError",
    "ForwardModel",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "detect_mat_format",
    "fits_in_mat_v5",
    "list_mat_variables",
    "load_forward_matrix",
    "load_forward_model",
    "load_mat_field",
    "load_mat_file",
    "mat_strings",
    "montage_dict",
    "orient_forward_matrix",
    "remove_stale_temporaries",
    "save_forward_model",
    "save_mat_file",
]
