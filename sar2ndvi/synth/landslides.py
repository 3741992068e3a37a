"""Earthquake-triggered landslides: shaking, susceptibility, polygons, rasters and inventory.

Peak ground acceleration attenuates with hypocentral distance (a simple GMPE form);
susceptibility is logistic in slope and ln(PGA); landslide crowns are drawn with probability
proportional to susceptibility and each slide is traced DOWNSLOPE along the aspect field,
then buffered into a tapering polygon (shapely), merged where slides coalesce, and rasterised
onto the grid (rasterio) so the mask, the labels and the inventory agree exactly.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio.features import rasterize
from scipy import ndimage
from shapely.geometry import Polygon, box

from sar2ndvi.errors import InputError
from sar2ndvi.synth.grid import Grid
from sar2ndvi.synth.terrain import Terrain
from sar2ndvi.synth.vegetation import LandCover, Vegetation

__all__ = [
    "Earthquake",
    "Landslides",
    "default_earthquake",
    "simulate_landslides",
    "strip_vegetation",
    "write_inventory",
]

# Attenuation: log10 PGA[g] = A + B*M - log10(R) - C*R, R = hypocentral distance in km.
# Calibrated to ~0.5 g at 10 km and ~0.1 g at 45 km for M 6.5 (order of NGA-West2 medians).
GMPE_A, GMPE_B, GMPE_C = -1.23, 0.30, 0.002
#: Hypocentral depth (km) used when the earthquake does not say.
DEFAULT_DEPTH_KM = 8.0
# Susceptibility: logit = S0 + S_SLOPE*slope_deg + S_PGA*ln(PGA / 0.1 g).
S0, S_SLOPE, S_PGA = -12.0, 0.18, 3.0
#: Landslide length (m): lognormal median and log-sd, clipped to [min, max].
LENGTH_MEDIAN_M, LENGTH_SIGMA = 180.0, 0.45
LENGTH_RANGE_M = (60.0, 700.0)
#: Width at the crown as a fraction of length, uniform in this range (L/4 .. L/2).
WIDTH_RATIO = (0.25, 0.5)
#: Width at the toe relative to the crown (slides taper downslope).
TOE_TAPER = 0.45
#: Runout stops on slopes gentler than this (degrees): the valley floor.
RUNOUT_STOP_SLOPE_DEG = 15.0
#: Minimum pixels a polygon must cover to enter the inventory.
MIN_PIXELS = 4


@dataclass(frozen=True)
class Earthquake:
    """An earthquake: epicentre (x, y) in the grid CRS (m), moment magnitude, depth (km)."""

    epicentre: tuple[float, float]
    magnitude: float
    depth_km: float = DEFAULT_DEPTH_KM


@dataclass(frozen=True)
class Landslides:
    """Landslides on a grid; arrays are (H, W).

    Attributes:
        mask: bool, True inside a landslide.
        label: int32, 0 outside, else the inventory id.
        shaking: float32 peak ground acceleration in g.
        susceptibility: float32 probability-like index in [0, 1].
        inventory: GeoDataFrame (id, area_m2, length_m, width_m, mean_slope_deg, geometry),
            Polygons in the grid CRS, ids 1..n.
    """

    mask: np.ndarray
    label: np.ndarray
    shaking: np.ndarray
    susceptibility: np.ndarray
    inventory: gpd.GeoDataFrame


def default_earthquake(grid: Grid) -> Earthquake:
    """An M 6.5 event with its epicentre 1 km outside the west edge, at mid-height."""
    left, bottom, _right, top = grid.bounds
    return Earthquake(epicentre=(left - 1000.0, 0.5 * (bottom + top)), magnitude=6.5)


def peak_ground_acceleration(grid: Grid, earthquake: Earthquake) -> np.ndarray:
    """(H, W) float32 PGA in g from the attenuation law above."""
    x, y = grid.mesh()
    d_km = np.hypot(x - earthquake.epicentre[0], y - earthquake.epicentre[1]) / 1000.0
    r_km = np.hypot(d_km, earthquake.depth_km)
    log_pga = GMPE_A + GMPE_B * earthquake.magnitude - np.log10(r_km) - GMPE_C * r_km
    return np.minimum(10.0**log_pga, 2.0).astype(np.float32)


def susceptibility(slope: np.ndarray, pga: np.ndarray) -> np.ndarray:
    """(H, W) float32 logistic susceptibility in [0, 1]: steep (> ~30 deg) and shaken."""
    logit = S0 + S_SLOPE * slope.astype(np.float64) + S_PGA * np.log(np.maximum(pga, 1e-4) / 0.1)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def _draw_crowns(susc: np.ndarray, rng: np.random.Generator, expected: float) -> np.ndarray:
    """(n, 2) float (row, col) crown positions, drawn with probability ~ susceptibility."""
    n = int(rng.poisson(expected))
    p = susc.ravel().astype(np.float64)
    if n == 0 or p.sum() <= 0:
        return np.zeros((0, 2))
    flat = rng.choice(p.size, size=n, p=p / p.sum())
    rows, cols = np.divmod(flat, susc.shape[1])
    jitter = rng.uniform(-0.5, 0.5, size=(n, 2))  # anywhere inside the pixel
    return np.column_stack([rows, cols]).astype(np.float64) + jitter


def _trace_downslope(terrain: Terrain, crowns: np.ndarray, lengths_px: np.ndarray) -> list:
    """Steepest-descent paths from every crown at once, one 0.5 px step per iteration.

    The direction is the aspect (downslope) unit vector, interpolated as a vector (not as an
    angle). A path ends at its length, at the valley floor or at the scene edge.

    Returns:
        A list of (k, 2) arrays of (row, col) path vertices, one per crown.
    """
    h, w = terrain.grid.shape
    asp = np.radians(terrain.aspect.astype(np.float64))
    east, south = np.sin(asp), -np.cos(asp)  # row axis points south
    step = 0.5
    n_steps = int(np.ceil(lengths_px.max() / step)) if lengths_px.size else 0
    pos = crowns.copy()
    path = np.full((n_steps + 1, len(crowns), 2), np.nan)
    path[0] = pos
    active = np.ones(len(crowns), dtype=bool)
    for k in range(1, n_steps + 1):  # over steps, vectorised over all slides
        coords = pos.T
        de = ndimage.map_coordinates(east, coords, order=1, mode="nearest")
        ds = ndimage.map_coordinates(south, coords, order=1, mode="nearest")
        norm = np.hypot(de, ds)
        slope = ndimage.map_coordinates(terrain.slope, coords, order=1, mode="nearest")
        inside = (pos[:, 0] >= -0.5) & (pos[:, 0] <= h - 0.5) & (pos[:, 1] >= -0.5)
        inside &= pos[:, 1] <= w - 0.5
        active &= (k * step <= lengths_px) & (norm > 1e-6) & inside
        active &= (slope >= RUNOUT_STOP_SLOPE_DEG) | (k * step < 0.3 * lengths_px)
        safe = np.where(norm > 1e-6, norm, 1.0)
        move = np.column_stack([ds, de]) / safe[:, None] * step
        pos = np.where(active[:, None], pos + move, pos)
        path[k] = np.where(active[:, None], pos, np.nan)
    return [p[np.isfinite(p[:, 0])] for p in np.transpose(path, (1, 0, 2))]


def _slide_polygon(path_xy: np.ndarray, crown_width: float) -> Polygon:
    """A tapering polygon: hulls of consecutive circles whose radius shrinks downslope."""
    t = np.linspace(0.0, 1.0, len(path_xy))
    radius = 0.5 * crown_width * (1.0 - (1.0 - TOE_TAPER) * t)
    circles = shapely.buffer(shapely.points(path_xy), radius, quad_segs=8)
    if len(circles) == 1:
        return circles[0]
    hulls = shapely.convex_hull(shapely.union(circles[:-1], circles[1:]))
    return shapely.union_all(hulls)


def _pixel_to_xy(grid: Grid, rc: np.ndarray) -> np.ndarray:
    """(k, 2) (row, col) pixel-centre indices -> (k, 2) (x, y) in the grid CRS."""
    t = grid.transform
    return np.column_stack([t.c + (rc[:, 1] + 0.5) * t.a, t.f + (rc[:, 0] + 0.5) * t.e])


def _polygons(terrain: Terrain, rng: np.random.Generator, crowns: np.ndarray) -> list[Polygon]:
    """Traced, buffered, merged and clipped landslide polygons (before the pixel check)."""
    res = terrain.grid.resolution
    n = len(crowns)
    lengths_m = np.clip(
        LENGTH_MEDIAN_M * np.exp(LENGTH_SIGMA * rng.standard_normal(n)), *LENGTH_RANGE_M
    )
    ratios = rng.uniform(*WIDTH_RATIO, size=n)
    paths = _trace_downslope(terrain, crowns, lengths_m / res)
    slides = [
        _slide_polygon(_pixel_to_xy(terrain.grid, p), max(r * L, 2.0 * res))
        for p, r, L in zip(paths, ratios, lengths_m, strict=True)
    ]
    if not slides:
        return []
    # Coalescing slides are mapped as one polygon (as inventories do).
    merged = shapely.union_all(slides).intersection(box(*terrain.grid.bounds))
    parts = shapely.get_parts(merged)
    return [p for p in parts if isinstance(p, Polygon) and not p.is_empty]


def _ordered(polys: list[Polygon]) -> list[Polygon]:
    """Deterministic order: north to south, then west to east (by representative point)."""
    keys = [
        (-round(p.representative_point().y, 3), round(p.representative_point().x, 3)) for p in polys
    ]
    return [p for _, p in sorted(zip(keys, polys, strict=True), key=lambda kp: kp[0])]


def _rasterise(polys: list[Polygon], grid: Grid) -> np.ndarray:
    if not polys:
        return np.zeros(grid.shape, dtype=np.int32)
    shapes = [(p, i + 1) for i, p in enumerate(polys)]
    return rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="int32")


def _inventory(polys: list[Polygon], label: np.ndarray, terrain: Terrain) -> gpd.GeoDataFrame:
    """The attribute table; length/width are the sides of the minimum rotated rectangle."""
    ids = np.arange(1, len(polys) + 1, dtype=np.int32)
    rects = [shapely.minimum_rotated_rectangle(p) for p in polys]
    sides = []
    for r in rects:
        xy = np.asarray(r.exterior.coords)[:3]
        sides.append(sorted(np.hypot(*np.diff(xy, axis=0).T)))
    mean_slope = ndimage.mean(terrain.slope, labels=label, index=ids) if len(ids) else np.zeros(0)
    return gpd.GeoDataFrame(
        {
            "id": ids,
            "area_m2": np.array([p.area for p in polys], dtype=np.float64),
            "length_m": np.array([s[1] for s in sides], dtype=np.float64),
            "width_m": np.array([s[0] for s in sides], dtype=np.float64),
            "mean_slope_deg": np.asarray(mean_slope, dtype=np.float64),
        },
        geometry=gpd.GeoSeries(polys, crs=terrain.grid.crs),
        crs=terrain.grid.crs,
    )


def simulate_landslides(
    terrain: Terrain,
    rng: np.random.Generator,
    earthquake: Earthquake | None = None,
    density_per_km2: float = 4.0,
) -> Landslides:
    """Simulate the landslides an earthquake triggers on `terrain`.

    Args:
        terrain: the scene's terrain.
        rng: the random generator (same state, same bytes).
        earthquake: the event; None uses `default_earthquake(terrain.grid)`.
        density_per_km2: expected number of landslide crowns per km^2 of scene (Poisson);
            where they fall follows the susceptibility (steep and strongly shaken ground).
            Slides that coalesce are merged, so the inventory can hold fewer.

    Returns:
        Landslides whose mask and label are the rasterised inventory.
    """
    if density_per_km2 < 0:
        raise InputError(f"density_per_km2 must be >= 0, got {density_per_km2}")
    grid = terrain.grid
    earthquake = earthquake or default_earthquake(grid)
    pga = peak_ground_acceleration(grid, earthquake)
    susc = susceptibility(terrain.slope, pga)
    area_km2 = grid.width * grid.height * grid.resolution**2 / 1e6
    crowns = _draw_crowns(susc, rng, density_per_km2 * area_km2)
    polys = _ordered(_polygons(terrain, rng, crowns))
    # Keep only polygons that cover enough pixels once rasterised, then label again.
    label = _rasterise(polys, grid)
    counts = np.bincount(label.ravel(), minlength=len(polys) + 1)[1:]
    polys = [p for p, c in zip(polys, counts, strict=True) if c >= MIN_PIXELS]
    label = _rasterise(polys, grid)
    inventory = _inventory(polys, label, terrain)
    return Landslides(label > 0, label, pga, susc, inventory)


def strip_vegetation(
    vegetation: Vegetation, landslides: Landslides, rng: np.random.Generator
) -> Vegetation:
    """Post-event vegetation: landslide pixels become bare scars with debris NDVI.

    Landslide pixels get LandCover.LANDSLIDE, NDVI uniform in 0.02..0.2 (bare soil and
    debris, a little remnant vegetation) and water content 0..0.05 kg/m^2.
    """
    mask = landslides.mask
    if mask.shape != vegetation.ndvi.shape:
        raise InputError(
            f"landslide mask {mask.shape} and vegetation {vegetation.ndvi.shape} differ in shape"
        )
    n = int(mask.sum())
    cover = vegetation.land_cover.copy()
    ndvi = vegetation.ndvi.copy()
    wc = vegetation.water_content.copy()
    cover[mask] = LandCover.LANDSLIDE
    ndvi[mask] = rng.uniform(0.02, 0.2, size=n).astype(np.float32)
    wc[mask] = rng.uniform(0.0, 0.05, size=n).astype(np.float32)
    return replace(vegetation, land_cover=cover, ndvi=ndvi, water_content=wc)


def write_inventory(landslides: Landslides, path: str | Path) -> None:
    """Write the inventory as GeoJSON with its CRS (QGIS/GDAL read it); same input, same bytes.

    The file is written next to `path` and renamed into place, so a failure leaves no
    half-written file.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist")
    inv = landslides.inventory.sort_values("id").reset_index(drop=True)
    fd, tmp = tempfile.mkstemp(suffix=".geojson", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # the GeoJSON driver wants to create the file itself
    try:
        # layer name fixed, so the bytes do not depend on the temporary file name
        inv.to_file(tmp, driver="GeoJSON", layer="landslides", engine="pyogrio")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
