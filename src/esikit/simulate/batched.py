"""Batched Jansen-Rit integration: many excited-region variants of one connectome at once.

DeepSIF simulates the same network once per excited region (and noise setting). The
variants share the connectome, the delays and the coupling; only the EPSP amplitude
``A`` (which node is excited), the noise and the state differ. Integrating them together
along a batch axis turns the per-edge delayed coupling, the costliest part of a step,
into one short vector operation per edge, and lets a GPU integrate hundreds of variants
per step.

Equations, integrator and random-number layout are those of :mod:`esikit.simulate.nmm`
(TVB's ``JansenRit`` + ``SigmoidalJansenRit`` + ``HeunStochastic``). Three backends
integrate them:

``"numpy"``
    A readable reference (:func:`_integrate_batch_numpy`), vectorized over nodes and
    variants.
``"numba"``
    A compiled CPU kernel (``_batched_numba``) whose per-variant arithmetic is that of
    the single-variant kernel: a variant gives the same numbers alone or in a batch.
``"torch"``
    A torch kernel (:func:`_integrate_batch_torch`) on the GPU when one is present (any
    torch device otherwise). It consumes the same pre-drawn noise as the others (same
    trajectories up to float rounding), or draws its noise on the device
    (``device_noise=True``: same statistics, another random stream, no host-to-device
    noise traffic).

Layouts: state ``y`` (6, n_nodes, B); coupling history ``sbuf`` (n_nodes, 2 * horizon,
B), the ring of the coupling sigmoid of ``y1 - y2`` stored twice so that no wrap-around
test is needed per edge; noise ``z`` (B, n_steps, n_nodes); output (B, n_records,
n_nodes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .nmm import TVB_STATE_RANGES, JansenRitParams, _params_from_vector, jansen_rit_dfun

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "BatchIntegrator",
    "NetworkStructure",
    "draw_initial_history",
    "draw_noise",
    "network_structure",
    "simulate_batch",
]

#: Steps of noise drawn (and integrated) at a time: small enough to stay in cache-friendly,
#: reused buffers (B x 500 x n_nodes doubles).
NOISE_BLOCK = 500

#: Backends of :class:`BatchIntegrator`.
BACKENDS = ("numba", "numpy", "torch")


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
    """Sparse weights and integer delays, as :func:`esikit.simulate.nmm._run_network` builds them.

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

    The same draws as :func:`esikit.simulate.nmm.simulate_network` makes first.
    """
    lo = np.array([r[0] for r in TVB_STATE_RANGES])[None, :, None]
    hi = np.array([r[1] for r in TVB_STATE_RANGES])[None, :, None]
    return lo + (hi - lo) * rng.random((horizon, 6, n_nodes))


# --------------------------------------------------------------------------- kernels
def _integrate_batch_numpy(y, sbuf, step0, z, A, p, colptr, targets, wdata, delays, out,
                           record_every, block=0):
    """Reference batched integrator: advance ``z.shape[1]`` Heun steps in place.

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
    from . import _nmm_numba as K

    params = _params_from_vector(p)
    dt, noise_amp = p[K.P_DT], p[K.P_NOISE]
    n_nodes, n_batch = y.shape[1], y.shape[2]
    width = sbuf.shape[1]
    horizon = (width - block) // 2
    sources = np.repeat(np.arange(n_nodes), np.diff(colptr))
    row0 = (step0 + record_every - 1) // record_every
    with np.errstate(over="ignore"):
        for s in range(z.shape[1]):
            n = step0 + s + 1
            t = ((n - 1) - delays) % horizon
            vals = wdata[:, None] * sbuf[sources, t, :]  # (n_edges, B)
            c = p[K.P_C_A] * np.stack(
                [np.bincount(targets, weights=vals[:, b], minlength=n_nodes) for b in range(n_batch)],
                axis=1)
            eta = noise_amp * z[:, s, :].T  # (n_nodes, B)
            k1 = jansen_rit_dfun(y, c, A, params)
            inter = y + dt * k1
            inter[4] += eta
            k2 = jansen_rit_dfun(inter, c, A, params)
            y += (k1 + k2) * dt / 2.0
            y[4] += eta
            diff = y[1] - y[2]
            sk = p[K.P_C_MIN] + (p[K.P_C_MAX] - p[K.P_C_MIN]) / (
                1.0 + np.exp(p[K.P_C_R] * (p[K.P_C_MID] - diff)))
            for col in range(n % horizon, width, horizon):
                sbuf[:, col, :] = sk
            if (n - 1) % record_every == 0:
                out[(n - 1) // record_every - row0] = diff


def _torch_dfun(y0, y1, y2, y3, y4, y5, A, c, prm):
    import torch

    a, b, J, nu, r, v0 = prm["a"], prm["b"], prm["J"], prm["nu_max"], prm["r"], prm["v0"]
    s12 = 2.0 * nu / (1.0 + torch.exp(r * (v0 - (y1 - y2))))
    s01 = 2.0 * nu / (1.0 + torch.exp(r * (v0 - prm["a_1"] * J * y0)))
    s03 = 2.0 * nu / (1.0 + torch.exp(r * (v0 - prm["a_3"] * J * y0)))
    return (y3, y4, y5,
            A * a * s12 - 2.0 * a * y3 - a * a * y0,
            A * a * (prm["mu"] + prm["a_2"] * J * s01 + c) - 2.0 * a * y4 - a * a * y1,
            prm["B"] * b * (prm["a_4"] * J * s03) - 2.0 * b * y5 - b * b * y2)


def _integrate_batch_torch(state: dict, step0: int, n_steps: int, z, p: np.ndarray,
                           record_every: int, generator=None):
    """Torch batched integrator: advance ``n_steps`` Heun steps of the tensors in ``state``.

    Parameters
    ----------
    state : dict
        Tensors on one device: ``y`` (6, n_nodes, B), ``ring`` (horizon * n_nodes, B)
        (row ``slot * n_nodes + k`` holds node ``k``'s coupling sigmoid of the step in
        ``slot``), ``A`` (n_nodes, B), ``src`` (n_edges,), ``tgt`` (n_edges,), ``w``
        (n_edges, 1), ``delays`` (n_edges,), ``idx`` (horizon, n_edges) (the ring row
        each edge reads when the previous step is in a slot), and the int ``horizon``.
        Updated in place.
    step0 : int
        Absolute index of the current step.
    n_steps : int
    z : Tensor, shape (B, n_steps, n_nodes) | None
        Standard normal draws; None draws them on the device with ``generator``.
    p : ndarray, shape (N_PARAMS,)
    record_every : int
    generator : torch.Generator | None
        Device generator for ``z=None``.

    Returns
    -------
    Tensor, shape (n_records, n_nodes, B)
        ``y1 - y2`` of the recorded states (``(n - 1) % record_every == 0``).
    """
    import torch

    from . import _nmm_numba as K

    y, ring, A = state["y"], state["ring"], state["A"]
    tgt, w, horizon = state["tgt"], state["w"], state["horizon"]
    n_nodes, n_batch = y.shape[1], y.shape[2]
    prm = vars(_params_from_vector(p))
    dt, noise_amp = float(p[K.P_DT]), float(p[K.P_NOISE])
    cmin, cmax, cmid, cr, ca = (float(p[i]) for i in (K.P_C_MIN, K.P_C_MAX, K.P_C_MID, K.P_C_R, K.P_C_A))
    records = []
    c = torch.empty((n_nodes, n_batch), dtype=y.dtype, device=y.device)
    for s in range(n_steps):
        n = step0 + s + 1
        c.zero_()
        c.index_add_(0, tgt, w * ring[state["idx"][(n - 1) % horizon]])
        ck = ca * c
        if z is None:
            eta = noise_amp * torch.randn((n_nodes, n_batch), generator=generator,
                                          dtype=y.dtype, device=y.device)
        else:
            eta = noise_amp * z[:, s, :].T
        y0, y1, y2, y3, y4, y5 = y.unbind(0)
        k1 = _torch_dfun(y0, y1, y2, y3, y4, y5, A, ck, prm)
        inter = [y_v + dt * k_v for y_v, k_v in zip((y0, y1, y2, y3, y4, y5), k1)]
        inter[4] = inter[4] + eta
        k2 = _torch_dfun(*inter, A, ck, prm)
        for v in range(6):
            y[v] += (k1[v] + k2[v]) * dt / 2.0
        y[4] += eta
        diff = y[1] - y[2]
        slot = n % horizon
        ring[slot * n_nodes:(slot + 1) * n_nodes] = cmin + (cmax - cmin) / (
            1.0 + torch.exp(cr * (cmid - diff)))
        if (n - 1) % record_every == 0:
            records.append(diff.clone())
    if records:
        return torch.stack(records)
    return torch.empty((0, n_nodes, n_batch), dtype=y.dtype, device=y.device)


# --------------------------------------------------------------------------- state
class BatchIntegrator:
    """State of B variants of one network, advanced chunk by chunk by one backend.

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
    backend : {"numba", "numpy", "torch"}
    device : str | None
        Torch device (None: ``"cuda"`` when available, else ``"cpu"``); torch only.
    torch_dtype : str
        ``"float64"`` (default, matches the CPU kernels) or ``"float32"`` (faster on a GPU);
        torch only.
    block : int
        Steps per coupling block of the numba kernel (edges with a delay of at least
        ``block - 1`` steps are summed a block at a time); 1 sums every edge every step.

    Attributes
    ----------
    step : int
        Integration steps done.
    """

    def __init__(self, structure: NetworkStructure, A: np.ndarray, params: JansenRitParams,
                 history: np.ndarray, dt_ms: float = 0.5, backend: str = "numba",
                 device: str | None = None, torch_dtype: str = "float64",
                 block: int = 16) -> None:
        self._setup(structure, params, dt_ms, backend, device, torch_dtype, block)
        n, h = structure.n_nodes, structure.horizon
        A = np.asarray(A, dtype=np.float64)
        history = np.asarray(history, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != n:
            raise ValueError(f"'A' has shape {A.shape}, expected (B, n_nodes) with n_nodes={n}")
        if history.shape != (A.shape[0], h, 6, n):
            raise ValueError(f"'history' has shape {history.shape}, expected (B, horizon, 6, "
                             f"n_nodes) = {(A.shape[0], h, 6, n)}")
        y = np.ascontiguousarray(history[:, 0].transpose(1, 2, 0))  # (6, n, B)
        diff = history[:, :, 1] - history[:, :, 2]  # (B, h, n)
        p = params
        with np.errstate(over="ignore"):
            s = p.coupling_cmin + (p.coupling_cmax - p.coupling_cmin) / (
                1.0 + np.exp(p.coupling_r * (p.coupling_midpoint - diff)))
        ring = np.ascontiguousarray(s.transpose(2, 1, 0))  # (n, h, B)
        self._set_arrays(y, ring, np.ascontiguousarray(A.T))

    @classmethod
    def from_state(cls, structure: NetworkStructure, params: JansenRitParams, state: dict,
                   dt_ms: float = 0.5, backend: str = "numba", device: str | None = None,
                   torch_dtype: str = "float64", block: int = 16) -> "BatchIntegrator":
        """An integrator continuing ``state`` (from :meth:`get_state`, any backend)."""
        self = cls.__new__(cls)
        self._setup(structure, params, dt_ms, backend, device, torch_dtype, block)
        self.set_state(state)
        return self

    def _setup(self, structure, params, dt_ms, backend, device, torch_dtype, block) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"Invalid value for 'backend': expected one of "
                             f"{', '.join(repr(b) for b in BACKENDS)}, got {backend!r}.")
        if block < 1:
            raise ValueError(f"Invalid value for 'block': expected an integer >= 1, got {block!r}.")
        self.structure = structure
        self.params = params
        self.dt_ms = float(dt_ms)
        self.backend = backend
        self.pvec = params.scalar_vector(dt_ms)
        self.block = int(block) if backend == "numba" else 0
        if backend == "numba":  # edges split by delay for the blocked coupling
            long = structure.delays >= self.block - 1
            self._edges = (*_csc_subset(structure, long), *_csc_subset(structure, ~long))
        self.step = 0
        self._device = device
        self._torch_dtype = torch_dtype

    # ----------------------------------------------------------------- state I/O
    def _set_arrays(self, y: np.ndarray, ring: np.ndarray, A_nb: np.ndarray) -> None:
        if self.backend != "torch":
            self._y = np.ascontiguousarray(y, dtype=np.float64)
            h = ring.shape[1]
            width = 2 * h + self.block  # every column holds slot (column % h)
            reps = np.tile(ring, (1, -(-width // h), 1))[:, :width]
            self._sbuf = np.ascontiguousarray(reps, dtype=np.float64)
            self._A = np.ascontiguousarray(A_nb, dtype=np.float64)
            return
        import torch

        dev = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        dt = getattr(torch, self._torch_dtype)
        st = self.structure
        n, h = st.n_nodes, st.horizon
        self._t = {
            "y": torch.as_tensor(y, dtype=dt, device=dev).contiguous(),
            "ring": torch.as_tensor(np.ascontiguousarray(ring.transpose(1, 0, 2)).reshape(h * n, -1),
                                    dtype=dt, device=dev),
            "A": torch.as_tensor(A_nb, dtype=dt, device=dev),
            "src": torch.as_tensor(st.sources, dtype=torch.int64, device=dev),
            "tgt": torch.as_tensor(st.targets, dtype=torch.int64, device=dev),
            "w": torch.as_tensor(st.wdata[:, None], dtype=dt, device=dev),
            "delays": torch.as_tensor(st.delays, dtype=torch.int64, device=dev),
            "horizon": h,
        }
        # ring row of every edge's delayed source for each slot of the previous step
        # (horizon x n_edges indices, a few tens of MB): no index arithmetic per step
        prev = np.arange(h)[:, None]
        self._t["idx"] = torch.as_tensor((prev - st.delays[None, :]) % h * n + st.sources[None, :],
                                         dtype=torch.int64, device=dev)

    def _noise_buffer(self, shape) -> np.ndarray:
        """A reused (n_steps, n_nodes, B) array (no fresh pages every chunk)."""
        want = (shape[1], shape[2], shape[0])
        buf = getattr(self, "_zt", None)
        if buf is None or buf.shape != want:
            buf = self._zt = np.empty(want)
        return buf

    @property
    def n_batch(self) -> int:
        """Number of variants B."""
        return int(self._A.shape[1] if self.backend != "torch" else self._t["A"].shape[1])

    def get_state(self) -> dict[str, np.ndarray | int]:
        """Backend-independent copy of the state (to checkpoint or move between backends).

        Returns
        -------
        dict
            ``y`` (6, n_nodes, B), ``ring`` (n_nodes, horizon, B) (slot ``n % horizon``
            holds step ``n``), ``A`` (n_nodes, B), all float64, and ``step``.
        """
        if self.backend != "torch":
            h = self.structure.horizon
            return {"y": self._y.copy(), "ring": self._sbuf[:, :h].copy(), "A": self._A.copy(),
                    "step": int(self.step)}
        t = self._t
        n, h = self.structure.n_nodes, self.structure.horizon
        ring = t["ring"].double().cpu().numpy().reshape(h, n, -1).transpose(1, 0, 2)
        return {"y": t["y"].double().cpu().numpy(), "ring": np.ascontiguousarray(ring),
                "A": t["A"].double().cpu().numpy(), "step": int(self.step)}

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`get_state` (of this or another backend)."""
        self._set_arrays(np.asarray(state["y"]), np.asarray(state["ring"]), np.asarray(state["A"]))
        self.step = int(state["step"])

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the variants ``keep`` (in that order), e.g. drop finished ones."""
        keep = np.asarray(keep, dtype=np.int64)
        st = self.get_state()
        self._set_arrays(st["y"][:, :, keep], st["ring"][:, :, keep], st["A"][:, keep])

    # ----------------------------------------------------------------- stepping
    def advance(self, z: np.ndarray | None, n_steps: int | None = None, record_every: int = 1,
                out_dtype=np.float32, generator=None) -> np.ndarray:
        """Integrate every variant ``n_steps`` steps.

        Parameters
        ----------
        z : ndarray, shape (B, n_steps, n_nodes) | None
            Standard normal draws of each variant. None (torch only) draws them on the
            device from ``generator``.
        n_steps : int | None
            Needed when ``z`` is None.
        record_every : int
            Record ``y1 - y2`` of the states ``n`` with ``(n - 1) % record_every == 0``.
        out_dtype : numpy dtype
        generator : torch.Generator | None

        Returns
        -------
        ndarray, shape (B, n_records, n_nodes)
            ``y1 - y2`` in mV of the recorded states of this chunk.
        """
        if z is not None:
            z = np.ascontiguousarray(z, dtype=np.float64)
            n_steps = z.shape[1]
            if z.shape != (self.n_batch, n_steps, self.structure.n_nodes):
                raise ValueError(f"'z' has shape {z.shape}, expected (B, n_steps, n_nodes) with "
                                 f"B={self.n_batch}, n_nodes={self.structure.n_nodes}")
        elif self.backend != "torch" or n_steps is None:
            raise ValueError("z=None (noise drawn on the device) needs backend='torch' and n_steps")
        step0 = self.step
        row0 = (step0 + record_every - 1) // record_every
        n_rec = (step0 + n_steps + record_every - 1) // record_every - row0
        if self.backend == "torch":
            import torch

            zt = None if z is None else torch.as_tensor(z, dtype=self._t["y"].dtype,
                                                        device=self._t["y"].device)
            rec = _integrate_batch_torch(self._t, step0, n_steps, zt, self.pvec, record_every,
                                         generator)
            out = rec.to("cpu").numpy()
        else:
            out = np.empty((n_rec, self.structure.n_nodes, self.n_batch), dtype=out_dtype)
            st = self.structure
            if self.backend == "numba":
                from ._batched_numba import integrate_batch_numba

                zt = self._noise_buffer(z.shape)
                np.copyto(zt, z.transpose(1, 2, 0))  # batch innermost
                integrate_batch_numba(self._y, self._sbuf, step0, zt, self._A, self.pvec,
                                      *self._edges, out, record_every, self.block)
            else:
                _integrate_batch_numpy(self._y, self._sbuf, step0, z, self._A, self.pvec,
                                       st.colptr, st.targets, st.wdata, st.delays, out,
                                       record_every, self.block)
        self.step += n_steps
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=out_dtype)


def _csc_subset(st: NetworkStructure, keep: np.ndarray):
    """The edges ``keep`` of ``st`` as (colptr, targets, wdata, delays), still CSC by source."""
    counts = np.bincount(st.sources[keep], minlength=st.n_nodes)
    colptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (colptr, np.ascontiguousarray(st.targets[keep]), np.ascontiguousarray(st.wdata[keep]),
            np.ascontiguousarray(st.delays[keep]))


def excited_A(n_nodes: int, excited_nodes: Sequence[int | None], params: JansenRitParams
              ) -> np.ndarray:
    """EPSP amplitudes, shape (B, n_nodes): ``params.A`` with ``A_excited`` on each variant's node."""
    A = np.full((len(excited_nodes), n_nodes), params.A, dtype=np.float64)
    for b, node in enumerate(excited_nodes):
        if node is None:
            continue
        if not 0 <= int(node) < n_nodes:
            raise ValueError(f"Invalid value for 'excited_nodes': expected indices in "
                             f"[0, {n_nodes}), got {node!r}.")
        A[b, int(node)] = params.A_excited
    return A


def simulate_batch(
    weights: np.ndarray,
    tract_lengths: np.ndarray,
    excited_nodes: Sequence[int | None],
    duration_s: float,
    setting: int | None = 0,
    seeds: Sequence | None = None,
    params: JansenRitParams | None = None,
    dt_ms: float = 0.5,
    backend: str = "numba",
    record_every: int = 1,
    dtype=np.float64,
    device: str | None = None,
    torch_dtype: str = "float64",
    block: int = 16,
) -> np.ndarray:
    """Simulate B excited-region variants of one network in one pass.

    Variant ``b`` draws its initial history and noise from
    ``numpy.random.default_rng(seeds[b])`` in the order
    :func:`esikit.simulate.nmm.simulate_network` does, so it reproduces
    ``simulate_network(..., excited_node=excited_nodes[b], seed=seeds[b])``.

    Parameters
    ----------
    weights, tract_lengths : ndarray, shape (n_nodes, n_nodes)
        Connectome (``weights[k, j]`` from ``j`` to ``k``; lengths in mm).
    excited_nodes : sequence of int | None, length B
        The hyper-excitable node of each variant (None: none).
    duration_s : float
        Simulated seconds.
    setting : int | None
        DeepSIF noise setting applied over ``params`` (None keeps ``params``).
    seeds : sequence | None
        One seed per variant (default ``0 .. B-1``).
    params : JansenRitParams | None
    dt_ms : float
    backend : {"numba", "numpy", "torch"}
    record_every : int
    dtype : numpy dtype
        Output dtype.
    device, torch_dtype, block : see :class:`BatchIntegrator`.

    Returns
    -------
    ndarray, shape (B, n_samples, n_nodes)
        ``y1 - y2`` in mV (sample ``i`` after step ``i + 1``, one in ``record_every``).
    """
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
    history = np.stack([draw_initial_history(r, structure.horizon, n) for r in rngs])
    integ = BatchIntegrator(structure, excited_A(n, excited_nodes, params), params, history,
                            dt_ms, backend, device=device, torch_dtype=torch_dtype,
                            block=block)
    pieces, buf = [], None
    # noise in short blocks into one reused buffer; the streams are those of
    # simulate_network's 4000-step draws (sequential fills)
    for step0 in range(0, n_steps, NOISE_BLOCK):
        m = min(NOISE_BLOCK, n_steps - step0)
        buf = draw_noise(rngs, m, n, out=buf)
        pieces.append(integ.advance(buf, record_every=record_every, out_dtype=dtype))
    out = np.concatenate(pieces, axis=1)
    if not np.isfinite(out[:, -1]).all():
        logger.warning("simulation diverged (non-finite output); check dt_ms=%s and params", dt_ms)
    return out
