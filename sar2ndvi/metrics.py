"""Masked image metrics for predicted NDVI against reference NDVI: RMSE, MAE, SSIM, PSNR.

Every function takes two 2-D images ``(y, x)`` (NumPy arrays or in-memory
``xarray.DataArray``, any real dtype) and an optional boolean ``mask`` (True = valid) of the
same shape. A pixel is scored when it is finite in both images and valid in the mask; values
under the other pixels never influence any result (they are replaced by zeros before any
arithmetic). Accumulation is float64. When no pixel can be scored the result is NaN, not an
error, so a cloud-covered test block shows up as a missing value in a table, and a
`NoValidPixelsWarning` says why. Scored values beyond +-``MAX_ABS_VALUE`` (1e6) are refused
with an InputError: they are not NDVI, and float64 moments would cancel or overflow.

NDVI lies in [-1, 1], so the data range is 2 (``NDVI_DATA_RANGE``): PSNR is
``10 log10(2**2 / MSE)`` dB and SSIM's constants are ``C1 = (0.01 * 2)**2`` and
``C2 = (0.03 * 2)**2``. With it, the paper's RMSE of 0.0615 is a PSNR of 30.24 dB.

SSIM is Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5) and population
covariances, computed by normalised convolution so that it is honest under a mask: with G
the Gaussian window (zero outside the image) and m the validity mask,

    mu_x = G*(m x) / G*m,   var_x = G*(m x^2) / G*m - mu_x^2,   cov = G*(m x y) / G*m - mu_x mu_y

and the SSIM map is averaged over *well-supported* pixels: valid pixels at least
``(win_size - 1) / 2`` pixels from the image border (as ``skimage`` crops) whose window puts
at least ``min_support`` (default 0.5, ``SSIM_MIN_SUPPORT``) of its weight on valid pixels.
Without a mask and NaN this is ``skimage.metrics.structural_similarity(a, b, data_range=2,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. See ``docs/metrics.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import xarray as xr
from scipy import ndimage

from sar2ndvi.errors import InputError

__all__ = [
    "METRIC_KEYS",
    "NDVI_DATA_RANGE",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_MIN_SUPPORT",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "SUPPORT_TOLERANCE",
    "format_table",
    "mae",
    "psnr",
    "rmse",
    "score",
    "ssim",
    "ssim_map",
    "valid_mask",
]

#: NDVI spans [-1, 1]: the peak-to-peak range used by PSNR and SSIM's constants.
NDVI_DATA_RANGE = 2.0
#: Standard deviation (pixels) of SSIM's Gaussian window (Wang et al. 2004).
SSIM_SIGMA = 1.5
#: Side (pixels) of SSIM's window: the Gaussian is truncated at radius (11 - 1) / 2 = 5.
SSIM_WINDOW = 11
#: SSIM stabilising constants, as fractions of the data range.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Least fraction of a pixel's window weight that must fall on valid pixels for its SSIM to
#: count: below it the local statistics rest on too few pixels to mean much.
SSIM_MIN_SUPPORT = 0.5
#: Slack on that comparison, so that min_support = 1 keeps fully valid windows whose weights
#: sum to 1 - 1 ulp (and float32 sums in the training loss).
SUPPORT_TOLERANCE = 1e-6
#: The keys of ``score``'s result, in order.
METRIC_KEYS = ("rmse", "mae", "ssim", "psnr", "n_pixels")
#: Largest magnitude a scored pixel may have. NDVI lies in [-1, 1]; far beyond this, float64
#: moments cancel (SSIM turns to noise) and then overflow (inf - inf = NaN).
MAX_ABS_VALUE = 1e6


class NoValidPixelsWarning(UserWarning):
    """A metric found no pixel to score (all NaN, masked out or, for SSIM, none well
    supported) and returned NaN."""


_NO_VALID = "no valid pixel to score (NaN or inf in pred or truth, or masked out)"


def _nothing_to_score(metric: str, why: str) -> float:
    """NaN, said out loud: a NaN metric must never pass for a computed one."""
    warnings.warn(f"{metric}: {why}; the result is NaN", NoValidPixelsWarning, stacklevel=3)
    return math.nan


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _as_image(a: Any, name: str) -> np.ndarray:
    """``a`` as a float64 2-D array ``(y, x)``; DataArrays give their ``.values``."""
    if isinstance(a, xr.DataArray):
        a = a.values
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise InputError(
            f"{name} must hold real numbers (NDVI), got dtype {arr.dtype}; "
            f"convert it with .astype('float32')"
        )
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D image (y, x), got shape {arr.shape}; "
            "select one time step / band first (e.g. da.isel(time=0))"
        )
    return arr.astype(np.float64, copy=False)


def _as_mask(mask: Any) -> np.ndarray:
    """``mask`` as a bool 2-D array; numeric masks must hold only 0 and 1."""
    if isinstance(mask, xr.DataArray):
        mask = mask.values
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        if m.dtype.kind not in "fiu" or not np.isin(m, (0, 1)).all():
            raise InputError(
                f"mask must be boolean (True = valid) or hold only 0 and 1, got dtype {m.dtype}"
                " with other values; build it with e.g. `cloud_free & np.isfinite(truth)`"
            )
        m = m.astype(bool)
    if m.ndim != 2:
        raise InputError(f"mask must be a 2-D image (y, x), got shape {m.shape}")
    return m


def _check_dims(pred: Any, truth: Any) -> None:
    """Two DataArrays must agree on dim order, or y and x would be compared crosswise."""
    both = isinstance(pred, xr.DataArray) and isinstance(truth, xr.DataArray)
    if both and pred.dims != truth.dims:
        raise InputError(
            f"pred has dims {pred.dims} but truth has dims {truth.dims}; "
            f"transpose one of them, e.g. pred.transpose(*truth.dims)"
        )


def _prepare(pred: Any, truth: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, truth, valid)``: float64 images and the bool mask of scorable pixels."""
    _check_dims(pred, truth)
    p = _as_image(pred, "pred")
    t = _as_image(truth, "truth")
    if p.shape != t.shape:
        raise InputError(
            f"pred has shape {p.shape} but truth has shape {t.shape}; "
            "both images must lie on the same (y, x) grid"
        )
    valid = np.isfinite(p) & np.isfinite(t)
    if mask is not None:
        m = _as_mask(mask)
        if m.shape != p.shape:
            raise InputError(
                f"mask has shape {m.shape} but the images have shape {p.shape}; "
                "give one True/False per pixel of the images"
            )
        valid &= m
    for name, image in (("pred", p), ("truth", t)):
        largest = float(np.abs(image[valid]).max(initial=0.0))
        if largest > MAX_ABS_VALUE:
            raise InputError(
                f"{name} holds {largest:.3g} at a scored pixel; the metrics take NDVI-like "
                f"values of magnitude <= {MAX_ABS_VALUE:g}: mask or clip such pixels"
            )
    return p, t, valid


