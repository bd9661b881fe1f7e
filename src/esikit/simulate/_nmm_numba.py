"""Numba kernel of the Jansen-Rit network integrator (twin of ``nmm._integrate_chunk_numpy``).

Same arguments, same arithmetic, same order of operations as the numpy reference in
:mod:`esikit.simulate.nmm`; only the loops are explicit so that one step costs a few
hundred nanoseconds per node. Compiled once per process (``cache=True`` keeps the
machine code on disk between processes).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Order of the scalar parameters in ``pvec`` (shared with nmm.py).
P_B, P_A_RATE, P_B_RATE, P_V0, P_NU_MAX, P_R = 0, 1, 2, 3, 4, 5
P_J, P_A1, P_A2, P_A3, P_A4, P_MU = 6, 7, 8, 9, 10, 11
P_C_MIN, P_C_MAX, P_C_MID, P_C_R, P_C_A = 12, 13, 14, 15, 16
P_DT, P_NOISE = 17, 18
N_PARAMS = 19


@numba.njit(cache=True, inline="always", error_model="numpy")
def _sigm(v, nu_max, r, v0):
    return 2.0 * nu_max / (1.0 + math.exp(r * (v0 - v)))


@numba.njit(cache=True, inline="always", error_model="numpy")
def _dfun(y0, y1, y2, y3, y4, y5, A, c, p, out):
    a = p[P_A_RATE]
    b = p[P_B_RATE]
    J = p[P_J]
    s12 = _sigm(y1 - y2, p[P_NU_MAX], p[P_R], p[P_V0])
    s01 = _sigm(p[P_A1] * J * y0, p[P_NU_MAX], p[P_R], p[P_V0])
    s03 = _sigm(p[P_A3] * J * y0, p[P_NU_MAX], p[P_R], p[P_V0])
    out[0] = y3
    out[1] = y4
    out[2] = y5
    out[3] = A * a * s12 - 2.0 * a * y3 - a * a * y0
    out[4] = A * a * (p[P_MU] + p[P_A2] * J * s01 + c) - 2.0 * a * y4 - a * a * y1
    out[5] = p[P_B] * b * (p[P_A4] * J * s03) - 2.0 * b * y5 - b * b * y2


# error_model="numpy": no zero-division checks in the hot loop (divisors never vanish)
@numba.njit(cache=True, error_model="numpy")
def integrate_chunk_numba(y, sbuf, step0, z, A, p, colptr, targets, wdata, delays, out,
                          record_every):
    """Advance the network ``z.shape[0]`` Heun steps in place (see nmm._integrate_chunk_numpy)."""
    n_steps, n_nodes = z.shape
    horizon = sbuf.shape[1] // 2  # the ring is stored twice: no wrap-around test per edge
    dt = p[P_DT]
    c = np.empty(n_nodes)
    k1 = np.empty(6)
    k2 = np.empty(6)
    yi = np.empty(6)
    for s in range(n_steps):
        n = step0 + s + 1  # absolute step being computed: state n from state n - 1
        base = (n - 1) % horizon + horizon
        # 1) delayed coupling of every node from the history (before any write).
        # Edges are grouped by source, so each source's history row stays in cache;
        # every target still sums its sources in ascending order, like the reference.
        for k in range(n_nodes):
            c[k] = 0.0
        for j in range(n_nodes):
            for e in range(colptr[j], colptr[j + 1]):
                c[targets[e]] += wdata[e] * sbuf[j, base - delays[e]]
        # 2) stochastic Heun step of every node, noise on y4 only
        slot = n % horizon
        i = n - 1  # 0-based output sample index of state n
        rec = (i % record_every) == 0
        for k in range(n_nodes):
            ck = p[P_C_A] * c[k]
            eta = p[P_NOISE] * z[s, k]
            _dfun(y[0, k], y[1, k], y[2, k], y[3, k], y[4, k], y[5, k], A[k], ck, p, k1)
            for v in range(6):
                yi[v] = y[v, k] + dt * k1[v]
            yi[4] += eta
            _dfun(yi[0], yi[1], yi[2], yi[3], yi[4], yi[5], A[k], ck, p, k2)
            for v in range(6):
                y[v, k] = y[v, k] + (k1[v] + k2[v]) * dt / 2.0
            y[4, k] += eta
            diff = y[1, k] - y[2, k]
            sk = p[P_C_MIN] + (p[P_C_MAX] - p[P_C_MIN]) / (
                1.0 + math.exp(p[P_C_R] * (p[P_C_MID] - diff)))
            sbuf[k, slot] = sk
            sbuf[k, slot + horizon] = sk
            if rec:
                out[i // record_every, k] = diff
