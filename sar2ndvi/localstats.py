"""Local mean and standard deviation over a square window, NaN-aware and lazy.

``local_mean_std(image, w)`` gives, for every pixel, the mean and the population
standard deviation (ddof=0) of the valid (finite: NaN and +-inf are no data) pixels in
the ``w x w`` window centred on it, with exactly the edge semantics of xarray's
``da.rolling(y=w, x=w, center=True, min_periods=1).mean()`` / ``.std()``: at the scene
edges the window is truncated to the pixels inside the array, one valid value suffices
(its std is 0) and a pixel whose window holds no valid value is NaN. The last two
dimensions are (y, x); leading dimensions (time, band) are independent.

The algorithm (see ``docs/local-stats.md``) costs O(1) per pixel whatever the window:
separable window sums in the van Herk / Gil-Werman form. Each axis is cut into segments of
``w`` pixels aligned to global multiples of ``w``; every window contains exactly one
segment boundary (its *anchor*), so its sum is a suffix sum of the segment before the
anchor plus a prefix sum of the segment after it. There is no running add-and-subtract,
so no error drifts along a row, and because the segments are aligned to the array and
not to the chunk, every window sum is computed by the same operations in the same order
whatever the chunking: Dask results equal the in-memory results bit for bit. Values are
accumulated in float64 after subtracting a shift that is constant over each window (the
value at its anchor pixel), so E[x^2] - E[x]^2 does not cancel for data far from zero
(dB around -15, or 1000 +- 0.01), and constant data gives a std of exactly 0.

A compiled kernel (numba, ``nogil`` so Dask threads run chunks in parallel) is used
when numba is importable; a vectorised NumPy implementation of the same arithmetic, in
the same order, is the fallback and gives the same bits.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import numpy as np

from sar2ndvi.errors import InputError

try:  # numba is optional at import time: the NumPy fallback computes the same bits
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba = None

__all__ = ["MAX_WINDOW", "local_mean_std", "local_mean_std_numpy"]

MAX_WINDOW = 255
# Dask chunks narrower than this (pixels, along y or x) are merged with their neighbours
# before the halo exchange: with small chunks the map_overlap tasks, not the arithmetic,
# cost the time (256 chunks of 64 x 64 px: ~4700 tasks and ~0.6 s against ~0.05 s
# merged), and each halo re-reads (w - 1) pixels around every chunk.
_MIN_BLOCK = 256
_EPS = float(np.finfo(np.float64).eps)

T = TypeVar("T")


def _check_window(window: Any) -> int:
    if isinstance(window, bool | np.bool_) or not isinstance(window, int | np.integer):
        raise InputError(f"window must be an odd integer in 1..{MAX_WINDOW}, got {window!r}")
    w = int(window)
    if w < 1 or w % 2 == 0 or w > MAX_WINDOW:
        raise InputError(
            f"window must be an odd integer in 1..{MAX_WINDOW} (pixels), got {w}; "
            "use e.g. 11 or 29 as in the paper's sweep"
        )
    return w


# --------------------------------------------------------------------------------------
# The kernel on one extended block: E has shape (L, H, W) = (L, ny + w - 1, nx + w - 1);
# E[:, 0, 0] lies at global pixel (gy0, gx0) of the (unpadded) array of shape (NY, NX),
# so gy0, gx0 may be negative: the NaN padding. Output pixel (i, o) is the window
# E[:, i:i+w, o:o+w].
# --------------------------------------------------------------------------------------


def _anchor_index(anchor: int, n_global: int, g0: int, size: int) -> int:
    """Index in the block of the pixel whose value shifts the windows of ``anchor``.

    An anchor past the far edge of the array is moved onto the last pixel, which every
    window with that anchor contains; indices outside the block only occur for partial
    sums that no output uses, and are clamped.
    """
    a = min(anchor, n_global - 1) - g0
    return min(max(a, 0), size - 1)


def _kernel_python(E, w, gy0, gx0, NY, NX, out_mean, out_std):
    """Streaming, fused kernel (compiled with numba); see the module docstring."""
    L, H, W = E.shape
    ny = H - w + 1
    nx = W - w + 1
    floor_k = (6.0 * w + 16.0) * 2.220446049250313e-16
    nan = np.nan
    # anchors of the columns: prefix role (segment start) and suffix role (next start)
    xlo = np.empty(W, np.int64)
    xhi = np.empty(W, np.int64)
    for q in range(W):
        s = ((gx0 + q) // w) * w
        xlo[q] = _anchor_index(s, NX, gx0, W)
        xhi[q] = _anchor_index(s + w, NX, gx0, W)
    # anchor of each output column's window
    xwin = np.empty(nx, np.int64)
    for o in range(nx):
        xwin[o] = _anchor_index(((gx0 + o + w - 1) // w) * w, NX, gx0, W)
    # vertical running prefix sums (one row) and suffix sums (one segment of rows)
    pc = np.empty(W)
    pl1 = np.empty(W)
    pl2 = np.empty(W)
    ph1 = np.empty(W)
    ph2 = np.empty(W)
    sc = np.empty((w, W))
    sl1 = np.empty((w, W))
    sl2 = np.empty((w, W))
    sh1 = np.empty((w, W))
    sh2 = np.empty((w, W))
    cl = np.empty(W)
    ch = np.empty(W)
    # one row of vertical window sums and its horizontal suffix sums
    vc = np.empty(W)
    vl1 = np.empty(W)
    vl2 = np.empty(W)
    vh1 = np.empty(W)
    vh2 = np.empty(W)
    hc = np.empty(W)
    h1 = np.empty(W)
    h2 = np.empty(W)
    js0 = (gy0 // w) * w - gy0  # first segment start, in block rows (<= 0)
    qs0 = (gx0 // w) * w - gx0  # first segment start, in block columns (<= 0)
    for lead in range(L):
        js = js0
        while js < H:
            je = js + w - 1
            j_first = max(js, 0)
            j_last = min(je, H - 1)
            # ---- forward (prefix) pass over the segment, anchor row = its start
            yi = _anchor_index(gy0 + js, NY, gy0, H)
            for q in range(W):
                v = E[lead, yi, xlo[q]]
                cl[q] = v if v - v == 0.0 else 0.0
                v = E[lead, yi, xhi[q]]
                ch[q] = v if v - v == 0.0 else 0.0
                pc[q] = 0.0
                pl1[q] = 0.0
                pl2[q] = 0.0
                ph1[q] = 0.0
                ph2[q] = 0.0
            for j in range(j_first, j_last + 1):
                for q in range(W):
                    x = E[lead, j, q]
                    if x - x == 0.0:  # finite: NaN and +-inf are no data
                        xf = np.float64(x)
                        pc[q] += 1.0
                        d = xf - cl[q]
                        pl1[q] += d
                        pl2[q] += d * d
                        d = xf - ch[q]
                        ph1[q] += d
                        ph2[q] += d * d
                a = j - w + 1  # the window of output row a ends at row j
                if a < 0 or a >= ny:
                    continue
                if j == je:  # the window is this whole segment
                    for q in range(W):
                        vc[q] = pc[q]
                        vl1[q] = pl1[q]
                        vl2[q] = pl2[q]
                        vh1[q] = ph1[q]
                        vh2[q] = ph2[q]
                else:  # suffix of the previous segment + prefix of this one
                    k = a - (js - w)
                    for q in range(W):
                        vc[q] = sc[k, q] + pc[q]
                        vl1[q] = sl1[k, q] + pl1[q]
                        vl2[q] = sl2[k, q] + pl2[q]
                        vh1[q] = sh1[k, q] + ph1[q]
                        vh2[q] = sh2[k, q] + ph2[q]
                # ---- horizontal pass over this row of vertical sums
                ya = _anchor_index(((gy0 + a + w - 1) // w) * w, NY, gy0, H)
                qs = qs0
                while qs < W:  # suffix sums of the suffix-role (next anchor) sums
                    qe = min(qs + w - 1, W - 1)
                    acc_c = 0.0
                    acc_1 = 0.0
                    acc_2 = 0.0
                    for q in range(qe, max(qs, 0) - 1, -1):
                        acc_c += vc[q]
                        acc_1 += vh1[q]
                        acc_2 += vh2[q]
                        hc[q] = acc_c
                        h1[q] = acc_1
                        h2[q] = acc_2
                    qs += w
                qs = qs0
                while qs < W:  # prefix sums of the prefix-role sums, emitting outputs
                    qe = qs + w - 1
                    acc_c = 0.0
                    acc_1 = 0.0
                    acc_2 = 0.0
                    for q in range(max(qs, 0), min(qe, W - 1) + 1):
                        acc_c += vc[q]
                        acc_1 += vl1[q]
                        acc_2 += vl2[q]
                        o = q - w + 1
                        if o < 0 or o >= nx:
                            continue
                        if q == qe:
                            n = acc_c
                            s1 = acc_1
                            s2 = acc_2
                        else:
                            n = hc[o] + acc_c
                            s1 = h1[o] + acc_1
                            s2 = h2[o] + acc_2
                        if n == 0.0:
                            out_mean[lead, a, o] = nan
                            out_std[lead, a, o] = nan
                            continue
                        v = E[lead, ya, xwin[o]]
                        c = v if v - v == 0.0 else 0.0
                        m1 = s1 / n
                        e2 = s2 / n
                        var = e2 - m1 * m1
                        if var <= floor_k * e2:
                            var = 0.0
                        out_mean[lead, a, o] = c + m1
                        out_std[lead, a, o] = np.sqrt(var)
                    qs += w
            # ---- backward (suffix) pass over the segment, anchor row = the next start
            if js + w < H:  # a later segment's windows use these suffix sums
                yi = _anchor_index(gy0 + js + w, NY, gy0, H)
                for q in range(W):
                    v = E[lead, yi, xlo[q]]
                    cl[q] = v if v - v == 0.0 else 0.0
                    v = E[lead, yi, xhi[q]]
                    ch[q] = v if v - v == 0.0 else 0.0
                    pc[q] = 0.0
                    pl1[q] = 0.0
                    pl2[q] = 0.0
                    ph1[q] = 0.0
                    ph2[q] = 0.0
                for j in range(j_last, j_first - 1, -1):
                    k = j - js
                    for q in range(W):
                        x = E[lead, j, q]
                        if x - x == 0.0:
                            xf = np.float64(x)
                            pc[q] += 1.0
                            d = xf - cl[q]
                            pl1[q] += d
                            pl2[q] += d * d
                            d = xf - ch[q]
                            ph1[q] += d
                            ph2[q] += d * d
                        sc[k, q] = pc[q]
                        sl1[k, q] = pl1[q]
                        sl2[k, q] = pl2[q]
                        sh1[k, q] = ph1[q]
                        sh2[k, q] = ph2[q]
            js += w


def _jit(func):
    if _numba is None or os.environ.get("SAR2NDVI_NO_NUMBA"):
        return None
    try:
        return _numba.njit(cache=True, nogil=True)(func)
    except Exception:  # pragma: no cover - no writable cache location
        return _numba.njit(cache=False, nogil=True)(func)


if _numba is not None and not os.environ.get("SAR2NDVI_NO_NUMBA"):
    _anchor_index = _numba.njit(cache=True, nogil=True)(_anchor_index)  # type: ignore[assignment]
_kernel_numba = _jit(_kernel_python)
HAVE_NUMBA = _kernel_numba is not None


# ---- the NumPy fallback: the same arithmetic, in the same order, vectorised ----------


def _anchor_indices(anchors: np.ndarray, n_global: int, g0: int, size: int) -> np.ndarray:
    return np.clip(np.minimum(anchors, n_global - 1) - g0, 0, size - 1)


def _segment_scan(a: np.ndarray, axis: int, g0: int, w: int, reverse: bool) -> np.ndarray:
    """Cumulative sums restarting at every global multiple of ``w`` along ``axis``.

    Forward (prefix) or backward (suffix) within each segment, sequentially, as the
    compiled kernel does.
    """
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    front = g0 - (g0 // w) * w  # pixels of the first segment before the block
    total = front + n
    back = (-total) % w
    pad = [(0, 0)] * (a.ndim - 1) + [(front, back)]
    p = np.pad(a, pad)
    p = p.reshape(*p.shape[:-1], -1, w)
    p = np.cumsum(p[..., ::-1], axis=-1)[..., ::-1] if reverse else np.cumsum(p, axis=-1)
    p = p.reshape(*p.shape[:-2], -1)[..., front : front + n]
    return np.moveaxis(p, -1, axis)


def _window_sums(pre: np.ndarray, suf: np.ndarray, axis: int, g0: int, w: int) -> np.ndarray:
    n_out = pre.shape[axis] - w + 1
    starts = g0 + np.arange(n_out)
    aligned = (starts % w) == 0
    p = np.take(pre, np.arange(w - 1, w - 1 + n_out), axis=axis)
    s = np.take(suf, np.arange(n_out), axis=axis)
    shape = [1] * pre.ndim
    shape[axis] = n_out
    return np.where(aligned.reshape(shape), p, s + p)


def _kernel_numpy(E: np.ndarray, w: int, gy0: int, gx0: int, NY: int, NX: int):
    _L, H, W = E.shape
    x = E.astype(np.float64)
    valid = np.isfinite(x)  # NaN and +-inf are no data
    cfield = np.where(valid, x, 0.0)
    rows = (gy0 + np.arange(H)) // w * w
    cols = (gx0 + np.arange(W)) // w * w
    ylo = _anchor_indices(rows, NY, gy0, H)
    yhi = _anchor_indices(rows + w, NY, gy0, H)
    xlo = _anchor_indices(cols, NX, gx0, W)
    xhi = _anchor_indices(cols + w, NX, gx0, W)
    cnt = valid.astype(np.float64)
    vc = _window_sums(
        _segment_scan(cnt, 1, gy0, w, False), _segment_scan(cnt, 1, gy0, w, True), 1, gy0, w
    )
    v = {}
    for xr_name, xi in (("lo", xlo), ("hi", xhi)):
        sums = []
        for yi, reverse in ((ylo, False), (yhi, True)):
            d = np.where(valid, x - cfield[:, yi[:, None], xi[None, :]], 0.0)
            sums.append(
                (_segment_scan(d, 1, gy0, w, reverse), _segment_scan(d * d, 1, gy0, w, reverse))
            )
        (p1, p2), (s1, s2) = sums
        v[xr_name] = (_window_sums(p1, s1, 1, gy0, w), _window_sums(p2, s2, 1, gy0, w))
    n = _window_sums(
        _segment_scan(vc, 2, gx0, w, False), _segment_scan(vc, 2, gx0, w, True), 2, gx0, w
    )
    s1 = _window_sums(
        _segment_scan(v["lo"][0], 2, gx0, w, False),
        _segment_scan(v["hi"][0], 2, gx0, w, True),
        2,
        gx0,
        w,
    )
    s2 = _window_sums(
        _segment_scan(v["lo"][1], 2, gx0, w, False),
        _segment_scan(v["hi"][1], 2, gx0, w, True),
        2,
        gx0,
        w,
    )
    ny, nx = H - w + 1, W - w + 1
    ya = _anchor_indices((gy0 + np.arange(ny) + w - 1) // w * w, NY, gy0, H)
    xa = _anchor_indices((gx0 + np.arange(nx) + w - 1) // w * w, NX, gx0, W)
    c = cfield[:, ya[:, None], xa[None, :]]
    empty = n == 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = s1 / n
        e2 = s2 / n
        var = e2 - m1 * m1
    floor_k = (6.0 * w + 16.0) * 2.220446049250313e-16
    var = np.where(var <= floor_k * e2, 0.0, var)
    mean = np.where(empty, np.nan, c + m1).astype(np.float32)
    std = np.where(empty, np.nan, np.sqrt(np.where(empty, 0.0, var))).astype(np.float32)
    return mean, std


def _stats_block(
    E: np.ndarray, w: int, gy0: int, gx0: int, NY: int, NX: int, use_numba: bool | None = None
):
    """Mean and std of an extended block ``E`` (..., ny + w - 1, nx + w - 1)."""
    lead = E.shape[:-2]
    H, W = E.shape[-2:]
    if E.dtype not in (np.float32, np.float64):
        E = E.astype(np.float64)
    E3 = np.ascontiguousarray(E.reshape(-1, H, W))
    ny, nx = H - w + 1, W - w + 1
    if use_numba is None:
        use_numba = HAVE_NUMBA
    if use_numba and _kernel_numba is not None:
        mean = np.empty((E3.shape[0], ny, nx), np.float32)
        std = np.empty((E3.shape[0], ny, nx), np.float32)
        _kernel_numba(E3, w, gy0, gx0, NY, NX, mean, std)
    else:
        mean, std = _kernel_numpy(E3, w, gy0, gx0, NY, NX)
    return mean.reshape(*lead, ny, nx), std.reshape(*lead, ny, nx)


def local_mean_std_numpy(block: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory kernel: local mean and std of ``block`` over its last two axes.

    Truncated-window edges (as xarray's ``rolling(..., center=True, min_periods=1)``),
    NaN-aware, population std; float32 results of the same shape.
    """
    w = _check_window(window)
    block = np.asarray(block)
    if block.ndim < 2:
        raise InputError(f"local_mean_std needs at least 2 dims (y, x), got shape {block.shape}")
    r = w // 2
    NY, NX = block.shape[-2:]
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float64)
    pad = [(0, 0)] * (block.ndim - 2) + [(r, r), (r, r)]
    E = np.pad(block, pad, constant_values=np.nan)
    return _stats_block(E, w, -r, -r, NY, NX)


