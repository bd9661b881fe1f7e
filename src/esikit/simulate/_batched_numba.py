"""Numba kernel of the batched Jansen-Rit integrator (twin of ``batched._integrate_batch_numpy``).

The batch axis (variants of the same connectome) is the innermost, contiguous axis of
the state and of the coupling history, so the per-edge delayed coupling is one short
vector operation over the batch. For every variant the arithmetic and its order are
those of the single-variant kernel (``_nmm_numba.integrate_chunk_numba``), so a variant
gives the same numbers whether it runs alone or in a batch of any size.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._nmm_numba import (
    P_A1, P_A2, P_A3, P_A4, P_A_RATE, P_B, P_B_RATE, P_C_A, P_C_MAX, P_C_MID, P_C_MIN, P_C_R,
    P_DT, P_J, P_MU, P_NOISE, P_NU_MAX, P_R, P_V0, _dfun,
)

__all__ = ["integrate_batch_numba"]

# Imported names used inside the jitted function must be module globals.
_UNUSED = (P_A1, P_A2, P_A3, P_A4, P_A_RATE, P_B, P_B_RATE, P_J, P_MU, P_NU_MAX, P_R, P_V0)


@numba.njit(cache=True, error_model="numpy")
def integrate_batch_numba(y, sbuf, step0, z, A, p, colptr, targets, wdata, delays, out,
                          record_every):
    """Advance every variant ``z.shape[1]`` Heun steps in place.

    Shapes: ``y`` (6, n_nodes, B), ``sbuf`` (n_nodes, 2 * horizon, B), ``z`` (B, n_steps,
    n_nodes), ``A`` (n_nodes, B), ``out`` (B, n_records, n_nodes) with row
    ``(n - 1) // record_every - ceil(step0 / record_every)`` for the recorded states ``n``
    (those with ``(n - 1) % record_every == 0``). See ``batched._integrate_batch_numpy``.
    """
    n_batch = y.shape[2]
    n_nodes = y.shape[1]
    n_steps = z.shape[1]
    horizon = sbuf.shape[1] // 2
    dt = p[P_DT]
    c = np.empty((n_nodes, n_batch))
    k1 = np.empty(6)
    k2 = np.empty(6)
    yi = np.empty(6)
    row0 = (step0 + record_every - 1) // record_every
    for s in range(n_steps):
        n = step0 + s + 1
        base = (n - 1) % horizon + horizon
        c[:, :] = 0.0
        # delayed coupling: edges grouped by source, batch innermost (one vector per edge)
        for j in range(n_nodes):
            for e in range(colptr[j], colptr[j + 1]):
                w = wdata[e]
                t = targets[e]
                col = base - delays[e]
                for b in range(n_batch):
                    c[t, b] += w * sbuf[j, col, b]
        slot = n % horizon
        i = n - 1
        rec = (i % record_every) == 0
        row = i // record_every - row0
        for k in range(n_nodes):
            for b in range(n_batch):
                ck = p[P_C_A] * c[k, b]
                eta = p[P_NOISE] * z[b, s, k]
                _dfun(y[0, k, b], y[1, k, b], y[2, k, b], y[3, k, b], y[4, k, b], y[5, k, b],
                      A[k, b], ck, p, k1)
                for v in range(6):
                    yi[v] = y[v, k, b] + dt * k1[v]
                yi[4] += eta
                _dfun(yi[0], yi[1], yi[2], yi[3], yi[4], yi[5], A[k, b], ck, p, k2)
                for v in range(6):
                    y[v, k, b] = y[v, k, b] + (k1[v] + k2[v]) * dt / 2.0
                y[4, k, b] += eta
                diff = y[1, k, b] - y[2, k, b]
                sk = p[P_C_MIN] + (p[P_C_MAX] - p[P_C_MIN]) / (
                    1.0 + math.exp(p[P_C_R] * (p[P_C_MID] - diff)))
                sbuf[k, slot, b] = sk
                sbuf[k, slot + horizon, b] = sk
                if rec:
                    out[b, row, k] = diff
