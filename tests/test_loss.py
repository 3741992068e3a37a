"""Masked composite loss: values against NumPy/SciPy/torchmetrics references, mask honesty,
gradients, and that it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch.nn import functional as nnf
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from sar2ndvi import metrics
from sar2ndvi.errors import InputError
from sar2ndvi.loss import (
    CompositeLoss,
    LossWeights,
    masked_gradient_loss,
    masked_l1,
    masked_ssim,
    masked_ssim_map,
)

R = 5  # the SSIM window radius


def ndvi_batch(
    seed: int, shape: tuple[int, int, int, int] = (2, 1, 24, 28), cloud: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pred, target, mask)`` float64: a textured NDVI target with NaN under blobby clouds
    (mask False there) and a noisy prediction of it."""
    rng = np.random.default_rng(seed)
    b, _, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    target = np.stack(
        [0.5 * np.sin(yy / 4.0 + k) * np.cos(xx / 6.0) for k in range(b)]
    ) + 0.1 * rng.uniform(-1, 1, (b, h, w))
    clouds = ndimage.gaussian_filter(rng.normal(size=(b, h, w)), (0, 2, 2))
    mask = clouds <= np.quantile(clouds, 1 - cloud)
    target[~mask] = np.nan
    pred = np.clip(np.nan_to_num(target) + rng.normal(0, 0.1, (b, h, w)), -1, 1)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[:, None]  # noqa: E731
    return as_t(pred), as_t(target), as_t(mask)


def loss_and_grad(
    fn, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    p = pred.detach().clone().requires_grad_(True)
    value = fn(p, target, mask)
    value.backward()
    return value.detach(), p.grad


TERMS = {
    "l1": masked_l1,
    "ssim": lambda p, t, m: 1 - masked_ssim(p, t, m),
    "gradient": masked_gradient_loss,
    "composite": CompositeLoss(),
}


# --------------------------------------------------------------------------------------
# Values against references
# --------------------------------------------------------------------------------------


def test_masked_l1_is_l1_over_the_valid_pixels() -> None:
    pred, target, mask = ndvi_batch(0)
    want = nnf.l1_loss(pred[mask], target[mask])
    assert float(masked_l1(pred, target, mask)) == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 11, 11), (2, 1, 24, 37), (1, 1, 64, 48)])
def test_masked_ssim_equals_numpy_ssim_on_interior_pixels(shape: tuple[int, ...]) -> None:
    pred, target, _ = ndvi_batch(1, shape, cloud=0.0)
    ones = torch.ones_like(pred, dtype=torch.bool)
    s, weight = masked_ssim_map(pred, target, ones)
    assert (weight[..., R:-R, R:-R] == 1).all()
    for i in range(shape[0]):
        p, t = pred[i, 0].numpy(), target[i, 0].numpy()
        interior = s[i, 0, R:-R, R:-R]
        ref = metrics.ssim(p, t)  # == skimage's structural_similarity, see test_metrics
        assert float(interior.mean()) == pytest.approx(ref, abs=1e-12)
        np.testing.assert_allclose(interior.numpy(), metrics.ssim_map(p, t)[R:-R, R:-R], atol=1e-12)
        # float32, as in training: measured |error| <= ~2e-6 per pixel, ~1e-7 on the mean.
        s32, _ = masked_ssim_map(pred[i : i + 1].float(), target[i : i + 1].float(), ones[:1])
        assert float(s32[..., R:-R, R:-R].double().mean()) == pytest.approx(ref, abs=1e-5)


def test_masked_ssim_map_equals_numpy_under_a_mask() -> None:
    pred, target, mask = ndvi_batch(2, (1, 1, 32, 40))
    s, weight = masked_ssim_map(pred, target, mask)
    ref = metrics.ssim_map(pred[0, 0].numpy(), target[0, 0].numpy(), mask[0, 0].numpy())
    kept = np.isfinite(ref)
    assert kept.sum() > 100
    np.testing.assert_allclose(s[0, 0].numpy()[kept], ref[kept], atol=1e-12)
    # Same well-supported pixels, except that the loss also keeps the border strip.
    np.testing.assert_array_equal((weight[0, 0] > 0).numpy()[R:-R, R:-R], kept[R:-R, R:-R])


