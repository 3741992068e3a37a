"""The model's inputs and target from a cube: the Hualien paper's feature stack, lazily.

Section 2 of Chen & Chiang (2024): (i) imputation of isolated no-data pixels, (ii)
orbit-wise averaging and fusion of ascending and descending scenes, (iii) local mean and
standard deviation over a window (11..29 px), (iv) normalisation; with the DEM encodings
sin(aspect), cos(aspect), sin(slope) this makes a 9-channel stack. Every step is a function
from xarray to xarray on Dask arrays: nothing is computed until the stack is stored.

The feature recipe is data (`FeatureSpec`): the paper's 9 channels by default, and
variants (`VARIANTS`): the 4-band ascending/descending split and radar vegetation indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.array.reductions import cumreduction
from scipy import ndimage

import sar2ndvi
from sar2ndvi.errors import InputError
from sar2ndvi.geometry import (
    OrbitGeometry,
    cast_shadow,
    facing_masks,
    horn_slope_aspect,
    shadow_sweep_height,
)
from sar2ndvi.localstats import local_mean_std

PAPER_CHANNELS: tuple[str, ...] = (
    "vv",
    "vh",
    "vv_mean",
    "vh_mean",
    "vv_std",
    "vh_std",
    "sin_aspect",
    "cos_aspect",
    "sin_slope",
)
ORBIT_CHANNELS: tuple[str, ...] = ("vv_asc", "vh_asc", "vv_desc", "vh_desc")
INDEX_CHANNELS: tuple[str, ...] = ("vh_vv_ratio", "rvi")
#: Every channel a feature recipe may ask for.
CHANNELS: tuple[str, ...] = PAPER_CHANNELS + ORBIT_CHANNELS + INDEX_CHANNELS
#: Nominal Sentinel-1 ground-track headings (deg from north) at mid latitudes.
NOMINAL_HEADING = {"ascending": 348.0, "descending": 192.0}


@dataclass(frozen=True)
class FeatureSpec:
    """A feature recipe: which channels, and how they are made.

    Attributes:
        name: the variant's name, recorded with the stack.
        channels: channel names, in stack order (see `CHANNELS` for what exists).
        window: local-statistics window, odd, in pixels (the paper sweeps 11..29).
        min_valid_neighbours: imputation fills a no-data pixel from its 3x3 neighbours
            when at least this many of the 8 are valid.
        incidence: ellipsoid incidence angle (deg) of the layover/shadow quality layer.
        clip_sigma: normalisation statistics are the mean and standard deviation of the
            values within this many standard deviations of the raw mean.
    """

    name: str = "paper9"
    channels: tuple[str, ...] = PAPER_CHANNELS
    window: int = 19
    min_valid_neighbours: int = 5
    incidence: float = 39.0
    clip_sigma: float = 3.0

    def __post_init__(self) -> None:
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown:
            raise InputError(
                f"feature spec {self.name!r}: unknown channels {unknown}; "
                f"known: {', '.join(CHANNELS)}"
            )
        if len(set(self.channels)) != len(self.channels) or not self.channels:
            raise InputError(f"feature spec {self.name!r}: channels must be unique, non-empty")
        if self.window < 3 or self.window % 2 == 0 or self.window > 255:
            raise InputError(
                f"feature spec {self.name!r}: window {self.window} must be an odd "
                "number of pixels in 3..255 (the paper uses 11..29)"
            )
        if not 1 <= self.min_valid_neighbours <= 8:
            raise InputError("min_valid_neighbours must be in 1..8")
        if not 0 < self.incidence < 90 or self.clip_sigma <= 0:
            raise InputError("incidence must be in (0, 90) degrees and clip_sigma > 0")

    def with_window(self, window: int) -> FeatureSpec:
        return replace(self, window=window)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(**{**data, "channels": tuple(data["channels"])})


VARIANTS: dict[str, FeatureSpec] = {
    "paper9": FeatureSpec(),
    "orbits4": FeatureSpec(name="orbits4", channels=ORBIT_CHANNELS),
    "paper9+indices": FeatureSpec(name="paper9+indices", channels=PAPER_CHANNELS + INDEX_CHANNELS),
}


def variant(name: str, window: int | None = None) -> FeatureSpec:
    """A named feature recipe, optionally with another window."""
    if name not in VARIANTS:
        raise InputError(f"unknown feature variant {name!r}; choose one of {', '.join(VARIANTS)}")
    spec = VARIANTS[name]
    return spec.with_window(window) if window is not None else spec


# --- step 1: imputation --------------------------------------------------------------------

_NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64)


def _impute_block(block: np.ndarray, min_valid: int) -> np.ndarray:
    valid = np.isfinite(block)
    values = np.where(valid, block, 0.0).astype(np.float64)
    out = block.copy()
    if out.dtype.kind == "f":
        out[~valid] = np.nan  # +-inf is no data too: left unfilled, it becomes NaN
    footprint = (1,) * (block.ndim - 2)
    kernel = _NEIGHBOURS.reshape((*footprint, 3, 3))
    # cval 0 for values and validity: pixels beyond the block edge (NaN halo) count as invalid
    total = ndimage.convolve(values, kernel, mode="constant", cval=0.0)
    count = ndimage.convolve(valid.astype(np.float64), kernel, mode="constant", cval=0.0)
    fill = ~valid & (count >= min_valid)
    out[fill] = (total[fill] / count[fill]).astype(block.dtype)
    return out


def impute_isolated(image: xr.DataArray, min_valid_neighbours: int = 5) -> xr.DataArray:
    """Fill isolated no-data pixels with the mean of their valid 3x3 neighbours.

    A NaN pixel is filled when at least `min_valid_neighbours` of its 8 neighbours are
    valid (pixels outside the image count as invalid); larger gaps stay NaN (see
    `gaps`). NaN and +-inf are no data. Works over the last two dims (y, x), lazily, with
    a 1-pixel halo.
    """
    _check_pixels(image, "impute_isolated")
    data = _dask(image)
    depth = {i: (1 if i >= data.ndim - 2 else 0) for i in range(data.ndim)}
    filled = da.map_overlap(
        _impute_block,
        data,
        depth=depth,
        boundary=np.nan,
        dtype=data.dtype,
        min_valid=min_valid_neighbours,
    )
    out = image.copy(data=filled)
    out.attrs.update(
        imputation=f"3x3 mean of valid neighbours where >= {min_valid_neighbours} "
        "of 8 are valid; larger gaps stay NaN"
    )
    return out


# --- step 2: orbit means -------------------------------------------------------------------


def to_db(linear: xr.DataArray) -> xr.DataArray:
    """10 log10 of linear power; non-positive power becomes NaN."""
    return 10.0 * np.log10(linear.where(linear > 0))


def orbit_means(s1: xr.Dataset, period: str, min_valid_neighbours: int = 5) -> xr.Dataset:
    """Per-orbit temporal means and their fusion, for one period ("pre" or "post").

    Scenes are imputed, averaged over time in linear power (NaN-aware), fused across
    orbits (the mean where both orbits are valid, either one alone where only it is, also
    in linear power), and only then converted to dB.

    Returns:
        Dataset of float32 dB layers (y, x): vv, vh (fused), vv_asc, vh_asc, vv_desc,
        vh_desc (per orbit; all NaN for an orbit without scenes).
    """
    s1 = _with_loaded_coords(s1)
    scenes = s1.sel(time=s1["period"] == period)
    if scenes.sizes["time"] == 0:
        raise InputError(f"the cube has no Sentinel-1 scene in the {period!r} period")
    out: dict[str, xr.DataArray] = {}
    linear: dict[str, dict[str, xr.DataArray]] = {"vv": {}, "vh": {}}
    for orbit, short in (("ascending", "asc"), ("descending", "desc")):
        these = scenes.sel(time=scenes["orbit_state"] == orbit)
        for pol in ("vv", "vh"):
            if these.sizes["time"]:
                imputed = impute_isolated(these[pol], min_valid_neighbours)
                mean = imputed.mean("time", skipna=True)
            else:
                mean = xr.full_like(scenes[pol].isel(time=0, drop=True), np.nan)
            linear[pol][short] = mean
            out[f"{pol}_{short}"] = to_db(mean)
    for pol in ("vv", "vh"):
        both = xr.concat([linear[pol]["asc"], linear[pol]["desc"]], dim="orbit")
        out[pol] = to_db(both.mean("orbit", skipna=True))
    ds = xr.Dataset({k: v.astype(np.float32) for k, v in out.items()})
    for name in ds.data_vars:
        ds[name].attrs.update(
            units="dB", averaging="temporal mean in linear power, then dB", period=period
        )
    for pol in ("vv", "vh"):
        ds[pol].attrs["fusion"] = (
            "mean of the ascending and descending means where both are "
            "valid, either one where only it is (linear power)"
        )
    return ds


# --- step 4: terrain encodings and the quality layer -----------------------------------------


def _check_pixels(image: xr.DataArray, what: str) -> None:
    """InputError for an image without pixels (a y or x of length 0)."""
    if image.ndim < 2 or 0 in image.shape[-2:]:
        raise InputError(f"{what} needs a (y, x) image with pixels, got shape {image.shape}")


def _resolution(image: xr.DataArray) -> float:
    if image.sizes["x"] < 2:
        raise InputError(
            f"the DEM needs at least 2 pixels along x to know its resolution, got "
            f"{image.sizes['x']}; give a larger DEM (or area)"
        )
    dx = float(abs(image.x[1] - image.x[0])) if image.sizes["x"] > 1 else 0.0
    dy = float(abs(image.y[1] - image.y[0])) if image.sizes["y"] > 1 else 0.0
    if dx <= 0 or (dy and abs(dx - dy) > 1e-6 * dx):
        raise InputError(f"the DEM grid must have square pixels, got {dx} x {dy}")
    return dx


def _with_loaded_coords(ds: xr.Dataset) -> xr.Dataset:
    """The dataset with its non-index coordinates (per-scene metadata such as
    `orbit_state` or `period`, lazy when read from Zarr) in memory: selections need them."""
    lazy = [
        name
        for name, c in ds.coords.items()
        if name not in ds.dims and isinstance(c.data, da.Array)
    ]
    return ds.assign_coords({name: ds[name].compute() for name in lazy}) if lazy else ds


def _dask(image: xr.DataArray) -> da.Array:
    """The image's data as a Dask array (one chunk when it was in memory)."""
    if isinstance(image.data, da.Array):
        return image.data
    return da.from_array(image.values, chunks=image.shape)


