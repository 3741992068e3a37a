"""Overlapping patches of a feature store, and a fast PyTorch loader for them.

- the patch lattice: `PatchSpec` (size, overlap), `patch_origins` (the top-left corners of
  every full window on the stride lattice) and `patch_generator`, the same windows as an
  xbatcher `BatchGenerator` (the user-facing, lazy xarray view);
- cloudy patches: `patch_validity` (the valid fraction of each patch, computed chunk-wise
  with Dask: never the whole scene in memory) and `select_patches`;
- `PatchDataset`, a map-style torch dataset that reads patches straight from the Zarr
  store through a per-process LRU of decoded chunk cells, `TileSampler`, which visits the
  patches tile by tile so that the cache hits, and `make_loader`;
- `Augment`: flips (and, on request, 90-degree rotations) that transform the channels the
  way the physics says: the terrain aspect encodings change sign or swap, and a mirror
  east <-> west swaps the ascending and descending radar channels.

Spatially disjoint train/val/test splits of the lattice are in `sar2ndvi.split`; the design
and the measured loader rate are in docs/patches.md.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import xbatcher
import zarr

from sar2ndvi.errors import InputError
from sar2ndvi.geometry import FLAT_SLOPE_DEG

__all__ = [
    "CACHE_BYTES",
    "PATCH_128",
    "PATCH_256",
    "Augment",
    "AugmentOps",
    "PatchDataset",
    "PatchSpec",
    "TileSampler",
    "default_workers",
    "make_loader",
    "patch_generator",
    "patch_origins",
    "patch_validity",
    "select_patches",
    "valid_pixels",
]


# --------------------------------------------------------------------------- the lattice


@dataclass(frozen=True)
class PatchSpec:
    """Square patches of `size` px whose neighbours overlap by `overlap` px.

    Attributes:
        size: patch side, pixels (the paper: 128).
        overlap: pixels shared by neighbouring patches (the paper: 64); 0 <= overlap < size.
    """

    size: int = 128
    overlap: int = 64

    def __post_init__(self) -> None:
        for name in ("size", "overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise InputError(f"patch {name} must be an integer number of pixels, got {value!r}")
        if self.size < 1:
            raise InputError(f"patch size must be >= 1 px, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise InputError(
                f"patch overlap must be in 0..{self.size - 1} px for {self.size}-px patches, "
                f"got {self.overlap}; e.g. PatchSpec({self.size}, {self.size // 2})"
            )

    @property
    def stride(self) -> int:
        """Pixels between the origins of neighbouring patches (size - overlap)."""
        return self.size - self.overlap

    @property
    def cell(self) -> int:
        """gcd(size, stride), px: every patch is a whole number of cells of this side."""
        return math.gcd(self.size, self.stride)

    def to_dict(self) -> dict[str, int]:
        return {"size": int(self.size), "overlap": int(self.overlap)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatchSpec:
        return cls(int(data["size"]), int(data["overlap"]))


#: The paper's patches: 128 px with 64 px overlap.
PATCH_128 = PatchSpec(128, 64)
#: Twice the context, same half-patch overlap.
PATCH_256 = PatchSpec(256, 128)


def _shape2(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"shape must be (rows, cols), got {shape!r}") from exc
    if h < 1 or w < 1:
        raise InputError(f"shape must be positive (rows, cols), got {shape!r}")
    return h, w


def lattice_starts(length: int, spec: PatchSpec) -> np.ndarray:
    """Start offsets (px) of the full windows along one axis of `length` px."""
    if length < spec.size:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - spec.size + 1, spec.stride, dtype=np.int64)


def patch_origins(shape: Sequence[int], spec: PatchSpec) -> np.ndarray:
    """Top-left corners (row, col) of every full patch on the stride lattice.

    The windows xbatcher's `BatchGenerator` yields for ``input_dims = size`` and
    ``input_overlap = overlap``, in its order (row-major). Partial windows at the right and
    bottom edges are left out, as xbatcher does.

    Args:
        shape: (rows, cols) of the scene, px.
        spec: the patch size and overlap.

    Returns:
        (n, 2) int64 array of (row, col) origins; empty (0, 2) when the scene is smaller
        than one patch.
    """
    h, w = _shape2(shape)
    rows, cols = lattice_starts(h, spec), lattice_starts(w, spec)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)


def patch_generator(ds: xr.Dataset, spec: PatchSpec) -> xbatcher.BatchGenerator:
    """The patches of a store group as xbatcher batches: lazy xarray windows, one per patch.

    Args:
        ds: a Dataset with ``y`` and ``x`` dims (a feature store group, e.g.
            ``store.open(path, group="pre")`` with ``features`` and ``target``).
        spec: the patch size and overlap.

    Returns:
        A `BatchGenerator` whose i-th batch is the window at ``patch_origins(shape, spec)[i]``.
    """
    for dim in ("y", "x"):
        if dim not in ds.dims:
            raise InputError(
                f"patch_generator needs a Dataset with 'y' and 'x' dims, got {dict(ds.sizes)}"
            )
    if ds.sizes["y"] < spec.size or ds.sizes["x"] < spec.size:
        raise InputError(
            f"the scene ({ds.sizes['y']} x {ds.sizes['x']} px) is smaller than one "
            f"{spec.size}-px patch; use smaller patches"
        )
    return xbatcher.BatchGenerator(
        ds,
        input_dims={"y": spec.size, "x": spec.size},
        input_overlap={"y": spec.overlap, "x": spec.overlap},
        preload_batch=False,
    )


def _check_origins(origins: Any, spec: PatchSpec, shape: tuple[int, int] | None) -> np.ndarray:
    """`origins` as an (n, 2) int64 array, checked to hold whole patches inside `shape`."""
    arr = np.asarray(origins)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"origins must be an (n, 2) integer array of (row, col), got {arr.dtype}{arr.shape}; "
            "use patch_origins(...) or Split.patches(role)"
        )
    arr = arr.astype(np.int64)
    if shape is not None:
        h, w = shape
        bad = (arr[:, 0] < 0) | (arr[:, 1] < 0) | (arr[:, 0] + spec.size > h)
        bad |= arr[:, 1] + spec.size > w
        if bad.any():
            r, c = arr[np.argmax(bad)]
            raise InputError(
                f"patch origin ({r}, {c}) with size {spec.size} px does not fit the "
                f"{h} x {w} px scene; take origins from patch_origins(shape, spec)"
            )
    return arr


# --------------------------------------------------------------------------- cloudy patches


def valid_pixels(ds: xr.Dataset) -> xr.DataArray:
    """Lazy (y, x) bool: the target is finite, there is radar data (`gaps == 0`) and every
    feature band is finite. The pixels a loss may use."""
    missing = [v for v in ("features", "target", "gaps") if v not in ds.data_vars]
    if missing:
        raise InputError(
            f"the store group has no {', '.join(missing)}; pass a feature store group "
            "(e.g. /pre) written by sar2ndvi.features.write_features"
        )
    return ds["features"].notnull().all("band") & ds["target"].notnull() & (ds["gaps"] == 0)


def _group_dataset(
    store_or_ds: Any, group: str, storage_options: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """The Dataset of `group` from a store path or URL (opened with `storage_options`), a
    DataTree, or a Dataset (returned as is)."""
    if isinstance(store_or_ds, xr.Dataset):
        return store_or_ds
    if isinstance(store_or_ds, xr.DataTree):
        if group.strip("/") not in store_or_ds.children:
            raise InputError(f"the feature store has no group /{group.strip('/')}")
        return store_or_ds[group.strip("/")].to_dataset()
    if isinstance(store_or_ds, str | os.PathLike):
        from sar2ndvi import store

        opened = store.open(
            store_or_ds, group=group, storage_options=dict(storage_options or {}) or None
        )
        assert isinstance(opened, xr.Dataset)
        return opened
    raise InputError(
        f"expected a feature store path, DataTree or Dataset, got {type(store_or_ds).__name__}"
    )


def patch_validity(
    store_or_ds: str | os.PathLike | xr.DataTree | xr.Dataset,
    group: str,
    origins: np.ndarray,
    spec: PatchSpec,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The fraction of valid pixels (see `valid_pixels`) in each patch.

    Lazily and chunk-wise: the per-pixel validity is summed over cells of
    ``spec.cell = gcd(size, stride)`` px with Dask, only that small coarse array of counts
    is computed, and an integral image over it gives every lattice patch's count exactly
    (each patch is a whole number of cells). Memory: one int32 per cell, e.g. 64 x 64 px
    cells for the paper's 128/64 patches.

    Args:
        store_or_ds: a feature store path, its DataTree, or the group's Dataset.
        group: the group ("pre" or "post"); ignored for a Dataset.
        origins: (n, 2) patch origins on the stride lattice (multiples of the stride).
        spec: the patch size and overlap.
        storage_options: fsspec options for a store URL (``s3://...``).

    Returns:
        (n,) float64 valid fractions in [0, 1].
    """
    ds = _group_dataset(store_or_ds, group, storage_options)
    shape = (ds.sizes["y"], ds.sizes["x"])
    origins = _check_origins(origins, spec, shape)
    g = spec.cell
    if (origins % g).any():
        r, c = origins[np.argmax((origins % g).any(axis=1))]
        raise InputError(
            f"patch origin ({r}, {c}) is off the patch lattice: origins must be multiples of "
            f"{g} px for {spec.size}/{spec.overlap} patches; use patch_origins(...)"
        )
    if len(origins) == 0:
        return np.zeros(0, dtype=np.float64)
    counts = (
        valid_pixels(ds)
        .astype(np.int32)
        .coarsen(y=g, x=g, boundary="trim")  # trimmed cells hold no lattice patch
        .sum()
        .astype(np.int32)
        .values
    )
    integral = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = counts.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    r0, c0 = origins[:, 0] // g, origins[:, 1] // g
    r1, c1 = r0 + spec.size // g, c0 + spec.size // g
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return total / float(spec.size * spec.size)