def valid_mask(pred: Any, truth: Any, mask: Any = None) -> np.ndarray:
    """Pixels that the metrics score: finite in both images and True in ``mask``.

    Args:
        pred, truth: 2-D images ``(y, x)`` of the same shape (NDVI, any real dtype).
        mask: optional 2-D bool (True = valid) or 0/1 array of the same shape.

    Returns:
        bool array ``(y, x)``.

    Raises:
        InputError: for non-2-D inputs, mismatched shapes or a mask that is not 0/1.
    """
    return _prepare(pred, truth, mask)[2]


def _differences(pred: Any, truth: Any, mask: Any) -> np.ndarray:
    """``pred - truth`` (float64) at the valid pixels, as a 1-D array."""
    p, t, valid = _prepare(pred, truth, mask)
    return p[valid] - t[valid]


def _check_range(data_range: float) -> float:
    r = float(data_range)
    if not (math.isfinite(r) and r > 0):
        raise InputError(f"data_range must be a positive number, got {data_range!r}; NDVI uses 2")
    return r


# --------------------------------------------------------------------------------------
# Pixel-wise errors
# --------------------------------------------------------------------------------------


def rmse(pred: Any, truth: Any, mask: Any = None) -> float:
    """Root-mean-square error over valid pixels (NDVI units); NaN (with a
    `NoValidPixelsWarning`) when none is valid."""
    d = _differences(pred, truth, mask)
    return float(np.sqrt(np.mean(d * d))) if d.size else _nothing_to_score("RMSE", _NO_VALID)