def _slope_aspect_block(padded: np.ndarray, resolution: float) -> np.ndarray:
    """(2, y, x) slope and aspect of a block with a 1-pixel halo, halo cropped."""
    slope, aspect = horn_slope_aspect(padded, resolution)
    return np.stack([slope, aspect])[:, 1:-1, 1:-1]


def slope_aspect(elevation: xr.DataArray) -> xr.Dataset:
    """Horn (1981) slope and aspect (degrees) of a (y, x) DEM, chunk by chunk: each chunk
    with a 1-pixel halo (edges replicated, as Horn's method does at the scene edge)."""
    _check_pixels(elevation, "slope_aspect")
    data = _dask(elevation)
    padded = da.overlap.overlap(data, depth={0: 1, 1: 1}, boundary="nearest")
    stacked = padded.map_blocks(
        _slope_aspect_block,
        _resolution(elevation),
        dtype=np.float32,
        new_axis=0,
        chunks=((2,), *data.chunks),
    )
    coords = {"y": elevation.y, "x": elevation.x}
    return xr.Dataset(
        {
            "slope": xr.DataArray(
                stacked[0],
                dims=("y", "x"),
                coords=coords,
                attrs={"units": "degree", "method": "Horn (1981)"},
            ),
            "aspect": xr.DataArray(
                stacked[1],
                dims=("y", "x"),
                coords=coords,
                attrs={
                    "units": "degree",
                    "convention": "clockwise from north, the direction the slope faces",
                },
            ),
        }
    )


