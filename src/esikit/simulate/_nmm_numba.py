"""Numba kernel of the Jansen-Rit network integrator (see :mod:`esikit.simulate.nmm`).

One kernel integrates a batch of variants of one network (a single simulation is a batch
of one). What makes it fast on one core:

* the batch axis (variants of the same connectome) is the innermost, contiguous axis of
  the state, so the node update is a loop over variants that LLVM vectorizes; the
  exponential is a branch-free polynomial (:func:`_exp`, within 2 ulp of ``math.exp``)
  because numba's ``math.exp`` is a libm call that blocks vectorization;
* with JansenRit's ``a_1 = 4 a_3`` one exponential gives both sigmoids of ``y0``
  (``exp(4x - 3 r v0) = exp(x)^4 exp(-3 r v0)``): five exponentials per node and step
  instead of seven;
* the delayed coupling is computed ``block`` steps at a time for every edge whose delay
  is at least ``block - 1`` steps (their inputs are all in the past at the start of the
  block), reading ``block x B`` contiguous history values per edge; the few shorter
  edges are added step by step.

These change the rounding, not the model: trajectories agree with the numpy reference
to about 1e-9. :func:`integrate_batch_numba_exact` with ``block=1`` turns all three off
(libm's ``exp``, both sigmoids, every edge summed every step in source order): the
arithmetic, bit for bit, of the single-variant kernel that
:func:`esikit.simulate.nmm.simulate_network` used before (so its trajectories, and the
clips cut from them, are unchanged), at its speed for one variant. Both entry points
compile the one body :func:`_integrate` with constant flags. A variant gives the same
numbers alone or in a batch of any size.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ._param_layout import (
    P_A1, P_A2, P_A3, P_A4, P_A_RATE, P_B, P_B_RATE, P_C_A, P_C_MAX, P_C_MID, P_C_MIN, P_C_R,
    P_DT, P_J, P_MU, P_NOISE, P_NU_MAX, P_R, P_V0,
)

__all__ = ["fast_exp", "integrate_batch_numba", "integrate_batch_numba_exact"]

# exp(x) = 2^k exp(r), x = k ln2 + r, |r| <= ln2 / 2: Cody-Waite split of ln2 and a
# degree-13 Taylor polynomial (truncation error < 1e-17 relative), 2^k built from its bits.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_C = tuple(1.0 / math.factorial(i) for i in range(14))
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = _C


@intrinsic
def _bits_to_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (vectorizable, unlike a table)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@numba.njit(cache=True, inline="always", error_model="numpy")
def _exp(x):
    # exp(+-700) bounds the result in the normal range: the sigmoids that use it are then
    # within 1e-300 of their limits, which is what matters here.
    x = min(max(x, -700.0), 700.0)
    k = math.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    q = _C13
    q = q * r + _C12
    q = q * r + _C11
    q = q * r + _C10
    q = q * r + _C9
    q = q * r + _C8
    q = q * r + _C7
    q = q * r + _C6
    q = q * r + _C5
    q = q * r + _C4
    q = q * r + _C3
    q = q * r + _C2
    q = q * r + _C1
    q = q * r + _C0
    return q * _bits_to_f64((np.int64(k) + 1023) << 52)


@numba.njit(cache=True, error_model="numpy")
def fast_exp(x):
    """Vectorizable exponential of an array (float64), clipped to ``exp(+-700)``."""
    out = np.empty_like(x)
    flat_in = x.ravel()
    flat_out = out.ravel()
    for i in range(flat_in.size):
        flat_out[i] = _exp(flat_in[i])
    return out


@numba.njit(cache=True, inline="always", error_model="numpy")
def _expx(x, exact):
    # exact is a constant in each entry point: the branch is folded, the fast loop vectorizes
    if exact:
        return math.exp(x)
    return _exp(x)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _dfun(y0, y1, y2, y3, y4, y5, A, c, a, b, nu2, r, v0, a1J, a2J, a3J, a4J, mu, Bb, quad, k3,
          exact):
    # same products as nmm.jansen_rit_dfun, in the same order
    s12 = nu2 / (1.0 + _expx(r * (v0 - (y1 - y2)), exact))
    e3 = _expx(r * (v0 - a3J * y0), exact)
    if quad:  # a_1 = 4 a_3 (JansenRit's defaults): exp(r (v0 - a1J y0)) = e3^4 exp(-3 r v0)
        e1 = e3 * e3
        e1 = e1 * e1 * k3
    else:
        e1 = _expx(r * (v0 - a1J * y0), exact)
    s01 = nu2 / (1.0 + e1)
    s03 = nu2 / (1.0 + e3)
    return (y3, y4, y5,
            A * a * s12 - 2.0 * a * y3 - a * a * y0,
            A * a * (mu + a2J * s01 + c) - 2.0 * a * y4 - a * a * y1,
            Bb * (a4J * s03) - 2.0 * b * y5 - b * b * y2)


@numba.njit(cache=True, error_model="numpy")
def integrate_batch_numba(y, sbuf, step0, z, A, p, colptr_l, targets_l, wdata_l, delays_l,
                          colptr_s, targets_s, wdata_s, delays_s, out, record_every, block):
    """:func:`_integrate` with the kernel's shortcuts (the constant is folded at compile time)."""
    _integrate(y, sbuf, step0, z, A, p, colptr_l, targets_l, wdata_l, delays_l,
               colptr_s, targets_s, wdata_s, delays_s, out, record_every, block, False, False)


