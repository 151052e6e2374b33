"""Compiled kernels of `roadmap_cli.render` (numba). Imported only by `render._backend()`, inside a try.

`render_window` renders one window in two passes, so that no random access goes beyond a cache-sized buffer:

1. Bucket: one pass over the samples' records computes each in-window sample's canvas pixel and channel values
   and appends them to the bucket of its band of canvas rows (`bh` rows, a power of two sized so that a band of
   the canvas fits in L2). Buckets are chains of fixed-size blocks from one pool, i.e. a few sequential write
   streams. This pass is most of the time (reading the 40-byte records alone is a third of it).
2. Band by band: add the band's entries into the band canvas (cache-resident), then smooth its rows as they
   become complete and write the output: each canvas row goes through the horizontal filters into a ring of the
   last 2r + 1 filtered rows and is zeroed (the canvas is all zeros again for the next band and the next call);
   an output row is the vertical combination of the ring rows; log / division / scaling happen on that row,
   straight into the output array.

Measured alternatives (1024², 1 M samples, two channels): scattering straight into a whole-window canvas (8 MB)
was as slow as bucketing and made the smoothing read the canvas back from memory; a channel-last canvas (one
cache line per sample) made the smoothing's strided loops slower than the planar band canvas costs the scatter.

The band canvas is planar float32 ``[k, bh, w + 2r]``: channel 0 the count, then per value field its sums
(value; or sin, cos of a bearing) and, only for a "dense" field, the count of its samples with a finite value.
A "sparse" field (the usual case: few samples lack a value) keeps no count of its own: its samples without a
value are listed instead, and where they reach, the count of samples with a value is the smoothed count minus
their smoothed weight. When more than `miss.shape[1]` samples of a field lack a value the call stops before
writing anything and returns that field; the caller repeats it with the field dense.

Filters: 2-D kernel = sum over q of outer(V[:, q], H[q]), H and V symmetric. Gaussian: one term (H = V = the
taps with centre 1). Binary disk: one box filter per distinct half-width of the disk's rows, V selecting for
each row offset the box of its width. The caller (`render._render_numba`) builds all the arguments.

All kernels use numba's numpy error model (no division / index checks, which would stop loops vectorising)
and are cached on disk (`cache=True`): the first import compiles them (~10-20 s), later processes load them.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# field kinds
PLAIN = 1  # sum of the values (scaled at the end)
BEARING = 2  # sums of sin and cos of a bearing in degrees
# density modes
DENS_LOG = 0
DENS_LINEAR = 1
DENS_BINARY = 2

BLOCK = 512  # entries per block of a band's bucket
CHUNK = 1024  # samples per chunk of the generic bucketing loop
PREFETCH = 32  # entries ahead of the write position of a bucket to prefetch
BAND_FLOATS = 1 << 18  # target floats in one band of the canvas (256 KB)

_S1, _S2, _S3, _S4 = -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0
_C1, _C2, _C3, _C4, _C5 = -0.5, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0, -1.0 / 3628800.0
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}  # numpy errors: no checks that stop SIMD


def band_rows(wc: int, k: int, hc: int) -> int:
    """Canvas rows per band: a power of two, about BAND_FLOATS floats, no more than the canvas needs."""
    bh = 1
    while bh * 2 * wc * k <= BAND_FLOATS and bh < hc:
        bh *= 2
    return bh


@njit(inline="always", **_OPTS)
def _sincos_deg(b: float) -> tuple[float, float]:
    """sin and cos of a finite angle in degrees, to ~1e-9: reduced to [-45, 45] degrees and a quadrant m, then
    Taylor polynomials, swapped and signed by m without branches (bearings are random: a branch on the
    quadrant mispredicted most of the time and cost more than the polynomials)."""
    q = math.floor(b / 90.0 + 0.5)
    t = (b - 90.0 * q) * (math.pi / 180.0)
    t2 = t * t
    s = t * (1.0 + t2 * (_S1 + t2 * (_S2 + t2 * (_S3 + t2 * _S4))))
    c = 1.0 + t2 * (_C1 + t2 * (_C2 + t2 * (_C3 + t2 * (_C4 + t2 * _C5))))
    m = int(q) & 3
    odd = (m & 1) == 1
    # m = 0: (s, c); 1: (c, -s); 2: (-s, -c); 3: (-c, s)
    return (c if odd else s) * float(1 - (m & 2)), (s if odd else c) * float(1 - ((m + 1) & 2))


@intrinsic
def _bits(typingctx, x):  # noqa: ANN001, ANN202 - numba intrinsic
    """The bits of a float32 as an int32 (a bitcast, so that loops using it still vectorise)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _float(typingctx, i):  # noqa: ANN001, ANN202 - numba intrinsic
    """The float32 with the bits of an int32."""
    if i != types.int32:
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _make_prefetch(rw: int):  # noqa: ANN202
    """An intrinsic prefetch(arr, idx): hint the cache to fetch arr[idx] (rw 1: for writing, 0: reading).
    It is llvm.prefetch, which never faults, so idx may run past the end of arr."""

    @intrinsic
    def prefetch(typingctx, arr, idx):  # noqa: ANN001, ANN202
        if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            aryty = sig.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
            i8p = ir.PointerType(ir.IntType(8))
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            # named by llvmlite's own mangling for this LLVM (as numba's memcpy is)
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
            # (address, rw, locality 3 = keep in all levels, cache type 1 = data)
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, rw), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(arr, idx), codegen

    return prefetch


