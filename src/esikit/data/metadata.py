"""Reading and validating DeepSIF sample metadata (``*_sample_source*.mat``).

The metadata of one sample describes its source patches (see
``docs/SAMPLE_CONTRACT.md``). This module turns a metadata file, in whatever
layout MATLAB, Octave or a Python tool saved it, into one normalized
:class:`SampleMetadata` and checks every sample in one vectorized pass, reporting every
problem at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import format_indices
from ..head.layout import DEEPSIF_PADDING, PADDING_VALUES  # defined once there

logger = logging.getLogger(__name__)

#: The padding values (:data:`esikit.head.layout.PADDING_VALUES`, and NaN) as messages name them.
#: Any other label outside ``[0, R)`` is an error, not padding: a typo there would silently
#: drop a region or a whole source.
_PADDING_TEXT = ", ".join(str(v) for v in PADDING_VALUES) + " or NaN"

SNR_FIELDS = ("current_snr", "sensor_snr")
REQUIRED_FIELDS = ("selected_region", "scale_ratio", "mag_change")
CLIP_FIELDS = ("random_samples", "nmm_idx")
METADATA_FIELDS = REQUIRED_FIELDS + SNR_FIELDS + CLIP_FIELDS


class MetadataError(ValueError):
    """A metadata file that cannot be used; ``problems`` lists every issue found."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s) in the metadata:\n{lines}")


def _nonsingleton(shape: tuple[int, ...]) -> list[int]:
    return [d for d in shape if d != 1]


def _fit_shape(arr: np.ndarray, target: tuple[int, ...]) -> np.ndarray | None:
    """Reshape ``arr`` to ``target`` when they differ only by singleton axes.

    MATLAB and Octave keep trailing singleton dimensions, some readers drop them, and a
    vector may be saved as a row or a column: all of these are the same data.
    """
    if arr.shape == target:
        return arr
    if arr.size == int(np.prod(target)) and _nonsingleton(arr.shape) == _nonsingleton(target):
        return arr.reshape(target)
    return None


def _shape_text(dims: dict[str, int], names: str) -> str:
    return "(" + ", ".join(names.split()) + ") with " + ", ".join(f"{k}={dims[k]}" for k in dims)


def is_region_label(values: np.ndarray, n_regions: int) -> np.ndarray:
    """True where a label is a region: an integer in ``[0, n_regions)``.

    Parameters
    ----------
    values : array of real numbers, any shape
        Labels as stored (any integer or float dtype; unsigned types included).
    n_regions : int
        R.

    Returns
    -------
    array of bool, same shape
    """
    # float64 holds every integer that can be a region exactly, whatever the stored
    # type (comparing uint16 with -1 or int64 with NaN would need a case per dtype).
    v = np.asarray(values).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v >= 0) & (v < n_regions) & (np.floor(v) == v)


def is_padding_label(values: np.ndarray) -> np.ndarray:
    """True where a label is padding: NaN or one of :data:`PADDING_VALUES`."""
    v = np.asarray(values).astype(np.float64)
    return np.isnan(v) | np.isin(v, PADDING_VALUES)


def _real_fields(raw: dict[str, np.ndarray], path: str, problems: list[str]) -> dict[str, np.ndarray]:
    """The fields that hold real numbers; the others are reported and left out.

    A complex field whose imaginary parts are all exactly 0 (MATLAB keeps ``complex(x)``
    that way) is read as its real part, with a warning.
    """
    out = {}
    for name, arr in raw.items():
        kind = arr.dtype.kind
        if kind == "c":
            n_imag = int(np.count_nonzero(arr.imag))
            if n_imag:
                problems.append(
                    f"field '{name}' is complex ({arr.dtype}) with {n_imag} non-zero imaginary part(s); "
                    "expected real numbers"
                )
                continue
            logger.warning("%s: field '%s' is complex (%s) but every imaginary part is exactly 0: "
                           "using the real part", path, name, arr.dtype)
            arr = np.ascontiguousarray(arr.real)
        elif kind not in "biuf":
            problems.append(f"field '{name}' has dtype {arr.dtype}, expected real numbers")
            continue
        out[name] = arr
    return out