@numba.njit(cache=True, error_model="numpy")
def integrate_batch_numba_exact(y, sbuf, step0, z, A, p, colptr_l, targets_l, wdata_l, delays_l,
                                colptr_s, targets_s, wdata_s, delays_s, out, record_every, block):
    """:func:`_integrate` without the shortcuts (libm exp, no shared exponential)."""
    if y.shape[2] == 1:  # one variant: a batch axis of length one known to the compiler
        _integrate(y, sbuf, step0, z, A, p, colptr_l, targets_l, wdata_l, delays_l,
                   colptr_s, targets_s, wdata_s, delays_s, out, record_every, block, True, True)
    else:
        _integrate(y, sbuf, step0, z, A, p, colptr_l, targets_l, wdata_l, delays_l,
                   colptr_s, targets_s, wdata_s, delays_s, out, record_every, block, True, False)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _integrate(y, sbuf, step0, z, A, p, colptr_l, targets_l, wdata_l, delays_l,
               colptr_s, targets_s, wdata_s, delays_s, out, record_every, block, exact, single):
    """Advance every variant ``z.shape[1]`` Heun steps in place.

    Parameters
    ----------
    y : ndarray, shape (6, n_nodes, B)
    sbuf : ndarray, shape (n_nodes, width, B)
        Coupling-sigmoid ring, ``width >= 2 * horizon + block``; step ``n`` is stored in
        every column ``n % horizon + m * horizon`` below ``width``.
    step0 : int
    z : ndarray, shape (n_steps, n_nodes, B)
        Standard normal draws (batch innermost, unlike the public (B, n_steps, n_nodes)).
    A : ndarray, shape (n_nodes, B)
    p : ndarray, shape (N_PARAMS,)
    colptr_l, targets_l, wdata_l, delays_l : ndarray
        CSC (by source) edges with ``delay >= block - 1`` (coupling precomputed per block).
    colptr_s, targets_s, wdata_s, delays_s : ndarray
        The other edges (coupling added step by step).
    out : ndarray, shape (n_records, n_nodes, B)
        ``y1 - y2`` of state ``n`` at row ``(n - 1) // record_every -
        ceil(step0 / record_every)`` when ``(n - 1) % record_every == 0``.
    record_every : int
    block : int
        Steps per coupling block (>= 1).
    exact : bool
        libm's ``exp`` and no shared exponential (see the module notes; with ``block=1``
        the arithmetic of the former single-variant kernel).
    single : bool
        The batch has one variant (lets the compiler drop the batch loops).
    """
    n_batch = 1 if single else y.shape[2]
    n_nodes = y.shape[1]
    n_steps = z.shape[0]
    width = sbuf.shape[1]
    horizon = (width - block) // 2
    dt = p[P_DT]
    a = p[P_A_RATE]
    b_rate = p[P_B_RATE]
    nu2 = 2.0 * p[P_NU_MAX]
    r = p[P_R]
    v0 = p[P_V0]
    J = p[P_J]
    a1J = p[P_A1] * J
    a2J = p[P_A2] * J
    a3J = p[P_A3] * J
    a4J = p[P_A4] * J
    Bb = p[P_B] * b_rate
    mu = p[P_MU]
    cmin = p[P_C_MIN]
    cspan = p[P_C_MAX] - p[P_C_MIN]
    cmid = p[P_C_MID]
    cr = p[P_C_R]
    ca = p[P_C_A]
    noise = p[P_NOISE]
    quad = p[P_A1] == 4.0 * p[P_A3] and not exact  # one exponential serves both y0 sigmoids
    k3 = math.exp(-3.0 * r * v0)
    cblk = np.empty((n_nodes, block, n_batch))
    # flat views: the (step, variant) values of one edge are one contiguous run
    cflat = cblk.reshape(n_nodes * block * n_batch)
    sflat = sbuf.reshape(n_nodes * width * n_batch)
    cstride = block * n_batch
    sstride = width * n_batch
    c = np.empty(n_batch)
    row0 = (step0 + record_every - 1) // record_every
    for s0 in range(0, n_steps, block):
        n0 = step0 + s0  # latest known state at the start of the block
        nq = min(block, n_steps - s0)
        cblk[:, :, :] = 0.0
        # coupling of steps n0 + 1 + q (q < nq) from long edges: states n0 + q - d <= n0;
        # column nbase - d holds state n0 - d (d < horizon: no modulo per edge)
        run = nq * n_batch
        nbase = n0 % horizon + horizon
        for j in range(n_nodes):
            for e in range(colptr_l[j], colptr_l[j + 1]):
                w = wdata_l[e]
                t = targets_l[e]
                cbase = t * cstride
                sbase = j * sstride + (nbase - delays_l[e]) * n_batch
                if run == 1:  # one step of one variant: no loop (loop-invariant, unswitched)
                    cflat[cbase] += w * sflat[sbase]
                else:
                    for i in range(run):  # an axpy over (step, variant)
                        cflat[cbase + i] += w * sflat[sbase + i]
        for q in range(nq):
            s = s0 + q
            n = n0 + q + 1
            base = (n - 1) % horizon + horizon
            for j in range(n_nodes):
                for e in range(colptr_s[j], colptr_s[j + 1]):
                    w = wdata_s[e]
                    t = targets_s[e]
                    col = base - delays_s[e]
                    for bb in range(n_batch):
                        cblk[t, q, bb] += w * sbuf[j, col, bb]
            slot = n % horizon
            i = n - 1
            rec = (i % record_every) == 0
            row = i // record_every - row0
            for k in range(n_nodes):
                for bb in range(n_batch):
                    ck = ca * cblk[k, q, bb]
                    eta = noise * z[s, k, bb]
                    x0 = y[0, k, bb]
                    x1 = y[1, k, bb]
                    x2 = y[2, k, bb]
                    x3 = y[3, k, bb]
                    x4 = y[4, k, bb]
                    x5 = y[5, k, bb]
                    Ak = A[k, bb]
                    f0, f1, f2, f3, f4, f5 = _dfun(x0, x1, x2, x3, x4, x5, Ak, ck, a, b_rate,
                                                   nu2, r, v0, a1J, a2J, a3J, a4J, mu, Bb, quad, k3,
                                                   exact)
                    g0, g1, g2, g3, g4, g5 = _dfun(
                        x0 + dt * f0, x1 + dt * f1, x2 + dt * f2, x3 + dt * f3,
                        x4 + dt * f4 + eta, x5 + dt * f5, Ak, ck, a, b_rate, nu2, r, v0,
                        a1J, a2J, a3J, a4J, mu, Bb, quad, k3, exact)
                    x0 = x0 + (f0 + g0) * dt / 2.0
                    x1 = x1 + (f1 + g1) * dt / 2.0
                    x2 = x2 + (f2 + g2) * dt / 2.0
                    x3 = x3 + (f3 + g3) * dt / 2.0
                    x4 = x4 + (f4 + g4) * dt / 2.0 + eta
                    x5 = x5 + (f5 + g5) * dt / 2.0
                    y[0, k, bb] = x0
                    y[1, k, bb] = x1
                    y[2, k, bb] = x2
                    y[3, k, bb] = x3
                    y[4, k, bb] = x4
                    y[5, k, bb] = x5
                    c[bb] = x1 - x2
                for bb in range(n_batch):
                    sk = cmin + cspan / (1.0 + _expx(cr * (cmid - c[bb]), exact))
                    sbuf[k, slot, bb] = sk
                    sbuf[k, slot + horizon, bb] = sk
                for col in range(slot + 2 * horizon, width, horizon):
                    for bb in range(n_batch):
                        sbuf[k, col, bb] = sbuf[k, slot, bb]
                if rec:
                    for bb in range(n_batch):
                        out[row, k, bb] = c[bb]
