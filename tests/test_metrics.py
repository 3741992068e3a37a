"""Masked NDVI metrics: values against skimage, torchmetrics, brute force and known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics.functional.image import (
    peak_signal_noise_ratio as tm_psnr,
)
from torchmetrics.functional.image import (
    structural_similarity_index_measure as tm_ssim,
)
from torchmetrics.functional.regression import mean_absolute_error as tm_mae
from torchmetrics.functional.regression import mean_squared_error as tm_mse

from sar2ndvi import metrics
from sar2ndvi.errors import InputError
from sar2ndvi.metrics import format_table, mae, psnr, rmse, score, ssim, ssim_map, valid_mask

SHAPES = [(11, 11), (24, 37), (64, 48)]


def ndvi_pair(shape: tuple[int, int], seed: int, noise: float = 0.15) -> tuple[np.ndarray, ...]:
    """A smooth-ish NDVI field and a noisy prediction of it, both in [-1, 1], float64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    truth = 0.5 * np.sin(yy / 5.0 + seed) * np.cos(xx / 7.0) + 0.2 * rng.uniform(-1, 1, shape)
    pred = np.clip(truth + rng.normal(0.0, noise, shape), -1, 1)
    return pred, np.clip(truth, -1, 1)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The reference: Wang et al. SSIM at the settings of docs/metrics.md."""
    return float(
        sk_ssim(a, b, data_range=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )


def brute_force_ssim_map(
    a: np.ndarray, b: np.ndarray, valid: np.ndarray, sigma: float = 1.5, win: int = 11
) -> np.ndarray:
    """Masked SSIM pixel by pixel: two-pass weighted moments over the valid pixels in the
    window (the rule of docs/metrics.md: interior, valid, >= half the window weight valid)."""
    r = win // 2
    k = np.arange(-r, r + 1)
    g = np.exp(-(k**2) / (2 * sigma**2))
    g2 = np.outer(g, g) / g.sum() ** 2
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    out = np.full(a.shape, np.nan)
    for i in range(r, a.shape[0] - r):
        for j in range(r, a.shape[1] - r):
            v = valid[i - r : i + r + 1, j - r : j + r + 1]
            w = g2 * v
            s = w.sum()
            if not valid[i, j] or s < 0.5:
                continue
            x = np.where(v, a[i - r : i + r + 1, j - r : j + r + 1], 0.0)
            y = np.where(v, b[i - r : i + r + 1, j - r : j + r + 1], 0.0)
            mx, my = (w * x).sum() / s, (w * y).sum() / s
            vx = (w * (x - mx) ** 2).sum() / s
            vy = (w * (y - my) ** 2).sum() / s
            cxy = (w * (x - mx) * (y - my)).sum() / s
            out[i, j] = ((2 * mx * my + c1) * (2 * cxy + c2)) / (
                (mx**2 + my**2 + c1) * (vx + vy + c2)
            )
    return out


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Dicts equal value for value, NaN equal to NaN."""
    return list(a) == list(b) and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


# --------------------------------------------------------------------------------------
# Pixel-wise errors against references
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_errors_match_skimage_and_torchmetrics(shape: tuple[int, int], dtype: type) -> None:
    p, t = (a.astype(dtype) for a in ndvi_pair(shape, seed=shape[1]))
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    tp, tt = torch.from_numpy(p64), torch.from_numpy(t64)
    assert rmse(p, t) == pytest.approx(math.sqrt(sk_mse(t64, p64)), rel=1e-12)
    assert rmse(p, t) == pytest.approx(float(tm_mse(tp, tt, squared=False)), rel=1e-12)
    assert mae(p, t) == pytest.approx(float(np.mean(np.abs(p64 - t64))), rel=1e-12)
    assert mae(p, t) == pytest.approx(float(tm_mae(tp, tt)), rel=1e-12)
    assert psnr(p, t) == pytest.approx(sk_psnr(t64, p64, data_range=2), rel=1e-12)
    # torchmetrics converts to decibels with a float32 log(10): it agrees to ~6e-8 relative.
    assert psnr(p, t) == pytest.approx(float(tm_psnr(tp, tt, data_range=2.0)), rel=1e-7)