def terrain_encodings(elevation: xr.DataArray) -> xr.Dataset:
    """sin(aspect), cos(aspect), sin(slope) from the DEM on the grid."""
    sa = slope_aspect(elevation)
    aspect = np.deg2rad(sa["aspect"])
    slope = np.deg2rad(sa["slope"])
    return xr.Dataset(
        {
            "sin_aspect": np.sin(aspect)
            .astype(np.float32)
            .assign_attrs(long_name="sin(aspect): eastness", units="1"),
            "cos_aspect": np.cos(aspect)
            .astype(np.float32)
            .assign_attrs(long_name="cos(aspect): northness", units="1"),
            "sin_slope": np.sin(slope)
            .astype(np.float32)
            .assign_attrs(long_name="sin(slope)", units="1"),
        }
    )


def _running_max(values: da.Array, reverse: bool) -> da.Array:
    """Cumulative maximum along x, chunk by chunk (each chunk carries the maximum so far)."""
    if reverse:
        return _running_max(values[:, ::-1], reverse=False)[:, ::-1]
    return cumreduction(
        np.maximum.accumulate, np.maximum, -np.inf, values, axis=1, dtype=values.dtype
    )


def _facing_block(slope: np.ndarray, aspect: np.ndarray, geometry: OrbitGeometry) -> np.ndarray:
    return np.stack(facing_masks(slope, aspect, geometry))