def test_masked_ssim_agrees_with_torchmetrics_on_interior_pixels() -> None:
    pred, target, _ = ndvi_batch(3, (1, 1, 40, 40), cloud=0.0)
    ones = torch.ones_like(pred)
    s, _ = masked_ssim_map(pred, target, ones)
    _, full = tm_ssim(
        pred, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=2.0,
        return_full_image=True,
    )  # fmt: skip
    # torchmetrics reflect-pads at the border, where we renormalise instead: compare inside.
    np.testing.assert_allclose(
        s[..., R:-R, R:-R].numpy(), full[..., R:-R, R:-R].numpy(), atol=1e-12
    )


def scipy_masked_ssim(p: np.ndarray, t: np.ndarray, m: np.ndarray) -> float:
    """Normalised-convolution SSIM with SciPy over all pixels, border included (the loss's
    rule: valid and >= half the window weight valid)."""
    blur = lambda a: ndimage.gaussian_filter(a, 1.5, radius=R, mode="constant")  # noqa: E731
    mf = m.astype(float)
    x, y = np.where(m, p, 0.0), np.where(m, t, 0.0)
    sup = blur(mf)
    keep = m & (sup >= 0.5)
    mx, my = blur(x)[keep] / sup[keep], blur(y)[keep] / sup[keep]
    vx = blur(x * x)[keep] / sup[keep] - mx**2
    vy = blur(y * y)[keep] / sup[keep] - my**2
    cxy = blur(x * y)[keep] / sup[keep] - mx * my
    c1, c2 = 0.02**2, 0.06**2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@pytest.mark.parametrize("cloud", [0.0, 0.3])
def test_masked_ssim_scalar_against_scipy_reference(cloud: float) -> None:
    pred, target, mask = ndvi_batch(4, (1, 1, 30, 26), cloud=cloud)
    ref = scipy_masked_ssim(pred[0, 0].numpy(), target[0, 0].numpy(), mask[0, 0].numpy())
    assert float(masked_ssim(pred, target, mask)) == pytest.approx(ref, abs=1e-12)


def test_gradient_loss_against_scipy_sobel() -> None:
    pred, target, mask = ndvi_batch(5)
    want_num, want_den = 0.0, 0
    for i in range(pred.shape[0]):
        p, t, m = pred[i, 0].numpy(), np.nan_to_num(target[i, 0].numpy()), mask[i, 0].numpy()
        core = ndimage.binary_erosion(m, np.ones((3, 3)), border_value=0)
        for axis in (0, 1):
            d = (ndimage.sobel(p, axis=axis) - ndimage.sobel(t, axis=axis)) / 8
            want_num += np.abs(d[core]).sum()
        want_den += 2 * core.sum()
    got = float(masked_gradient_loss(pred, target, mask))
    assert got == pytest.approx(want_num / want_den, rel=1e-12)


def test_gradient_loss_of_planes_is_known() -> None:
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(24.0), indexing="ij")
    ones = torch.ones(1, 1, 20, 24, dtype=torch.bool)
    plane = (xx / 64 - yy / 128)[None, None]  # dyadic: every sum below is exact
    assert float(masked_gradient_loss(plane, plane + 0.25, ones)) == 0.0
    rng = torch.Generator().manual_seed(0)
    a, b, c = torch.rand(3, generator=rng, dtype=torch.float64)
    plane = (a * xx + b * yy)[None, None].double()
    assert float(masked_gradient_loss(plane, plane + c, ones)) < 1e-14
    # Slopes are recovered exactly: |d/dx difference| + |d/dy difference| over 2.
    p, t = (xx / 64)[None, None], (yy / 32)[None, None]
    assert float(masked_gradient_loss(p, t, ones)) == (1 / 64 + 1 / 32) / 2