def test_masked_errors_are_the_references_on_the_valid_pixels() -> None:
    p, t = ndvi_pair((30, 40), seed=3)
    rng = np.random.default_rng(4)
    mask = rng.random(p.shape) > 0.4
    t_nan = t.copy()
    t_nan[rng.random(p.shape) > 0.9] = np.nan
    keep = mask & np.isfinite(t_nan)
    pv, tv = p[keep], t[keep]
    assert rmse(p, t_nan, mask) == pytest.approx(math.sqrt(sk_mse(tv, pv)), rel=1e-12)
    assert mae(p, t_nan, mask) == pytest.approx(float(tm_mae(*map(torch.from_numpy, (pv, tv)))))
    assert psnr(p, t_nan, mask) == pytest.approx(sk_psnr(tv, pv, data_range=2), rel=1e-12)
    assert score(p, t_nan, mask)["n_pixels"] == keep.sum()


def test_paper_psnr_for_its_rmse() -> None:
    # The paper: RMSE 0.0615 and PSNR 30.25 dB. 20 log10(2 / 0.0615) = 30.243 dB; the
    # rounded RMSE (0.06145..0.06155) spans 30.236..30.250 dB, so the two agree.
    t = np.zeros((8, 8))
    assert psnr(t + 0.0615, t) == pytest.approx(30.2431, abs=1e-4)
    assert psnr(t + 0.0615, t) == pytest.approx(30.25, abs=0.01)
    assert rmse(t + 0.0615, t) == pytest.approx(0.0615, rel=1e-12)


# --------------------------------------------------------------------------------------
# SSIM against references
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, (12, 90), (128, 128)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ssim_equals_skimage_without_mask(shape: tuple[int, int], dtype: type) -> None:
    p, t = (a.astype(dtype) for a in ndvi_pair(shape, seed=shape[0]))
    ref = skimage_ssim(p.astype(np.float64), t.astype(np.float64))
    # Measured: identical to the last bit (same filter taps, same formula); allow 1e-12.
    assert ssim(p, t) == pytest.approx(ref, abs=1e-12)
    assert ssim(t, p) == pytest.approx(ref, abs=1e-12)  # symmetric


@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_against_torchmetrics(shape: tuple[int, int]) -> None:
    p, t = ndvi_pair(shape, seed=5)
    tp, tt = (torch.from_numpy(a)[None, None] for a in (p, t))
    value, full = tm_ssim(
        tp, tt, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=2.0,
        return_full_image=True,
    )  # fmt: skip
    r = 5
    # torchmetrics reflect-pads and averages the whole map, border included (no crop) ...
    assert float(value) == pytest.approx(float(full.mean()), abs=1e-15)
    # ... and its map equals ours wherever the window lies inside the image.
    ours = ssim_map(p, t)
    np.testing.assert_allclose(ours[r:-r, r:-r], full[0, 0, r:-r, r:-r].numpy(), atol=1e-12)
    assert ssim(p, t) == pytest.approx(float(full[..., r:-r, r:-r].mean()), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_ssim_map_equals_brute_force(seed: int) -> None:
    p, t = ndvi_pair((23, 29), seed=seed)
    rng = np.random.default_rng(seed)
    valid = rng.random(p.shape) > [0.1, 0.3, 0.5][seed]  # from light to heavy masking
    got = ssim_map(p, t, valid)
    want = brute_force_ssim_map(p, t, valid)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.isfinite(want).any()
    assert ssim(p, t, valid) == pytest.approx(np.nanmean(want), abs=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    c, e = 0.3, 0.1
    c1 = (0.01 * 2) ** 2
    want = (2 * c * (c + e) + c1) / (c**2 + (c + e) ** 2 + c1)
    a = np.full((16, 16), c)
    assert ssim(a + e, a) == pytest.approx(want, rel=1e-12)


def test_ssim_map_marks_undefined_pixels_nan() -> None:
    p, t = ndvi_pair((20, 20), seed=1)
    s = ssim_map(p, t)
    assert s.dtype == np.float64
    assert np.isnan(s[:5]).all()
    assert np.isnan(s[-5:]).all()
    assert np.isnan(s[:, :5]).all()
    assert np.isnan(s[:, -5:]).all()
    assert np.isfinite(s[5:-5, 5:-5]).all()
    # A hole: its own pixels are NaN, and so are neighbours with < half their window valid.
    mask = np.ones(p.shape, dtype=bool)
    mask[6:14, 6:14] = False
    s = ssim_map(p, t, mask)
    assert np.isnan(s[6:14, 6:14]).all()
    assert np.isfinite(s[5, 5])


def test_min_support_controls_which_pixels_count() -> None:
    p, t = ndvi_pair((25, 25), seed=2)
    mask = np.zeros(p.shape, dtype=bool)
    mask[:, :13] = True  # the left half; pixel column 12 has just over half its window valid
    strict = ssim_map(p, t, mask, min_support=1.0)
    default = ssim_map(p, t, mask)
    loose = ssim_map(p, t, mask, min_support=0.0)
    assert np.isfinite(strict).sum() < np.isfinite(default).sum() <= np.isfinite(loose).sum()
    assert np.isfinite(default[5:-5, 12]).all()
    assert np.isnan(strict[5:-5, 12]).all()


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

images = hnp.arrays(
    np.float64,
    st.tuples(st.integers(11, 18), st.integers(11, 18)),
    elements=st.floats(-1, 1, width=32),
)


@settings(max_examples=40, deadline=None)
@given(images, st.data())
def test_values_under_masked_or_nan_pixels_never_matter(truth: np.ndarray, data) -> None:
    shape = truth.shape
    pred = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1, width=32)))
    # Mostly-valid masks, so that many examples have well-supported SSIM pixels.
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    mask = rng.random(shape) < data.draw(st.sampled_from([0.5, 0.8, 0.95, 1.0]))
    junk = hnp.arrays(np.float64, shape, elements=st.floats(allow_nan=True, allow_infinity=True))
    junk_p, junk_t = data.draw(junk), data.draw(junk)
    before = score(pred, truth, mask)
    p2 = np.where(mask, pred, junk_p)
    t2 = np.where(mask, truth, junk_t)
    assert same(score(p2, t2, mask), before)
    np.testing.assert_array_equal(ssim_map(p2, t2, mask), ssim_map(pred, truth, mask))
    # NaN in the reference is the same as a masked pixel, whatever pred holds there.
    t_nan = np.where(mask, truth, np.nan)
    assert same(score(p2, t_nan), before)