_prefetch = _make_prefetch(1)
_prefetch_read = _make_prefetch(0)


@njit(**_OPTS)
def _log1p_row(a, scale0, o, n, scale):
    """o[x] = log1p(a[x] * scale0) * scale for x < n (a >= 0 finite; float32).

    Exponent and mantissa from the bits of 1 + z, then log(m) = 2 atanh(s), s = (m - 1) / (m + 1),
    |s| <= 0.172, by its series to s**9 (relative error < 1e-8, below float32 rounding). Plain float32
    arithmetic and bit casts, so the loop vectorises: numba has no SIMD log1p without Intel's SVML, and a libm
    call per pixel cost more than all the smoothing. Rounding 1 + z to float32 costs at most 6e-8 absolute,
    far inside the float32 tolerance the output is checked to.
    """
    one = np.float32(1.0)
    half = np.float32(0.5)
    sqrt2 = np.float32(_SQRT2)
    c3, c5, c7, c9 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7), np.float32(1 / 9)
    two = np.float32(2.0)
    ln2 = np.float32(_LN2)
    sc0 = np.float32(scale0)
    sc = np.float32(scale)
    for x in range(n):
        b = _bits(a[x] * sc0 + one)
        m = _float(np.int32((b & 0x7FFFFF) | 0x3F800000))  # the mantissa, in [1, 2)
        big = m > sqrt2  # move to [sqrt(1/2), sqrt(2))
        m = m * half if big else m
        ef = np.float32((b >> 23) - (126 if big else 127))
        s = (m - one) / (m + one)
        s2 = s * s
        p = one + s2 * (c3 + s2 * (c5 + s2 * (c7 + s2 * c9)))
        o[x] = (ef * ln2 + two * s * p) * sc


@njit(**_OPTS)
def _bucket_start(nb, cur, pos):
    """Empty buckets; returns the per-band end of the current block (0: none yet)."""
    for b in range(nb):
        cur[b] = -1
        pos[b] = 0
    return np.zeros(nb, dtype=np.int64)


@njit(**_OPTS)
def _bucket_end(nb, cur, head, nxt):
    """Terminate the block chains (head[b] = -1 for an empty band)."""
    for b in range(nb):
        if cur[b] >= 0:
            nxt[cur[b]] = -1
        else:
            head[b] = -1


