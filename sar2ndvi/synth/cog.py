"""Writing Cloud-Optimized GeoTIFFs the way the real archives publish them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS


def write_cog(
    path: str | Path,
    array: np.ndarray,
    transform: Affine,
    crs: CRS | str,
    *,
    nodata: float | int | None = None,
    blocksize: int = 256,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a 2-D array as a tiled, DEFLATE-compressed COG with internal overviews.

    Args:
        path: output file (parents are created).
        array: (rows, cols) array; its dtype is the file's dtype. NaN in float arrays is
            written as `nodata` when one is given.
        transform: affine of the pixel corners.
        crs: the raster's CRS.
        nodata: the nodata value to declare (and to write in place of NaN).
        blocksize: internal tile size in pixels.
        tags: dataset metadata items.

    Returns:
        The path written. The bytes depend only on the inputs (no timestamps), so the
        same data gives the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim != 2:
        raise ValueError(f"write_cog expects a 2-D array, got shape {array.shape}")
    data = array
    if nodata is not None and np.issubdtype(array.dtype, np.floating):
        data = np.where(np.isnan(array), np.asarray(nodata, array.dtype), array)
    predictor = 3 if np.issubdtype(array.dtype, np.floating) else 2
    profile = {
        "driver": "COG",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": CRS.from_user_input(crs).to_wkt(),
        "transform": transform,
        "nodata": nodata,
        "compress": "DEFLATE",
        "predictor": predictor,
        "blocksize": blocksize,
        "overview_resampling": "nearest" if array.dtype == np.uint8 else "average",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if tags:
            dst.update_tags(**tags)
    return path


def multihash_sha256(path: str | Path) -> str:
    """The file's SHA2-256 as a hex multihash (prefix 0x12 0x20), as `file:checksum` wants."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return "1220" + digest