def quality_layers(elevation: xr.DataArray, orbits: Mapping[str, OrbitGeometry]) -> xr.Dataset:
    """Layover and shadow masks (uint8, 1 = affected) per orbit, from the DEM.

    The same masks as `sar2ndvi.geometry.layover_shadow` on the whole scene, chunk by chunk:
    layover and self-shadow are per pixel (Horn slope and aspect with a 1-pixel halo); cast
    shadow compares each pixel's sweep height with its running maximum from the sensor side
    of the row, a cumulative maximum that Dask carries from chunk to chunk along x, so memory
    stays one chunk per task whatever the scene width.
    """
    res = _resolution(elevation)
    height = _dask(elevation).astype(np.float64)
    sa = slope_aspect(elevation)
    slope, aspect = _dask(sa["slope"]), _dask(sa["aspect"])
    width = height.shape[1]
    columns = da.arange(width, chunks=(height.chunks[1],), dtype=np.float64)[None, :]
    layers: dict[str, xr.DataArray] = {}
    coords = {"y": elevation.y, "x": elevation.x}
    for orbit, geometry in orbits.items():
        descending = geometry.orbit_state == "descending"
        index = (width - 1) - columns if descending else columns
        sweep = da.map_blocks(shadow_sweep_height, height, res, geometry, index, dtype=np.float64)
        cast = da.map_blocks(
            cast_shadow, sweep, _running_max(sweep, reverse=descending), dtype=bool
        )
        facing = da.map_blocks(
            _facing_block,
            slope,
            aspect,
            geometry,
            dtype=bool,
            new_axis=0,
            chunks=((2,), *height.chunks),
        )
        attrs = {
            "orbit_state": orbit,
            "heading": geometry.heading,
            "incidence": geometry.incidence,
            "flag_values": [0, 1],
        }
        layers[f"layover_{orbit}"] = xr.DataArray(
            facing[0].astype(np.uint8),
            dims=("y", "x"),
            coords=coords,
            attrs={**attrs, "long_name": "active layover"},
        )
        layers[f"shadow_{orbit}"] = xr.DataArray(
            (facing[1] | cast).astype(np.uint8),
            dims=("y", "x"),
            coords=coords,
            attrs={**attrs, "long_name": "radar shadow"},
        )
    return xr.Dataset(layers)


def orbit_geometries(s1: xr.Dataset, incidence: float) -> dict[str, OrbitGeometry]:
    """The orbits seen in the cube, with nominal headings and the given incidence."""
    s1 = _with_loaded_coords(s1)
    out = {}
    for orbit in sorted(set(np.asarray(s1["orbit_state"].values).tolist())):
        if orbit not in NOMINAL_HEADING:
            raise InputError(f"unknown sat:orbit_state {orbit!r} in the cube")
        relative = s1["relative_orbit"].where(s1["orbit_state"] == orbit, drop=True).values
        out[orbit] = OrbitGeometry(
            orbit, NOMINAL_HEADING[orbit], incidence, int(relative[0]) if relative.size else -1
        )
    return out


# --- the target -----------------------------------------------------------------------------


