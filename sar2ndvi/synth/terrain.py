"""Terrain for the scene simulator: elevation, Horn slope/aspect and D8 flow accumulation.

The terrain comes either from a real DEM GeoTIFF (`terrain_from_dem`, reprojected onto a
10 m UTM grid aligned to 60 m) or from a seeded power-law surface (`fractal_terrain`).
Every derived layer is computed by `build_terrain`, so both routes give the same products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import rasterio
import scipy.sparse as sp
from pyproj import CRS
from rasterio.warp import Resampling, reproject, transform_bounds
from scipy import ndimage
from scipy.sparse import csgraph
from scipy.sparse.linalg import spsolve_triangular
from skimage.morphology import reconstruction

from sar2ndvi.errors import InputError
from sar2ndvi.geometry import horn_slope_aspect
from sar2ndvi.synth.fields import gaussian_random_field
from sar2ndvi.synth.grid import Grid

__all__ = [
    "Terrain",
    "build_terrain",
    "flow_accumulation",
    "fractal_terrain",
    "horn_slope_aspect",
    "terrain_from_dem",
]

#: Grid origins are whole multiples of this (m), so 10, 20 and 60 m Sentinel-2 grids nest.
GRID_ALIGNMENT_M = 60.0
#: Largest fraction of DEM nodata inside the window that is filled rather than refused.
MAX_NODATA_FRACTION = 0.05

# D8 neighbour offsets (drow, dcol); row 0 is north.
_D8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True)
class Terrain:
    """A terrain on a grid; every array is (H, W) = grid.shape, float32, no NaN.

    Attributes:
        grid: the pixel grid (projected CRS in metres).
        elevation: metres above sea level.
        slope: degrees in [0, 90), Horn (1981).
        aspect: degrees clockwise from north of the downslope direction, [0, 360); 0 where flat.
        flow_accumulation: upslope contributing area in m^2 (D8), own pixel included.
    """

    grid: Grid
    elevation: np.ndarray
    slope: np.ndarray
    aspect: np.ndarray
    flow_accumulation: np.ndarray


# --------------------------------------------------------------------------- slope and aspect


# --------------------------------------------------------------------------- flow accumulation


def _fill_depressions(z: np.ndarray) -> np.ndarray:
    """Fill pits so every cell drains to the border (morphological reconstruction by erosion)."""
    seed = np.full_like(z, z.max())
    seed[0, :], seed[-1, :], seed[:, 0], seed[:, -1] = z[0, :], z[-1, :], z[:, 0], z[:, -1]
    return reconstruction(seed, z, method="erosion")


def _shifted(a: np.ndarray, dr: int, dc: int, fill: float) -> np.ndarray:
    """a[r + dr, c + dc] at each (r, c), `fill` outside the array."""
    pad = np.pad(a, 1, constant_values=fill)
    h, w = a.shape
    return pad[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]


def _steepest_receivers(z: np.ndarray, resolution: float) -> np.ndarray:
    """Flat index of each cell's steepest strictly-lower D8 neighbour, -1 where none."""
    h, w = z.shape
    idx = np.arange(h * w).reshape(h, w)
    best_drop = np.zeros_like(z)
    receiver = np.full(z.shape, -1, dtype=np.int64)
    for dr, dc in _D8:  # 8 whole-array passes, not a pixel loop
        drop = (z - _shifted(z, dr, dc, np.inf)) / (resolution * math.hypot(dr, dc))
        better = drop > best_drop
        best_drop[better] = drop[better]
        receiver[better] = _shifted(idx, dr, dc, -1)[better]
    return receiver


