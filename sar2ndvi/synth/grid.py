"""The simulator's pixel grid: one CRS, one north-up square-pixel transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import CRS


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    Attributes:
        crs: the coordinate reference system (a projected CRS in metres for the
            simulator's 10 m grid).
        transform: affine transform from (col, row) to (x, y) of pixel corners.
        width: number of columns (x).
        height: number of rows (y).
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_origin(
        cls,
        crs: CRS | str | int,
        west: float,
        north: float,
        resolution: float,
        width: int,
        height: int,
    ) -> Grid:
        """A grid whose upper-left corner is (west, north), with square pixels of `resolution`."""
        return cls(
            CRS.from_user_input(crs),
            Affine(resolution, 0.0, west, 0.0, -resolution, north),
            int(width),
            int(height),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), the shape of a 2-D array on this grid."""
        return (self.height, self.width)

    @property
    def resolution(self) -> float:
        """Pixel size in CRS units (metres for a projected CRS)."""
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the outer pixel edges."""
        left, top = self.transform.c, self.transform.f
        right = left + self.width * self.transform.a
        bottom = top + self.height * self.transform.e
        return (left, bottom, right, top)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates: x of shape (width,), y of shape (height,), float64."""
        x = self.transform.c + (np.arange(self.width) + 0.5) * self.transform.a
        y = self.transform.f + (np.arange(self.height) + 0.5) * self.transform.e
        return x, y

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates as two (height, width) arrays (X, Y)."""
        x, y = self.coords()
        return np.meshgrid(x, y)

    def downsampled(self, factor: int) -> Grid:
        """The grid with pixels `factor` times larger, same upper-left corner.

        The width and height are rounded up, so the coarse grid covers the fine one.
        """
        t = self.transform
        return Grid(
            self.crs,
            Affine(t.a * factor, 0.0, t.c, 0.0, t.e * factor, t.f),
            -(-self.width // factor),
            -(-self.height // factor),
        )