def _clear_median(values: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN (quietly) where nothing is clear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: NaN is the answer
        return np.nanmedian(values, axis=-1).astype(np.float32)


def ndvi_target(s2: xr.Dataset, period: str) -> xr.Dataset:
    """Sentinel-2 NDVI composited over a period: the median of cloud-free observations.

    Returns `target` (y, x) float32, NaN where no clear view exists, and `clear_count`
    (y, x) int16, the number of clear observations.
    """
    s2 = _with_loaded_coords(s2)
    scenes = s2["ndvi"].sel(time=s2["period"] == period)
    if scenes.sizes["time"] == 0:
        return xr.Dataset(
            {
                "target": xr.full_like(s2["ndvi"].isel(time=0, drop=True), np.nan),
                "clear_count": xr.zeros_like(s2["ndvi"].isel(time=0, drop=True), dtype=np.int16),
            }
        )
    # the median needs every time step of a pixel in one chunk
    scenes = scenes.chunk({"time": -1})
    target = xr.apply_ufunc(
        _clear_median,
        scenes,
        input_core_dims=[["time"]],
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    target.attrs.update(
        long_name=f"Sentinel-2 NDVI, median of clear views ({period})", units="1", period=period
    )
    count = scenes.notnull().sum("time").astype(np.int16)
    count.attrs.update(long_name="number of clear Sentinel-2 views", period=period)
    return xr.Dataset({"target": target, "clear_count": count})


# --- the stack ------------------------------------------------------------------------------


def _ratio_db(vh_db: xr.DataArray, vv_db: xr.DataArray) -> xr.DataArray:
    return (vh_db - vv_db).assign_attrs(long_name="VH/VV ratio", units="dB")


def _rvi(vv_db: xr.DataArray, vh_db: xr.DataArray) -> xr.DataArray:
    vv, vh = 10 ** (vv_db / 10), 10 ** (vh_db / 10)
    return (4 * vh / (vv + vh)).assign_attrs(
        long_name="radar vegetation index (dual-pol)", units="1"
    )


#: The chunk-local layers every feature channel is made from (stage 1 of a stored build).
LAYERS: tuple[str, ...] = ("vv", "vh", *ORBIT_CHANNELS, "sin_aspect", "cos_aspect", "sin_slope")


def base_layers(cube: xr.DataTree, spec: FeatureSpec, period: str) -> xr.Dataset:
    """Stage 1: the per-pixel layers of one period, before any window statistic.

    Returns `layers` (layer, y, x) float32: the fused and per-orbit means in dB and the
    terrain encodings (see `LAYERS`), and `gaps` (y, x) uint8: 1 where the fused VV or VH
    has no data after imputation (shadow, swath edges), the reported large gaps.
    """
    means = orbit_means(cube["/s1"].to_dataset(), period, spec.min_valid_neighbours)
    terrain = terrain_encodings(cube["/dem"].to_dataset()["elevation"])
    source = {**{k: means[k] for k in means.data_vars}, **{k: terrain[k] for k in terrain}}
    layers = xr.concat(
        [source[name].astype(np.float32).drop_attrs() for name in LAYERS],
        dim=xr.Variable("layer", list(LAYERS)),
        coords="minimal",
        compat="override",
    ).transpose("layer", "y", "x")
    layers.attrs.update(long_name="orbit means (dB) and terrain encodings", period=period)
    gaps = (means["vv"].isnull() | means["vh"].isnull()).astype(np.uint8)
    gaps.attrs.update(long_name="no radar data after imputation (large gaps)", period=period)
    return xr.Dataset({"layers": layers, "gaps": gaps})


def stack_from_layers(base: xr.Dataset, spec: FeatureSpec, period: str) -> xr.Dataset:
    """Stage 2: the (band, y, x) feature stack from stage-1 layers (lazy or stored).

    Only the local statistics look beyond a pixel (a halo of window // 2); every other
    channel is a layer or a per-pixel function of layers.
    """

    def layer(name: str) -> xr.DataArray:
        return base["layers"].sel(layer=name, drop=True)

    stats: dict[str, xr.DataArray] = {}
    for pol in ("vv", "vh"):
        if f"{pol}_mean" in spec.channels or f"{pol}_std" in spec.channels:
            stats[f"{pol}_mean"], stats[f"{pol}_std"] = local_mean_std(layer(pol), spec.window)
    derived: dict[str, Callable[[], xr.DataArray]] = {
        "vh_vv_ratio": lambda: _ratio_db(layer("vh"), layer("vv")),
        "rvi": lambda: _rvi(layer("vv"), layer("vh")),
    }
    channels = []
    for name in spec.channels:
        if name in stats:
            value = stats[name]
        elif name in derived:
            value = derived[name]()
        else:
            value = layer(name)
        channels.append(value.astype(np.float32).drop_attrs())
    features = xr.concat(
        channels, dim=xr.Variable("band", list(spec.channels)), coords="minimal", compat="override"
    ).transpose("band", "y", "x")
    features = features.chunk({"band": 1})
    features.attrs.update(
        long_name="SAR2NDVI features (physical units, not normalised)",
        period=period,
        window=spec.window,
        variant=spec.name,
    )
    return xr.Dataset({"features": features, "gaps": base["gaps"]})


def feature_stack(cube: xr.DataTree, spec: FeatureSpec, period: str) -> xr.Dataset:
    """The (band, y, x) feature stack of one period, in physical units (not normalised),
    with its `gaps` layer: `base_layers` and `stack_from_layers` in one lazy graph."""
    return stack_from_layers(base_layers(cube, spec, period), spec, period)


# --- step 5: normalisation -----------------------------------------------------------------


#: Physical value range of each channel for the normalisation histograms: values beyond
#: it land in the end bins (and are then clipped away as outliers).
CHANNEL_RANGES: dict[str, tuple[float, float]] = {
    **{c: (-80.0, 40.0) for c in ("vv", "vh", "vv_mean", "vh_mean", *ORBIT_CHANNELS)},
    "vv_std": (0.0, 40.0),
    "vh_std": (0.0, 40.0),
    "sin_aspect": (-1.0, 1.0),
    "cos_aspect": (-1.0, 1.0),
    "sin_slope": (-1.0, 1.0),
    "vh_vv_ratio": (-50.0, 30.0),
    "rvi": (0.0, 4.0),
}
#: Histogram bins per channel: 8192 bins over 120 dB are 0.015 dB wide.
HISTOGRAM_BINS = 8192


def _tile_histograms(block: np.ndarray, ranges: np.ndarray, bins: int) -> np.ndarray:
    """(band, bins) counts of one (band, y, x) tile; values clipped into each band's range."""
    out = np.zeros((block.shape[0], bins), dtype=np.float64)
    for i, (lo, hi) in enumerate(ranges):
        values = block[i][np.isfinite(block[i])]
        out[i] = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))[0]
    return out