def select_patches(
    store_or_ds: str | os.PathLike | xr.DataTree | xr.Dataset,
    group: str,
    origins: np.ndarray,
    spec: PatchSpec,
    *,
    min_valid: float = 0.5,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The origins whose patch has a valid fraction >= `min_valid` (cloudy, gappy or
    edge-of-swath patches dropped), in their given order; `storage_options` are fsspec's
    for a store URL."""
    if not 0.0 <= float(min_valid) <= 1.0:
        raise InputError(f"min_valid must be a fraction in [0, 1], got {min_valid!r}")
    origins = np.asarray(origins)
    fractions = patch_validity(store_or_ds, group, origins, spec, storage_options=storage_options)
    return _check_origins(origins, spec, None)[fractions >= min_valid]


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentOps:
    """One draw of the augmentation: applied as hflip, then vflip, then rot90.

    Attributes:
        hflip: mirror east <-> west (reverse the columns).
        vflip: mirror north <-> south (reverse the rows).
        rot90: rotate 90 degrees counter-clockwise (``np.rot90``: east becomes north).
    """

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False


_ASPECT = ("sin_aspect", "cos_aspect")
_ORBIT_SWAP = {"vv_asc": "vv_desc", "vv_desc": "vv_asc", "vh_asc": "vh_desc", "vh_desc": "vh_asc"}
#: sin(slope) below this marks flat ground, whose aspect is 0 by convention (sin 0, cos 1).
_FLAT_SIN_SLOPE = np.float32(np.sin(np.deg2rad(FLAT_SLOPE_DEG)))


@lru_cache(maxsize=64)
def _channel_map(bands: tuple[str, ...], ops: AugmentOps) -> tuple[np.ndarray, np.ndarray]:
    """(source, sign): output channel c is ``sign[c] * x[source[c]]`` after `ops`.

    Aspect is the compass bearing a of the downslope direction, so (sin a, cos a) is its
    (east, north) unit vector: an east-west mirror negates the east part (sin a), a
    north-south mirror the north part (cos a), and the counter-clockwise rotation turns
    east into north and north into west: (e, n) -> (-n, e), i.e. sin' = -cos, cos' = sin.
    sin(slope), backscatter and its statistics are scalars: unchanged. The radar looks
    east on ascending passes and west on descending ones: an east-west mirror swaps them.
    """
    index = {b: i for i, b in enumerate(bands)}
    source = np.arange(len(bands))
    sign = np.ones(len(bands), dtype=np.float32)

    def compose(new_source: dict[str, str], new_sign: dict[str, float]) -> None:
        nonlocal source, sign
        src = np.arange(len(bands))
        sgn = np.ones(len(bands), dtype=np.float32)
        for out, inp in new_source.items():
            if out in index:
                src[index[out]] = index[inp]
        for out, s in new_sign.items():
            if out in index:
                sgn[index[out]] = s
        source, sign = source[src], sign[src] * sgn

    if ops.hflip:
        compose(_ORBIT_SWAP, {"sin_aspect": -1.0})
    if ops.vflip:
        compose({}, {"cos_aspect": -1.0})
    if ops.rot90:
        compose({"sin_aspect": "cos_aspect", "cos_aspect": "sin_aspect"}, {"sin_aspect": -1.0})
    return source, sign


@dataclass(frozen=True)
class Augment:
    """Random flips (and optional 90-degree rotations) that keep the physics of the channels.

    Each patch gets hflip, vflip (and rot90 when `rotate`) with probability 1/2 each: the
    flips alone give 4 of the 8 symmetries of the square (with their product, the
    180-degree rotation). The channels change with the geometry (see `_channel_map`):
    sin(aspect) changes sign under hflip, cos(aspect) under vflip, rot90 maps
    (sin, cos) -> (-cos, sin); hflip swaps ``vv_asc <-> vv_desc`` and ``vh_asc <-> vh_desc``.

    Rotations are off by default: Sentinel-1 looks east (ascending) or west (descending),
    never north or south, so a rotated patch shows layover, foreshortening and shadow on
    slopes that no real pass would show them on. With orbit channels, rotate=True is
    refused. `apply` works on physical values (before normalisation): a sign change or a
    channel swap does not commute with per-channel centring.
    """

    hflip: bool = True
    vflip: bool = True
    rotate: bool = False

    def check(self, bands: Sequence[str]) -> None:
        """Raise InputError when these ops cannot transform `bands` faithfully."""
        bands = tuple(bands)
        if self.rotate:
            orbit = [b for b in bands if b in _ORBIT_SWAP]
            if orbit:
                raise InputError(
                    f"Augment(rotate=True) cannot transform the orbit channels {orbit}: a 90 "
                    "degree rotation turns the radar's east/west look into north/south, "
                    "which no Sentinel-1 pass sees; use Augment(rotate=False)"
                )
            if sum(b in bands for b in _ASPECT) == 1:
                raise InputError(
                    "Augment(rotate=True) needs both sin_aspect and cos_aspect (a rotation "
                    "mixes them); use Augment(rotate=False) or store both channels"
                )

    def draw(self, rng: np.random.Generator) -> AugmentOps:
        """Random ops: each enabled op with probability 1/2 (three draws, always taken)."""
        coins = rng.random(3) < 0.5
        return AugmentOps(
            hflip=bool(self.hflip and coins[0]),
            vflip=bool(self.vflip and coins[1]),
            rot90=bool(self.rotate and coins[2]),
        )

    def apply(
        self,
        sample: Mapping[str, Any],
        rng_or_ops: np.random.Generator | AugmentOps,
        bands: Sequence[str],
        *,
        center: np.ndarray | None = None,
        scale: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """`sample` with its arrays transformed consistently.

        Args:
            sample: ``"x"``: (C, H, W) features in physical units with channels named by
                `bands`; optionally ``"y"`` and ``"mask"`` (..., H, W), transformed
                spatially only. Other entries are copied as they are. NumPy arrays.
            rng_or_ops: a generator to draw the ops from, or the ops themselves.
            bands: channel names of ``x``, in order.
            center, scale: (C,) normalisation statistics; when given, ``x`` comes back
                normalised, ``(x' - center) / scale`` of the transformed physical x', in
                the same pass over the data.

        Returns:
            A new dict with contiguous arrays (the input is not modified); ``x`` is a
            new float32 array.
        """
        ops = rng_or_ops if isinstance(rng_or_ops, AugmentOps) else self.draw(rng_or_ops)
        bands = tuple(str(b) for b in bands)
        self.check(bands)
        x = np.asarray(sample["x"])
        if x.ndim != 3 or x.shape[0] != len(bands):
            raise InputError(f"sample['x'] must be (C={len(bands)}, H, W), got {x.shape}")
        if ops.rot90 and x.shape[-1] != x.shape[-2]:
            raise InputError(f"rot90 needs square patches, got {x.shape[-2:]}")
        out = dict(sample)
        for key in ("y", "mask"):
            if key in sample:
                out[key] = np.ascontiguousarray(_spatial(np.asarray(sample[key]), ops))
        # straight from the flipped view into the output, one channel at a time
        source, sign = _channel_map(bands, ops)
        moved = _spatial(x, ops)
        x = np.empty(moved.shape, dtype=np.float32)
        zero = np.zeros(len(bands), dtype=np.float32)
        c0 = zero if center is None else np.asarray(center, dtype=np.float32).reshape(-1)
        s0 = None if scale is None else np.asarray(scale, dtype=np.float32).reshape(-1)
        for c, (src, sgn) in enumerate(zip(source, sign, strict=True)):
            # (sgn f - c) / s == sgn (f - sgn c) / s exactly: sgn is +-1, rounding symmetric
            np.subtract(moved[src], sgn * c0[c], out=x[c])
            if s0 is not None:
                x[c] /= s0[c]
            if sgn < 0:
                np.negative(x[c], out=x[c])
        aspect_changed = (ops.vflip or ops.rot90) and set(_ASPECT) <= set(bands)
        if aspect_changed and "sin_slope" in bands:
            # flat ground has aspect 0 (north) by convention whatever the flip: keep it
            flat = moved[bands.index("sin_slope")] < _FLAT_SIN_SLOPE
            for name, value in (("sin_aspect", 0.0), ("cos_aspect", 1.0)):
                i = bands.index(name)
                value = np.float32(value) - c0[i]
                x[i][flat] = value if s0 is None else value / s0[i]
        out["x"] = x
        return out


_NO_AUGMENT = Augment(hflip=False, vflip=False)


def _spatial(a: np.ndarray, ops: AugmentOps) -> np.ndarray:
    """The pure pixel rearrangement of `ops` over the last two (y, x) axes."""
    if ops.hflip:
        a = a[..., ::-1]
    if ops.vflip:
        a = a[..., ::-1, :]
    if ops.rot90:
        a = np.rot90(a, k=1, axes=(-2, -1))
    return a


# --------------------------------------------------------------------------- the loader


#: Default per-process budget of decoded chunk cells, bytes.
CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class _StoreLayout:
    """What a dataset needs to know about a store group, read once at construction."""

    shape: tuple[int, int]
    chunks: tuple[int, int]
    bands: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray


def _open_group(path: str, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    # fsspec options are for URLs (s3://...); zarr refuses them with a local path, and one
    # set of options may serve a command's local and remote stores alike
    options = dict(storage_options or {}) if "://" in path else {}
    try:
        return zarr.open_group(path, mode="r", storage_options=options or None)
    except Exception as exc:  # FileNotFoundError, GroupNotFoundError, ...
        raise InputError(f"{path}: cannot open this feature store ({exc})") from exc


def _read_layout(root: zarr.Group, path: str, group: str) -> _StoreLayout:
    def member(name: str) -> Any:
        try:
            return root[name]
        except KeyError as exc:
            raise InputError(
                f"{path}: no /{name} in this store; pass a feature store written by "
                "sar2ndvi.features.write_features"
            ) from exc

    features = member(f"{group}/features")
    for name in ("target", "gaps"):
        arr = member(f"{group}/{name}")
        if tuple(arr.shape) != tuple(features.shape[1:]):
            raise InputError(f"{path}: /{group}/{name} is {arr.shape}, features {features.shape}")
    bands = tuple(str(b) for b in np.asarray(member(f"{group}/band")[:]))
    norm_bands = tuple(str(b) for b in np.asarray(member("normalisation/band")[:]))
    if norm_bands != bands:
        raise InputError(
            f"{path}: /normalisation is for bands {list(norm_bands)} but /{group} holds "
            f"{list(bands)}; rewrite the store with write_features"
        )
    return _StoreLayout(
        shape=(int(features.shape[1]), int(features.shape[2])),
        chunks=(int(features.chunks[1]), int(features.chunks[2])),
        bands=bands,
        center=np.asarray(member("normalisation/center")[:], dtype=np.float32),
        scale=np.asarray(member("normalisation/scale")[:], dtype=np.float32),
    )


class _CellCache:
    """Decoded chunk cells of one store group, least recently used dropped first.

    A cell is one spatial chunk (all bands, the target and the gaps); a patch is cut from
    the 1-4 cells it overlaps. Overlapping patches share cells, so each compressed chunk is
    decoded once per stay in the cache instead of once per patch.
    """

    def __init__(self, root: zarr.Group, group: str, layout: _StoreLayout, max_bytes: int):
        self.features = root[f"{group}/features"]
        self.target = root[f"{group}/target"]
        self.gaps = root[f"{group}/gaps"]
        ch, cw = layout.chunks
        per_cell = ch * cw * (4 * len(layout.bands) + 4 + 1)
        self.capacity = max(0, int(max_bytes) // per_cell)
        self.chunks = layout.chunks
        self.cells: OrderedDict[tuple[int, int], tuple[np.ndarray, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def cell(self, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (cy, cx)
        found = self.cells.get(key)
        if found is not None:
            self.hits += 1
            self.cells.move_to_end(key)
            return found  # type: ignore[return-value]
        self.misses += 1
        ch, cw = self.chunks
        ys, xs = slice(cy * ch, (cy + 1) * ch), slice(cx * cw, (cx + 1) * cw)
        found = (
            np.asarray(self.features[:, ys, xs], dtype=np.float32),
            np.asarray(self.target[ys, xs], dtype=np.float32),
            np.asarray(self.gaps[ys, xs], dtype=np.uint8),
        )
        if self.capacity:
            self.cells[key] = found
            while len(self.cells) > self.capacity:
                self.cells.popitem(last=False)
        return found

    def patch(self, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (C, size, size), target (size, size), gaps (size, size)) at (row, col):
        read-only views of the cached cell when the patch lies in one cell (no copy),
        otherwise assembled from the cells it overlaps."""
        ch, cw = self.chunks
        cy, cx = row // ch, col // cw
        if (row + size - 1) // ch == cy and (col + size - 1) // cw == cx:
            ys = slice(row - cy * ch, row - cy * ch + size)
            xs = slice(col - cx * cw, col - cx * cw + size)
            views = [a[..., ys, xs] for a in self.cell(cy, cx)]
            for v in views:
                v.flags.writeable = False
            return views[0], views[1], views[2]
        feats = np.empty((self.features.shape[0], size, size), dtype=np.float32)
        target = np.empty((size, size), dtype=np.float32)
        gaps = np.empty((size, size), dtype=np.uint8)
        for cy in range(row // ch, (row + size - 1) // ch + 1):
            y0, y1 = max(row, cy * ch), min(row + size, (cy + 1) * ch)
            for cx in range(col // cw, (col + size - 1) // cw + 1):
                x0, x1 = max(col, cx * cw), min(col + size, (cx + 1) * cw)
                f, t, g = self.cell(cy, cx)
                src = (slice(y0 - cy * ch, y1 - cy * ch), slice(x0 - cx * cw, x1 - cx * cw))
                dst = (slice(y0 - row, y1 - row), slice(x0 - col, x1 - col))
                feats[(slice(None), *dst)] = f[(slice(None), *src)]
                target[dst] = t[src]
                gaps[dst] = g[src]
        return feats, target, gaps


class PatchDataset(torch.utils.data.Dataset):
    """Patches of a feature store group as torch tensors, read straight from Zarr.

    Each item is a dict of
    - ``"x"``: float32 (C, size, size), normalised with the store's ``/normalisation``
      (``(features - center) / scale``), NaN -> 0;
    - ``"y"``: float32 (1, size, size) NDVI target, NaN -> 0;
    - ``"mask"``: bool (1, size, size), True where the pixel is valid (`valid_pixels`);
    - ``"origin"``: int64 (2,) the patch's (row, col) in the scene, before augmentation.

    The Zarr arrays are opened lazily, once per process (the dataset pickles to DataLoader
    workers as a path and a few numbers), and each process keeps an LRU of decoded chunk
    cells (`cache_bytes`, default 256 MiB). Patches that overlap share cells, so visiting
    them tile by tile (`TileSampler`, used by `make_loader`) decodes each chunk about once
    per epoch. Augmentation (in physical units, before normalisation) is drawn from
    ``(seed, epoch, index)``: reproducible, different every epoch.

    Args:
        store: path (or fsspec URL) of a feature store from `write_features`.
        origins: (n, 2) patch origins, e.g. ``split.patches("train")``.
        spec: the patch size and overlap.
        group: the period to read, "pre" (training) or "post".
        augment: flips to apply, None for none (validation, test).
        seed: seed of the augmentation draws.
        cache_bytes: per-process budget of the decoded-cell cache; 0 disables it.
        storage_options: fsspec options for a URL.
    """

    def __init__(
        self,
        store: str | Path,
        origins: np.ndarray,
        spec: PatchSpec,
        *,
        group: str = "pre",
        augment: Augment | None = None,
        seed: int = 0,
        cache_bytes: int = CACHE_BYTES,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = os.fspath(store)
        self.group = group.strip("/")
        self.spec = spec
        self.augment = augment
        self.seed = int(seed)
        self.cache_bytes = int(cache_bytes)
        self.storage_options = dict(storage_options or {})
        self.layout = _read_layout(
            _open_group(self.store, self.storage_options), self.store, self.group
        )
        self.origins = _check_origins(origins, spec, self.layout.shape)
        if augment is not None:
            augment.check(self.layout.bands)
        self.epoch = 0
        self._cache: _CellCache | None = None
        self._pid = -1

    @property
    def bands(self) -> tuple[str, ...]:
        return self.layout.bands

    def __len__(self) -> int:
        return len(self.origins)

    def __getstate__(self) -> dict[str, Any]:
        # workers reopen the store themselves: zarr handles and cached cells stay behind
        state = dict(self.__dict__)
        state["_cache"], state["_pid"] = None, -1
        return state

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain integer keys' augmentation draws (see `__getitem__`)."""
        self.epoch = int(epoch)

    @property
    def cache(self) -> _CellCache:
        """This process's cell cache (opened on first use, again after a fork)."""
        if self._cache is None or self._pid != os.getpid():
            root = _open_group(self.store, self.storage_options)
            self._cache = _CellCache(root, self.group, self.layout, self.cache_bytes)
            self._pid = os.getpid()
        return self._cache

    def read(self, index: int) -> dict[str, np.ndarray]:
        """Patch `index` in physical units, not augmented: ``x`` (C, H, W), ``y`` and
        ``mask`` (1, H, W), NaN kept. ``x`` and ``y`` may be read-only views into the
        cache (when the patch lies in one cell)."""
        row, col = (int(v) for v in self.origins[index])
        feats, target, gaps = self.cache.patch(row, col, self.spec.size)
        mask = np.isfinite(target) & (gaps == 0) & np.isfinite(feats).all(axis=0)
        return {"x": feats, "y": target[None], "mask": mask[None]}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """The sample of patch `key`: an index, or ``(index, epoch)`` as `TileSampler`
        yields (a plain index uses the epoch of `set_epoch`)."""
        index, epoch = (key, self.epoch) if not isinstance(key, tuple) else key
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"patch index {index} out of range for {len(self)} patches")
        index %= len(self)
        sample = self.read(index)
        ops = AugmentOps()
        if self.augment is not None:
            ops = self.augment.draw(np.random.default_rng([self.seed, int(epoch), index]))
        # augmentation and normalisation in one pass into a new buffer (NumPy: torch's
        # elementwise ops would pay for its thread pool on every patch), then NaN -> 0
        sample = (self.augment or _NO_AUGMENT).apply(
            sample, ops, self.layout.bands, center=self.layout.center, scale=self.layout.scale
        )
        x = sample["x"]
        np.copyto(x, 0.0, where=~np.isfinite(x))
        y = np.where(np.isfinite(sample["y"]), sample["y"], np.float32(0.0))
        return {
            "x": torch.from_numpy(x),
            "y": torch.from_numpy(y),
            "mask": torch.from_numpy(np.ascontiguousarray(sample["mask"], dtype=bool)),
            "origin": torch.from_numpy(self.origins[index].copy()),
        }


class TileSampler(torch.utils.data.Sampler):
    """Patch keys ``(index, epoch)`` visiting the patches tile by tile.

    Patches are grouped by the tile (of `tile` px, default the store's chunk) holding their
    origin; each epoch shuffles the tile order and, within groups of `mix` consecutive
    tiles, the patch order, from ``(seed, epoch)``. A batch thus draws from a few random
    places of the scene while the loader's cell cache only needs the cells of `mix` tiles
    and their neighbours at a time. ``shuffle=False`` yields the patches in their order.

    With `batch_size` and `workers` (> 1) given, the shuffled batches are also dealt so that
    each DataLoader worker (which receives batches k, k + workers, ...) gets a contiguous
    run of them: each worker then reads its own part of the scene instead of every worker
    decoding every chunk.

    Args:
        origins: (n, 2) patch origins (the dataset's).
        tile: tile side, px.
        shuffle: shuffle tiles and patches (training) or not (evaluation).
        seed: seed of the shuffles.
        mix: tiles whose patches are shuffled together.
        batch_size: the loader's batch size (for dealing batches to workers).
        workers: the loader's worker processes.
    """

    def __init__(
        self,
        origins: np.ndarray,
        tile: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        mix: int = 4,
        batch_size: int | None = None,
        workers: int = 0,
    ) -> None:
        if tile < 1 or mix < 1:
            raise InputError(f"tile ({tile}) and mix ({mix}) must be >= 1")
        self.origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
        self.tile, self.shuffle, self.seed, self.mix = int(tile), shuffle, int(seed), int(mix)
        self.batch_size, self.workers = batch_size, int(workers)
        self.epoch = 0
        keys = self.origins // self.tile
        # one label per tile, then the patch indices of each tile in their given order
        _, label = np.unique(keys, axis=0, return_inverse=True)
        label = label.reshape(-1)
        order = np.argsort(label, kind="stable")
        bounds = np.flatnonzero(np.diff(label[order])) + 1
        self.tiles: list[np.ndarray] = np.split(order, bounds) if len(order) else []

    def __len__(self) -> int:
        return len(self.origins)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at `epoch` (e.g. when resuming training)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The patch indices of `epoch`, in visiting order."""
        if not self.shuffle:
            return np.arange(len(self.origins))
        rng = np.random.default_rng([self.seed, int(epoch)])
        tiles = [self.tiles[i] for i in rng.permutation(len(self.tiles))]
        groups = [
            rng.permutation(np.concatenate(tiles[i : i + self.mix]))
            for i in range(0, len(tiles), self.mix)
        ]
        order = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        return self._deal(order)

    def _deal(self, order: np.ndarray) -> np.ndarray:
        """`order` with its batches rearranged so that batch k, which the DataLoader gives
        to worker k % workers, comes from that worker's contiguous run of batches."""
        b, w = self.batch_size, self.workers
        if not b or w < 2 or len(order) <= b:
            return order
        batches = [order[i : i + b] for i in range(0, len(order), b)]
        last = [batches.pop()] if len(batches[-1]) < b else []  # a short batch stays last
        runs = np.array_split(np.arange(len(batches)), w)  # longer runs first: k % w holds
        dealt = []
        for k in range(len(runs[0])):
            dealt += [batches[run[k]] for run in runs if k < len(run)]
        return np.concatenate(dealt + last)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        for index in self.order(epoch):
            yield int(index), epoch


def default_workers() -> int:
    """DataLoader workers by default: half the cores (the rest train), at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _worker_init(worker_id: int) -> None:
    # One thread per worker: the cores are shared with training. (torch already seeds
    # each worker's torch, random and numpy from the loader's seeded generator.)
    torch.set_num_threads(1)


def make_loader(
    dataset: PatchDataset,
    batch_size: int = 16,
    shuffle: bool = True,
    num_workers: int | None = None,
    seed: int = 0,
    *,
    mix: int = 4,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset`: a `TileSampler` (tile = the store's chunk), a seeded
    generator and worker init, so that the order and the augmentation depend only on
    `seed` and the epoch.

    Args:
        dataset: the patches.
        batch_size: patches per batch.
        shuffle: shuffle (training) or keep the dataset's order (evaluation).
        num_workers: worker processes; default `default_workers()`; 0 reads in this process.
        seed: seed of the order.
        mix: tiles shuffled together (see `TileSampler`).
        drop_last: drop a last, smaller batch.
    """
    workers = default_workers() if num_workers is None else int(num_workers)
    sampler = TileSampler(
        dataset.origins,
        dataset.layout.chunks[0],
        shuffle=shuffle,
        seed=seed,
        mix=mix,
        batch_size=batch_size,
        workers=workers,
    )
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        generator=generator,
        drop_last=drop_last,
        # workers, their open store and their cell caches live on from epoch to epoch;
        # the epoch reaches them in the sampler's keys
        persistent_workers=workers > 0,
    )
