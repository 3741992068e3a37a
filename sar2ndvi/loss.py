"""The masked composite training loss: L1 + (1 - SSIM) + Sobel-gradient L1, in PyTorch.

All terms take ``pred`` and ``target`` NDVI tensors of shape ``(B, 1, H, W)`` and a ``mask``
of the same shape, bool or float, 1 (True) = valid. A float mask acts as per-pixel weights
(values <= 0 or NaN count as invalid). Every term averages over the valid pixels of the whole
batch, and every term first replaces ``pred`` and ``target`` by 0 wherever the mask is 0 (with
``torch.where``, before any arithmetic), so:

- NaN (cloud, no data) in ``target`` under the mask never reaches the loss or its gradient;
- values of ``pred`` or ``target`` under the mask never change the loss, and the gradient of
  the loss with respect to ``pred`` is exactly 0 at masked pixels: an invalid pixel is simply
  absent from every SSIM window and every Sobel neighbourhood, in ``pred`` as in ``target``.

The SSIM term uses the same normalised convolution as ``sar2ndvi.metrics.ssim`` (Gaussian
window 11 x 11, sigma 1.5, population covariances, data range 2) but keeps the pixels near
the patch border: zero padding plus renormalisation by the window's valid weight gives them
honest, smaller windows. A pixel counts when it is valid and at least ``min_support`` (0.5)
of its window weight lies on valid pixels inside the patch. See ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as nnf

from sar2ndvi.errors import InputError
from sar2ndvi.metrics import (
    NDVI_DATA_RANGE,
    SSIM_K1,
    SSIM_K2,
    SSIM_MIN_SUPPORT,
    SSIM_SIGMA,
    SSIM_WINDOW,
    SUPPORT_TOLERANCE,
)

__all__ = [
    "CompositeLoss",
    "LossWeights",
    "masked_gradient_loss",
    "masked_l1",
    "masked_ssim",
    "masked_ssim_map",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three loss terms (dimensionless, >= 0, not all 0)."""

    l1: float = 1.0
    ssim: float = 1.0
    gradient: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InputError(f"loss weight {f.name} must be a finite number, got {v!r}")
            if v < 0:
                raise InputError(f"loss weight {f.name} must be >= 0, got {v}; use 0 to drop it")
        if not any(getattr(self, f.name) for f in fields(self)):
            raise InputError("all loss weights are 0; give at least one term (l1, ssim, gradient)")

    def to_dict(self) -> dict[str, float]:
        """``{"l1": ..., "ssim": ..., "gradient": ...}`` (for checkpoints and logs)."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LossWeights:
        """Inverse of ``to_dict``; missing keys take their defaults, unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(
                f"unknown loss weight(s) {', '.join(map(repr, unknown))}; "
                f"the weights are {', '.join(sorted(names))}"
            )
        return cls(**dict(d))


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _prepare(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, w)``: pred and target zeroed where invalid, and the weights ``w`` >= 0.

    All three have ``pred``'s shape ``(B, 1, H, W)`` and floating dtype.
    """
    for name, t in (("pred", pred), ("target", target), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise InputError(
            f"pred must have shape (B, 1, H, W), got {tuple(pred.shape)}; "
            "add the channel axis with pred.unsqueeze(1)"
        )
    if not pred.is_floating_point():
        raise InputError(f"pred must be a floating tensor, got dtype {pred.dtype}")
    for name, t in (("target", target), ("mask", mask)):
        if t.shape != pred.shape:
            raise InputError(
                f"{name} has shape {tuple(t.shape)} but pred has {tuple(pred.shape)}; "
                "give one value per pixel of pred"
            )
    if mask.dtype == torch.bool:
        valid = mask
        w = mask.to(pred.dtype)
    else:
        # NaN > 0 is False: a NaN weight is an invalid pixel, not a NaN loss.
        valid = mask > 0
        w = torch.where(valid, mask.to(pred.dtype), 0.0)
    zero = pred.new_zeros(())
    # torch.where before any arithmetic: NaN under the mask must not reach a sum, and a
    # product like 0 * NaN would (also in the backward pass).
    x = torch.where(valid, pred, zero)
    y = torch.where(valid, target.to(pred.dtype), zero)
    return x, y, w


def _weighted_mean(values: Tensor, w: Tensor, empty: float) -> Tensor:
    """``sum(w * values) / sum(w)``; ``empty`` (with a zero gradient) when ``sum(w)`` is 0."""
    total = w.sum()
    has = total > 0
    mean = (w * values).sum() / torch.where(has, total, torch.ones_like(total))
    return torch.where(has, mean, torch.full_like(mean, empty))


# --------------------------------------------------------------------------------------
# L1
# --------------------------------------------------------------------------------------


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the valid pixels of the batch (NDVI units), a scalar.

    0 (with a zero, finite gradient) when no pixel is valid.
    """
    x, y, w = _prepare(pred, target, mask)
    return _weighted_mean((x - y).abs(), w, 0.0)