@njit(**_OPTS)
def _bucket_plain(col, row, f0, dense, col_off, row_off, w, h, r, sh, pix, val, nxt, head, cur, pos, miss,
                  miss_n, miss_limit):
    """`_bucket` for the common case, a single PLAIN field (or none: f0 None), with a lean loop (the generic
    one, with code for every kind of field in it, measured 2-3x slower even where those branches never run)."""
    wc = w + 2 * r
    hc = h + 2 * r
    lo_x, hi_x = -float(r), float(w + r)
    lo_y, hi_y = -float(r), float(h + r)
    bmask = (1 << sh) - 1
    nb = (hc + bmask) >> sh
    lim = _bucket_start(nb, cur, pos)
    nfree = 0
    nm = 0
    for i in range(col.shape[0]):
        dx = col[i] - col_off
        dy = row[i] - row_off
        # the same test as on floor(dx), floor(dy) (the bounds are integers); False for NaN
        if not (dx >= lo_x and dx < hi_x and dy >= lo_y and dy < hi_y):
            continue
        cy = int(math.floor(dy)) + r
        cx = int(math.floor(dx)) + r
        b = cy >> sh
        e = pos[b]
        if e == lim[b]:  # a new block for this band (written out: as a call it made the loop 2x slower)
            blk = nfree
            nfree += 1
            c = cur[b]
            if c < 0:
                head[b] = blk
            else:
                nxt[c] = blk
            cur[b] = blk
            e = blk * BLOCK
            lim[b] = e + BLOCK
        pix[e] = (cy & bmask) * wc + cx
        pos[b] = e + 1
        # ~20 interleaved write streams are more than the hardware prefetcher follows: 10% faster with this
        _prefetch(pix, e + PREFETCH)
        if f0 is not None:
            _prefetch(val[0], e + PREFETCH)
            v = f0[i]
            ok = math.isfinite(v)
            if dense:
                val[0, e] = v if ok else 0.0
                val[1, e] = 1.0 if ok else 0.0
            else:
                val[0, e] = v if ok else 0.0
                if not ok:
                    if nm >= miss_limit:
                        return 0
                    miss[0, nm] = cy * wc + cx
                    nm += 1
    miss_n[0] = nm
    _bucket_end(nb, cur, head, nxt)
    return -1


@njit(**_OPTS)
def _field_values(fa, kind, o, cc, sel, slot, gpix, m, val, miss, miss_n, f, miss_limit):
    """Channel values of field f (values `fa`) for a chunk's bucketed samples: sample sel[j] went to pool entry
    slot[j] (canvas pixel gpix[j]); its sums go to val[o(, o + 1)], for a dense field (cc >= 0) 1 or 0 to
    val[cc], for a sparse one the missing ones to miss[f]. One lean loop per case (see `_bucket_plain`).
    False when field f's missing values pass `miss_limit`."""
    if kind == PLAIN:
        for j in range(m):
            v = fa[sel[j]]
            ok = math.isfinite(v)
            val[o, slot[j]] = v if ok else 0.0
            if cc >= 0:
                val[cc, slot[j]] = 1.0 if ok else 0.0
            elif not ok:
                q = miss_n[f]
                if q >= miss_limit:
                    return False
                miss[f, q] = gpix[j]
                miss_n[f] = q + 1
        return True
    # bearing: gather, then sin / cos in a branch-free contiguous loop that vectorises (scalar, the
    # polynomials cost 4x more than everything else here), then scatter
    bs = np.empty(m, dtype=np.float64)
    bc = np.empty(m, dtype=np.float64)
    for j in range(m):
        bs[j] = fa[sel[j]]
    for j in range(m):
        v = bs[j]
        ok = math.isfinite(v)
        sn, cs = _sincos_deg(v if ok else 0.0)
        bs[j] = sn if ok else 0.0
        bc[j] = cs if ok else 0.0
    for j in range(m):
        val[o, slot[j]] = bs[j]
        val[o + 1, slot[j]] = bc[j]
        if cc >= 0:
            val[cc, slot[j]] = 1.0 if math.isfinite(fa[sel[j]]) else 0.0
        elif not math.isfinite(fa[sel[j]]):
            q = miss_n[f]
            if q >= miss_limit:
                return False
            miss[f, q] = gpix[j]
            miss_n[f] = q + 1
    return True