# --------------------------------------------------------------------------------------
# Identity, honesty of the mask, gradients
# --------------------------------------------------------------------------------------

masks = st.integers(0, 2**32 - 1)


@settings(max_examples=20, deadline=None)
@given(masks, st.floats(0.0, 1.0), st.booleans())
def test_identical_images_give_exactly_zero(seed: int, cloud: float, float_mask: bool) -> None:
    pred, target, mask = ndvi_batch(seed % 1000, (2, 1, 16, 18), cloud=cloud)
    target = torch.where(mask, pred, target)  # = pred where valid, NaN elsewhere
    if float_mask:
        mask = mask.double()
    loss = CompositeLoss()
    assert float(loss(pred, target, mask)) == 0.0
    assert loss.components(pred, target, mask) == dict.fromkeys(
        ("l1", "ssim", "gradient", "total"), 0.0
    )


@settings(max_examples=20, deadline=None)
@given(masks, st.floats(0.05, 0.9))
def test_different_images_give_a_positive_loss(seed: int, cloud: float) -> None:
    pred, target, mask = ndvi_batch(seed % 1000, (1, 1, 16, 18), cloud=cloud)
    if not mask.any():
        return
    worse = pred.clone()
    worse[mask] += 0.01  # differ at valid pixels only
    parts = CompositeLoss().components(worse, torch.where(mask, pred, target), mask)
    assert parts["l1"] == pytest.approx(0.01)
    assert parts["total"] > 0


@pytest.mark.parametrize("term", list(TERMS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_under_the_mask_change_neither_loss_nor_gradient(term: str, seed: int) -> None:
    fn = TERMS[term]
    pred, target, mask = ndvi_batch(seed)
    base_loss, base_grad = loss_and_grad(fn, pred, target, mask)
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(pred.shape, generator=g, dtype=torch.float64) * 1e3
    nan = torch.full_like(pred, math.nan)
    for other_target in (torch.where(mask, target, junk), target):  # junk or NaN under clouds
        for other_pred in (torch.where(mask, pred, -junk), torch.where(mask, pred, nan)):
            loss, grad = loss_and_grad(fn, other_pred, other_target, mask)
            assert torch.equal(loss, base_loss)
            assert torch.equal(grad, base_grad)
    # A masked pixel is absent from every window, in pred as in target: no gradient there.
    assert (base_grad[~mask] == 0).all()
    assert base_grad[mask].abs().sum() > 0
    assert torch.isfinite(base_loss)


@pytest.mark.parametrize("term", list(TERMS))
def test_all_masked_gives_zero_loss_and_finite_zero_gradients(term: str) -> None:
    pred, target, mask = ndvi_batch(6)
    none = torch.zeros_like(mask)
    nan_target = torch.full_like(target, math.nan)
    for m in (none, none.double()):
        loss, grad = loss_and_grad(TERMS[term], pred, nan_target, m)
        assert float(loss) == 0.0
        assert torch.isfinite(grad).all()
        assert (grad == 0).all()
    assert float(masked_ssim(pred, nan_target, none)) == 1.0


def test_float_mask_of_zeros_and_ones_equals_bool_mask() -> None:
    pred, target, mask = ndvi_batch(7)
    loss = CompositeLoss()
    assert loss.components(pred, target, mask) == loss.components(pred, target, mask.double())
    # NaN or negative weights count as invalid.
    odd = mask.double().masked_fill(~mask, math.nan)
    odd[0, 0, 0, 0] = -1.0 if not mask[0, 0, 0, 0] else 1.0
    assert loss.components(pred, target, mask) == loss.components(pred, target, odd)


def test_float32_gradients_match_float64() -> None:
    pred, target, mask = ndvi_batch(8)
    _, g64 = loss_and_grad(CompositeLoss(), pred, target, mask)
    _, g32 = loss_and_grad(CompositeLoss(), pred.float(), target.float(), mask)
    np.testing.assert_allclose(g32.double().numpy(), g64.numpy(), atol=1e-6)


# --------------------------------------------------------------------------------------
# The composite, weights, training
# --------------------------------------------------------------------------------------


def test_composite_is_the_weighted_sum_of_its_terms() -> None:
    pred, target, mask = ndvi_batch(9)
    weights = LossWeights(l1=2.0, ssim=0.5, gradient=3.0)
    loss = CompositeLoss(weights)
    l1 = float(masked_l1(pred, target, mask))
    s = 1 - float(masked_ssim(pred, target, mask))
    gr = float(masked_gradient_loss(pred, target, mask))
    want = 2 * l1 + 0.5 * s + 3 * gr
    assert float(loss(pred, target, mask)) == pytest.approx(want, rel=1e-12)
    parts = loss.components(pred, target, mask)
    assert list(parts) == ["l1", "ssim", "gradient", "total"]
    assert parts["l1"] == pytest.approx(l1, rel=1e-12)
    assert parts["ssim"] == pytest.approx(s, rel=1e-12)
    assert parts["gradient"] == pytest.approx(gr, rel=1e-12)
    assert parts["total"] == pytest.approx(want, rel=1e-12)
    only_l1 = CompositeLoss(LossWeights(l1=1.0, ssim=0.0, gradient=0.0))
    assert float(only_l1(pred, target, mask)) == pytest.approx(l1, rel=1e-12)


def test_a_few_adam_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    _, target, mask = ndvi_batch(10, (2, 1, 24, 24))
    g = torch.Generator().manual_seed(1)
    x = torch.nan_to_num(target) + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 1, 3, padding=1),
        torch.nn.Tanh(),
    )
    x, target, net = x.float(), target.float(), net.float()
    loss_fn = CompositeLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(x), target, mask)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0]  # measured: 1.36 -> 0.56