# --------------------------------------------------------------------------------------
# SSIM by normalised convolution
# --------------------------------------------------------------------------------------


def _gaussian_1d(sigma: float, win_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The normalised 1-D Gaussian of ``win_size`` taps (computed in float64)."""
    r = (win_size - 1) // 2
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (k / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(stack: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter of ``(N, 1, H, W)`` with zero padding, same shape."""
    r = (g.numel() - 1) // 2
    out = nnf.conv2d(stack, g.view(1, 1, 1, -1), padding=(0, r))
    return nnf.conv2d(out, g.view(1, 1, -1, 1), padding=(r, 0))


def _check_ssim_args(data_range: float, sigma: float, win_size: int, min_support: float) -> None:
    if not (math.isfinite(data_range) and data_range > 0):
        raise InputError(f"data_range must be a positive number, got {data_range!r}; NDVI uses 2")
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a positive number of pixels, got {sigma!r}; SSIM uses 1.5")
    if isinstance(win_size, bool) or not isinstance(win_size, int):
        raise InputError(f"win_size must be an odd integer >= 3, got {win_size!r}; SSIM uses 11")
    if win_size < 3 or win_size % 2 == 0:
        raise InputError(f"win_size must be an odd integer >= 3, got {win_size}; SSIM uses 11")
    if not 0.0 <= min_support <= 1.0:
        raise InputError(f"min_support must lie in [0, 1], got {min_support!r}; the default is 0.5")


def masked_ssim_map(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    data_range: float = NDVI_DATA_RANGE,
    sigma: float = SSIM_SIGMA,
    win_size: int = SSIM_WINDOW,
    *,
    min_support: float = SSIM_MIN_SUPPORT,
) -> tuple[Tensor, Tensor]:
    """Local SSIM of every pixel and the weight with which it counts.

    Returns:
        ``(ssim, weight)``, both ``(B, 1, H, W)`` in ``pred``'s dtype: the SSIM map (finite
        everywhere; meaningless where ``weight`` is 0) and ``weight`` = the pixel's mask
        weight where its window puts at least ``min_support`` of its weight on valid pixels,
        else 0. ``sum(weight * ssim) / sum(weight)`` is ``masked_ssim``.
    """
    _check_ssim_args(data_range, sigma, win_size, min_support)
    x, y, w = _prepare(pred, target, mask)
    g = _gaussian_1d(sigma, win_size, x.dtype, x.device)
    b = x.shape[0]
    # One batched convolution for all six local sums.
    sums = _blur(torch.cat([w, w * x, w * y, w * x * x, w * y * y, w * x * y]), g).split(b)
    support, sx, sy, sxx, syy, sxy = sums
    # Where no valid pixel is in reach every sum is 0: divide by 1 there, not by 0,
    # so the (unused) values and their gradients stay finite.
    den = torch.where(support > 0, support, torch.ones_like(support))
    mu_x, mu_y = sx / den, sy / den
    var_x = sxx / den - mu_x * mu_x
    var_y = syy / den - mu_y * mu_y
    cov = sxy / den - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # Numerator and denominator are grouped alike, so identical images give exactly 1.
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    weight = torch.where(support >= min_support - SUPPORT_TOLERANCE, w, torch.zeros_like(w))
    return s, weight


def masked_ssim(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    data_range: float = NDVI_DATA_RANGE,
    sigma: float = SSIM_SIGMA,
    win_size: int = SSIM_WINDOW,
    *,
    min_support: float = SSIM_MIN_SUPPORT,
) -> Tensor:
    """Mean SSIM over the well-supported valid pixels of the batch, a scalar in [-1, 1].

    1 (so that the loss term ``1 - masked_ssim`` is 0, with a zero gradient) when no pixel
    counts.
    """
    s, weight = masked_ssim_map(
        pred, target, mask, data_range, sigma, win_size, min_support=min_support
    )
    return _weighted_mean(s, weight, 1.0)


# --------------------------------------------------------------------------------------
# Gradient (edge) term
# --------------------------------------------------------------------------------------

# Sobel kernels divided by 8, so that they estimate d/dx and d/dy in NDVI per pixel.
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def _sobel(img: Tensor) -> Tensor:
    """``(B, 2, H, W)``: x and y derivatives of ``(B, 1, H, W)`` (zero padding)."""
    kx = torch.tensor(_SOBEL_X, dtype=img.dtype, device=img.device) / 8
    k = torch.stack([kx, kx.T]).unsqueeze(1)
    return nnf.conv2d(img, k, padding=1)


def masked_gradient_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 distance between the Sobel gradients of ``pred`` and ``target``, a scalar.

    ``mean(|dx_pred - dx_target| + |dy_pred - dy_target|) / 2`` (NDVI per pixel) over the
    pixels whose whole 3 x 3 neighbourhood is valid and inside the image (the mask eroded
    by a 3 x 3 min-pool); 0 with a zero gradient when there is none.
    """
    x, y, w = _prepare(pred, target, mask)
    # Min-pool as a max-pool of the negation, padded with 0 = invalid outside the image.
    eroded = -nnf.max_pool2d(-nnf.pad(w, (1, 1, 1, 1), value=0.0), kernel_size=3, stride=1)
    diff = (_sobel(x) - _sobel(y)).abs().sum(dim=1, keepdim=True)
    return _weighted_mean(diff, eroded, 0.0) / 2


# --------------------------------------------------------------------------------------
# The composite
# --------------------------------------------------------------------------------------


class CompositeLoss(torch.nn.Module):
    """``l1 * L1 + ssim * (1 - SSIM) + gradient * G``, all masked (see the module doc).

    Args:
        weights: the term weights (default 1, 1, 1 as in the paper).
        data_range: peak-to-peak range of the data for SSIM (2 for NDVI).
    """

    def __init__(
        self, weights: LossWeights | None = None, data_range: float = NDVI_DATA_RANGE
    ) -> None:
        super().__init__()
        if weights is not None and not isinstance(weights, LossWeights):
            raise InputError(
                f"weights must be a LossWeights, got {type(weights).__name__}; "
                "build one with LossWeights.from_dict(...)"
            )
        self.weights = LossWeights() if weights is None else weights
        _check_ssim_args(float(data_range), SSIM_SIGMA, SSIM_WINDOW, SSIM_MIN_SUPPORT)
        self.data_range = float(data_range)

    def _terms(self, pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Each unweighted loss term, keyed like ``LossWeights``; skipped terms are 0."""
        w = self.weights
        zero = pred.new_zeros(())
        return {
            "l1": masked_l1(pred, target, mask) if w.l1 else zero,
            "ssim": 1 - masked_ssim(pred, target, mask, self.data_range) if w.ssim else zero,
            "gradient": masked_gradient_loss(pred, target, mask) if w.gradient else zero,
        }

    def _total(self, terms: dict[str, Tensor]) -> Tensor:
        w = self.weights
        return w.l1 * terms["l1"] + w.ssim * terms["ssim"] + w.gradient * terms["gradient"]

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The weighted sum of the terms, a scalar tensor (differentiable w.r.t. ``pred``)."""
        return self._total(self._terms(pred, target, mask))

    def with_terms(
        self, pred: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss (differentiable) and its unweighted terms as floats, in one pass: what a
        training step needs to both optimise and log."""
        terms = self._terms(pred, target, mask)
        return self._total(terms), {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def components(self, pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        """Each term and the total, as floats for logging.

        Returns:
            ``{"l1", "ssim", "gradient", "total"}``: the unweighted terms (``"ssim"`` is the
            loss term ``1 - SSIM``) and the weighted sum that ``forward`` returns.
        """
        terms = self._terms(pred, target, mask)
        out = {k: float(v) for k, v in terms.items()}
        out["total"] = float(self._total(terms))
        return out

    def extra_repr(self) -> str:
        w = self.weights
        return f"l1={w.l1}, ssim={w.ssim}, gradient={w.gradient}, data_range={self.data_range}"
