"""Compiled kernels of `roadmap_cli.augment` (numba): turning uint8 arrays and making the image part of the network
input in one pass. Imported only by `augment._backend()`, inside a try; `augment` holds the numpy versions that
these must equal, and chooses (`turn_copy`, `image_input`).

Turning (one of the 8 symmetries of the square, as `augment.turn_views`) is split into a first step on uint8
bytes (`transpose8`, `reverse_cols8`) and a last row reversal that the final copy does for free (reading rows in
reverse order costs nothing). Both first steps work on 8-byte words of arrays whose last two dimensions are
multiples of 8 (the caller checks): a transpose of 8x8-byte blocks held in eight 64-bit words (three rounds of
masked swaps), and a column reversal as reversed words with their bytes swapped. Element by element, a transposing
copy of a 1024² uint8 band costs ~1 ms in numpy (one strided byte per step); these ~0.2 ms.

`colour_input` is `augment.apply_colour` (jitter, clip, normalise) fused with the uint8 -> float32 conversion,
with the same float32 operations in the same order, so that both give the same values.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}

_M32 = np.uint64(0x00000000FFFFFFFF)
_M16 = np.uint64(0x0000FFFF0000FFFF)
_M8 = np.uint64(0x00FF00FF00FF00FF)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S8 = np.uint64(8)


@njit(**_OPTS)
def transpose8(src64: np.ndarray, dst64: np.ndarray, reverse: bool) -> None:
    """dst[c] = src[c].T (reverse: src[c][::-1].T, i.e. src[c].T[:, ::-1]) for uint8 [C, H, W] seen as uint64
    [C, H, W // 8] (src) and [C, W, H // 8] (dst); H and W multiples of 8."""
    n_ch, h, w8 = src64.shape
    hb = h // 8
    for c in range(n_ch):
        for bi in range(hb):
            r0 = bi * 8
            out_word = hb - 1 - bi if reverse else bi
            top = r0 + 7 if reverse else r0  # source row of word 0; the others follow in `step`s
            step = -1 if reverse else 1
            for bj in range(w8):
                x0, x1 = src64[c, top, bj], src64[c, top + step, bj]
                x2, x3 = src64[c, top + 2 * step, bj], src64[c, top + 3 * step, bj]
                x4, x5 = src64[c, top + 4 * step, bj], src64[c, top + 5 * step, bj]
                x6, x7 = src64[c, top + 6 * step, bj], src64[c, top + 7 * step, bj]
                # swap 4x4-byte blocks between words m and m + 4, then 2x2 between m and m + 2, then bytes
                t = ((x0 >> _S32) ^ x4) & _M32
                x4 ^= t
                x0 ^= t << _S32
                t = ((x1 >> _S32) ^ x5) & _M32
                x5 ^= t
                x1 ^= t << _S32
                t = ((x2 >> _S32) ^ x6) & _M32
                x6 ^= t
                x2 ^= t << _S32
                t = ((x3 >> _S32) ^ x7) & _M32
                x7 ^= t
                x3 ^= t << _S32
                t = ((x0 >> _S16) ^ x2) & _M16
                x2 ^= t
                x0 ^= t << _S16
                t = ((x1 >> _S16) ^ x3) & _M16
                x3 ^= t
                x1 ^= t << _S16
                t = ((x4 >> _S16) ^ x6) & _M16
                x6 ^= t
                x4 ^= t << _S16
                t = ((x5 >> _S16) ^ x7) & _M16
                x7 ^= t
                x5 ^= t << _S16
                t = ((x0 >> _S8) ^ x1) & _M8
                x1 ^= t
                x0 ^= t << _S8
                t = ((x2 >> _S8) ^ x3) & _M8
                x3 ^= t
                x2 ^= t << _S8
                t = ((x4 >> _S8) ^ x5) & _M8
                x5 ^= t
                x4 ^= t << _S8
                t = ((x6 >> _S8) ^ x7) & _M8
                x7 ^= t
                x6 ^= t << _S8
                r = bj * 8
                dst64[c, r, out_word] = x0
                dst64[c, r + 1, out_word] = x1
                dst64[c, r + 2, out_word] = x2
                dst64[c, r + 3, out_word] = x3
                dst64[c, r + 4, out_word] = x4
                dst64[c, r + 5, out_word] = x5
                dst64[c, r + 6, out_word] = x6
                dst64[c, r + 7, out_word] = x7


@njit(**_OPTS)
def reverse_cols8(src64: np.ndarray, dst64: np.ndarray) -> None:
    """dst = src[..., ::-1] for uint8 [C, H, W] seen as uint64 [C, H, W // 8]: words in reverse order, bytes of
    each word swapped."""
    n_ch, h, w8 = src64.shape
    for c in range(n_ch):
        for i in range(h):
            for w in range(w8):
                x = src64[c, i, w]
                x = ((x >> _S8) & _M8) | ((x & _M8) << _S8)
                x = ((x >> _S16) & _M16) | ((x & _M16) << _S16)
                dst64[c, i, w8 - 1 - w] = (x >> _S32) | (x << _S32)


@njit(**_OPTS)
def channel_stats(src: np.ndarray) -> tuple[int, int, int, int]:
    """(sum of band 0, of band 1, of band 2, pixels not 0 in all bands) of uint8 [3, H, W]."""
    _, h, w = src.shape
    s0 = s1 = s2 = n = 0
    for i in range(h):
        a0 = a1 = a2 = m = np.uint32(0)
        for j in range(w):
            r, g, b = src[0, i, j], src[1, i, j], src[2, i, j]
            a0 += np.uint32(r)
            a1 += np.uint32(g)
            a2 += np.uint32(b)
            m += np.uint32((r | g | b) != 0)
        s0 += a0
        s1 += a1
        s2 += a2
        n += m
    return s0, s1, s2, n


@njit(**_OPTS)
def colour_input(src: np.ndarray, out: np.ndarray, reverse_rows: bool, a: np.float32, b: np.float32,
                 d: np.float32, l0: np.float32, l1: np.float32, l2: np.float32, scale: np.ndarray,
                 offset: np.ndarray) -> None:
    """out[c, i] = normalised jittered src[c, i] (or src[c, H - 1 - i] when reverse_rows), float32 [3, H, W]:
    grey = l0 r + l1 g + l2 b; y = clip(v a + (grey b + d), 0, 255); out = y * scale[c] + offset[c]; pixels 0 in
    all bands give offset[c]. The float32 operations of `augment.apply_colour`, in its order."""
    _, h, w = src.shape
    s0, s1, s2 = scale[0], scale[1], scale[2]
    o0, o1, o2 = offset[0], offset[1], offset[2]
    lo, hi = np.float32(0.0), np.float32(255.0)
    for i in range(h):
        si = h - 1 - i if reverse_rows else i
        for j in range(w):
            r8, g8, b8 = src[0, si, j], src[1, si, j], src[2, si, j]
            r, g, bb = np.float32(r8), np.float32(g8), np.float32(b8)
            grey = r * l0 + g * l1
            grey = grey + bb * l2
            grey = grey * b + d
            y0 = min(max(r * a + grey, lo), hi) * s0 + o0
            y1 = min(max(g * a + grey, lo), hi) * s1 + o1
            y2 = min(max(bb * a + grey, lo), hi) * s2 + o2
            if (r8 | g8 | b8) == 0:
                y0, y1, y2 = o0, o1, o2
            out[0, i, j] = y0
            out[1, i, j] = y1
            out[2, i, j] = y2
