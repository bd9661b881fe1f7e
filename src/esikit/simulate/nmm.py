"""Jansen-Rit neural-mass network, simulated the way DeepSIF ran it in TVB.

DeepSIF (``forward/generate_tvb_data.py``) simulates, for each region in turn, a
connectome of Jansen-Rit neural masses in The Virtual Brain (TVB) with that region made
hyper-excitable (``A = 3.5`` instead of 3.25), and keeps ``y1 - y2`` (the pyramidal
cells' membrane potential, mV) of every node. This module reimplements that simulation
without TVB, following TVB's equations and numerical scheme (see
``/work/shared/docs/NMM_REFERENCE.md`` and tvb-library's ``JansenRit`` model,
``SigmoidalJansenRit`` coupling, ``Additive`` noise and ``HeunStochastic`` integrator):

Node dynamics (TVB ``JansenRit``, ``S(v) = 2 nu_max / (1 + exp(r (v0 - v)))``)::

    y0' = y3            y3' = A a S(y1 - y2) - 2 a y3 - a^2 y0
    y1' = y4            y4' = A a (mu + a_2 J S(a_1 J y0) + c) - 2 a y4 - a^2 y1 (+ noise)
    y2' = y5            y5' = B b a_4 J S(a_3 J y0) - 2 b y5 - b^2 y2

Long-range coupling (TVB ``SigmoidalJansenRit``), with delays ``tau_kj`` =
``tract_lengths[k, j] / speed`` rounded to integration steps::

    c_k(t) = coupling_a * sum_j coupling_scale * w_kj *
             (cmin + (cmax - cmin) / (1 + exp(coupling_r (midpoint - (y1_j - y2_j)(t - tau_kj)))))

``w_kj`` is the weight from node ``j`` to node ``k`` (TVB's row = target convention).

Noise (TVB ``Additive`` with ``nsig`` non-zero on ``y4`` only): each step adds
``sqrt(2 nsig) sqrt(dt) N(0, 1)`` to ``y4`` with DeepSIF's
``nsig = (a * 3.25 * (p_max - p_min) * 0.5 * noise_scale)^2 / 2``.

Integrator (TVB ``HeunStochastic``): with ``eta`` the noise increment and the coupling
held fixed during the step, ``x~ = x + dt f(x) + eta``,
``x_next = x + dt (f(x) + f(x~)) / 2 + eta``. The initial history (as long as the
longest delay) is drawn uniformly in TVB's ``state_variable_range`` of the model, the
initial state being its first sample (as in TVB), so the first few hundred ms are a transient
(DeepSIF drops the first 500 ms).

The coupling-sigmoid steepness ``coupling_r`` defaults to 1.0: the value of TVB's
``SigmoidalJansenRit.r`` in the releases DeepSIF used (2.0.10 - 2.7). From tvb-library
2.7.3 the default is 0.56, and DeepSIF's unchanged script then locks the 76-region
network into a ~10 Hz rhythm that yields no usable spikes (DeepSIF's open issue about
the 76-region connectome); scaling the weights by ~0.3 (``coupling_scale``) brings
spikes back but is a different model. Both knobs are exposed, defaults reproduce
DeepSIF's data.

Two interchangeable backends integrate the same equations: a readable numpy reference
(:func:`_integrate_chunk_numpy`) and a numba kernel (``_nmm_numba``). Both consume the
same pre-drawn noise, chunk by chunk, so they give the same trajectory for a seed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "JansenRitParams",
    "NOISE_SETTINGS",
    "TVB_STATE_RANGES",
    "jansen_rit_dfun",
    "simulate_network",
]

#: DeepSIF's three (mu, noise scale) settings (``mean_and_std`` in generate_tvb_data.py).
NOISE_SETTINGS: tuple[tuple[float, float], ...] = ((0.087, 1.0), (0.08, 1.7), (0.083, 1.5))

#: TVB JansenRit ``state_variable_range`` (y0 .. y5), bounds of the random initial history.
TVB_STATE_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 1.0), (-500.0, 500.0), (-50.0, 50.0), (-6.0, 6.0), (-20.0, 20.0), (-500.0, 500.0))

# Rows (chunk length) of noise drawn at once: bounded memory for any duration.
_CHUNK_STEPS = 4000


@dataclass(frozen=True)
class JansenRitParams:
    """Parameters of the Jansen-Rit network as DeepSIF set them in TVB.

    Model values are TVB ``JansenRit`` defaults unless DeepSIF changed them
    (``v0``, ``p_max``, ``p_min``, ``mu``, ``A`` of the excited node). Rates are per
    ms, potentials in mV, firing rates in 1/ms.

    Parameters
    ----------
    A : float
        Maximum EPSP amplitude of normal nodes [mV] (TVB default 3.25).
    A_excited : float
        Maximum EPSP amplitude of the excited node [mV] (DeepSIF: 3.5).
    B : float
        Maximum IPSP amplitude [mV] (22).
    a : float
        Reciprocal excitatory time constant [1/ms] (0.1).
    b : float
        Reciprocal inhibitory time constant [1/ms] (0.05).
    v0 : float
        Firing threshold of the sigmoid [mV] (DeepSIF: 6.0; TVB default 5.52).
    nu_max : float
        Maximum firing rate, ``2 nu_max`` is the sigmoid's ceiling [1/ms] (0.0025).
    r : float
        Steepness of the node's sigmoid [1/mV] (0.56).
    J : float
        Average number of synapses between populations (135).
    a_1, a_2, a_3, a_4 : float
        Connectivity fractions of the feedback loops (1.0, 0.8, 0.25, 0.25).
    p_min, p_max : float
        Input firing-rate range [1/ms]; only sets the noise amplitude
        (DeepSIF: 0.03, 0.15).
    mu : float
        Mean input firing rate [1/ms] (DeepSIF setting 0: 0.087).
    noise_scale : float
        DeepSIF's noise multiplier (setting 0: 1.0).
    coupling_a : float
        ``SigmoidalJansenRit.a``, scaling of the coupling term (DeepSIF: 1.0).
    coupling_r : float
        ``SigmoidalJansenRit.r``, steepness of the coupling sigmoid [1/mV]; 1.0 in the
        TVB releases DeepSIF used, 0.56 in tvb-library >= 2.7.3 (see module notes).
    coupling_cmin, coupling_cmax : float
        Range of the coupling sigmoid [1/ms] (0, 2 * 0.0025).
    coupling_midpoint : float
        Midpoint of the coupling sigmoid [mV] (6.0).
    coupling_scale : float
        Global multiplier of the connectome weights (1.0 = DeepSIF).
    speed : float
        Conduction speed [mm/ms] (TVB ``Connectivity.speed`` default 3.0).
    """

    A: float = 3.25
    A_excited: float = 3.5
    B: float = 22.0
    a: float = 0.1
    b: float = 0.05
    v0: float = 6.0
    nu_max: float = 0.0025
    r: float = 0.56
    J: float = 135.0
    a_1: float = 1.0
    a_2: float = 0.8
    a_3: float = 0.25
    a_4: float = 0.25
    p_min: float = 0.03
    p_max: float = 0.15
    mu: float = NOISE_SETTINGS[0][0]
    noise_scale: float = NOISE_SETTINGS[0][1]
    coupling_a: float = 1.0
    coupling_r: float = 1.0
    coupling_cmin: float = 0.0
    coupling_cmax: float = 2.0 * 0.0025
    coupling_midpoint: float = 6.0
    coupling_scale: float = 1.0
    speed: float = 3.0

    @property
    def nsig(self) -> float:
        """TVB ``Additive.nsig`` on ``y4``: ``(a * 3.25 * (p_max - p_min) * 0.5 * noise_scale)^2 / 2``.

        DeepSIF writes the constant 3.25 (not ``A``) in this formula.
        """
        return (self.a * 3.25 * (self.p_max - self.p_min) * 0.5 * self.noise_scale) ** 2 / 2.0

    def with_setting(self, setting: int) -> "JansenRitParams":
        """Copy with ``mu`` and ``noise_scale`` of DeepSIF setting ``setting`` (0, 1, 2)."""
        if setting not in range(len(NOISE_SETTINGS)):
            raise ValueError(f"Invalid value for 'setting': expected one of "
                             f"{list(range(len(NOISE_SETTINGS)))}, got {setting!r}.")
        mu, scale = NOISE_SETTINGS[setting]
        return dataclasses.replace(self, mu=mu, noise_scale=scale)

    def scalar_vector(self, dt_ms: float) -> np.ndarray:
        """The scalars in the order the integration kernels read them (``_nmm_numba.P_*``)."""
        noise_amp = np.sqrt(2.0 * self.nsig) * np.sqrt(dt_ms)
        return np.array([
            self.B, self.a, self.b, self.v0, self.nu_max, self.r,
            self.J, self.a_1, self.a_2, self.a_3, self.a_4, self.mu,
            self.coupling_cmin, self.coupling_cmax, self.coupling_midpoint, self.coupling_r,
            self.coupling_a, dt_ms, noise_amp], dtype=np.float64)


# --------------------------------------------------------------------------- model
def _sigmoid(v, nu_max, r, v0):
    return 2.0 * nu_max / (1.0 + np.exp(r * (v0 - v)))


def jansen_rit_dfun(y: np.ndarray, coupling: np.ndarray | float, A: np.ndarray | float,
                    params: JansenRitParams) -> np.ndarray:
    """Time derivative of the Jansen-Rit state (TVB ``JansenRit.dfun``), noise excluded.

    Parameters
    ----------
    y : ndarray, shape (6, n_nodes)
        State ``y0 .. y5`` (mV and mV/ms).
    coupling : ndarray, shape (n_nodes,) | float
        Long-range input ``c`` entering ``y4'`` [1/ms].
    A : ndarray, shape (n_nodes,) | float
        EPSP amplitude per node [mV].
    params : JansenRitParams
        Other parameters.

    Returns
    -------
    ndarray, shape (6, n_nodes)
        ``dy/dt`` per ms.
    """
    p = params
    y0, y1, y2, y3, y4, y5 = y
    s12 = _sigmoid(y1 - y2, p.nu_max, p.r, p.v0)
    s01 = _sigmoid(p.a_1 * p.J * y0, p.nu_max, p.r, p.v0)
    s03 = _sigmoid(p.a_3 * p.J * y0, p.nu_max, p.r, p.v0)
    return np.array([
        y3,
        y4,
        y5,
        A * p.a * s12 - 2.0 * p.a * y3 - p.a * p.a * y0,
        A * p.a * (p.mu + p.a_2 * p.J * s01 + coupling) - 2.0 * p.a * y4 - p.a * p.a * y1,
        p.B * p.b * (p.a_4 * p.J * s03) - 2.0 * p.b * y5 - p.b * p.b * y2,
    ])


def _params_from_vector(pvec: np.ndarray) -> JansenRitParams:
    """Inverse of :meth:`JansenRitParams.scalar_vector` for the fields the kernels use."""
    return JansenRitParams(B=pvec[0], a=pvec[1], b=pvec[2], v0=pvec[3], nu_max=pvec[4],
                           r=pvec[5], J=pvec[6], a_1=pvec[7], a_2=pvec[8], a_3=pvec[9],
                           a_4=pvec[10], mu=pvec[11])


def _integrate_chunk_numpy(y, sbuf, step0, z, A, p, colptr, targets, wdata, delays, out,
                           record_every):
    """Reference integrator: advance ``z.shape[0]`` Heun steps in place.

    Parameters
    ----------
    y : ndarray, shape (6, n_nodes)
        State at step ``step0``; overwritten with the state at ``step0 + n_steps``.
    sbuf : ndarray, shape (n_nodes, 2 * horizon)
        Circular history of the coupling sigmoid of each node's ``y1 - y2``; columns
        ``n % horizon`` and ``n % horizon + horizon`` both hold step ``n`` (the copy
        spares the numba kernel a wrap-around test per edge). Updated in place.
    step0 : int
        Absolute index of the current step.
    z : ndarray, shape (n_steps, n_nodes)
        Standard normal draws, one per step and node.
    A : ndarray, shape (n_nodes,)
        EPSP amplitude per node.
    p : ndarray, shape (N_PARAMS,)
        Scalars from :meth:`JansenRitParams.scalar_vector`.
    colptr, targets, wdata, delays : ndarray
        CSC structure of the (scaled) weights: the edges of source ``j`` are
        ``colptr[j]:colptr[j + 1]``, with target nodes ``targets`` (ascending), weights
        ``wdata`` and delays in steps ``delays``.
    out : ndarray, shape (n_records, n_nodes)
        Receives ``y1 - y2`` of state ``n`` at row ``(n - 1) // record_every`` when
        ``(n - 1) % record_every == 0``.
    record_every : int
        Keep every ``record_every``-th sample.
    """
    from . import _nmm_numba as K

    params = _params_from_vector(p)
    dt, noise_amp = p[K.P_DT], p[K.P_NOISE]
    n_nodes, horizon = sbuf.shape[0], sbuf.shape[1] // 2
    sources = np.repeat(np.arange(n_nodes), np.diff(colptr))
    # The random initial history can push exp() past float range: inf gives the right limit.
    with np.errstate(over="ignore"):
        _numpy_steps(y, sbuf, step0, z, A, p, sources, targets, wdata, delays, out,
                     record_every, params, dt, noise_amp, horizon, n_nodes)


def _numpy_steps(y, sbuf, step0, z, A, p, sources, targets, wdata, delays, out, record_every,
                 params, dt, noise_amp, horizon, n_nodes):
    from . import _nmm_numba as K

    for s in range(z.shape[0]):
        n = step0 + s + 1
        # Delayed afferent activity: state n - 1 - delay of each source.
        t = ((n - 1) - delays) % horizon
        c = p[K.P_C_A] * np.bincount(targets, weights=wdata * sbuf[sources, t], minlength=n_nodes)
        eta = noise_amp * z[s]
        k1 = jansen_rit_dfun(y, c, A, params)
        inter = y + dt * k1
        inter[4] += eta
        k2 = jansen_rit_dfun(inter, c, A, params)
        y += (k1 + k2) * dt / 2.0
        y[4] += eta
        diff = y[1] - y[2]
        sbuf[:, [n % horizon, n % horizon + horizon]] = (p[K.P_C_MIN] + (p[K.P_C_MAX] - p[K.P_C_MIN]) / (
            1.0 + np.exp(p[K.P_C_R] * (p[K.P_C_MID] - diff))))[:, None]
        i = n - 1
        if i % record_every == 0:
            out[i // record_every] = diff


def _get_kernel(backend: str):
    if backend == "numba":
        from ._nmm_numba import integrate_chunk_numba
        return integrate_chunk_numba
    if backend == "numpy":
        return _integrate_chunk_numpy
    raise ValueError(f"Invalid value for 'backend': expected one of 'numba', 'numpy', "
                     f"got {backend!r}.")


def _as_excited_array(excited_node, n_nodes: int) -> np.ndarray:
    if excited_node is None:
        return np.zeros(0, dtype=np.int64)
    nodes = np.atleast_1d(np.asarray(excited_node, dtype=np.int64))
    if nodes.size and (nodes.min() < 0 or nodes.max() >= n_nodes):
        raise ValueError(f"excited_node {excited_node!r} out of range [0, {n_nodes})")
    return nodes


def simulate_network(
    weights: np.ndarray,
    tract_lengths: np.ndarray,
    excited_node: int | Sequence[int] | None,
    duration_s: float,
    setting: int | None = 0,
    seed: int | Sequence[int] | np.random.SeedSequence = 0,
    params: JansenRitParams | None = None,
    dt_ms: float = 0.5,
    backend: str = "numba",
    record_every: int = 1,
    dtype=np.float64,
) -> np.ndarray:
    """Simulate the Jansen-Rit network with one hyper-excitable node.

    Parameters
    ----------
    weights : ndarray, shape (n_nodes, n_nodes)
        Connectome weights, ``weights[k, j]`` from node ``j`` to node ``k``.
    tract_lengths : ndarray, shape (n_nodes, n_nodes)
        Tract lengths in mm (delays = length / ``params.speed``).
    excited_node : int | sequence of int | None
        Node(s) given ``A = params.A_excited``; None for none.
    duration_s : float
        Simulated time in seconds (``round(duration_s * 1000 / dt_ms)`` steps).
    setting : int | None
        DeepSIF's (mu, noise scale) setting 0, 1 or 2 (:data:`NOISE_SETTINGS`), applied
        over ``params``; None keeps ``params.mu`` and ``params.noise_scale``.
    seed : int | sequence of int | SeedSequence
        Seeds the initial history and the noise (``numpy.random.default_rng``).
    params : JansenRitParams | None
        Model parameters (default: DeepSIF's).
    dt_ms : float
        Integration step in ms (DeepSIF: 0.5, i.e. output at 2000 Hz).
    backend : {"numba", "numpy"}
        Compiled kernel or the readable numpy reference (same trajectory).
    record_every : int
        Keep one sample in ``record_every`` (samples 0, k, 2k, ...); 1 keeps all.
    dtype : numpy dtype
        Output dtype.

    Returns
    -------
    ndarray, shape (n_samples, n_nodes)
        ``y1 - y2`` in mV; sample ``i`` is the state after step ``i + 1``, i.e. at time
        ``(i + 1) * dt_ms`` ms (TVB's Raw monitor), ``n_samples = ceil(n_steps /
        record_every)``.

    Examples
    --------
    >>> from esikit.simulate import load_default_anatomy, simulate_network
    >>> anat = load_default_anatomy()
    >>> v = simulate_network(anat.weights, anat.tract_lengths, excited_node=10,
    ...                      duration_s=2.0, seed=1)   # doctest: +SKIP
    >>> v.shape                                        # doctest: +SKIP
    (4000, 76)
    """
    weights = np.asarray(weights, dtype=np.float64)
    tract_lengths = np.asarray(tract_lengths, dtype=np.float64)
    n_nodes = weights.shape[0]
    if weights.shape != (n_nodes, n_nodes) or tract_lengths.shape != weights.shape:
        raise ValueError(f"weights {weights.shape} and tract_lengths {tract_lengths.shape} "
                         "must both have shape (n_nodes, n_nodes)")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    params = params or JansenRitParams()
    if setting is not None:
        params = params.with_setting(setting)
    n_steps = int(round(duration_s * 1000.0 / dt_ms))
    if n_steps < 1:
        raise ValueError(f"duration_s={duration_s} gives {n_steps} steps of {dt_ms} ms")
    A = np.full(n_nodes, params.A, dtype=np.float64)
    A[_as_excited_array(excited_node, n_nodes)] = params.A_excited
    rng = np.random.default_rng(seed)
    lo = np.array([r[0] for r in TVB_STATE_RANGES])[None, :, None]
    hi = np.array([r[1] for r in TVB_STATE_RANGES])[None, :, None]
    out = _run_network(
        weights, tract_lengths, A, params, dt_ms, n_steps, backend, record_every,
        draw_history=lambda horizon: lo + (hi - lo) * rng.random((horizon, 6, n_nodes)),
        draw_noise=lambda m: rng.standard_normal((m, n_nodes)), dtype=dtype)
    return out


def _run_network(weights, tract_lengths, A, params: JansenRitParams, dt_ms: float, n_steps: int,
                 backend: str, record_every: int, draw_history, draw_noise,
                 dtype=np.float64) -> np.ndarray:
    """Integrate with given random sources (the seam the TVB comparison test uses).

    ``draw_history(horizon)`` returns the initial history, shape (horizon, 6, n_nodes):
    as in TVB, entry ``h`` fills history slot ``h`` and entry 0 is the initial state
    (step 0). ``draw_noise(m)`` returns ``m`` steps of standard normal draws for ``y4``,
    shape (m, n_nodes). Returns ``y1 - y2``, shape (ceil(n_steps / record_every),
    n_nodes), in ``dtype`` (the state itself is always integrated in float64).
    """
    kernel = _get_kernel(backend)
    n_nodes = weights.shape[0]
    # Sparse weights (TVB only evaluates non-zero weights) and delays in steps, grouped
    # by source node (CSC), targets ascending within a source.
    w = weights * params.coupling_scale
    mask = w != 0.0
    colptr = np.concatenate([[0], np.cumsum(mask.sum(axis=0))]).astype(np.int64)
    cols, rows = np.nonzero(mask.T)  # grouped by source column, then target row
    targets = rows.astype(np.int32)  # 32-bit: less memory traffic per edge
    wdata = w[rows, cols].astype(np.float64)
    delays = np.rint(tract_lengths[rows, cols] / params.speed / dt_ms).astype(np.int32)
    # TVB's horizon: the longest delay over all pairs, plus one
    horizon = int(np.rint(tract_lengths / params.speed / dt_ms).max()) + 1
    pvec = params.scalar_vector(dt_ms)

    # Random initial history (TVB: uniform in the model's state ranges); slot n % horizon
    # holds step n, slot 0 the initial state.
    history = np.asarray(draw_history(horizon), dtype=np.float64)
    y = history[0].copy()
    diff = history[:, 1] - history[:, 2]  # (horizon, n_nodes)
    sbuf = np.empty((n_nodes, 2 * horizon))
    with np.errstate(over="ignore"):
        sbuf[:, :horizon] = (params.coupling_cmin + (params.coupling_cmax - params.coupling_cmin)
                             / (1.0 + np.exp(params.coupling_r * (params.coupling_midpoint - diff)))).T
    sbuf[:, horizon:] = sbuf[:, :horizon]

    n_records = (n_steps + record_every - 1) // record_every
    out = np.empty((n_records, n_nodes), dtype=dtype)  # written in place: no float64 copy
    for step0 in range(0, n_steps, _CHUNK_STEPS):
        m = min(_CHUNK_STEPS, n_steps - step0)
        z = np.ascontiguousarray(draw_noise(m), dtype=np.float64)
        kernel(y, sbuf, step0, z, A, pvec, colptr, targets, wdata, delays, out, record_every)
    if not np.isfinite(out[-1]).all():
        logger.warning("simulation diverged (non-finite output); check dt_ms=%s and params", dt_ms)
    return out