def test_junk_under_the_mask_leaves_a_finite_ssim_unchanged() -> None:
    p, t = ndvi_pair((40, 44), seed=11)
    rng = np.random.default_rng(11)
    mask = rng.random(p.shape) > 0.15
    junk = rng.choice([np.nan, np.inf, -np.inf, 1e300, -7.0], size=p.shape)
    before = score(p, t, mask)
    assert np.isfinite(before["ssim"])
    assert same(score(np.where(mask, p, junk), np.where(mask, t, junk[::-1]), mask), before)
    assert same(score(np.where(mask, p, junk), np.where(mask, t, np.nan)), before)


@settings(max_examples=40, deadline=None)
@given(images, st.data())
def test_identical_images_are_perfect(truth: np.ndarray, data) -> None:
    mask = data.draw(hnp.arrays(np.bool_, truth.shape))
    mask |= data.draw(st.booleans())  # often all valid
    got = score(truth, truth.copy(), mask)
    assert got["n_pixels"] == mask.sum()
    if not mask.any():
        return
    assert got["rmse"] == 0.0
    assert got["mae"] == 0.0
    assert got["psnr"] == math.inf
    s = ssim_map(truth, truth.copy(), mask)
    kept = np.isfinite(s)
    # Exactly 1 wherever SSIM is defined (NaN only when no pixel is well supported).
    assert (s[kept] == 1.0).all()
    assert got["ssim"] == 1.0 if kept.any() else math.isnan(got["ssim"])
    if mask.all():
        assert kept[5:-5, 5:-5].all()


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.int64, st.tuples(st.integers(11, 16), st.integers(11, 16)),
               elements=st.integers(-512, 256)),
    st.integers(1, 256),
    st.booleans(),
)  # fmt: skip
def test_constant_error_gives_known_values(q: np.ndarray, k: int, negative: bool) -> None:
    # Dyadic values, so truth + e is exact and the error is exactly e everywhere.
    truth = q / 512.0
    e = k / 1024.0
    pred = truth - e if negative else truth + e
    assert rmse(pred, truth) == pytest.approx(e, rel=1e-14)
    assert mae(pred, truth) == pytest.approx(e, rel=1e-14)
    assert psnr(pred, truth) == pytest.approx(20 * math.log10(2 / e), rel=1e-12)


# --------------------------------------------------------------------------------------
# Edge cases, inputs, reports
# --------------------------------------------------------------------------------------


