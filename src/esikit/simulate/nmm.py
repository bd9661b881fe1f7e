"""Jansen-Rit neural-mass network, simulated the way DeepSIF ran it in TVB.

DeepSIF (``forward/generate_tvb_data.py``) simulates, for each region in turn, a
connectome of Jansen-Rit neural masses in The Virtual Brain (TVB) with that region made
hyper-excitable (``A = 3.5`` instead of 3.25), and keeps ``y1 - y2`` (the pyramidal
cells' membrane potential, mV) of every node. This module reimplements that simulation
without TVB, following TVB's equations and numerical scheme (tvb-library's ``JansenRit``
model, ``SigmoidalJansenRit`` coupling, ``Additive`` noise and ``HeunStochastic``
integrator; the facts, and why the coupling steepness is 1.0, are in the repository's
``docs/NMM_REFERENCE.md``):

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
initial state being its first sample (as in TVB), so the first few hundred ms are a
transient (DeepSIF drops the first 500 ms).

The coupling-sigmoid steepness ``coupling_r`` defaults to 1.0, the value of TVB's
``SigmoidalJansenRit.r`` in the releases DeepSIF used; ``coupling_scale`` scales the
weights. Defaults reproduce DeepSIF's data.

One integrator, :class:`BatchIntegrator`, advances B variants of one network (excited
node, noise and state differ; connectome, delays and coupling are shared) chunk by
chunk; a single simulation is a batch of one (:func:`simulate_network`). Two kernels:
``"numpy"``, a readable reference (:func:`_integrate_batch_numpy`), and ``"numba"``,
the compiled kernel of :mod:`esikit.simulate._nmm_numba`. Both consume the same
pre-drawn noise, so they give the same trajectory for a seed (to float rounding).

Layouts: state ``y`` (6, n_nodes, B); coupling history ``sbuf`` (n_nodes, 2 * horizon
(+ block), B), the ring of the coupling sigmoid of ``y1 - y2`` stored more than once so
that no wrap-around test is needed per edge; noise ``z`` (B, n_steps, n_nodes); output
(B, n_records, n_nodes).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._validation import check_option
from ._param_layout import (  # noqa: F401 - the kernels' parameter order, re-exported
    N_PARAMS, P_A1, P_A2, P_A3, P_A4, P_A_RATE, P_B, P_B_RATE, P_C_A, P_C_MAX, P_C_MID, P_C_MIN, P_C_R,
    P_DT, P_J, P_MU, P_NOISE, P_NU_MAX, P_R, P_V0,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "BatchIntegrator",
    "JansenRitParams",
    "NOISE_BLOCK",
    "NOISE_SETTINGS",
    "NetworkStructure",
    "TVB_STATE_RANGES",
    "draw_initial_history",
    "draw_noise",
    "excited_A",
    "jansen_rit_dfun",
    "network_structure",
    "simulate_batch",
    "simulate_network",
]

#: DeepSIF's three (mu, noise scale) settings (``mean_and_std`` in generate_tvb_data.py).
NOISE_SETTINGS: tuple[tuple[float, float], ...] = ((0.087, 1.0), (0.08, 1.7), (0.083, 1.5))

#: TVB JansenRit ``state_variable_range`` (y0 .. y5), bounds of the random initial history.
TVB_STATE_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 1.0), (-500.0, 500.0), (-50.0, 50.0), (-6.0, 6.0), (-20.0, 20.0), (-500.0, 500.0))

#: Steps of noise drawn (and integrated) at a time: small enough to stay in cache-friendly,
#: reused buffers (B x 500 x n_nodes doubles).
NOISE_BLOCK = 500

#: Kernels of :class:`BatchIntegrator`.
BACKENDS = ("numba", "numpy")


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
        TVB releases DeepSIF used, 0.56 in tvb-library >= 2.7.3 (``docs/NMM_REFERENCE.md``).
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
        check_option("setting", setting, range(len(NOISE_SETTINGS)))
        mu, scale = NOISE_SETTINGS[setting]
        return dataclasses.replace(self, mu=mu, noise_scale=scale)

    def scalar_vector(self, dt_ms: float) -> np.ndarray:
        """The scalars in the order the integration kernels read them (``P_*``)."""
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


# --------------------------------------------------------------------------- network
@dataclass(frozen=True)
class NetworkStructure:
    """The connectome in the form the kernels read (shared by every variant).

    Attributes
    ----------
    colptr : ndarray of int64, shape (n_nodes + 1,)
        Edges of source ``j`` are ``colptr[j]:colptr[j + 1]`` (CSC by source).
    targets : ndarray of int32, shape (n_edges,)
        Target node of each edge, ascending within a source.
    wdata : ndarray of float64, shape (n_edges,)
        Weight of each edge (``coupling_scale`` applied).
    delays : ndarray of int32, shape (n_edges,)
        Delay of each edge in integration steps.
    horizon : int
        Ring length in steps: the longest delay over all node pairs, plus one (TVB).
    n_nodes : int
    """

    colptr: np.ndarray
    targets: np.ndarray
    wdata: np.ndarray
    delays: np.ndarray
    horizon: int
    n_nodes: int

    @property
    def sources(self) -> np.ndarray:
        """Source node of each edge, shape (n_edges,)."""
        return np.repeat(np.arange(self.n_nodes), np.diff(self.colptr))


def network_structure(weights: np.ndarray, tract_lengths: np.ndarray, params: JansenRitParams,
                      dt_ms: float = 0.5) -> NetworkStructure:
    """Sparse weights and integer delays.

    Parameters
    ----------
    weights : ndarray, shape (n_nodes, n_nodes)
        ``weights[k, j]`` from node ``j`` to node ``k``.
    tract_lengths : ndarray, shape (n_nodes, n_nodes)
        In mm.
    params : JansenRitParams
        ``coupling_scale`` and ``speed`` are used.
    dt_ms : float
        Integration step [ms].

    Returns
    -------
    NetworkStructure
    """
    weights = np.asarray(weights, dtype=np.float64)
    tract_lengths = np.asarray(tract_lengths, dtype=np.float64)
    n = weights.shape[0]
    if weights.shape != (n, n) or tract_lengths.shape != weights.shape:
        raise ValueError(f"weights {weights.shape} and tract_lengths {tract_lengths.shape} "
                         "must both have shape (n_nodes, n_nodes)")
    w = weights * params.coupling_scale
    mask = w != 0.0
    colptr = np.concatenate([[0], np.cumsum(mask.sum(axis=0))]).astype(np.int64)
    cols, rows = np.nonzero(mask.T)
    return NetworkStructure(
        colptr=colptr,
        targets=rows.astype(np.int32),
        wdata=w[rows, cols].astype(np.float64),
        delays=np.rint(tract_lengths[rows, cols] / params.speed / dt_ms).astype(np.int32),
        horizon=int(np.rint(tract_lengths / params.speed / dt_ms).max()) + 1,
        n_nodes=n,
    )


def draw_noise(rngs: Sequence[np.random.Generator], n_steps: int, n_nodes: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """Standard normal draws of each variant, shape (B, n_steps, n_nodes).

    Variant ``b`` gets ``rngs[b].standard_normal((n_steps, n_nodes))`` (the same numbers;
    consecutive calls continue each stream exactly as one larger draw would), drawn in
    place into ``out`` when given (reusing it spares fresh pages on every call).
    """
    shape = (len(rngs), n_steps, n_nodes)
    z = out if out is not None and out.shape == shape else np.empty(shape)
    for b, rng in enumerate(rngs):
        rng.standard_normal(out=z[b])
    return z


def draw_initial_history(rng: np.random.Generator, horizon: int, n_nodes: int) -> np.ndarray:
    """TVB's random initial history: uniform in ``TVB_STATE_RANGES``, shape (horizon, 6, n_nodes).

    The first draws of a variant's generator (its noise follows).
    """
    lo = np.array([r[0] for r in TVB_STATE_RANGES])[None, :, None]
    hi = np.array([r[1] for r in TVB_STATE_RANGES])[None, :, None]
    return lo + (hi - lo) * rng.random((horizon, 6, n_nodes))


# --------------------------------------------------------------------------- kernels
def _integrate_batch_numpy(y, sbuf, step0, z, A, p, colptr, targets, wdata, delays, out,
                           record_every, block=0):
    """Reference kernel: advance ``z.shape[1]`` Heun steps in place.

    Parameters
    ----------
    y : ndarray, shape (6, n_nodes, B)
        State at step ``step0`` of every variant; overwritten.
    sbuf : ndarray, shape (n_nodes, width, B)
        Coupling-sigmoid ring, ``width = 2 * horizon + block``: step ``n`` in every
        column ``n % horizon + m * horizon`` below ``width``; updated in place.
    step0 : int
        Absolute index of the current step.
    z : ndarray, shape (B, n_steps, n_nodes)
        Standard normal draws of each variant.
    A : ndarray, shape (n_nodes, B)
        EPSP amplitude of each node in each variant [mV].
    p : ndarray, shape (N_PARAMS,)
        :meth:`JansenRitParams.scalar_vector`.
    colptr, targets, wdata, delays : ndarray
        :class:`NetworkStructure` fields.
    out : ndarray, shape (n_records, n_nodes, B)
        Receives ``y1 - y2`` of state ``n`` at row ``(n - 1) // record_every -
        ceil(step0 / record_every)`` when ``(n - 1) % record_every == 0``.
    record_every : int
    block : int
        Extra ring columns beyond ``2 * horizon`` (used by the numba kernel's blocks).
    """
    params = _params_from_vector(p)
    dt, noise_amp = p[P_DT], p[P_NOISE]
    n_nodes, n_batch = y.shape[1], y.shape[2]
    width = sbuf.shape[1]
    horizon = (width - block) // 2
    sources = np.repeat(np.arange(n_nodes), np.diff(colptr))
    # bin (target, variant) of each (edge, variant) value: one bincount sums every variant,
    # each bin in edge order (sources ascending)
    bins = (targets[:, None].astype(np.int64) * n_batch + np.arange(n_batch)).ravel()
    row0 = (step0 + record_every - 1) // record_every
    # The random initial history can push exp() past float range: inf gives the right limit.
    with np.errstate(over="ignore"):
        for s in range(z.shape[1]):
            n = step0 + s + 1
            t = ((n - 1) - delays) % horizon
            vals = wdata[:, None] * sbuf[sources, t, :]  # (n_edges, B)
            c = p[P_C_A] * np.bincount(bins, weights=vals.ravel(),
                                       minlength=n_nodes * n_batch).reshape(n_nodes, n_batch)
            eta = noise_amp * z[:, s, :].T  # (n_nodes, B)
            k1 = jansen_rit_dfun(y, c, A, params)
            inter = y + dt * k1
            inter[4] += eta
            k2 = jansen_rit_dfun(inter, c, A, params)
            y += (k1 + k2) * dt / 2.0
            y[4] += eta
            diff = y[1] - y[2]
            sk = p[P_C_MIN] + (p[P_C_MAX] - p[P_C_MIN]) / (
                1.0 + np.exp(p[P_C_R] * (p[P_C_MID] - diff)))
            for col in range(n % horizon, width, horizon):
                sbuf[:, col, :] = sk
            if (n - 1) % record_every == 0:
                out[(n - 1) // record_every - row0] = diff



# --------------------------------------------------------------------------- integrator
class BatchIntegrator:
    """State of B variants of one network, advanced chunk by chunk by one kernel.

    Parameters
    ----------
    structure : NetworkStructure
        Shared connectome (:func:`network_structure`).
    A : ndarray, shape (B, n_nodes)
        EPSP amplitude of each node in each variant [mV].
    params : JansenRitParams
        Shared parameters (``mu`` and ``noise_scale`` of the setting included).
    history : ndarray, shape (B, horizon, 6, n_nodes)
        Initial history of each variant (:func:`draw_initial_history`); entry 0 is the
        initial state (TVB).
    dt_ms : float
        Integration step [ms].
    backend : {"numba", "numpy"}
    block : int
        Steps per coupling block of the numba kernel (edges with a delay of at least
        ``block - 1`` steps are summed a block at a time); 1 sums every edge every step.
    exact : bool
        Numba kernel without its shortcuts (libm ``exp``, no shared exponential); with
        ``block=1`` the numbers of the former single-variant kernel (see
        :mod:`esikit.simulate._nmm_numba`).

    Attributes
    ----------
    step : int
        Integration steps done.
    """

    def __init__(self, structure: NetworkStructure, A: np.ndarray, params: JansenRitParams,
                 history: np.ndarray, dt_ms: float = 0.5, backend: str = "numba",
                 block: int = 16, exact: bool = False) -> None:
        self._setup(structure, params, dt_ms, backend, block, exact)
        n, h = structure.n_nodes, structure.horizon
        A = np.asarray(A, dtype=np.float64)
        history = np.asarray(history, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != n:
            raise ValueError(f"'A' has shape {A.shape}, expected (B, n_nodes) with n_nodes={n}")
        if history.shape != (A.shape[0], h, 6, n):
            raise ValueError(f"'history' has shape {history.shape}, expected (B, horizon, 6, "
                             f"n_nodes) = {(A.shape[0], h, 6, n)}")
        y = history[:, 0].transpose(1, 2, 0)  # (6, n, B)
        diff = history[:, :, 1] - history[:, :, 2]  # (B, h, n)
        p = params
        with np.errstate(over="ignore"):
            s = p.coupling_cmin + (p.coupling_cmax - p.coupling_cmin) / (
                1.0 + np.exp(p.coupling_r * (p.coupling_midpoint - diff)))
        self._set_arrays(y, s.transpose(2, 1, 0), A.T)  # ring (n, h, B)

    @classmethod
    def start(cls, structure: NetworkStructure, params: JansenRitParams,
              excited_nodes: Sequence[int | Sequence[int] | None], rngs: Sequence[np.random.Generator],
              dt_ms: float = 0.5, backend: str = "numba", block: int = 16,
              exact: bool = False) -> "BatchIntegrator":
        """Variants at step 0: ``excited_nodes[b]`` (see :func:`excited_A`) excited, the initial
        history drawn from ``rngs[b]`` (:func:`draw_initial_history`, its first draws)."""
        history = np.stack([draw_initial_history(rng, structure.horizon, structure.n_nodes) for rng in rngs])
        A = excited_A(structure.n_nodes, excited_nodes, params)
        return cls(structure, A, params, history, dt_ms, backend, block=block, exact=exact)

    @classmethod
    def from_state(cls, structure: NetworkStructure, params: JansenRitParams, state: dict,
                   dt_ms: float = 0.5, backend: str = "numba", block: int = 16,
                   exact: bool = False) -> "BatchIntegrator":
        """An integrator continuing ``state`` (from :meth:`get_state`, any backend)."""
        self = cls.__new__(cls)
        self._setup(structure, params, dt_ms, backend, block, exact)
        self.set_state(state)
        return self

    def _setup(self, structure, params, dt_ms, backend, block, exact) -> None:
        check_option("backend", backend, BACKENDS)
        if block < 1:
            raise ValueError(f"Invalid value for 'block': expected an integer >= 1, got {block!r}.")
        self.structure = structure
        self.params = params
        self.dt_ms = float(dt_ms)
        self.backend = backend
        self.exact = bool(exact)
        self.pvec = params.scalar_vector(dt_ms)
        self.block = int(block) if backend == "numba" else 0
        if backend == "numba":  # edges split by delay for the blocked coupling
            long = structure.delays >= self.block - 1
            self._edges = (*_csc_subset(structure, long), *_csc_subset(structure, ~long))
        self.step = 0
        self._zt = None

    def _set_arrays(self, y: np.ndarray, ring: np.ndarray, A_nb: np.ndarray) -> None:
        # copies: integrating never writes into the caller's arrays (e.g. a state passed in)
        self._y = np.array(y, dtype=np.float64, order="C")
        h = ring.shape[1]
        width = 2 * h + self.block  # every column holds slot (column % h)
        reps = np.tile(ring, (1, -(-width // h), 1))[:, :width]
        self._sbuf = np.ascontiguousarray(reps, dtype=np.float64)
        self._A = np.array(A_nb, dtype=np.float64, order="C")

    @property
    def n_batch(self) -> int:
        """Number of variants B."""
        return int(self._A.shape[1])

    def get_state(self) -> dict[str, np.ndarray | int]:
        """Backend-independent copy of the state (to checkpoint or move between backends).

        Returns
        -------
        dict
            ``y`` (6, n_nodes, B), ``ring`` (n_nodes, horizon, B) (slot ``n % horizon``
            holds step ``n``), ``A`` (n_nodes, B), all float64, and ``step``.
        """
        h = self.structure.horizon
        return {"y": self._y.copy(), "ring": self._sbuf[:, :h].copy(), "A": self._A.copy(),
                "step": int(self.step)}

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`get_state` (of this or another backend)."""
        self._set_arrays(np.asarray(state["y"]), np.asarray(state["ring"]), np.asarray(state["A"]))
        self.step = int(state["step"])

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the variants ``keep`` (in that order), e.g. drop finished ones."""
        keep = np.asarray(keep, dtype=np.int64)
        st = self.get_state()
        self._set_arrays(st["y"][:, :, keep], st["ring"][:, :, keep], st["A"][:, keep])

    def integrate(self, rngs: Sequence[np.random.Generator], n_steps: int, record_every: int = 1,
                  out_dtype=np.float32) -> np.ndarray:
        """Advance ``n_steps`` steps, variant ``b`` drawing its noise from ``rngs[b]``.

        The noise is drawn in blocks of :data:`NOISE_BLOCK` steps into one reused buffer;
        each stream continues as one long draw would. Returns what :meth:`advance`
        returns for the whole span, shape (B, n_records, n_nodes).
        """
        n = self.structure.n_nodes
        row0 = (self.step + record_every - 1) // record_every
        out = np.empty((self.n_batch, (self.step + n_steps + record_every - 1) // record_every - row0, n),
                       dtype=out_dtype)
        buf, row = None, 0
        for step0 in range(0, n_steps, NOISE_BLOCK):
            buf = draw_noise(rngs, min(NOISE_BLOCK, n_steps - step0), n, out=buf)
            rec = self.advance(buf, record_every=record_every, out_dtype=out_dtype)
            out[:, row:row + rec.shape[1]] = rec
            row += rec.shape[1]
        return out

    def advance(self, z: np.ndarray, record_every: int = 1, out_dtype=np.float32) -> np.ndarray:
        """Integrate every variant ``z.shape[1]`` steps.

        Parameters
        ----------
        z : ndarray, shape (B, n_steps, n_nodes)
            Standard normal draws of each variant.
        record_every : int
            Record ``y1 - y2`` of the states ``n`` with ``(n - 1) % record_every == 0``.
        out_dtype : numpy dtype

        Returns
        -------
        ndarray, shape (B, n_records, n_nodes)
            ``y1 - y2`` in mV of the recorded states of this chunk.
        """
        z = np.asarray(z, dtype=np.float64)
        n_steps = z.shape[1]
        if z.shape != (self.n_batch, n_steps, self.structure.n_nodes):
            raise ValueError(f"'z' has shape {z.shape}, expected (B, n_steps, n_nodes) with "
                             f"B={self.n_batch}, n_nodes={self.structure.n_nodes}")
        step0 = self.step
        row0 = (step0 + record_every - 1) // record_every
        n_rec = (step0 + n_steps + record_every - 1) // record_every - row0
        out = np.empty((n_rec, self.structure.n_nodes, self.n_batch), dtype=out_dtype)
        if self.backend == "numba":
            from . import _nmm_numba  # numba loads on first use

            want = (n_steps, self.structure.n_nodes, self.n_batch)
            if self._zt is None or self._zt.shape != want:  # reused: no fresh pages every chunk
                self._zt = np.empty(want)
            np.copyto(self._zt, z.transpose(1, 2, 0))  # batch innermost
            kernel = (_nmm_numba.integrate_batch_numba_exact if self.exact
                      else _nmm_numba.integrate_batch_numba)
            kernel(self._y, self._sbuf, step0, self._zt, self._A, self.pvec, *self._edges, out,
                   record_every, self.block)
        else:
            st = self.structure
            _integrate_batch_numpy(self._y, self._sbuf, step0, np.ascontiguousarray(z), self._A,
                                   self.pvec, st.colptr, st.targets, st.wdata, st.delays, out,
                                   record_every, self.block)
        self.step += n_steps
        return np.ascontiguousarray(out.transpose(2, 0, 1))


def _csc_subset(st: NetworkStructure, keep: np.ndarray):
    """The edges ``keep`` of ``st`` as (colptr, targets, wdata, delays), still CSC by source."""
    counts = np.bincount(st.sources[keep], minlength=st.n_nodes)
    colptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (colptr, np.ascontiguousarray(st.targets[keep]), np.ascontiguousarray(st.wdata[keep]),
            np.ascontiguousarray(st.delays[keep]))


def excited_A(n_nodes: int, excited_nodes: Sequence[int | Sequence[int] | None],
              params: JansenRitParams) -> np.ndarray:
    """EPSP amplitudes, shape (B, n_nodes): ``params.A``, ``A_excited`` on each variant's node(s).

    ``excited_nodes[b]`` is a node, a sequence of nodes or None (no excited node).
    """
    A = np.full((len(excited_nodes), n_nodes), params.A, dtype=np.float64)
    for b, nodes in enumerate(excited_nodes):
        nodes = np.atleast_1d(np.asarray([] if nodes is None else nodes, dtype=np.int64))
        if nodes.size and (nodes.min() < 0 or nodes.max() >= n_nodes):
            raise ValueError(f"Invalid value for 'excited_nodes': expected indices in "
                             f"[0, {n_nodes}), got {excited_nodes[b]!r}.")
        A[b, nodes] = params.A_excited
    return A


# --------------------------------------------------------------------------- drivers
def simulate_batch(
    weights: np.ndarray,
    tract_lengths: np.ndarray,
    excited_nodes: Sequence[int | Sequence[int] | None],
    duration_s: float,
    setting: int | None = 0,
    seeds: Sequence | None = None,
    params: JansenRitParams | None = None,
    dt_ms: float = 0.5,
    backend: str = "numba",
    record_every: int = 1,
    dtype=np.float64,
    block: int = 16,
    exact: bool = False,
) -> np.ndarray:
    """Simulate B excited-region variants of one network in one pass.

    Variant ``b`` draws its initial history, then its noise, from
    ``numpy.random.default_rng(seeds[b])``.

    Parameters
    ----------
    weights, tract_lengths : ndarray, shape (n_nodes, n_nodes)
        Connectome (``weights[k, j]`` from ``j`` to ``k``; lengths in mm).
    excited_nodes : sequence, length B
        The hyper-excitable node(s) of each variant: a node, a sequence of nodes or None.
    duration_s : float
        Simulated seconds (``round(duration_s * 1000 / dt_ms)`` steps).
    setting : int | None
        DeepSIF noise setting applied over ``params`` (None keeps ``params``).
    seeds : sequence | None
        One seed per variant (anything ``numpy.random.default_rng`` takes; default
        ``0 .. B-1``).
    params : JansenRitParams | None
    dt_ms : float
    backend : {"numba", "numpy"}
    record_every : int
        Keep one sample in ``record_every`` (samples 0, k, 2k, ...).
    dtype : numpy dtype
        Output dtype (the state is always integrated in float64).
    block, exact : see :class:`BatchIntegrator`.

    Returns
    -------
    ndarray, shape (B, n_samples, n_nodes)
        ``y1 - y2`` in mV; sample ``i`` is the state after step ``i + 1`` (TVB's Raw
        monitor), ``n_samples = ceil(n_steps / record_every)``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    params = params or JansenRitParams()
    if setting is not None:
        params = params.with_setting(setting)
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    structure = network_structure(weights, tract_lengths, params, dt_ms)
    n = structure.n_nodes
    n_batch = len(excited_nodes)
    seeds = list(range(n_batch)) if seeds is None else list(seeds)
    if len(seeds) != n_batch:
        raise ValueError(f"'seeds' has {len(seeds)} entries, expected one per variant ({n_batch})")
    n_steps = int(round(duration_s * 1000.0 / dt_ms))
    if n_steps < 1:
        raise ValueError(f"duration_s={duration_s} gives {n_steps} steps of {dt_ms} ms")
    rngs = [np.random.default_rng(s) for s in seeds]
    integ = BatchIntegrator.start(structure, params, excited_nodes, rngs, dt_ms, backend, block, exact)
    out = integ.integrate(rngs, n_steps, record_every, dtype)
    if not np.isfinite(out[:, -1]).all():
        logger.warning("simulation diverged (non-finite output); check dt_ms=%s and params", dt_ms)
    return out


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
    """Simulate the Jansen-Rit network with one hyper-excitable node (a batch of one).

    The numba kernel runs in its exact mode (``block=1, exact=True``): the trajectories
    of this function do not depend on the kernel's speed shortcuts. They are those of
    ``esikit simulate --duration`` (the ``"duration"`` mode of
    :func:`esikit.simulate.harvest.run_chunk_task`, same seed, same kernel).

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
        Compiled kernel or the readable numpy reference (same trajectory to rounding).
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
    >>> from esikit.head.anatomy import load_default_anatomy
    >>> anat = load_default_anatomy()
    >>> v = simulate_network(anat.weights, anat.tract_lengths, excited_node=10,
    ...                      duration_s=2.0, seed=1)   # doctest: +SKIP
    >>> v.shape                                        # doctest: +SKIP
    (4000, 76)
    """
    weights = np.asarray(weights, dtype=np.float64)
    tract_lengths = np.asarray(tract_lengths, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1] or tract_lengths.shape != weights.shape:
        raise ValueError(f"weights {weights.shape} and tract_lengths {tract_lengths.shape} "
                         "must both have shape (n_nodes, n_nodes)")
    return simulate_batch(weights, tract_lengths, [excited_node], duration_s, setting, [seed],
                          params, dt_ms, backend, record_every, dtype, block=1, exact=True)[0]
