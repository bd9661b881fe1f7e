"""Byte-level facts about the file formats, shared by the MAT and HDF5 readers and writers.

Kept apart so that ``_mat`` (detection and dispatch) and ``_hdf5`` (the v7.3 backend)
both depend on this module and not on each other.
"""

#: HDF5 superblock signature (at offset 0 of a plain HDF5 file, at 512 in MAT v7.3).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Size of the MAT v7.3 user block that holds the MATLAB text header.
MAT73_USERBLOCK_SIZE = 512
