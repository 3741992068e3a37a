"""Tiled, blended prediction of an image block: the arithmetic behind `sar2ndvi.predict`.

Every pixel of a scene of H x W pixels is predicted by the overlapping patches of one
*global* lattice, whatever the Dask chunking: patch origins along each axis are
``-margin + k * stride`` (k = 0, 1, ...) with ``margin = overlap // 2``, until the scene end
is covered. A chunk is predicted by every lattice patch that touches it, read from the
chunk extended by a halo of one patch (`HALO` = patch size; the scene edge is mirrored,
NumPy's "symmetric" mode, which is Dask's ``boundary="reflect"``). Each pixel is the
weighted mean of the patch predictions covering it, weighted by a separable Hann window
that is strictly positive, so that patch borders count little and no pixel has zero
weight. Since a pixel's value depends only on the patches of the global lattice, two
chunkings give the same prediction up to float32 rounding of the model itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import windows

from sar2ndvi.errors import InputError
from sar2ndvi.patches import PatchSpec

__all__ = [
    "Block",
    "PatchPredictor",
    "blend_window",
    "halo",
    "lattice",
    "patch_count",
    "predict_block",
    "predict_image",
]

#: A model on a batch: (N, C, size, size) float32 -> (K, N, size, size) float32, K layers
#: (the prediction, optionally followed by an uncertainty).
PatchPredictor = Callable[[np.ndarray], np.ndarray]


@lru_cache(maxsize=8)
def blend_window(size: int) -> np.ndarray:
    """(size, size) float64 blending weights: a separable Hann window that never reaches 0.

    The Hann window of size + 2 points without its two zero end points: smooth, symmetric,
    1 in the middle and about (pi / (size + 1))**2 at the patch border.
    """
    w = windows.hann(size + 2, sym=True)[1:-1]
    out = np.outer(w, w)
    out.flags.writeable = False
    return out


def margin(spec: PatchSpec) -> int:
    """Pixels by which the lattice starts before the scene edge: half the overlap, so that
    the scene edges lie inside patches rather than on their low-weight borders."""
    return spec.overlap // 2


def lattice(length: int, spec: PatchSpec) -> np.ndarray:
    """Origins (int64) of the global patch lattice along an axis of `length` pixels.

    They start at ``-margin(spec)`` and step by the stride until a patch reaches past
    ``length + margin``; every pixel of ``[0, length)`` is covered.
    """
    if length < 1:
        raise InputError(f"cannot predict an axis of {length} pixels")
    m = margin(spec)
    n = max(1, -(-(length + 2 * m - spec.size) // spec.stride) + 1)
    return -m + spec.stride * np.arange(n, dtype=np.int64)


def halo(spec: PatchSpec) -> int:
    """Pixels of context each block needs on every side: a patch that touches the block
    reaches at most size - 1 pixels beyond it, and the lattice starts less than a patch
    before the scene and ends less than one after it."""
    return spec.size


@dataclass(frozen=True)
class Block:
    """Where a block sits: its first pixel (row, col) and shape in the scene, the scene's
    shape, and the halo its data carries on each side."""

    start: tuple[int, int]
    shape: tuple[int, int]
    scene: tuple[int, int]
    halo: int


def _touching(origins: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    return origins[(origins < stop) & (origins + size > start)]


def predict_block(
    data: np.ndarray,
    block: Block,
    spec: PatchSpec,
    predictor: PatchPredictor,
    *,
    layers: int = 1,
    batch_size: int = 16,
) -> np.ndarray:
    """Predict one block from its data with halo, blending every lattice patch touching it.

    Args:
        data: (C, h + 2 * halo, w + 2 * halo) inputs of the block and its halo (mirrored
            beyond the scene edges).
        block: the block's place in the scene.
        spec: patch size and overlap.
        predictor: (N, C, size, size) -> (layers, N, size, size).
        layers: how many layers the predictor returns.
        batch_size: patches per predictor call.

    Returns:
        (layers, h, w) float32: the weighted mean of each layer over the covering patches.
    """
    (r0, c0), (h, w), (H, W), d = block.start, block.shape, block.scene, block.halo
    if data.shape[-2:] != (h + 2 * d, w + 2 * d):
        raise InputError(f"block data is {data.shape[-2:]}, expected {(h + 2 * d, w + 2 * d)}")
    size = spec.size
    rows = _touching(lattice(H, spec), r0, r0 + h, size)
    cols = _touching(lattice(W, spec), c0, c0 + w, size)
    weights = blend_window(size)
    total = np.zeros((layers, h, w), dtype=np.float64)
    norm = np.zeros((h, w), dtype=np.float64)
    origins = [(int(r), int(c)) for r in rows for c in cols]
    for b in range(0, len(origins), batch_size):
        batch = origins[b : b + batch_size]
        # local (in `data`) top-left corners; the halo guarantees they are inside
        patches = np.stack(
            [
                data[:, r - r0 + d : r - r0 + d + size, c - c0 + d : c - c0 + d + size]
                for r, c in batch
            ]
        )
        out = np.asarray(predictor(patches), dtype=np.float64)
        for i, (r, c) in enumerate(batch):
            # the part of patch (r, c) that falls inside the block
            y0, y1 = max(r, r0), min(r + size, r0 + h)
            x0, x1 = max(c, c0), min(c + size, c0 + w)
            py, px = slice(y0 - r, y1 - r), slice(x0 - c, x1 - c)
            by, bx = slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0)
            wgt = weights[py, px]
            total[:, by, bx] += out[:, i, py, px] * wgt
            norm[by, bx] += wgt
    return (total / norm).astype(np.float32)


def predict_image(
    image: np.ndarray,
    spec: PatchSpec,
    predictor: PatchPredictor,
    *,
    layers: int = 1,
    batch_size: int = 16,
) -> np.ndarray:
    """Predict a whole (C, H, W) image in memory: the reference for the chunked path.

    Returns (layers, H, W) float32.
    """
    d = halo(spec)
    padded = np.pad(image, ((0, 0), (d, d), (d, d)), mode="symmetric")
    shape = tuple(int(n) for n in image.shape[-2:])
    return predict_block(
        padded,
        Block((0, 0), shape, shape, d),
        spec,
        predictor,
        layers=layers,
        batch_size=batch_size,
    )


def patch_count(shape: Sequence[int], chunks: Sequence[Sequence[int]], spec: PatchSpec) -> int:
    """How many patch predictions a chunked prediction of a (H, W) scene makes (a patch
    that touches several chunks is predicted once for each of them)."""

    def per_axis(length: int, sizes: Sequence[int]) -> int:
        origins = lattice(length, spec)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        return sum(
            len(_touching(origins, int(s), int(s) + int(c), spec.size))
            for s, c in zip(starts, sizes, strict=True)
        )

    return per_axis(int(shape[0]), chunks[0]) * per_axis(int(shape[1]), chunks[1])