def mae(pred: Any, truth: Any, mask: Any = None) -> float:
    """Mean absolute error over valid pixels (NDVI units); NaN (with a `NoValidPixelsWarning`)
    when none is valid."""
    d = _differences(pred, truth, mask)
    return float(np.mean(np.abs(d))) if d.size else _nothing_to_score("MAE", _NO_VALID)


def psnr(pred: Any, truth: Any, mask: Any = None, data_range: float = NDVI_DATA_RANGE) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB over valid pixels.

    ``inf`` for identical images, NaN (with a `NoValidPixelsWarning`) when no pixel is
    valid. For a constant error ``e`` it is ``20 log10(data_range / e)``.
    """
    r = _check_range(data_range)
    d = _differences(pred, truth, mask)
    if not d.size:
        return _nothing_to_score("PSNR", _NO_VALID)
    mse = float(np.mean(d * d))
    return math.inf if mse == 0.0 else 10.0 * math.log10(r * r / mse)


# --------------------------------------------------------------------------------------
# SSIM by normalised convolution
# --------------------------------------------------------------------------------------


def _check_window(sigma: float, win_size: int) -> int:
    """The window radius (pixels) for an odd ``win_size`` >= 3 and a positive ``sigma``."""
    if isinstance(win_size, bool) or not isinstance(win_size, int | np.integer):
        raise InputError(f"win_size must be an odd integer >= 3, got {win_size!r}; SSIM uses 11")
    if win_size < 3 or win_size % 2 == 0:
        raise InputError(f"win_size must be an odd integer >= 3, got {win_size}; SSIM uses 11")
    if not (math.isfinite(float(sigma)) and sigma > 0):
        raise InputError(f"sigma must be a positive number of pixels, got {sigma!r}; SSIM uses 1.5")
    return (int(win_size) - 1) // 2


def _ssim_kept(
    pred: Any,
    truth: Any,
    mask: Any,
    data_range: float,
    sigma: float,
    win_size: int,
    min_support: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(map, keep)``: the SSIM map (NaN off ``keep``) and the well-supported pixels."""
    r = _check_range(data_range)
    radius = _check_window(sigma, win_size)
    if not 0.0 <= min_support <= 1.0:
        raise InputError(f"min_support must lie in [0, 1], got {min_support!r}; the default is 0.5")
    p, t, valid = _prepare(pred, truth, mask)
    out = np.full(p.shape, np.nan)

    # Pixels whose full window lies inside the image, as skimage crops them.
    interior = np.zeros(p.shape, dtype=bool)
    interior[radius : p.shape[0] - radius, radius : p.shape[1] - radius] = True
    keep = valid & interior
    if not keep.any():
        return out, keep

    # Zero the invalid pixels *before* any arithmetic so that NaN or any value there
    # cannot reach a sum; the weight image G*m then renormalises each window.
    m = valid.astype(np.float64)
    x = np.where(valid, p, 0.0)
    y = np.where(valid, t, 0.0)
    blur = partial(ndimage.gaussian_filter, sigma=sigma, radius=radius, mode="constant", cval=0.0)
    support = blur(m)
    keep &= support >= min_support - SUPPORT_TOLERANCE
    if not keep.any():
        return out, keep

    w = support[keep]
    mu_x = blur(x)[keep] / w
    mu_y = blur(y)[keep] / w
    var_x = blur(x * x)[keep] / w - mu_x * mu_x
    var_y = blur(y * y)[keep] / w - mu_y * mu_y
    cov = blur(x * y)[keep] / w - mu_x * mu_y

    c1 = (SSIM_K1 * r) ** 2
    c2 = (SSIM_K2 * r) ** 2
    # Same grouping as skimage, so identical images give exactly 1.
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    out[keep] = num / den
    return out, keep


