"""NumPy's per-sample draws, reproduced bit for bit in compiled code.

:func:`esikit.data.synthesis.draw_sample_randomness` builds
``np.random.default_rng([seed, epoch, index])`` and draws ``integers(0, K, size=S)``
then ``standard_normal((T, C), dtype=float32)``. Done through NumPy that costs about
three times as much as writing a dense sample (the generator's construction hashes the
seed in Python-level code, the float32 ziggurat runs through function pointers), so it
would bound any fast path. This module implements the same algorithms in numba:

- ``SeedSequence`` (the entropy pool hash and ``generate_state``),
- ``PCG64`` (128-bit LCG on LLVM's 128-bit integers, XSL-RR output, the buffered
  upper half for 32-bit draws),
- Lemire's bounded 32-bit integers (``Generator.integers`` for ranges below 2**32),
- the 256-layer float32 ziggurat of ``Generator.standard_normal``.

The ziggurat tables are recomputed from the Marsaglia-Tsang recursion. The first use
checks a few thousand draws against NumPy (:func:`check_against_numpy`); on any
difference the callers fall back to NumPy, so a NumPy release that changes an
algorithm costs speed, never correctness.
"""

from __future__ import annotations

import logging
import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

logger = logging.getLogger(__name__)

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_S32 = _U64(32)
_S58 = _U64(58)
_S63 = _U64(63)
_S64 = _U64(64)
_ONE = _U64(1)
_ZERO = _U64(0)
# PCG64's default 128-bit multiplier, as (high, low) words.
_MULT_HI = _U64(0x2360ED051FC65DA4)
_MULT_LO = _U64(0x4385DF649FCCF645)

# SeedSequence constants (pool of 4 uint32 words).
_INIT_A = np.uint32(0x43B0D7E5)
_MULT_A = np.uint32(0x931E8875)
_INIT_B = np.uint32(0x8B51F9DD)
_MULT_B = np.uint32(0x58F38DED)
_MIX_MULT_L = np.uint32(0xCA01F9DD)
_MIX_MULT_R = np.uint32(0x4973F715)
_XSHIFT = np.uint32(16)