@njit(**_OPTS)
def _bucket(col, row, f0, f1, f2, kinds, offs, vch, col_off, row_off, w, h, r, sh, pix, val, nxt, head, cur, pos,
            miss, miss_n, miss_limit):
    """Step 1 (see the module doc): fill the band buckets (block chains from head[b] through nxt, the last
    one cur[b], filled up to pos[b]; entry e: pix[e] the pixel in the band, val[c, e] the value of canvas
    channel c + 1) and miss[f, :miss_n[f]], the canvas pixels of field f's samples without a value. Returns
    the field whose missing values passed `miss_limit`, or -1.

    Chunk by chunk: the sample loop only places samples (as `_bucket_plain` without a field), then one loop
    per field writes the chunk's values (its records are still in cache): a single loop with code for every
    kind of field measured 2x slower."""
    wc = w + 2 * r
    hc = h + 2 * r
    lo_x, hi_x = -float(r), float(w + r)
    lo_y, hi_y = -float(r), float(h + r)
    bmask = (1 << sh) - 1
    nb = (hc + bmask) >> sh
    lim = _bucket_start(nb, cur, pos)
    sel = np.empty(CHUNK, dtype=np.int64)
    slot = np.empty(CHUNK, dtype=np.int64)
    gpix = np.empty(CHUNK, dtype=np.int64)
    nfree = 0
    n = col.shape[0]
    for s0 in range(0, n, CHUNK):
        m = 0
        for i in range(s0, min(n, s0 + CHUNK)):
            dx = col[i] - col_off
            dy = row[i] - row_off
            # the same test as on floor(dx), floor(dy) (the bounds are integers); False for NaN
            if not (dx >= lo_x and dx < hi_x and dy >= lo_y and dy < hi_y):
                continue
            cy = int(math.floor(dy)) + r
            cx = int(math.floor(dx)) + r
            b = cy >> sh
            e = pos[b]
            if e == lim[b]:  # a new block for this band
                blk = nfree
                nfree += 1
                c = cur[b]
                if c < 0:
                    head[b] = blk
                else:
                    nxt[c] = blk
                cur[b] = blk
                e = blk * BLOCK
                lim[b] = e + BLOCK
            pix[e] = (cy & bmask) * wc + cx
            pos[b] = e + 1
            _prefetch(pix, e + PREFETCH)
            sel[m] = i
            slot[m] = e
            gpix[m] = cy * wc + cx
            m += 1
        for f in range(3):
            if kinds[f] != 0:
                fa = f0 if f == 0 else (f1 if f == 1 else f2)
                if not _field_values(fa, kinds[f], offs[f] - 1, vch[f] - 1, sel, slot, gpix, m, val, miss, miss_n,
                                     f, miss_limit):
                    return f
    _bucket_end(nb, cur, head, nxt)
    return -1


@njit(**_OPTS)
def _scatter_band(b, k, plane, pix, val, nxt, head, cur, pos, canvas):
    """Add band b's bucket into the band canvas (planar, channel c at c * plane: channel 0 +1, channels 1..
    the stored values val[c - 1])."""
    blk = head[b]
    while blk >= 0:
        e0 = blk * BLOCK
        e1 = pos[b] if blk == cur[b] else e0 + BLOCK
        following = nxt[blk]  # blocks of a chain lie apart: fetch the next one while adding this one
        if following >= 0:
            for j in range(following * BLOCK, (following + 1) * BLOCK, 16):
                _prefetch_read(pix, j)
                for c in range(k - 1):
                    _prefetch_read(val[c], j)
        if k == 1:
            for e in range(e0, e1):
                canvas[pix[e]] += 1.0
        elif k == 2:
            v0 = val[0]
            for e in range(e0, e1):
                p = pix[e]
                canvas[p] += 1.0
                canvas[plane + p] += v0[e]
        else:  # one channel at a time: the band canvas is in cache, the loops stay short
            for e in range(e0, e1):
                canvas[pix[e]] += 1.0
            for c in range(k - 1):
                vc = val[c]
                base = (c + 1) * plane
                for e in range(e0, e1):
                    canvas[base + pix[e]] += vc[e]
        blk = nxt[blk]