def _route_flats(z: np.ndarray, receiver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Route cells with no lower neighbour across flats to the nearest outlet.

    Flats (filled depressions) are crossed by the shortest path, within equal-elevation cells,
    to a cell that already drains (Dijkstra from all draining cells at once; each flat cell's
    predecessor in the shortest-path tree is its receiver). Border cells without a lower
    neighbour drain off the grid.

    Returns:
        (receiver, distance): updated receivers and the along-flat distance (0 off flats).
    """
    h, w = z.shape
    n = h * w
    border = np.zeros(z.shape, dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    flat = (receiver < 0) & ~border
    distance = np.zeros(n)
    if not flat.any():
        return receiver, distance
    idx = np.arange(n).reshape(h, w)
    src, dst, wgt = [], [], []
    for dr, dc in _D8:
        nb = _shifted(idx, dr, dc, -1)
        same = flat & (nb >= 0) & (z == _shifted(z, dr, dc, np.nan))
        # Edge from the neighbour (closer to the outlet) to the flat cell.
        src.append(nb[same])
        dst.append(idx[same])
        wgt.append(np.full(int(same.sum()), math.hypot(dr, dc)))
    graph = sp.csr_matrix(
        (np.concatenate(wgt), (np.concatenate(src), np.concatenate(dst))), shape=(n, n)
    )
    starts = np.flatnonzero(~flat)
    dist, pred, _ = csgraph.dijkstra(graph, indices=starts, min_only=True, return_predecessors=True)
    flat_idx = np.flatnonzero(flat)
    reached = pred[flat_idx] >= 0
    receiver = receiver.copy().ravel()
    receiver[flat_idx[reached]] = pred[flat_idx[reached]]
    distance[flat_idx[reached]] = dist[flat_idx[reached]]
    return receiver.reshape(h, w), distance


def flow_accumulation(elevation: np.ndarray, resolution: float) -> np.ndarray:
    """D8 upslope contributing area (O'Callaghan & Mark 1984) after depression filling.

    Pits are filled by morphological reconstruction, flats are routed to their outlet, and the
    accumulation solves (I - A) a = cell_area, where A[receiver, donor] = 1, as one sparse
    triangular system in topological (high-to-low) order.

    Args:
        elevation: (H, W) metres.
        resolution: pixel size in metres.

    Returns:
        (H, W) float32 contributing area in m^2, own pixel included (>= resolution^2).
    """
    z = _fill_depressions(np.asarray(elevation, dtype=np.float64))
    receiver, distance = _route_flats(z, _steepest_receivers(z, resolution))
    receiver = receiver.ravel()
    n = receiver.size
    # Topological order: higher first; on a flat, farther from the outlet first.
    order = np.lexsort((-distance, -z.ravel()))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    donors = np.flatnonzero(receiver >= 0)
    A = sp.csr_matrix((np.ones(donors.size), (rank[receiver[donors]], rank[donors])), shape=(n, n))
    M = (sp.identity(n, format="csr") - A).tocsr()
    acc_sorted = spsolve_triangular(M, np.full(n, resolution**2), lower=True)
    return acc_sorted[rank].reshape(z.shape).astype(np.float32)


def build_terrain(elevation: np.ndarray, grid: Grid) -> Terrain:
    """Derive slope, aspect and flow accumulation from `elevation` (H, W metres) on `grid`."""
    elevation = np.asarray(elevation, dtype=np.float32)
    if elevation.shape != grid.shape:
        raise InputError(f"elevation has shape {elevation.shape} but the grid is {grid.shape}")
    if not np.isfinite(elevation).all():
        raise InputError("elevation contains NaN or infinite values; fill them before building")
    slope, aspect = horn_slope_aspect(elevation, grid.resolution)
    acc = flow_accumulation(elevation, grid.resolution)
    return Terrain(grid, elevation, slope, aspect, acc)


# --------------------------------------------------------------------------- real DEM


def _utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone CRS containing (lon, lat)."""
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _alignment_step(resolution: float) -> int:
    """Smallest pixel count k such that k * resolution is a whole multiple of 60 m."""
    ratio = Fraction(GRID_ALIGNMENT_M) / Fraction(resolution).limit_denominator(10**6)
    # k * resolution = m * 60  <=>  k = m * ratio; the smallest integer k is ratio's numerator.
    return ratio.numerator


def _largest_window(valid: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, height, width) of a large axis-aligned window with only True cells.

    Starts from the bounding box of `valid` and peels the outer row or column with most invalid
    cells until none is left (one step per row/column, not per pixel).
    """
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    while r1 > r0 and c1 > c0:
        win = valid[r0:r1, c0:c1]
        bad = [(~win[0]).sum(), (~win[-1]).sum(), (~win[:, 0]).sum(), (~win[:, -1]).sum()]
        worst = int(np.argmax(bad))
        if bad[worst] == 0:
            break
        if worst == 0:
            r0 += 1
        elif worst == 1:
            r1 -= 1
        elif worst == 2:
            c0 += 1
        else:
            c1 -= 1
    return int(r0), int(c0), int(max(r1 - r0, 0)), int(max(c1 - c0, 0))


def _snap_window(window: tuple[int, int, int, int], step: int) -> tuple[int, int, int, int]:
    """Move the window's origin onto multiples of `step` pixels, shrinking it to stay inside."""
    r0, c0, h, w = window
    nr0, nc0 = -(-r0 // step) * step, -(-c0 // step) * step
    return nr0, nc0, max(h - (nr0 - r0), 0), max(w - (nc0 - c0), 0)


def _open_dem(path: Path) -> rasterio.DatasetReader:
    if not path.is_file():
        raise InputError(f"DEM file {path} does not exist; pass the path of a DEM GeoTIFF")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"DEM file {path} cannot be read as a raster ({exc})") from exc


def _target_crs(src: rasterio.DatasetReader, path: Path) -> CRS:
    if src.crs is None:
        raise InputError(
            f"DEM file {path} has no CRS; assign one with gdal_edit.py -a_srs EPSG:<code> {path}"
        )
    crs = CRS.from_user_input(src.crs)
    if crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter"):
        return crs
    # Geographic (or non-metric) DEM: use the UTM zone of its centre.
    left, bottom, right, top = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    return _utm_crs((left + right) / 2.0, (bottom + top) / 2.0)


def _aligned_grid(src: rasterio.DatasetReader, crs: CRS, resolution: float) -> Grid:
    """A grid covering the DEM in `crs`, origin on multiples of 60 m."""
    left, bottom, right, top = transform_bounds(src.crs, crs, *src.bounds, densify_pts=51)
    west = math.floor(left / GRID_ALIGNMENT_M) * GRID_ALIGNMENT_M
    north = math.ceil(top / GRID_ALIGNMENT_M) * GRID_ALIGNMENT_M
    width = math.ceil((right - west) / resolution)
    height = math.ceil((north - bottom) / resolution)
    return Grid.from_origin(crs, west, north, resolution, width, height)


def _warp(
    src: rasterio.DatasetReader, data: np.ndarray, grid: Grid, resampling: Resampling, nodata
) -> np.ndarray:
    out = np.full(grid.shape, nodata, dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=src.transform,
        src_crs=src.crs,
        src_nodata=nodata,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=nodata,
        resampling=resampling,
    )
    return out


def _fill_nodata(z: np.ndarray, path: Path) -> np.ndarray:
    """Fill NaN holes with the nearest valid value; refuse more than 5% nodata."""
    missing = ~np.isfinite(z)
    fraction = float(missing.mean())
    if fraction > MAX_NODATA_FRACTION:
        raise InputError(
            f"DEM file {path}: {fraction:.1%} of the requested window is nodata (more than "
            f"{MAX_NODATA_FRACTION:.0%}); choose a smaller `shape` or fill the DEM first"
        )
    if not missing.any():
        return z
    _, (ri, ci) = ndimage.distance_transform_edt(missing, return_indices=True)
    return z[ri, ci]


def terrain_from_dem(
    path: str | Path, shape: tuple[int, int] | None = None, resolution: float = 10.0
) -> Terrain:
    """Read a DEM GeoTIFF onto a `resolution` m grid aligned to 60 m and derive the terrain.

    Args:
        path: any raster GDAL reads, with a CRS. Geographic DEMs go to the UTM zone of their
            centre; projected ones keep their CRS.
        shape: (H, W) of a window centred in the DEM's valid area; None takes the largest
            window fully inside valid data.
        resolution: output pixel size in metres (cubic resampling).

    Returns:
        The Terrain on the cropped grid (origin a whole multiple of 60 m).

    Raises:
        InputError: missing/unreadable file, no CRS, `shape` larger than the DEM covers,
            or more than 5% nodata in the window.
    """
    path = Path(path)
    if resolution <= 0:
        raise InputError(f"resolution must be > 0 metres, got {resolution}")
    with _open_dem(path) as src:
        crs = _target_crs(src, path)
        full = _aligned_grid(src, crs, resolution)
        # Coverage: where the DEM has data, interior holes closed (they are filled later).
        src_valid = src.read_masks(1) > 0
        covered = _warp(src, src_valid.astype(np.uint8), full, Resampling.nearest, 0) > 0
        covered = ndimage.binary_fill_holes(covered)
        step = _alignment_step(resolution)
        r0, c0, max_h, max_w = _snap_window(_largest_window(covered), step)
        if shape is None:
            shape = (max_h, max_w)
        h, w = int(shape[0]), int(shape[1])
        if h < 3 or w < 3:
            raise InputError(f"shape {shape} is too small; the DEM window needs at least 3x3")
        if h > max_h or w > max_w:
            raise InputError(
                f"shape {tuple(shape)} exceeds what DEM file {path} covers at {resolution} m; "
                f"the maximum is ({max_h}, {max_w})"
            )
        # Centre the window, keeping its origin on the 60 m lattice.
        r0 += ((max_h - h) // 2) // step * step
        c0 += ((max_w - w) // 2) // step * step
        west = full.transform.c + c0 * resolution
        north = full.transform.f - r0 * resolution
        grid = Grid.from_origin(crs, west, north, resolution, w, h)
        data = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        z = _warp(src, data, grid, Resampling.cubic, np.nan)
    return build_terrain(_fill_nodata(z, path).astype(np.float32), grid)


# --------------------------------------------------------------------------- fractal terrain

#: Target median slope (degrees) of a fractal terrain, like the San Gabriel Mountains at 10 m.
TARGET_MEDIAN_SLOPE_DEG = 26.0
#: Wavelengths (m) of the detail octaves: range, massif, spur, ridge, hillslope, gully.
DETAIL_WAVELENGTHS_M = (4000.0, 2000.0, 1000.0, 500.0, 250.0, 125.0)
#: Octave amplitude ~ wavelength**exponent (1 would give every octave the same slopes).
DETAIL_SPECTRAL_EXPONENT = 1.4


def _mountain_fields(
    shape: tuple[int, int], rng: np.random.Generator, resolution: float
) -> tuple[np.ndarray, np.ndarray]:
    """(envelope, detail), both scaled to [0, 1].

    envelope: a broad uplift, a range crest across the scene plus scene-scale noise.
    detail: octaves of smooth Gaussian random fields at fixed physical wavelengths
    (`DETAIL_WAVELENGTHS_M`), amplitude proportional to wavelength^1.4 (a power-law spectrum
    that is rougher at large scales than at hillslope scale). Long octaves are ridged,
    1 - tanh|g|, for sharp main crests; short ones are V-valleyed, tanh|g|, for incised gullies.
    """
    h, w = shape
    detail = np.zeros(shape)
    for wavelength in DETAIL_WAVELENGTHS_M:
        g = gaussian_random_field(shape, wavelength / resolution / 2.0, rng)
        form = 1.0 - np.tanh(np.abs(g)) if wavelength >= 1000.0 else np.tanh(np.abs(g))
        detail += wavelength**DETAIL_SPECTRAL_EXPONENT * form
    rows = (np.arange(h)[:, None] + 0.5) / h
    cols = (np.arange(w)[None, :] + 0.5) / w
    crest, tilt = rng.uniform(0.35, 0.65), rng.uniform(-0.15, 0.15)
    # A range crest running roughly east-west across the scene.
    distance = np.abs(rows - crest - tilt * (cols - 0.5))
    envelope = np.exp(-((distance / 0.45) ** 2))
    envelope = envelope + 0.3 * gaussian_random_field(shape, max(min(h, w) / 4.0, 4.0), rng)
    return _unit(envelope), _unit(detail)


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _median_slope(z: np.ndarray, resolution: float) -> float:
    return float(np.median(horn_slope_aspect(z, resolution)[0]))


def fractal_terrain(
    shape: tuple[int, int],
    rng: np.random.Generator,
    resolution: float = 10.0,
    crs: str = "EPSG:32611",
    west: float = 380040.0,
    north: float = 3800040.0,
    relief: tuple[float, float] = (300.0, 2300.0),
) -> Terrain:
    """Seeded synthetic mountains of any size.

    A multi-octave ridged/valleyed surface (detail) is mixed with a broad uplift envelope;
    the mix is chosen by bisection so that the median slope is about 26 degrees once the sum
    is scaled to the `relief` range. Steep tails (35-60 degrees) come from the ridged crests
    and incised valleys. A scene too small (or too large) to hold the relief at that slope
    keeps the mix at its bound, so its slopes are steeper (gentler).

    Args:
        shape: (H, W) pixels.
        rng: the random generator (same state, same bytes).
        resolution: pixel size in metres.
        crs, west, north: the grid's CRS and upper-left corner (metres).
        relief: (lowest, highest) elevation in metres.

    Returns:
        The Terrain.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 3 or w < 3:
        raise InputError(f"shape must be at least (3, 3), got {shape}")
    lo, hi = float(relief[0]), float(relief[1])
    if not hi > lo:
        raise InputError(f"relief must be (low, high) with high > low, got {relief}")
    grid = Grid.from_origin(crs, west, north, resolution, w, h)
    envelope, detail = _mountain_fields((h, w), rng, resolution)

    def surface(weight: float) -> np.ndarray:
        return lo + (hi - lo) * _unit(weight * envelope + (1.0 - weight) * detail)

    # More envelope -> the relief spreads over larger distances -> gentler slopes.
    a, b = 0.0, 0.995
    if _median_slope(surface(a), resolution) > TARGET_MEDIAN_SLOPE_DEG:
        for _ in range(12):
            mid = 0.5 * (a + b)
            if _median_slope(surface(mid), resolution) > TARGET_MEDIAN_SLOPE_DEG:
                a = mid
            else:
                b = mid
    z = surface(a).astype(np.float32)
    return build_terrain(z, grid)