def test_no_valid_pixel_gives_nan_not_an_error() -> None:
    p, t = ndvi_pair((16, 16), seed=0)
    got = score(p, t, np.zeros(p.shape, dtype=bool))
    assert got["n_pixels"] == 0
    assert all(math.isnan(got[k]) for k in ("rmse", "mae", "ssim", "psnr"))
    assert math.isnan(ssim(p, np.full_like(t, np.nan)))
    assert np.isnan(ssim_map(p, t, np.zeros(p.shape, dtype=bool))).all()


def test_image_smaller_than_window_has_nan_ssim_only() -> None:
    p, t = ndvi_pair((8, 30), seed=0)
    got = score(p, t)
    assert math.isnan(got["ssim"])
    assert got["rmse"] == pytest.approx(math.sqrt(sk_mse(t, p)))
    assert got["n_pixels"] == p.size


def test_score_keys_and_agreement_with_the_functions() -> None:
    p, t = ndvi_pair((30, 30), seed=9)
    mask = np.random.default_rng(9).random(p.shape) > 0.2
    got = score(p, t, mask)
    assert list(got) == ["rmse", "mae", "ssim", "psnr", "n_pixels"]
    assert got == {
        "rmse": rmse(p, t, mask),
        "mae": mae(p, t, mask),
        "ssim": ssim(p, t, mask),
        "psnr": psnr(p, t, mask),
        "n_pixels": int(mask.sum()),
    }


def test_valid_mask_and_numeric_masks() -> None:
    p = np.array([[0.1, np.nan], [0.3, 0.4]], dtype=np.float32)
    t = np.array([[0.1, 0.2], [np.inf, 0.4]])
    m = np.array([[1, 1], [1, 0]])
    np.testing.assert_array_equal(valid_mask(p, t), [[True, False], [False, True]])
    np.testing.assert_array_equal(valid_mask(p, t, m), [[True, False], [False, False]])


def test_dataarray_inputs_equal_numpy_inputs() -> None:
    p, t = ndvi_pair((20, 24), seed=6)
    mask = np.random.default_rng(6).random(p.shape) > 0.3
    dims = ("y", "x")
    got = score(xr.DataArray(p, dims=dims), xr.DataArray(t, dims=dims), xr.DataArray(mask))
    assert same(got, score(p, t, mask))
    with pytest.raises(InputError, match=r"dims \('x', 'y'\)"):
        score(xr.DataArray(p.T, dims=("x", "y")), xr.DataArray(t, dims=dims))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rmse(np.zeros((3, 4)), np.zeros((4, 3))), r"\(3, 4\).*\(4, 3\)"),
        (lambda: mae(np.zeros((3, 4)), np.zeros((3, 4)), np.ones((3, 3), bool)), r"\(3, 3\)"),
        (lambda: psnr(np.zeros((2, 3, 4)), np.zeros((2, 3, 4))), "2-D image"),
        (lambda: ssim(np.zeros((3, 4)), np.zeros((3, 4)), np.full((3, 4), 0.5)), "0 and 1"),
        (lambda: ssim(np.zeros((20, 20)), np.zeros((20, 20)), win_size=10), "odd"),
        (lambda: ssim(np.zeros((20, 20)), np.zeros((20, 20)), sigma=0), "sigma"),
        (lambda: psnr(np.zeros((3, 3)), np.zeros((3, 3)), data_range=-2), "data_range"),
        (lambda: rmse(np.zeros((3, 3), complex), np.zeros((3, 3))), "complex"),
    ],
)
def test_bad_input_raises_input_error(call, match: str) -> None:
    with pytest.raises(InputError, match=match):
        call()


def test_format_table() -> None:
    rows = {
        "U-net": {"rmse": 0.06151, "mae": 0.04229, "ssim": 0.82604, "psnr": 30.2431,
                  "n_pixels": 123456},
        "random forest": {"rmse": 0.1, "mae": 0.07, "ssim": float("nan"), "psnr": math.inf},
    }  # fmt: skip
    assert format_table(rows) == "\n".join(
        [
            "model            RMSE     MAE    SSIM  PSNR (dB)  pixels",
            "U-net          0.0615  0.0423  0.8260      30.24  123456",
            "random forest  0.1000  0.0700     nan        inf       -",
        ]
    )
    with pytest.raises(InputError, match=r"'linear' lacks ssim"):
        format_table({"linear": {"rmse": 0.1, "mae": 0.1, "psnr": 20.0}})


def test_constants() -> None:
    assert metrics.NDVI_DATA_RANGE == 2.0
    assert metrics.SSIM_SIGMA == 1.5
    assert metrics.SSIM_WINDOW == 11