def _merge_small_chunks(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge neighbouring chunks so that every chunk holds at least ``minimum`` pixels."""
    if minimum <= 0 or min(chunks) >= minimum:
        return tuple(chunks)
    out: list[int] = []
    acc = 0
    for c in chunks:
        acc += c
        if acc >= minimum:
            out.append(acc)
            acc = 0
    if acc:
        if out:
            out[-1] += acc
        else:
            out.append(acc)
    return tuple(out)


def _local_mean_std_dask(x, w: int):
    import dask.array as da

    if x.ndim < 2:
        raise InputError(f"local_mean_std needs at least 2 dims (y, x), got shape {x.shape}")
    r = w // 2
    ax_y, ax_x = x.ndim - 2, x.ndim - 1
    new_chunks = list(x.chunks)
    for ax in (ax_y, ax_x):
        new_chunks[ax] = _merge_small_chunks(x.chunks[ax], max(r, _MIN_BLOCK))
    if tuple(new_chunks) != x.chunks:
        x = x.rechunk(tuple(new_chunks))
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    NY, NX = x.shape[-2:]
    # a halo only along axes with several chunks; the rest of the padding is added per block
    depth = {ax: 0 for ax in range(x.ndim)}
    boundary: dict[int, Any] = {ax: "none" for ax in range(x.ndim)}
    for ax in (ax_y, ax_x):
        if len(x.chunks[ax]) > 1:
            depth[ax] = r
            boundary[ax] = np.nan
    starts = [np.cumsum((0, *x.chunks[ax]))[:-1] for ax in (ax_y, ax_x)]
    dy, dx = depth[ax_y], depth[ax_x]

    def block_stats(E, block_info=None):
        iy, ix = block_info[0]["chunk-location"][-2:]
        y0, x0 = int(starts[0][iy]), int(starts[1][ix])
        pad = [(0, 0)] * (E.ndim - 2) + [(r - dy, r - dy), (r - dx, r - dx)]
        if r - dy or r - dx:
            E = np.pad(E, pad, constant_values=np.nan)
        mean, std = _stats_block(E, w, y0 - r, x0 - r, NY, NX)
        return np.stack([mean, std])

    out = da.map_overlap(
        block_stats,
        x,
        depth=depth,
        boundary=boundary,
        trim=False,
        dtype=np.float32,
        chunks=((2,), *x.chunks),
        new_axis=0,
        meta=np.empty((0,) * (x.ndim + 1), np.float32),
    )
    return out[0], out[1]


def local_mean_std(image: T, window: int) -> tuple[T, T]:
    """Local mean and population standard deviation over a ``window x window`` square.

    Over the last two dims (y, x); leading dims are independent. NaN-aware with
    truncated windows at the edges, exactly as xarray's
    ``rolling(y=w, x=w, center=True, min_periods=1).mean()`` / ``.std()``.
    xarray in -> xarray out (same dims and coords), Dask -> lazy Dask
    (``map_overlap``, halo ``w // 2``; chunking never changes a value; chunks narrower
    than 256 px along y or x are merged with their neighbours first, and the results keep
    the merged chunks), NumPy -> NumPy. Results are float32.

    NaN and +-inf pixels are no data (an infinite backscatter is a broken value, not a
    measurement). Raises InputError (a ValueError) for an even window, one below 1 or one
    above 255, and for an image with no pixels.
    """
    w = _check_window(window)
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) >= 2 and 0 in shape[-2:]:
        raise InputError(f"local_mean_std needs an image with pixels, got shape {shape}")
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        xr = None
    if xr is not None and isinstance(image, xr.DataArray):
        if image.ndim < 2:
            raise InputError(f"local_mean_std needs at least 2 dims (y, x), got dims {image.dims}")
        mean, std = local_mean_std(image.data, w)
        keep = {k: image.attrs[k] for k in ("grid_mapping", "units") if k in image.attrs}
        name = image.name
        out = []
        for data, what, suffix in ((mean, "mean", "mean"), (std, "standard deviation", "std")):
            attrs = {"long_name": f"local {what} over {w}x{w} px", "window": w, **keep}
            out.append(
                xr.DataArray(
                    data,
                    coords=image.coords,
                    dims=image.dims,
                    attrs=attrs,
                    name=f"{name}_{suffix}" if name is not None else None,
                )
            )
        return out[0], out[1]
    if hasattr(image, "dask") and hasattr(image, "map_blocks"):
        return _local_mean_std_dask(image, w)
    return local_mean_std_numpy(np.asarray(image), w)
