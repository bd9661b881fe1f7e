"""Classical inverse solutions on a region gain matrix.

The minimum-norm family (MNE, dSPM, sLORETA, eLORETA) is computed here as linear kernels
(one matrix product for a whole batch); the data-dependent methods (LCMV, Champagne,
FlexChampagne and any other invertmeeg solver) run through invertmeeg
(:mod:`esikit.evaluate.adaptive`). :class:`Baselines` runs a chosen set of both on a
batch and says how each one's regularization was chosen.

MNE-Python's :func:`mne.minimum_norm.apply_inverse` needs an ``Info``, a ``Forward`` with
a source space and a ``Covariance``; a region leadfield (one fixed-orientation "source"
per region, no geometry) has none of these. The kernels are therefore computed here in
numpy, following MNE-Python's own conventions step by step so that the numbers agree
with MNE's (the tests build a small fixed-orientation ``mne.Forward`` and compare):

1. Average reference. The network's EEG is common-average referenced, so the gain and
   the noise covariance are projected onto the ``C - 1`` dimensional space orthogonal to
   the constant vector (MNE: the mandatory average-reference projector).
2. Whitening by the noise covariance (identity by default) in that space,
   ``G_w = W G`` with ``rank = C - 1`` rows.
3. Source covariance ``R = s^2 I`` with ``s^2 = rank / ||G_w||_F^2`` so that
   ``trace(G_w R G_w^T) = rank``; this makes ``lambda2`` a relative regularization
   (MNE's "adjusting source covariance matrix").
4. ``A = G_w sqrt(R) = U S V^T``; the minimum-norm kernel (Hamalainen & Ilmoniemi 1994)
   is ``K = sqrt(R) V diag(S / (S^2 + lambda2)) U^T W``.
5. dSPM (Dale et al. 2000) divides each row by the noise standard deviation of the
   estimate, ``sqrt(R) ||V_r * S / (S^2 + lambda2)||``: the result is in units of
   noise standard deviations (an F-like statistic, dimensionless).
6. sLORETA (Pascual-Marqui 2002) divides each row by
   ``sqrt(R) ||V_r * S / (S^2 + lambda2) * sqrt(1 + S^2 / lambda2)||``. This is MNE's
   convention: ``lambda * (K G)_rr^{-1/2} * MNE`` in the normalized space, i.e. the
   Pascual-Marqui standardized estimate multiplied by the constant ``sqrt(lambda2)``
   (the resolution-matrix diagonal is ``sum_k V_rk^2 S_k^2 / (S_k^2 + lambda2)``).
7. eLORETA (Pascual-Marqui 2007, 2011) iterates region weights
   ``R_r = (g_r^T (G_w R G_w^T + lambda2 I)^{-1} g_r)^{-1/2}``, renormalizing
   ``trace(G_w R G_w^T) = rank`` after each update (as MNE does) until the relative
   change is below ``eps``; then step 4 with that ``R``.

Scales: MNE and eLORETA estimates are in the units of the source amplitudes that
produced the (whitened) data; dSPM is in noise standard deviations; sLORETA is MNE's
convention above. The metrics (:mod:`esikit.evaluate.metrics`) normalize by the maximum
absolute value, so only relative amplitudes matter there.

``lambda2 = 1 / snr^2`` with the amplitude SNR ``snr = 10 ** (snr_db / 20)``
(MNE's rule, ``lambda2 = 1 / 9`` for its default SNR of 3): see :func:`lambda2_from_snr`.
An evaluation does not know the true SNR of real data, so :class:`Baselines` uses MNE's
default ``lambda2 = 1 / 9`` unless the run asks for the oracle (the sample's own SNR).

Depth weighting (``depth``, MNE's ``depth`` exponent, 0.8 in MNE) follows MNE's
``compute_depth_prior`` for a fixed-orientation EEG gain: ``w_r = 1 / ||g_r||^2`` on the
unreferenced gain, limited to ``limit^2 = 100`` times the smallest weight, raised to
``depth``; it sets the source covariance before the trace normalization. eLORETA
computes its own weights and ignores it (as MNE does).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.linalg import null_space

from .._validation import option_message

logger = logging.getLogger(__name__)

#: The linear (minimum-norm family) methods computed here as kernels.
LINEAR_BASELINES = ("mne", "dspm", "sloreta", "eloreta")
#: Data-dependent methods run through invertmeeg (any other invertmeeg solver name works too).
ADAPTIVE_BASELINES = ("lcmv", "champagne", "flexchampagne")
#: The default set of baselines of an evaluation.
BASELINES = LINEAR_BASELINES + ADAPTIVE_BASELINES
#: MNE's default regularization (SNR 3), used when the true SNR is not given to the methods.
DEFAULT_LAMBDA2 = 1.0 / 9.0

_CACHE_SIZE = 32
_kernel_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


def _check_method(method: str) -> str:
    m = str(method).lower()
    if m not in LINEAR_BASELINES:
        raise ValueError(option_message("method", method, LINEAR_BASELINES))
    return m


def lambda2_from_snr(snr_db: float) -> float:
    """Regularization ``lambda2 = 1 / snr^2`` from an SNR in dB (amplitude SNR ``10**(dB/20)``).

    Parameters
    ----------
    snr_db : float
        Signal-to-noise ratio in dB (e.g. a sample's ``current_snr``).

    Returns
    -------
    lambda2 : float
        ``10 ** (-snr_db / 10)``.

    Examples
    --------
    >>> round(lambda2_from_snr(20 * math.log10(3)), 6)  # MNE's default SNR of 3
    0.111111
    """
    return float(10.0 ** (-float(snr_db) / 10.0))


def _digest(arr: np.ndarray | None) -> str | None:
    if arr is None:
        return None
    a = np.ascontiguousarray(arr, dtype=np.float64)
    h = hashlib.sha1(a.tobytes())
    h.update(str(a.shape).encode())
    return h.hexdigest()


def _whitener(n_channels: int, noise_cov: np.ndarray | None) -> np.ndarray:
    """Average-reference projection and whitening in one ``(rank, C)`` matrix."""
    # Orthonormal basis of the space orthogonal to the constant vector: applying Q^T
    # average-references the data and drops the lost dimension.
    q = null_space(np.ones((1, n_channels)))  # (C, C-1)
    if noise_cov is None:
        return q.T
    cov = np.asarray(noise_cov, dtype=np.float64)
    if cov.shape != (n_channels, n_channels):
        raise ValueError(f"'noise_cov' has shape {cov.shape}, expected (C, C) with C={n_channels}")
    if not np.allclose(cov, cov.T, rtol=1e-8, atol=1e-12 * max(np.abs(cov).max(), 1e-300)):
        raise ValueError("'noise_cov' is not symmetric")
    red = q.T @ cov @ q
    eig, vec = np.linalg.eigh(red)
    keep = eig > eig.max() * 1e-10
    if not np.all(keep):
        logger.warning("noise covariance is rank deficient after average reference: rank %d of %d",
                       int(keep.sum()), red.shape[0])
    return (vec[:, keep] / np.sqrt(eig[keep])).T @ q.T


def depth_prior(G: np.ndarray, depth: float, limit: float | None = 10.0) -> np.ndarray:
    """MNE's depth prior of a fixed-orientation EEG gain (``compute_depth_prior``).

    Parameters
    ----------
    G : array, shape (C, R)
        Gain as given (MNE computes the prior before the average reference).
    depth : float
        Exponent (MNE's default 0.8).
    limit : float or None
        Weights are limited to ``limit**2`` times the smallest one (MNE's 10).

    Returns
    -------
    prior : array, shape (R,)
        Source variances before trace normalization.
    """
    d = np.sum(np.asarray(G, dtype=np.float64) ** 2, axis=0)
    if np.any(d > 0):
        d[d == 0.0] = np.min(d[d != 0.0])
    w = 1.0 / d
    if limit is not None:
        ws = np.sort(w)
        cap = ws[-1]
        if ws[-1] > limit**2 * ws[0]:
            cap = ws[np.flatnonzero(ws > limit**2 * ws[0])[0]]
        w = np.minimum(w / cap, 1.0)
    return w ** float(depth)


def _eloreta_weights(gw: np.ndarray, lambda2: float, eps: float, max_iter: int) -> np.ndarray:
    """eLORETA source variances for a whitened gain ``gw`` (rank x R), trace-normalized."""
    rank = gw.shape[0]

    def normalize(r: np.ndarray) -> np.ndarray:
        return r * (rank / np.einsum("ij,j,ij->", gw, r, gw))

    r = normalize(np.ones(gw.shape[1]))
    for it in range(max_iter):
        grg = (gw * r) @ gw.T
        n_inv = np.linalg.inv(grg + lambda2 * np.eye(rank))
        new = normalize(1.0 / np.sqrt(np.einsum("ij,ik,kj->j", gw, n_inv, gw)))
        delta = np.linalg.norm(new - r) / np.linalg.norm(r)
        r = new
        if delta < eps:
            logger.debug("eLORETA converged after %d iterations (%.1e)", it + 1, delta)
            break
    else:
        logger.warning("eLORETA weights did not converge in %d iterations (change %.1e >= %.1e)",
                       max_iter, delta, eps)
    return r


def _compute_kernel(
    gain: np.ndarray, method: str, lambda2: float, noise_cov: np.ndarray | None, eps: float, max_iter: int,
    depth: float | None = None,
) -> np.ndarray:
    n_channels = gain.shape[0]
    whitener = _whitener(n_channels, noise_cov)  # (rank, C)
    gw = whitener @ gain
    rank = gw.shape[0]
    if method == "eloreta":
        if depth is not None:
            logger.info("eLORETA computes its own source weights: depth=%s is ignored (as in MNE)", depth)
        source_var = _eloreta_weights(gw, lambda2, eps, max_iter)
    else:
        prior = np.ones(gain.shape[1]) if depth is None else depth_prior(gain, depth)
        # trace normalization: trace(G_w R G_w^T) = rank makes lambda2 relative
        source_var = prior * (rank / float(np.sum(gw**2 * prior)))
    source_std = np.sqrt(source_var)
    u, s, vt = np.linalg.svd(gw * source_std, full_matrices=False)
    reginv = s / (s**2 + lambda2)
    leads = vt.T * source_std[:, None]  # (R, rank): sqrt(R) V
    kernel = (leads * reginv) @ (u.T @ whitener)
    if method == "dspm":
        kernel /= np.linalg.norm(leads * reginv, axis=1)[:, None]
    elif method == "sloreta":
        kernel /= np.linalg.norm(leads * (reginv * np.sqrt(1.0 + s**2 / lambda2)), axis=1)[:, None]
    return kernel


def make_inverse_kernel(
    G: np.ndarray,
    method: str,
    lambda2: float,
    noise_cov: np.ndarray | None = None,
    *,
    depth: float | None = None,
    eps: float = 1e-6,
    max_iter: int = 100,
) -> np.ndarray:
    """Linear inverse kernel of a classical method for a region gain matrix.

    Kernels are cached by the content of ``G`` and ``noise_cov``, the method,
    ``lambda2`` and the eLORETA settings (the last 32 are kept), so evaluating
    thousands of samples at a few SNR levels computes each kernel once.

    Parameters
    ----------
    G : array, shape (C, R)
        Region gain (leadfield) matrix, fixed orientation, any reference (the average
        reference is applied here).
    method : str
        One of :data:`BASELINES`: ``"mne"``, ``"dspm"``, ``"sloreta"``, ``"eloreta"``.
    lambda2 : float
        Regularization relative to the trace-normalized whitened gain (> 0), e.g.
        :func:`lambda2_from_snr`.
    noise_cov : array, shape (C, C), optional
        Sensor noise covariance in the recording's reference; identity when omitted.
    depth : float, optional
        Depth weighting exponent (MNE's ``depth``, e.g. 0.8; see :func:`depth_prior`);
        None for none (ignored by eLORETA).
    eps : float
        eLORETA convergence threshold on the relative change of the weights.
    max_iter : int
        Maximum eLORETA iterations.

    Returns
    -------
    kernel : array, shape (R, C)
        Read-only. ``kernel @ eeg_t`` is the estimate at one time point; it annihilates
        the common mode (average reference built in).

    Examples
    --------
    >>> G = np.random.default_rng(0).normal(size=(8, 5))
    >>> make_inverse_kernel(G, "sloreta", lambda2_from_snr(10)).shape
    (5, 8)
    """
    m = _check_method(method)
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] < 2:
        raise ValueError(f"'G' has shape {G.shape}, expected (C, R) with C >= 2 channels")
    if not np.all(np.isfinite(G)):
        raise ValueError("'G' contains non-finite values")
    lambda2 = float(lambda2)
    if not (lambda2 > 0 and math.isfinite(lambda2)):
        raise ValueError(f"Invalid value for 'lambda2': expected a finite positive number, got {lambda2}.")
    if depth is not None and not (float(depth) >= 0 and math.isfinite(float(depth))):
        raise ValueError(f"Invalid value for 'depth': expected None or a finite number >= 0, got {depth}.")
    depth = None if depth is None or m == "eloreta" else float(depth)
    key = (_digest(G), m, lambda2, _digest(noise_cov), (eps, max_iter) if m == "eloreta" else None, depth)
    hit = _kernel_cache.get(key)
    if hit is not None:
        _kernel_cache.move_to_end(key)
        return hit
    logger.info("Computing %s inverse kernel for a %d x %d gain (lambda2=%.3g)", m, *G.shape, lambda2)
    kernel = _compute_kernel(G, m, lambda2, noise_cov, eps, max_iter, depth)
    kernel.setflags(write=False)
    _kernel_cache[key] = kernel
    while len(_kernel_cache) > _CACHE_SIZE:
        _kernel_cache.popitem(last=False)
    return kernel


def clear_kernel_cache() -> None:
    """Forget all cached inverse kernels."""
    _kernel_cache.clear()


def apply_inverse(eeg: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Apply an inverse kernel to EEG.

    Parameters
    ----------
    eeg : array, shape (T, C) or (B, T, C)
        EEG (channels last, as the networks take it).
    kernel : array, shape (R, C)
        From :func:`make_inverse_kernel`.

    Returns
    -------
    estimate : array, shape (T, R) or (B, T, R)
    """
    eeg = np.asarray(eeg)
    kernel = np.asarray(kernel)
    if eeg.shape[-1] != kernel.shape[1]:
        raise ValueError(
            f"'eeg' has {eeg.shape[-1]} channels (shape {eeg.shape}), the kernel expects {kernel.shape[1]}"
        )
    return eeg @ kernel.T


def estimate_sources(
    eeg: np.ndarray,
    G: np.ndarray,
    method: str,
    snr_db: float,
    noise_cov: np.ndarray | None = None,
    depth: float | None = None,
) -> np.ndarray:
    """Classical source estimate of one sample: cached kernel for ``snr_db``, then apply.

    Parameters
    ----------
    eeg : array, shape (T, C) or (B, T, C)
    G : array, shape (C, R)
    method : str
        One of :data:`BASELINES`.
    snr_db : float
        The sample's SNR in dB (``lambda2 = 10 ** (-snr_db / 10)``).
    noise_cov : array, shape (C, C), optional
    depth : float, optional
        Depth weighting exponent (see :func:`make_inverse_kernel`).

    Returns
    -------
    estimate : array, shape (T, R) or (B, T, R)
    """
    return apply_inverse(eeg, make_inverse_kernel(G, method, lambda2_from_snr(snr_db), noise_cov, depth=depth))


def check_baselines(names: Sequence[str]) -> list[str]:
    """Validate baseline names: :data:`LINEAR_BASELINES` or any invertmeeg solver name.

    Returns the lower-cased names; raises one ``ValueError`` listing every unknown name.
    """
    out, bad = [], []
    adaptive = None
    for name in names:
        n = str(name).lower()
        if n not in LINEAR_BASELINES and n not in ADAPTIVE_BASELINES:
            if adaptive is None:
                from .adaptive import invertmeeg_solver_names

                adaptive = set(invertmeeg_solver_names())
            if n not in adaptive:
                bad.append(name)
                continue
        out.append(n)
    if bad:
        raise ValueError(f"Invalid value for 'baselines': expected names among {BASELINES} or invertmeeg solver "
                         f"names (invert.list_solvers()), got {bad}.")
    return out


class Baselines:
    """A set of classical inverse methods run on the same batches.

    Parameters
    ----------
    fwd : array, shape (C, R)
        Region gain matrix (any reference; the EEG is assumed average referenced).
    names : sequence of str
        Methods (:func:`check_baselines`).
    oracle : bool
        Give the linear methods each sample's true SNR (``lambda2 = 10**(-snr_db/10)``)
        instead of MNE's default ``lambda2 = 1/9``. The invertmeeg methods always
        choose their regularization from the data.
    depth : float, optional
        Depth weighting exponent of the linear methods (None: none).
    centres : array, shape (R, 3), optional
        Region positions in mm (the invertmeeg source space).
    adjacency : sparse or dense array, shape (R, R), optional
        Region adjacency (FlexChampagne's neighbourhoods).
    """

    def __init__(self, fwd: np.ndarray, names: Sequence[str], *, oracle: bool = False,
                 depth: float | None = None, centres: np.ndarray | None = None, adjacency=None) -> None:
        self.fwd = np.asarray(fwd, dtype=np.float64)
        self.names = check_baselines(names)
        self.oracle = bool(oracle)
        self.depth = depth
        self._adaptive = None
        others = [n for n in self.names if n not in LINEAR_BASELINES]
        if others:
            from .adaptive import InvertmeegBaselines

            self._adaptive = InvertmeegBaselines(self.fwd, others, centres=centres, adjacency=adjacency)

    def __repr__(self) -> str:
        return f"Baselines({', '.join(self.names)}; oracle={self.oracle}, depth={self.depth})"

    def describe(self) -> dict[str, str]:
        """How each method's regularization was chosen (for the report)."""
        out = {}
        depth = "" if self.depth is None else f", depth weighting {self.depth:g}"
        for n in self.names:
            if n in LINEAR_BASELINES:
                reg = ("lambda2 from the sample's true SNR (oracle)" if self.oracle
                       else "lambda2 = 1/9 (MNE's default SNR 3; the true SNR is not used)")
                out[n] = reg + (depth if n != "eloreta" else "")
            else:
                out[n] = self._adaptive.describe(n)
        return out

    def estimate(self, eeg: np.ndarray, snr_db: Sequence[float] | None = None,
                 progress: Any = None) -> dict[str, np.ndarray]:
        """Estimates of every method for a batch.

        Parameters
        ----------
        eeg : array, shape (B, T, C)
        snr_db : sequence of B floats, optional
            Needed with ``oracle=True``.
        progress : callable, optional
            Called with no argument after each invertmeeg solve (progress bars).

        Returns
        -------
        estimates : dict of name -> array, shape (B, T, R)
        """
        eeg = np.asarray(eeg, dtype=np.float64)
        if eeg.ndim != 3 or eeg.shape[2] != self.fwd.shape[0]:
            raise ValueError(f"'eeg' has shape {eeg.shape}, expected (B, T, C) with C={self.fwd.shape[0]}")
        if self.oracle and (snr_db is None or len(snr_db) != eeg.shape[0]):
            raise ValueError("oracle baselines need 'snr_db' for every sample of the batch")
        out: dict[str, np.ndarray] = {}
        for n in self.names:
            if n not in LINEAR_BASELINES:
                continue
            if not self.oracle:  # one kernel, one matrix product for the whole batch
                out[n] = apply_inverse(eeg, make_inverse_kernel(self.fwd, n, DEFAULT_LAMBDA2, depth=self.depth))
                continue
            est = np.empty(eeg.shape[:2] + (self.fwd.shape[1],))
            levels = np.asarray(snr_db, dtype=np.float64)
            for level in np.unique(levels):  # one product per SNR level
                sel = levels == level
                est[sel] = apply_inverse(eeg[sel], make_inverse_kernel(self.fwd, n, lambda2_from_snr(level),
                                                                       depth=self.depth))
            out[n] = est
        if self._adaptive is not None:
            out.update(self._adaptive.estimate(eeg, progress=progress))
        return {n: out[n] for n in self.names}