@njit(**_OPTS)
def _bucket_rows(miss, miss_n, f, wc, hc):
    """Field f's missing samples grouped by canvas row: (start[hc + 1], cx[...]), row cy's columns being
    cx[start[cy]:start[cy + 1]]."""
    nm = miss_n[f]
    start = np.zeros(hc + 1, dtype=np.int64)
    for j in range(nm):
        start[miss[f, j] // wc + 1] += 1
    for cy in range(hc):
        start[cy + 1] += start[cy]
    fill = start[:hc].copy()
    cx = np.empty(nm, dtype=np.int64)
    for j in range(nm):
        cy = miss[f, j] // wc
        cx[fill[cy]] = miss[f, j] - cy * wc
        fill[cy] += 1
    return start, cx


@njit(**_OPTS)
def _hfilter(dst, src, taps, r, w):
    """dst[x] = sum_t taps[t] * src[x + t] for x < w (taps symmetric; zero taps skipped)."""
    tc = taps[r]
    a = src[r:r + w]
    started = False
    for t in range(1, r + 1):
        ut = taps[r - t]
        if ut == 0.0:
            continue
        lo = src[r - t:r - t + w]
        hi = src[r + t:r + t + w]
        if not started:
            for x in range(w):
                dst[x] = tc * a[x] + ut * (lo[x] + hi[x])
            started = True
        else:
            for x in range(w):
                dst[x] += ut * (lo[x] + hi[x])
    if not started:
        for x in range(w):
            dst[x] = tc * a[x]


@njit(**_OPTS)
def _vfilter(acc, ring, vt, y, r, wk):
    """acc = sum over q and row offsets d of vt[d, q] * ring[q, (y + d) % (2r + 1)] (vt symmetric in d)."""
    n = 2 * r + 1
    started = False
    for q in range(vt.shape[1]):
        for t in range(r + 1):
            ut = vt[r - t, q]
            if ut == 0.0:
                continue
            lo = ring[q, (y + r - t) % n]
            if t == 0:
                if not started:
                    for j in range(wk):
                        acc[j] = ut * lo[j]
                else:
                    for j in range(wk):
                        acc[j] += ut * lo[j]
            else:
                hi = ring[q, (y + r + t) % n]
                if not started:
                    for j in range(wk):
                        acc[j] = ut * (lo[j] + hi[j])
                else:
                    for j in range(wk):
                        acc[j] += ut * (lo[j] + hi[j])
            started = True
    if not started:
        acc[:] = 0.0


@njit(**_OPTS)
def _finish_row(acc, out, y, w, k, r, dens_out, dens_mode, dens_scale, means, mean_scale, thr, vch,
                starts, cxs, w2d, mrow, touched):
    """Write output row `y` from its smoothed channels `acc` (planar [k, w], unnormalised weights).

    means[c] = (output index, canvas sum channel, field); vch[field] its count channel (0: the sample count,
    corrected below where samples without a value reach: `starts[field]`, `cxs[field]` from `_bucket_rows`).
    """
    if dens_out >= 0:
        o = out[dens_out, y]
        if dens_mode == DENS_LOG:
            _log1p_row(acc, dens_scale[0], o, w, dens_scale[1])
        elif dens_mode == DENS_LINEAR:
            sc = np.float32(dens_scale[0])
            for x in range(w):
                o[x] = acc[x] * sc
        else:
            half = np.float32(0.5)
            for x in range(w):
                o[x] = np.float32(1.0) if acc[x] > half else np.float32(0.0)
    th = np.float32(thr)
    for c in range(means.shape[0]):
        o = out[means[c, 0], y]
        sm = acc[means[c, 1] * w:(means[c, 1] + 1) * w]
        ct = acc[vch[means[c, 2]] * w:(vch[means[c, 2]] + 1) * w]
        sc = np.float32(mean_scale[c])
        for x in range(w):
            v = ct[x]
            o[x] = sm[x] / v * sc if v > th else np.float32(0.0)
    # pixels reached by samples without a value (sparse fields): divide by the count of those with one
    n = 2 * r + 1
    for f in range(3):
        if vch[f] != 0 or starts[f].shape[0] == 0:
            continue
        st = starts[f]
        cx = cxs[f]
        nt = 0
        for ty in range(n):
            cy = y + ty
            for j in range(st[cy], st[cy + 1]):
                for tx in range(n):
                    x = cx[j] - tx
                    wt = w2d[ty, tx]
                    if x >= 0 and x < w and wt != 0.0:
                        mrow[x] += wt
                        touched[nt] = x
                        nt += 1
        if nt == 0:
            continue
        for c in range(means.shape[0]):
            if means[c, 2] != f:
                continue
            o = out[means[c, 0], y]
            cs = means[c, 1] * w
            sc = mean_scale[c]
            for j in range(nt):
                x = touched[j]
                v = acc[x] - mrow[x]
                o[x] = acc[cs + x] / v * sc if v > thr else 0.0
        for j in range(nt):
            mrow[touched[j]] = 0.0


_SIG = ("int64(float64[:], float64[:], float32[:], float32[:], float32[:], int64[::1], int64[::1], int64[::1], "
        "float64, float64, int64, int64, int64, int64, int64, float32[::1], int32[::1], float32[:, ::1], "
        "int64[::1], int64[:, ::1], float32[:, ::1], float32[:, ::1], float64[:, ::1], float32[:, :, ::1], int64, "
        "int64, float64[::1], int64[:, ::1], float64[::1], float64)")


@njit(_SIG, **_OPTS)
def render_window(col, row, f0, f1, f2, kinds, offs, vch, col_off, row_off, w, h, r, k, sh, canvas, pix, val,
                  nxt, miss, hf, vt, w2d, out, dens_out, dens_mode, dens_scale, means, mean_scale, thr):
    """The whole render (see the module doc). Returns -1, or the field whose missing values passed
    `miss.shape[1]` (then nothing is written).

    kinds[f], offs[f], vch[f]: field f's kind (0 unused), first sum channel, count channel (0: sparse).
    sh: log2 of the band height; canvas: zeros, (1 << sh) * (w + 2r) * k; pix [nblk * BLOCK],
    val [max(k - 1, 1), nblk * BLOCK], nxt [nblk]: the bucket pool, nblk at least the blocks the samples fill plus
    one per band; miss [3, limit]: room for the lists of samples without a value; hf [nq, 2r + 1],
    vt [2r + 1, nq]: the filters, w2d their 2-D kernel; dens_out, means: where the density and each mean
    channel go in `out` (see `_finish_row`); thr: counts at or below it are "no sample".
    """
    wc = w + 2 * r
    hc = h + 2 * r
    n = 2 * r + 1
    bh = 1 << sh
    nb = (hc + bh - 1) >> sh
    head = np.empty(nb, dtype=np.int64)
    cur = np.empty(nb, dtype=np.int64)
    pos = np.empty(nb, dtype=np.int64)
    miss_n = np.zeros(3, dtype=np.int64)
    if kinds[0] == 0:
        over = _bucket_plain(col, row, None, False, col_off, row_off, w, h, r, sh, pix, val, nxt, head, cur, pos,
                             miss, miss_n, miss.shape[1])
    elif kinds[0] == PLAIN and kinds[1] == 0:
        over = _bucket_plain(col, row, f0, vch[0] > 0, col_off, row_off, w, h, r, sh, pix, val, nxt, head, cur,
                             pos, miss, miss_n, miss.shape[1])
    else:
        over = _bucket(col, row, f0, f1, f2, kinds, offs, vch, col_off, row_off, w, h, r, sh, pix, val, nxt, head,
                       cur, pos, miss, miss_n, miss.shape[1])
    if over >= 0:
        return over
    empty = np.zeros(0, dtype=np.int64)
    s0, x0 = empty, empty
    s1, x1 = empty, empty
    s2, x2 = empty, empty
    nt = 0
    if kinds[0] != 0 and vch[0] == 0 and miss_n[0] > 0:
        s0, x0 = _bucket_rows(miss, miss_n, 0, wc, hc)
        nt = max(nt, miss_n[0])
    if kinds[1] != 0 and vch[1] == 0 and miss_n[1] > 0:
        s1, x1 = _bucket_rows(miss, miss_n, 1, wc, hc)
        nt = max(nt, miss_n[1])
    if kinds[2] != 0 and vch[2] == 0 and miss_n[2] > 0:
        s2, x2 = _bucket_rows(miss, miss_n, 2, wc, hc)
        nt = max(nt, miss_n[2])
    starts = (s0, s1, s2)
    cxs = (x0, x1, x2)
    mrow = np.zeros(w, dtype=np.float64)
    touched = np.empty(nt * n, dtype=np.int64)
    wk = w * k
    acc = np.empty(wk, dtype=np.float32)
    nq = hf.shape[0]
    ring = np.empty((nq, n, wk), dtype=np.float32)  # per filter q the last n filtered canvas rows, planar
    plane = bh * wc
    for b in range(nb):
        _scatter_band(b, k, plane, pix, val, nxt, head, cur, pos, canvas)
        for lr in range(bh):
            cy = b * bh + lr
            if cy >= hc:
                break
            for c in range(k):
                src = canvas[c * plane + lr * wc:c * plane + (lr + 1) * wc]
                for q in range(nq):
                    _hfilter(ring[q, cy % n, c * w:(c + 1) * w], src, hf[q], r, w)
                src[:] = 0.0
            y = cy - 2 * r
            if y >= 0:  # output row y reads canvas rows y .. y + 2r
                _vfilter(acc, ring, vt, y, r, wk)
                _finish_row(acc, out, y, w, k, r, dens_out, dens_mode, dens_scale, means, mean_scale, thr, vch,
                            starts, cxs, w2d, mrow, touched)
    return -1