def _values_text(values: np.ndarray, limit: int = 5) -> str:
    uniq = np.unique(values)
    head = ", ".join(f"{v:g}" for v in uniq[:limit])
    return head + (f" and {uniq.size - limit} more" if uniq.size > limit else "")


def _check_labels(sel: np.ndarray, n_regions: int, problems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Classify ``selected_region`` (N, S, P) in one pass.

    Returns ``(valid, bad)``: where labels are regions, and where they are reported errors.

    Every label must be a region (an integer in ``[0, R)``) or padding
    (:data:`PADDING_VALUES`, NaN). Anything else is reported, with the likely cause when
    one is clear: labels saved 1-based, or an integer type too small for the labels.
    """
    # one float64 view (no copy for DeepSIF's double files) and each elementwise test once:
    # this runs over every label of a file at start-up
    v = np.asarray(sel, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        whole = np.floor(v) == v  # False for NaN and +-inf
    padding = np.isnan(v)
    for value in PADDING_VALUES:
        padding |= v == value
    valid = whole & (v >= 0) & (v < n_regions)
    bad = ~(valid | padding)
    reported = bad.copy()
    if sel.dtype.kind in "iu":
        info = np.iinfo(sel.dtype)
        if info.max < n_regions - 1:
            problems.append(
                f"field 'selected_region' has dtype {sel.dtype}, which holds at most {info.max}, but region "
                f"ids go up to {n_regions - 1} (R={n_regions}): labels and padding were cut when the file was "
                "saved; save selected_region as double (as DeepSIF does) or int32"
            )
        if sel.dtype.kind == "u":
            # The largest value of an unsigned type is what -1 (or any negative padding)
            # becomes when stored unsigned. The contract's padding values are 15213, 999
            # and NaN: what this one meant cannot be known, so it is refused, not guessed.
            wrapped = bad & (sel == info.max)
            if wrapped.any():
                problems.append(
                    f"field 'selected_region' ({sel.dtype}): {wrapped.sum()} label(s) equal {info.max}, the "
                    f"largest {sel.dtype} value, in samples {format_indices(np.nonzero(wrapped.any(axis=(1, 2)))[0])}:"
                    f" not a region in [0, {n_regions}) nor padding ({_PADDING_TEXT}); it is usually -1 padding "
                    f"wrapped around by an unsigned type: save selected_region as double with {DEEPSIF_PADDING} padding "
                    "(DeepSIF's) or as a signed integer type"
                )
                bad &= ~wrapped
    at_r = (v == n_regions) & ~padding  # (with R = 999, 999 is padding)
    if at_r.any() and not (v == 0).any():
        problems.append(
            f"field 'selected_region': labels look 1-based (MATLAB numbering): no label is 0 and {at_r.sum()} "
            f"label(s) equal R={n_regions} in samples {format_indices(np.nonzero(at_r.any(axis=(1, 2)))[0])}; "
            f"labels are 0-based regions in [0, {n_regions}): subtract 1 from every label that is not padding"
        )
        bad &= ~at_r
    if bad.any():
        rows = np.nonzero(bad.any(axis=(1, 2)))[0]
        n_centres = int(bad[:, :, 0].sum())
        problems.append(
            f"field 'selected_region': {bad.sum()} label(s) ({n_centres} of them source centres) are neither a "
            f"region in [0, {n_regions}) nor padding ({_PADDING_TEXT}) in samples {format_indices(rows)} "
            f"(values {_values_text(v[bad])}); expected region ids of this {n_regions}-region anatomy: fix "
            f"those labels (or write {DEEPSIF_PADDING} where a position is padding)"
        )
    return valid, reported


def _shared(arr: np.ndarray) -> torch.Tensor:
    """Copy ``arr`` into shared memory so DataLoader workers map it instead of copying."""
    return torch.from_numpy(np.ascontiguousarray(arr)).share_memory_()


@dataclass
class SampleMetadata:
    """Normalized, validated metadata of N samples with up to S sources.

    Attributes
    ----------
    path : str
        The file it was read from.
    regions : array of int32, shape (N, S, P)
        Region ids of each source patch, centre first; -1 at padded positions.
    weights : array of float32, shape (N, S, P)
        ``mag_change``: weight of each patch region; 0 at padded positions.
    scale_ratio : array of float64, shape (N, S, K)
        K candidate peak amplitudes per source.
    snr_db : array of float64, shape (N,)
        Sensor noise level in dB.
    random_samples : array of int64, shape (N, S), or None
        Clip number k (from 1) within the centre's folder; -1 where not a valid number.
    nmm_idx : array of int64, shape (N, S), or None
        DeepSIF's clip index; -1 where not a finite integer.
    n_regions : int
        R, the number of regions labels are checked against.
    """

    path: str
    regions: np.ndarray
    weights: np.ndarray
    scale_ratio: np.ndarray
    snr_db: np.ndarray
    random_samples: np.ndarray | None
    nmm_idx: np.ndarray | None
    n_regions: int
    fields_read: dict[str, tuple[int, ...]] = field(default_factory=dict)

    # -- derived views -------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self.regions.shape[0]

    @property
    def n_sources(self) -> int:
        """S, the number of source slots per sample (some may be absent)."""
        return self.regions.shape[1]

    @property
    def max_patch_size(self) -> int:
        return self.regions.shape[2]

    @property
    def n_scale_options(self) -> int:
        return self.scale_ratio.shape[2]

    @property
    def centres(self) -> np.ndarray:
        """Centre region of each source, shape (N, S); -1 where the source is absent."""
        return self.regions[:, :, 0]

    @property
    def present(self) -> np.ndarray:
        """Whether each source exists, shape (N, S)."""
        return self.regions[:, :, 0] >= 0

    @property
    def patch_sizes(self) -> np.ndarray:
        """Number of regions of each source patch, shape (N, S) (0 when absent)."""
        return (self.regions >= 0).sum(axis=2)

    def patches(self, index: int) -> list[np.ndarray]:
        """Region ids of each present source of sample ``index``, centre first."""
        rows = self.regions[index]
        return [r[r >= 0].astype(np.int64) for r in rows if r[0] >= 0]

    def patch_weights(self, index: int) -> list[np.ndarray]:
        """Weights matching :meth:`patches`."""
        rows, w = self.regions[index], self.weights[index]
        return [w[s][rows[s] >= 0].astype(np.float32) for s in range(rows.shape[0]) if rows[s, 0] >= 0]

    def summary(self) -> dict[str, Any]:
        """Counts a person checks first: samples, sources per sample, patch sizes, SNRs."""
        present = self.present
        n_src = present.sum(axis=1)
        sizes = self.patch_sizes[present]
        snrs, counts = np.unique(np.round(self.snr_db, 6), return_counts=True)
        return {
            "path": self.path,
            "n_samples": int(self.n_samples),
            "source_slots": int(self.n_sources),
            "sources_per_sample": {int(k): int(v) for k, v in zip(*np.unique(n_src, return_counts=True))},
            "patch_size_min": int(sizes.min()) if sizes.size else 0,
            "patch_size_median": float(np.median(sizes)) if sizes.size else 0.0,
            "patch_size_max": int(sizes.max()) if sizes.size else 0,
            "scale_options": int(self.n_scale_options),
            "snr_levels_db": {float(k): int(v) for k, v in zip(snrs, counts)},
            "distinct_centres": int(np.unique(self.centres[present]).size),
        }

    # -- pickling: workers receive shared-memory handles, not copies ------------------
    _ARRAYS = ("regions", "weights", "scale_ratio", "snr_db", "random_samples", "nmm_idx")

    def share_memory(self) -> SampleMetadata:
        """Move the arrays into shared memory (done once, in the main process)."""
        shared = self.__dict__.setdefault("_shared_tensors", {})
        for name in self._ARRAYS:
            arr = getattr(self, name)
            if arr is not None and name not in shared:
                shared[name] = _shared(arr)
                setattr(self, name, shared[name].numpy())
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # torch's multiprocessing pickler sends shared tensors as handles: send those,
        # not the numpy views (which would be pickled as copies).
        for name in state.get("_shared_tensors", {}):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, tensor in state.get("_shared_tensors", {}).items():
            state[name] = tensor.numpy()
        self.__dict__.update(state)


def read_metadata(
    path: str | PathLike,
    n_regions: int,
    *,
    require_clip_field: bool = True,
) -> SampleMetadata:
    """Read and validate a metadata file.

    Parameters
    ----------
    path : path-like
        MAT v4/v5/v7, v7.3 (HDF5) or Octave text file with the fields of the sample
        contract.
    n_regions : int
        R: labels are regions only when they are integers in ``[0, R)``.
    require_clip_field : bool
        Whether ``random_samples`` or ``nmm_idx`` must be present (not needed when a
        user mapping function chooses clips).

    Returns
    -------
    SampleMetadata

    Raises
    ------
    MetadataError
        Listing every problem found, in one message.
    """
    from ..io import load_mat_file

    path_str = str(path)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Metadata file not found: {path_str}")
    raw = load_mat_file(p, variable_names=list(METADATA_FIELDS))
    return metadata_from_arrays(raw, n_regions, path=path_str, require_clip_field=require_clip_field)


def metadata_from_arrays(
    raw: dict[str, Any],
    n_regions: int,
    *,
    path: str = "<arrays>",
    require_clip_field: bool = True,
) -> SampleMetadata:
    """Normalize and validate metadata given as a dict of arrays (see :func:`read_metadata`)."""
    problems: list[str] = []
    raw = {k: np.asarray(v) for k, v in raw.items() if k in METADATA_FIELDS}
    fields_read = {k: tuple(v.shape) for k, v in raw.items()}

    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    snr_field = next((f for f in SNR_FIELDS if f in raw), None)
    if snr_field is None:
        missing.append("current_snr (or sensor_snr)")
    if require_clip_field and not any(f in raw for f in CLIP_FIELDS):
        missing.append("random_samples or nmm_idx")
    if missing:
        problems.append(f"missing field(s): {', '.join(missing)}; fields present are {sorted(raw)}")
    # Types first: a field that is not real numbers is reported once, then left out.
    raw = _real_fields(raw, path, problems)
    if snr_field is not None and snr_field not in raw:
        snr_field = None
    if "selected_region" not in raw:
        raise MetadataError(path, problems)

    # -- shapes -----------------------------------------------------------------------
    sel = raw["selected_region"]
    if sel.ndim == 4 and sel.shape[3] == 1:
        sel = sel[..., 0]
    if sel.ndim == 2:  # one source per sample: N x P
        sel = sel[:, None, :]
    if sel.ndim != 3 or sel.size == 0:
        problems.append(
            f"field 'selected_region' has shape {raw['selected_region'].shape}, expected (N, S, P) or (N, P)"
        )
        raise MetadataError(path, problems)
    n, s, pmax = sel.shape
    dims = {"N": n, "S": s, "P": pmax}

    def fit(name: str, target: tuple[int, ...], expected: str) -> np.ndarray | None:
        if name not in raw:
            return None
        out = _fit_shape(raw[name], target)
        if out is None:
            problems.append(f"field '{name}' has shape {raw[name].shape}, expected {expected}")
        return out

    mag = fit("mag_change", (n, s, pmax), _shape_text(dims, "N S P"))
    scale = None
    if "scale_ratio" in raw:
        sr = raw["scale_ratio"]
        k = sr.size // (n * s) if sr.size % (n * s) == 0 and sr.size else 0
        scale = _fit_shape(sr, (n, s, k)) if k else None
        if scale is None:
            problems.append(
                f"field 'scale_ratio' has shape {sr.shape}, expected (N, S, K) or (N, S) with N={n}, S={s}"
            )
    snr = None
    if snr_field is not None:
        v = raw[snr_field]
        if v.size == 1 and n != 1:
            snr = np.full(n, float(v.reshape(-1)[0]))
            logger.info("%s: one %s value for all %d samples", path, snr_field, n)
        else:
            snr = fit(snr_field, (n,), f"(N,) or (N, 1) with N={n}")
    rs = fit("random_samples", (n, s), _shape_text({"N": n, "S": s}, "N S"))
    nidx = fit("nmm_idx", (n, s), _shape_text({"N": n, "S": s}, "N S"))

    # -- labels and presence ------------------------------------------------------------
    valid, bad_label = _check_labels(sel, n_regions, problems)
    # Built from the float64 view so that no stored type (uint16: -1 is 65535) can put an
    # index outside [0, R) into the compiled synthesis kernel: only -1 or a region.
    regions = np.where(valid, sel.astype(np.float64), -1).astype(np.int32)
    present = valid[:, :, 0]
    orphan = ~present & ~bad_label[:, :, 0] & valid[:, :, 1:].any(axis=2)
    if orphan.any():
        idx = np.nonzero(orphan.any(axis=1))[0]
        problems.append(
            f"field 'selected_region': {orphan.sum()} source(s) have patch regions but a padded first "
            f"entry (the centre must come first) in samples {format_indices(idx)}"
        )
    no_source = ~present.any(axis=1) & ~bad_label.any(axis=(1, 2))  # bad labels: reported above
    if no_source.any():
        idx = np.nonzero(no_source)[0]
        problems.append(
            f"field 'selected_region': {no_source.sum()} sample(s) have no source at all "
            f"(every label is padding or outside [0, {n_regions})): samples {format_indices(idx)}"
        )

    # -- values where used ----------------------------------------------------------------
    weights = None
    if mag is not None:
        magf = mag.astype(np.float64)
        bad = valid & ~np.isfinite(magf)
        if bad.any():
            idx = np.nonzero(bad.any(axis=(1, 2)))[0]
            problems.append(
                f"field 'mag_change': {bad.sum()} non-finite weight(s) at patch regions in samples "
                f"{format_indices(idx)}; expected finite values"
            )
        weights = np.where(valid & np.isfinite(magf), magf, 0.0).astype(np.float32)
    scale_ratio = None
    if scale is not None:
        scale_ratio = scale.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = present[:, :, None] & ~(np.isfinite(scale_ratio) & (scale_ratio > 0))
        if bad.any():
            idx = np.nonzero(bad.any(axis=(1, 2)))[0]
            problems.append(
                f"field 'scale_ratio': {bad.any(axis=2).sum()} present source(s) have non-finite or "
                f"non-positive values in samples {format_indices(idx)}; expected finite values > 0"
            )
    snr_db = None
    if snr is not None:
        snr_db = snr.astype(np.float64)
        bad = ~np.isfinite(snr_db)
        if bad.any():
            problems.append(
                f"field '{snr_field}': {bad.sum()} non-finite value(s) in samples "
                f"{format_indices(np.nonzero(bad)[0])}; expected finite dB values"
            )

    def as_index(arr: np.ndarray | None, name: str, minimum: int) -> np.ndarray | None:
        if arr is None:
            return None
        a = arr.astype(np.float64) if arr.dtype.kind not in "iu" else arr.astype(np.int64)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(a) & (np.floor(a) == a) & (a >= minimum)
        out = np.where(ok, np.nan_to_num(a, nan=-1), -1).astype(np.int64)
        return out

    random_samples = as_index(rs, "random_samples", 1)
    nmm_idx = as_index(nidx, "nmm_idx", 0)
    # A present source must say which clip drives it, through at least one field.
    if require_clip_field and (random_samples is not None or nmm_idx is not None):
        has_clip = np.zeros_like(present)
        for arr in (random_samples, nmm_idx):
            if arr is not None:
                has_clip |= arr >= 0
        bad = present & ~has_clip
        if bad.any():
            name = "random_samples" if random_samples is not None else "nmm_idx"
            expected = "an integer >= 1" if random_samples is not None else "an integer >= 0"
            problems.append(
                f"field '{name}': {bad.sum()} source(s) have a centre but no clip ({expected} expected) "
                f"in samples {format_indices(np.nonzero(bad.any(axis=1))[0])}"
            )

    if problems:
        raise MetadataError(path, problems)
    assert weights is not None and scale_ratio is not None and snr_db is not None
    return SampleMetadata(
        path=path,
        regions=regions,
        weights=weights,
        scale_ratio=scale_ratio,
        snr_db=snr_db,
        random_samples=random_samples,
        nmm_idx=nmm_idx,
        n_regions=int(n_regions),
        fields_read=fields_read,
    )