def _clipped_moments(
    counts: np.ndarray, centres: np.ndarray, clip_sigma: float
) -> tuple[float, float]:
    """Mean and std of the values within clip_sigma std of the mean, from a histogram."""
    n = counts.sum()
    if n == 0:
        return float("nan"), float("nan")
    mean = (counts * centres).sum() / n
    std = np.sqrt((counts * (centres - mean) ** 2).sum() / n)
    inside = counts * (np.abs(centres - mean) <= clip_sigma * std)
    m = inside.sum()
    center = (inside * centres).sum() / m
    return float(center), float(np.sqrt((inside * (centres - center) ** 2).sum() / m))


def _band_moments(
    counts: np.ndarray, ranges: np.ndarray, bins: int, clip_sigma: float
) -> np.ndarray:
    """(2, band): clipped centre and scale of every band from its histogram."""
    out = np.empty((2, counts.shape[0]), dtype=np.float32)
    for i, (lo, hi) in enumerate(ranges):
        edges = np.linspace(lo, hi, bins + 1)
        out[:, i] = _clipped_moments(counts[i], (edges[:-1] + edges[1:]) / 2, clip_sigma)
    return out


def normalisation_stats(
    features: xr.DataArray,
    mask: xr.DataArray | None = None,
    clip_sigma: float = 3.0,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> xr.Dataset:
    """Robust per-channel statistics: mean and standard deviation after clipping.

    The raw mean and standard deviation of each channel over the valid pixels (within
    `mask` when given: the training area) define a clip range of +- `clip_sigma`
    standard deviations; `center` and `scale` are the mean and standard deviation of the
    values inside it. One streaming pass, tile by tile: each spatial tile of all bands
    adds to a fixed-range histogram per channel (`CHANNEL_RANGES`, `HISTOGRAM_BINS` bins),
    so no tile is held for a second pass and memory stays flat however large the scene;
    the binning costs at most half a bin (0.007 dB) of accuracy. `ranges` adds or
    overrides histogram ranges of channels (physical units) that `CHANNEL_RANGES` lacks.
    """
    values = features if mask is None else features.where(mask)
    bands = [str(b) for b in values["band"].values]
    known = {**CHANNEL_RANGES, **dict(ranges or {})}
    bounds = np.array([known.get(b, (-1e3, 1e3)) for b in bands], dtype=np.float64)
    # whole band extent per tile: the upstream work of a pixel block is done once
    data = _dask(values.transpose("band", "y", "x")).rechunk({0: -1})
    # pure: task names from the inputs' tokens, the same every time the graph is built (an
    # impure delayed call gets a random name); not optimised apart from the rest of the
    # graph, whose fused copy would hold tasks of the same name with other dependencies
    histograms = dask.delayed(_tile_histograms, pure=True)
    tiles = [
        da.from_delayed(
            histograms(t, bounds, HISTOGRAM_BINS),
            shape=(len(bands), HISTOGRAM_BINS),
            dtype=np.float64,
        )
        for t in data.to_delayed(optimize_graph=False).ravel()
    ]
    counts = da.stack(tiles).sum(axis=0)  # a tree reduction: partial sums, nothing held
    moments = counts.map_blocks(
        _band_moments,
        bounds,
        HISTOGRAM_BINS,
        clip_sigma,
        chunks=((2,), (len(bands),)),
        dtype=np.float32,
    )
    coords = {"band": values["band"]}
    center = xr.DataArray(moments[0], dims="band", coords=coords)
    scale = xr.DataArray(moments[1], dims="band", coords=coords)
    # a constant channel (e.g. sin(slope) on a plain) must not divide by zero
    scale = xr.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return xr.Dataset(
        {
            "center": center.assign_attrs(long_name="normalisation centre (clipped mean)"),
            "scale": scale.assign_attrs(
                long_name="normalisation scale (clipped std)",
                clip_sigma=clip_sigma,
                bins=HISTOGRAM_BINS,
            ),
        }
    )


def normalise(features: xr.DataArray, stats: xr.Dataset) -> xr.DataArray:
    """(features - center) / scale, channel by channel (stats from `normalisation_stats`)."""
    _check_bands(features, stats)
    out = (features - stats["center"]) / stats["scale"]
    return out.astype(np.float32).assign_attrs(features.attrs, normalised=True)


def denormalise(normalised: xr.DataArray, stats: xr.Dataset) -> xr.DataArray:
    """The inverse of `normalise`."""
    _check_bands(normalised, stats)
    out = normalised * stats["scale"] + stats["center"]
    return out.astype(np.float32).assign_attrs(normalised.attrs, normalised=False)


def _check_bands(features: xr.DataArray, stats: xr.Dataset) -> None:
    want, have = list(features["band"].values), list(stats["band"].values)
    if want != have:
        raise InputError(
            f"normalisation statistics are for bands {have}, the stack has {want}; "
            "use the statistics stored with the model's feature store"
        )


# --- the whole store ------------------------------------------------------------------------


def build_features(
    cube: xr.DataTree, spec: FeatureSpec | None = None, *, train_period: str = "pre"
) -> xr.DataTree:
    """Everything a model needs, lazily, as a DataTree:

    - ``/pre`` and ``/post``: `features` (band, y, x) in physical units, `gaps`, and the
      Sentinel-2 `target` NDVI composite with its `clear_count`;
    - ``/quality``: layover and shadow (uint8) per orbit, from the DEM;
    - ``/normalisation``: `center` and `scale` per band, computed over the training
      period's valid pixels (target present, no layover or shadow), reused unchanged at
      inference through `normalise`.

    Args:
        cube: a cube from `sar2ndvi.cube.build_cube` (or read back with `store.open`).
        spec: the feature recipe (default: the paper's 9 channels, window 19).
        train_period: the period whose features define the normalisation.
    """
    spec = spec or FeatureSpec()
    if train_period not in ("pre", "post"):
        raise InputError(f"train_period must be 'pre' or 'post', got {train_period!r}")
    s1 = _with_loaded_coords(cube["/s1"].to_dataset())
    s2 = _with_loaded_coords(cube["/s2"].to_dataset())
    quality = quality_layers(
        cube["/dem"].to_dataset()["elevation"], orbit_geometries(s1, spec.incidence)
    )
    groups: dict[str, xr.Dataset] = {}
    for period in _periods(s1):
        stack = feature_stack(cube, spec, period)
        groups[f"/{period}"] = xr.merge(
            [stack, ndvi_target(s2, period)], join="exact", compat="no_conflicts"
        )
    if f"/{train_period}" not in groups:
        raise InputError(
            f"the cube has no Sentinel-1 scene in the training period {train_period!r}"
        )
    stats = _training_stats(groups[f"/{train_period}"], quality, spec, train_period)
    crs_source = cube["/dem"].to_dataset()
    tree = xr.DataTree.from_dict(
        {
            **{path: _georef_like(ds, crs_source) for path, ds in groups.items()},
            "/quality": _georef_like(quality, crs_source),
            "/normalisation": stats,
        }
    )
    tree.attrs.update(_root_attrs(cube, spec, train_period))
    return tree


def _periods(s1: xr.Dataset) -> list[str]:
    """The periods ("pre", "post") that hold at least one Sentinel-1 scene."""
    return [p for p in ("pre", "post") if bool((s1["period"] == p).any())]


def _training_stats(
    train: xr.Dataset, quality: xr.Dataset, spec: FeatureSpec, train_period: str
) -> xr.Dataset:
    """Normalisation statistics over the training period's usable pixels: a clear-sky
    target, no radar gap, no layover or shadow in any orbit."""
    unreliable = sum(quality[name] for name in quality.data_vars) > 0
    mask = train["target"].notnull() & (train["gaps"] == 0) & ~unreliable
    stats = normalisation_stats(train["features"], mask, spec.clip_sigma)
    stats.attrs.update(
        train_period=train_period, area="valid target, no radar gap, no layover or shadow"
    )
    return stats


def _root_attrs(cube: xr.DataTree, spec: FeatureSpec, train_period: str) -> dict[str, Any]:
    return {
        "title": "sar2ndvi features",
        "sar2ndvi:version": sar2ndvi.__version__,
        "sar2ndvi:feature_spec": spec.to_dict(),
        "sar2ndvi:variant": spec.name,
        "sar2ndvi:window": spec.window,
        "sar2ndvi:train_period": train_period,
        "sar2ndvi:cube": {
            k: v
            for k, v in cube.attrs.items()
            if k in ("sar2ndvi:recipe", "sar2ndvi:items", "sar2ndvi:version")
        },
    }


def write_features(
    cube: xr.DataTree,
    out: str,
    spec: FeatureSpec | None = None,
    *,
    train_period: str = "pre",
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
) -> str:
    """Compute and store the feature store of `build_features`, in flat memory.

    Three passes, each reading stored data, so that no step needs more than a region of
    pixels in memory whatever the scene size:

    1. the chunk-local layers (orbit means, terrain encodings, NDVI target, quality) into
       a temporary store beside `out` (``<out>.stage1``; resumable, removed at the end);
    2. the feature stack from the stored layers (the local statistics read their halo
       from the store instead of recomputing it) into `out`;
    3. the normalisation statistics from the stored stack, added as ``/normalisation``.

    The result has the same groups and values as `store.write(build_features(...))`.
    `out` is a path or an fsspec URL (``s3://...``); `storage_options` go to fsspec for it
    and for the stage-1 store.
    """
    from sar2ndvi import store

    spec = spec or FeatureSpec()
    out = str(out)
    so = storage_options
    if store.is_complete(out, storage_options=so) and not overwrite:
        raise store.StoreExistsError(
            f"{out} already holds a complete store; pass "
            "overwrite=True to replace it, or write to another path"
        )
    s1 = _with_loaded_coords(cube["/s1"].to_dataset())
    s2 = _with_loaded_coords(cube["/s2"].to_dataset())
    periods = _periods(s1)
    if train_period not in periods:
        raise InputError(
            f"the cube has no Sentinel-1 scene in the training period {train_period!r}"
        )
    dem = cube["/dem"].to_dataset()
    stage1_path = f"{out.rstrip('/')}.stage1"
    stage1 = xr.DataTree.from_dict(
        {
            **{
                f"/{p}": _georef_like(
                    xr.merge(
                        [base_layers(cube, spec, p), ndvi_target(s2, p)],
                        join="exact",
                        compat="no_conflicts",
                    ),
                    dem,
                )
                for p in periods
            },
            "/quality": _georef_like(
                quality_layers(dem["elevation"], orbit_geometries(s1, spec.incidence)), dem
            ),
        }
    )
    if not store.is_complete(stage1_path, storage_options=so):
        store.write(stage1, stage1_path, progress=progress, storage_options=so)
    layers = store.open(stage1_path, storage_options=so)
    final = xr.DataTree.from_dict(
        {
            **{
                f"/{p}": _georef_like(_period_group(layers[f"/{p}"].to_dataset(), spec, p), dem)
                for p in periods
            },
            "/quality": layers["/quality"].to_dataset(),
        }
    )
    final.attrs.update(_root_attrs(cube, spec, train_period))
    store.write(final, out, overwrite=overwrite, progress=progress, storage_options=so)
    stored = store.open(out, storage_options=so)
    stats = _training_stats(
        stored[f"/{train_period}"].to_dataset(), stored["/quality"].to_dataset(), spec, train_period
    )
    store.add_group(out, "normalisation", stats, storage_options=so)
    store.remove(stage1_path, storage_options=so)
    return out


def _period_group(stage1: xr.Dataset, spec: FeatureSpec, period: str) -> xr.Dataset:
    """A period's final group from its stored stage-1 layers: features, gaps, target."""
    return xr.merge(
        [stack_from_layers(stage1, spec, period), stage1[["target", "clear_count"]]],
        join="exact",
        compat="no_conflicts",
    )


def _georef_like(ds: xr.Dataset, source: xr.Dataset) -> xr.Dataset:
    """Copy the grid mapping of `source` (its spatial_ref) onto `ds`."""
    if "spatial_ref" in source.coords:
        ds = ds.assign_coords(spatial_ref=source["spatial_ref"])
        for name, var in ds.data_vars.items():
            if "y" in var.dims and "x" in var.dims:
                ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds


def stored_stats(features: xr.DataTree) -> xr.Dataset:
    """The normalisation statistics stored with a feature store (read back lazily)."""
    if "normalisation" not in features.children:
        raise InputError("this feature store holds no normalisation statistics")
    return features["/normalisation"].to_dataset()


__all__ = [
    "CHANNELS",
    "PAPER_CHANNELS",
    "VARIANTS",
    "FeatureSpec",
    "base_layers",
    "build_features",
    "denormalise",
    "feature_stack",
    "impute_isolated",
    "ndvi_target",
    "normalisation_stats",
    "normalise",
    "orbit_means",
    "quality_layers",
    "slope_aspect",
    "stack_from_layers",
    "stored_stats",
    "terrain_encodings",
    "variant",
    "write_features",
]