def ssim_map(
    pred: Any,
    truth: Any,
    mask: Any = None,
    data_range: float = NDVI_DATA_RANGE,
    sigma: float = SSIM_SIGMA,
    win_size: int = SSIM_WINDOW,
    *,
    min_support: float = SSIM_MIN_SUPPORT,
) -> np.ndarray:
    """Local SSIM of every well-supported pixel, NaN elsewhere.

    Args:
        pred, truth: 2-D images ``(y, x)`` (NDVI), NaN for no data.
        mask: optional 2-D bool, True = valid.
        data_range: peak-to-peak range of the data (2 for NDVI).
        sigma: standard deviation of the Gaussian window, pixels.
        win_size: odd window side, pixels; the Gaussian is truncated at ``(win_size-1)/2``.
        min_support: least fraction (0..1) of the window weight on valid pixels.

    Returns:
        float64 array ``(y, x)``: SSIM in [-1, 1] at valid pixels at least
        ``(win_size - 1) / 2`` from the border whose window weight on valid pixels is at least
        ``min_support``; NaN at all other pixels (all NaN when the image is smaller than the
        window or nothing is valid).
    """
    return _ssim_kept(pred, truth, mask, data_range, sigma, win_size, min_support)[0]


def ssim(
    pred: Any,
    truth: Any,
    mask: Any = None,
    data_range: float = NDVI_DATA_RANGE,
    sigma: float = SSIM_SIGMA,
    win_size: int = SSIM_WINDOW,
    *,
    min_support: float = SSIM_MIN_SUPPORT,
) -> float:
    """Mean SSIM over well-supported valid pixels (see ``ssim_map``); NaN (with a
    `NoValidPixelsWarning`) when there is none.

    Without mask and NaN this equals ``skimage.metrics.structural_similarity(pred, truth,
    data_range=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    """
    s, keep = _ssim_kept(pred, truth, mask, data_range, sigma, win_size, min_support)
    if keep.any():
        return float(np.mean(s[keep]))
    return _nothing_to_score(
        "SSIM",
        f"no well-supported pixel in the {s.shape[0]} x {s.shape[1]} image (a valid pixel "
        f"at least {(win_size - 1) // 2} px from the border, with >= {min_support:g} of its "
        f"{win_size} x {win_size} window valid)",
    )


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def score(pred: Any, truth: Any, mask: Any = None) -> dict[str, float]:
    """All four metrics at NDVI settings, and the number of scored pixels.

    Returns:
        ``{"rmse", "mae", "ssim", "psnr", "n_pixels"}`` in that order: RMSE and MAE in NDVI
        units, SSIM (dimensionless), PSNR in dB, and ``n_pixels`` (an int) the count of valid
        pixels that RMSE, MAE and PSNR average over (SSIM uses the well-supported subset).
        Metrics are NaN when ``n_pixels`` is 0.
    """
    p, t, valid = _prepare(pred, truth, mask)
    # The images are already validated and masked: score them once through ``valid``.
    return {
        "rmse": rmse(p, t, valid),
        "mae": mae(p, t, valid),
        "ssim": ssim(p, t, valid),
        "psnr": psnr(p, t, valid),
        "n_pixels": int(valid.sum()),
    }


_COLUMNS = (  # (key, header, format)
    ("rmse", "RMSE", "{:.4f}"),
    ("mae", "MAE", "{:.4f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
)


def _cell(value: Any, fmt: str, row: str, key: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"row {row!r}: {key} must be a number, got {value!r}; pass score()'s output"
        ) from None
    return fmt.format(v)  # nan and inf print as "nan" and "inf"


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table of metrics, one row per model.

    Args:
        rows: model name (e.g. ``"U-net"``, ``"random forest"``) -> ``score()``'s dict; the
            keys ``rmse, mae, ssim, psnr`` are required, ``n_pixels`` is optional ("-").

    Returns:
        The table as text (no trailing newline): a header line, then one line per model,
        with 4 decimals for RMSE, MAE and SSIM and 2 for PSNR (dB).
    """
    body: list[list[str]] = []
    for name, metrics in rows.items():
        missing = [k for k, _, _ in _COLUMNS if k not in metrics]
        if missing:
            raise InputError(
                f"row {name!r} lacks {', '.join(missing)}; give each model the dict score() returns"
            )
        cells = [str(name)] + [_cell(metrics[k], fmt, name, k) for k, _, fmt in _COLUMNS]
        n = metrics.get("n_pixels")
        known = n is not None and math.isfinite(float(n))
        cells.append(str(int(n)) if known else "-")
        body.append(cells)
    header = ["model"] + [h for _, h, _ in _COLUMNS] + ["pixels"]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for r in [header, *body]:
        first = r[0].ljust(widths[0])
        rest = [c.rjust(wd) for c, wd in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
    return "\n".join(lines)
