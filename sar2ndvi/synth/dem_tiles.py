"""The simulated terrain as a Copernicus GLO-30 product: 1 arc-second tiles in EPSG:4326.

Copernicus DEM tiles are one degree square, with pixel centres on whole arc-seconds
(so the tile's outer edge sits half a pixel beyond the integer degree), and a longitude
spacing that widens towards the poles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.warp import Resampling, reproject, transform_bounds

from sar2ndvi.synth.grid import Grid

ARCSEC = 1.0 / 3600.0


def longitude_spacing_arcsec(lat: float) -> float:
    """GLO-30 longitude pixel spacing in arc-seconds at latitude `lat` (product handbook)."""
    a = abs(lat)
    for limit, spacing in ((50, 1.0), (60, 1.5), (70, 2.0), (80, 3.0), (85, 5.0)):
        if a < limit:
            return spacing
    return 10.0


@dataclass(frozen=True)
class DemTile:
    """One partial GLO-30 tile: the cells of a 1-degree tile that cover the area.

    Attributes:
        lat_floor, lon_floor: south-west corner of the 1-degree tile, degrees.
        transform: affine of the written raster (EPSG:4326, degrees).
        shape: (rows, cols) of the written raster.
        elevation: (rows, cols) float32 metres.
    """

    lat_floor: int
    lon_floor: int
    transform: Affine
    shape: tuple[int, int]
    elevation: np.ndarray


def dem_tiles(elevation: np.ndarray, grid: Grid, cover: Grid) -> list[DemTile]:
    """Resample `elevation` on `grid` into the GLO-30 tiles that cover the area of `cover`.

    Args:
        elevation: (H, W) metres on `grid` (which must extend beyond `cover`, so that
            every DEM cell over the area has terrain under it).
        grid: the grid of `elevation`.
        cover: the area the tiles must cover (the scene grid).
    """
    west, south, east, north = transform_bounds(
        cover.crs, "EPSG:4326", *cover.bounds, densify_pts=21
    )
    tiles = []
    for lat_floor in range(math.floor(south), math.floor(north) + 1):
        for lon_floor in range(math.floor(west), math.floor(east) + 1):
            tiles.append(_tile(elevation, grid, lat_floor, lon_floor, (west, south, east, north)))
    return [t for t in tiles if t is not None]


def _tile(
    elevation: np.ndarray,
    grid: Grid,
    lat_floor: int,
    lon_floor: int,
    area: tuple[float, float, float, float],
) -> DemTile | None:
    dy = ARCSEC
    dx = longitude_spacing_arcsec(lat_floor + 0.5) * ARCSEC
    # Full-tile grid: column 0 is centred on lon_floor, row 0 on lat_floor + 1.
    origin_x, origin_y = lon_floor - dx / 2, lat_floor + 1 + dy / 2
    west, south, east, north = area
    col0 = max(math.floor((max(west, lon_floor) - origin_x) / dx) - 1, 0)
    col1 = min(math.ceil((min(east, lon_floor + 1) - origin_x) / dx) + 1, round(1 / dx))
    row0 = max(math.floor((origin_y - min(north, lat_floor + 1)) / dy) - 1, 0)
    row1 = min(math.ceil((origin_y - max(south, lat_floor)) / dy) + 1, round(1 / dy))
    if col1 <= col0 or row1 <= row0:
        return None
    transform = Affine(dx, 0.0, origin_x + col0 * dx, 0.0, -dy, origin_y - row0 * dy)
    out = np.full((row1 - row0, col1 - col0), np.nan, np.float32)
    reproject(
        elevation.astype(np.float32),
        out,
        src_transform=grid.transform,
        src_crs=grid.crs,
        src_nodata=np.nan,
        dst_transform=transform,
        dst_crs="EPSG:4326",
        dst_nodata=np.nan,
        resampling=Resampling.average,
    )
    if np.isnan(out).any():
        raise RuntimeError(
            "the simulated terrain does not cover the DEM tile window; the terrain margin "
            "around the scene is too small"
        )
    return DemTile(lat_floor, lon_floor, transform, out.shape, out)