_ZIG_R = 3.6541528853610088
_ZIG_V = 0.00492867323399


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ki`` (uint32), ``wi`` and ``fi`` (float32) of the 256-layer float32 ziggurat."""
    m = float(2**23)
    ki = np.zeros(256, dtype=np.uint64)
    wi = np.zeros(256, dtype=np.float64)
    fi = np.zeros(256, dtype=np.float64)
    dn = tn = _ZIG_R
    f = math.exp(-0.5 * dn * dn)
    q = _ZIG_V / f
    ki[0] = round((dn / q) * m)  # rounded, as NumPy's tables are
    ki[1] = 0
    wi[0] = q / m
    wi[255] = dn / m
    fi[0] = 1.0
    fi[255] = f
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(_ZIG_V / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = round((dn / tn) * m)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / m
    return ki.astype(np.uint32), wi.astype(np.float32), fi.astype(np.float32)


_KI, _WI, _FI = _ziggurat_tables()
_ZIG_R_F = np.float32(_ZIG_R)
_ZIG_INV_R_F = np.float32(0.27366123732975828)
_INV_2_24 = np.float32(1.0 / 16777216.0)


# -- SeedSequence -----------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _hashmix(value, hash_const):
    value ^= hash_const
    hash_const = np.uint32(hash_const * _MULT_A)
    value = np.uint32(value * hash_const)
    value ^= value >> _XSHIFT
    return value, hash_const


@nb.njit(cache=True, inline="always")
def _mix(x, y):
    result = np.uint32(np.uint32(_MIX_MULT_L * x) - np.uint32(_MIX_MULT_R * y))
    result ^= result >> _XSHIFT
    return result


@nb.njit(cache=True)
def _entropy_words(values, words):
    """Each non-negative int of ``values`` as little-endian uint32 words (0 gives one word)."""
    n = 0
    for v in values:
        u = _U64(v)
        if u == _ZERO:
            words[n] = np.uint32(0)
            n += 1
        while u > _ZERO:
            words[n] = np.uint32(u & _M32)
            n += 1
            u >>= _S32
    return n


@nb.njit(cache=True)
def pcg64_seed_state(values):
    """PCG64 state of ``default_rng(list(values))``: array ``[s_hi, s_lo, inc_hi, inc_lo, has32, u32]``."""
    words = np.zeros(2 * values.size + 1, dtype=np.uint32)
    n = _entropy_words(values, words)
    pool = np.zeros(4, dtype=np.uint32)
    hc = _INIT_A
    for i in range(4):
        v = words[i] if i < n else np.uint32(0)
        pool[i], hc = _hashmix(v, hc)
    for i_src in range(4):
        for i_dst in range(4):
            if i_src != i_dst:
                h, hc = _hashmix(pool[i_src], hc)
                pool[i_dst] = _mix(pool[i_dst], h)
    for i_src in range(4, n):
        for i_dst in range(4):
            h, hc = _hashmix(words[i_src], hc)
            pool[i_dst] = _mix(pool[i_dst], h)
    # generate_state(4, uint64): 8 uint32 words, paired little-endian.
    st = np.zeros(8, dtype=np.uint32)
    hb = _INIT_B
    for i in range(8):
        d = pool[i % 4]
        d ^= hb
        hb = np.uint32(hb * _MULT_B)
        d = np.uint32(d * hb)
        d ^= d >> _XSHIFT
        st[i] = d
    v = np.zeros(4, dtype=np.uint64)
    for i in range(4):
        v[i] = _U64(st[2 * i]) | (_U64(st[2 * i + 1]) << _S32)
    # pcg64_set_seed: initstate = (v0, v1), initseq = (v2, v3) as (high, low).
    inc_hi = (v[2] << _ONE) | (v[3] >> _S63)
    inc_lo = (v[3] << _ONE) | _ONE
    s_hi, s_lo = _step(_ZERO, _ZERO, inc_hi, inc_lo)
    lo = s_lo + v[1]
    carry = _ONE if lo < s_lo else _ZERO
    s_hi = s_hi + v[0] + carry
    s_lo = lo
    s_hi, s_lo = _step(s_hi, s_lo, inc_hi, inc_lo)
    out = np.zeros(6, dtype=np.uint64)
    out[0], out[1], out[2], out[3] = s_hi, s_lo, inc_hi, inc_lo
    return out


# -- PCG64 -----------------------------------------------------------------------------------


@intrinsic
def _step(typingctx, s_hi, s_lo, i_hi, i_lo):
    """One PCG64 step, ``state * MULT + inc`` modulo 2**128, on (high, low) uint64 words.

    Written as LLVM IR on 128-bit integers: one native 64 x 64 -> 128 multiply
    instead of four 32-bit partial products (the generator runs 2.3x faster).
    """
    u64 = types.uint64
    sig = types.UniTuple(u64, 2)(u64, u64, u64, u64)

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        i64 = ir.IntType(64)
        sixty_four = ir.Constant(i128, 64)

        def join(hi, lo):
            return builder.or_(builder.shl(builder.zext(hi, i128), sixty_four), builder.zext(lo, i128))

        mult = ir.Constant(i128, (int(_MULT_HI) << 64) | int(_MULT_LO))
        new = builder.add(builder.mul(join(args[0], args[1]), mult), join(args[2], args[3]))
        hi = builder.trunc(builder.lshr(new, sixty_four), i64)
        lo = builder.trunc(new, i64)
        return context.make_tuple(builder, signature.return_type, [hi, lo])

    return sig, codegen


@nb.njit(cache=True, inline="always")
def _output(s_hi, s_lo):
    rot = s_hi >> _S58
    x = s_hi ^ s_lo
    return (x >> rot) | (x << ((_S64 - rot) & _S63))


@nb.njit(cache=True, inline="always")
def _next32(st):
    """Next uint32 (as uint64) from state array ``st`` (numpy's buffered upper half)."""
    if st[4] != _ZERO:
        st[4] = _ZERO
        return st[5]
    hi, lo = _step(st[0], st[1], st[2], st[3])
    st[0] = hi
    st[1] = lo
    v = _output(hi, lo)
    st[4] = _ONE
    st[5] = v >> _S32
    return v & _M32


@nb.njit(cache=True)
def bounded_integers(st, high, out):
    """``Generator.integers(0, high, size=out.size)`` for ``1 <= high <= 2**32`` (in place)."""
    rng = _U64(high - 1)
    if rng == _ZERO:
        for i in range(out.size):
            out[i] = 0
        return
    if rng == _M32:
        for i in range(out.size):
            out[i] = np.int64(_next32(st))
        return
    excl = rng + _ONE
    for i in range(out.size):
        m = _next32(st) * excl
        left = m & _M32
        if left < excl:
            threshold = (_M32 - rng) % excl
            while left < threshold:
                m = _next32(st) * excl
                left = m & _M32
        out[i] = np.int64(m >> _S32)


@nb.njit(cache=True, inline="always")
def _zig_fast(r, ki, wi):
    """The ziggurat's common case: ``(accepted, x)`` for one uint32 ``r``."""
    idx = np.int64(r & _U64(0xFF))
    rabs = (r >> _U64(9)) & _U64(0x7FFFFF)
    x = np.float32(np.int64(rabs)) * wi[idx]
    if (r >> _U64(8)) & _ONE:
        x = -x
    return rabs < ki[idx], x


@nb.njit(cache=True)
def normal_scratch(n):
    """Scratch arrays ``(blk, xs, acc)`` for :func:`standard_normal_f32_block` drawing ``n`` normals.

    ``n`` positions plus room for the rare paths' extra draws (past it they come from the state).
    """
    m = n + n // 32 + 64
    return np.empty(m, np.uint32), np.empty(m, np.float32), np.empty(m, np.bool_)


@nb.njit(cache=True, inline="always")
def _take(st, blk, p):
    """uint32 number ``p`` of the stream: from the block, or past it from the state."""
    if p < blk.size:
        return _U64(blk[p])
    return _next32(st)


@nb.njit(cache=True)
def standard_normal_f32_block(st, out, blk, xs, acc):
    """``Generator.standard_normal(out.shape, dtype=float32)`` into the flat array ``out``.

    Fast because the stream is drawn in a block first: the uint32 stream (the buffered
    half, then low and high halves of each 64-bit step) fills ``blk``; one branch-free
    pass computes every position's ziggurat value and acceptance (it vectorizes); a last
    pass walks the stream, taking accepted values and sending the rare rejections
    through the exact slow paths, which read their uniforms from the following
    positions. Past the block, draws continue from ``st``, which is left after the block
    (not after the last draw used: call this last on a generator, as the sample draws do).
    """
    ki, wi, fi = _KI, _WI, _FI
    m = blk.size
    p = 0
    if st[4] != _ZERO:
        blk[0] = np.uint32(st[5])
        st[4] = _ZERO
        p = 1
    s_hi, s_lo, i_hi, i_lo = st[0], st[1], st[2], st[3]
    while p + 1 < m:
        s_hi, s_lo = _step(s_hi, s_lo, i_hi, i_lo)
        v = _output(s_hi, s_lo)
        blk[p] = np.uint32(v & _M32)
        blk[p + 1] = np.uint32(v >> _S32)
        p += 2
    if p < m:
        s_hi, s_lo = _step(s_hi, s_lo, i_hi, i_lo)
        v = _output(s_hi, s_lo)
        blk[p] = np.uint32(v & _M32)
        st[4], st[5] = _ONE, v >> _S32
    st[0], st[1] = s_hi, s_lo
    for q in range(m):
        r = blk[q]
        idx = r & np.uint32(0xFF)
        rabs = (r >> np.uint32(9)) & np.uint32(0x7FFFFF)
        x = np.float32(np.int32(rabs)) * wi[idx]
        xs[q] = -x if (r >> np.uint32(8)) & np.uint32(1) else x
        acc[q] = rabs < ki[idx]
    n = out.size
    i = 0
    p = 0
    while i < n:
        if p < m:
            q = p
            p += 1
            if acc[q]:
                out[i] = xs[q]
                i += 1
                continue
            r = _U64(blk[q])
        else:
            r = _next32(st)
            p += 1
            ok, x = _zig_fast(r, ki, wi)
            if ok:
                out[i] = x
                i += 1
                continue
        # Rare paths, reading their uniforms from the following stream positions.
        idx = np.int64(r & _U64(0xFF))
        rabs = (r >> _U64(9)) & _U64(0x7FFFFF)
        _, x = _zig_fast(r, ki, wi)
        if idx == 0:
            while True:
                u1 = np.float32(np.int64(_take(st, blk, p) >> _U64(8))) * _INV_2_24
                xx = -_ZIG_INV_R_F * np.float32(np.log1p(-u1))
                u2 = np.float32(np.int64(_take(st, blk, p + 1) >> _U64(8))) * _INV_2_24
                yy = -np.float32(np.log1p(-u2))
                p += 2
                if yy + yy > xx * xx:
                    if (rabs >> _U64(8)) & _ONE:
                        out[i] = -(_ZIG_R_F + xx)
                    else:
                        out[i] = _ZIG_R_F + xx
                    i += 1
                    break
        else:
            u = np.float32(np.int64(_take(st, blk, p) >> _U64(8))) * _INV_2_24
            p += 1
            xd = np.float64(x)
            if np.float64((fi[idx - 1] - fi[idx]) * u + fi[idx]) < math.exp(-0.5 * xd * xd):
                out[i] = x
                i += 1


@nb.njit(cache=True)
def sample_draws_scratch(seed, epoch, index, n_options, choice, noise, blk, xs, acc):
    """:func:`sample_draws_into` with caller-owned scratch (see :func:`normal_scratch`)."""
    values = np.empty(3, dtype=np.int64)
    values[0], values[1], values[2] = seed, epoch, index
    st = pcg64_seed_state(values)
    bounded_integers(st, n_options, choice)
    standard_normal_f32_block(st, noise.reshape(-1), blk, xs, acc)


@nb.njit(cache=True)
def sample_draws_into(seed, epoch, index, n_options, choice, noise):
    """The draws of :func:`~esikit.data.synthesis.draw_sample_randomness`, in place.

    ``choice`` is int64 of shape (S,), filled with ``integers(0, n_options)``; ``noise``
    is a contiguous float32 array of any shape (T * C values).
    """
    blk, xs, acc = normal_scratch(noise.size)
    sample_draws_scratch(seed, epoch, index, n_options, choice, noise, blk, xs, acc)


@nb.njit(cache=True)
def batch_draws(seed, epoch, indices, n_options, choice, noise):
    """Draws of many samples: ``choice`` (B, S) int64 and ``noise`` (B, T, C) float32, in place."""
    blk, xs, acc = normal_scratch(noise[0].size)
    for b in range(indices.size):
        sample_draws_scratch(seed, epoch, indices[b], n_options, choice[b], noise[b], blk, xs, acc)


_CHECKED: dict[str, bool] = {}


def check_against_numpy() -> bool:
    """Whether these kernels reproduce NumPy's draws here (computed once per process).

    Compares the draws of a few seeds, epochs and indices (choices with K = 1, 3, 5 and
    one source slot, and 3 x 20,000 normals, which exercise the ziggurat's rare paths).
    """
    if "ok" in _CHECKED:
        return _CHECKED["ok"]
    ok = True
    try:
        for seed, epoch, index, k, s in ((0, 0, 0, 3, 2), (7, 3, 123456, 5, 1), (2**33 + 5, 1, 9, 1, 2)):
            rng = np.random.default_rng([seed, epoch, index])
            want_c = rng.integers(0, k, size=s)
            want_n = rng.standard_normal((400, 50), dtype=np.float32)
            choice = np.empty(s, dtype=np.int64)
            noise = np.empty((400, 50), dtype=np.float32)
            sample_draws_into(seed, epoch, index, k, choice, noise)
            if not (np.array_equal(choice, want_c) and np.array_equal(noise, want_n)):
                ok = False
                break
    except Exception as exc:  # noqa: BLE001 - a compile failure means: use NumPy
        logger.warning("compiled random draws unavailable (%s); using NumPy's (slower)", exc)
        ok = False
    else:
        if not ok:
            logger.warning("compiled random draws differ from this NumPy version's; using NumPy's (slower)")
    _CHECKED["ok"] = ok
    return ok