def test_loss_weights_round_trip_and_validation() -> None:
    w = LossWeights(l1=1.0, ssim=0.5, gradient=2.0)
    assert w.to_dict() == {"l1": 1.0, "ssim": 0.5, "gradient": 2.0}
    assert LossWeights.from_dict(w.to_dict()) == w
    assert LossWeights.from_dict({"ssim": 3}) == LossWeights(ssim=3.0)
    with pytest.raises(InputError, match="'edge'"):
        LossWeights.from_dict({"edge": 1.0})
    with pytest.raises(InputError, match="gradient must be >= 0"):
        LossWeights(gradient=-1.0)
    with pytest.raises(InputError, match="l1 must be a finite number"):
        LossWeights(l1=math.nan)
    with pytest.raises(InputError, match="all loss weights are 0"):
        LossWeights(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((2, 1, 8, 8), (2, 1, 8, 9), (2, 1, 8, 8)), r"target has shape \(2, 1, 8, 9\)"),
        (((2, 1, 8, 8), (2, 1, 8, 8), (2, 8, 8)), r"mask has shape \(2, 8, 8\)"),
        (((2, 8, 8), (2, 8, 8), (2, 8, 8)), r"\(B, 1, H, W\)"),
        (((2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8)), r"\(B, 1, H, W\)"),
    ],
)
def test_bad_shapes_raise_input_error(args: tuple, match: str) -> None:
    p, t, m = (torch.zeros(s) for s in args)
    with pytest.raises(InputError, match=match):
        CompositeLoss()(p, t, m)


def test_bad_ssim_settings_raise_input_error() -> None:
    pred, target, mask = ndvi_batch(0)
    with pytest.raises(InputError, match="win_size"):
        masked_ssim(pred, target, mask, win_size=4)
    with pytest.raises(InputError, match="data_range"):
        CompositeLoss(data_range=0.0)
    with pytest.raises(InputError, match=r"LossWeights\.from_dict"):
        CompositeLoss({"l1": 1.0})  # type: ignore[arg-type]
