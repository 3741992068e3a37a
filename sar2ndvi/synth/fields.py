"""Seeded, spatially correlated random fields (spectral synthesis)."""

from __future__ import annotations

import numpy as np


def _frequency_radius(shape: tuple[int, int]) -> np.ndarray:
    """|k| in cycles per pixel for an rfft2 layout of `shape`."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    return np.hypot(ky, kx)


def _standardise(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


def gaussian_random_field(
    shape: tuple[int, int], correlation_length: float, rng: np.random.Generator
) -> np.ndarray:
    """A stationary Gaussian random field with a Gaussian covariance.

    Args:
        shape: (height, width) in pixels.
        correlation_length: e-folding length of the covariance, in pixels (> 0).
        rng: the random generator; the same generator state gives the same field.

    Returns:
        float64 array of `shape`, mean 0 and standard deviation 1.
    """
    if correlation_length <= 0:
        raise ValueError(f"correlation_length must be > 0 pixels, got {correlation_length}")
    # Pad so that the periodic FFT field does not wrap features across edges.
    pad = int(np.ceil(2 * correlation_length))
    padded = (shape[0] + pad, shape[1] + pad)
    k = _frequency_radius(padded)
    amplitude = np.exp(-((np.pi * k * correlation_length) ** 2) / 2.0)
    noise = np.fft.rfft2(rng.standard_normal(padded))
    field = np.fft.irfft2(noise * amplitude, s=padded)[: shape[0], : shape[1]]
    return _standardise(field)


def fractal_field(
    shape: tuple[int, int], rng: np.random.Generator, beta: float = 2.2, min_wavelength: float = 2.0
) -> np.ndarray:
    """A power-law (fractional Brownian) surface: power spectrum proportional to |k|^-beta.

    Args:
        shape: (height, width) in pixels.
        rng: the random generator.
        beta: spectral exponent; about 2 gives natural-looking terrain.
        min_wavelength: shortest wavelength kept, in pixels (smooths pixel noise).

    Returns:
        float64 array of `shape`, mean 0 and standard deviation 1.
    """
    k = _frequency_radius(shape)
    k[0, 0] = np.inf  # drop the mean
    amplitude = k ** (-beta / 2.0)
    amplitude[k > 1.0 / min_wavelength] = 0.0
    noise = np.fft.rfft2(rng.standard_normal(shape))
    return _standardise(np.fft.irfft2(noise * amplitude, s=shape))
