"""The best NDVI any radar model could predict on a simulated scene: an RMSE floor.

The simulator draws NDVI as a per-class level, plus terrain terms, plus texture
(`sar2ndvi.synth.vegetation`). The radar sees vegetation only through its water content,
which an independent canopy-structure field varies by about 30 % and C-band saturates
over forest; speckle hides the finest scales. So the texture is, to a good approximation,
not in the radar at all.

`oracle_ndvi` is the prediction of a model that knows every pixel's land-cover class and
every terrain term of the simulator's NDVI formula exactly, and nothing of the texture: per
class, the least-squares fit of the true NDVI on those terms (with an intercept), fitted on
the whole scene. Its RMSE against the Sentinel-2 target is a floor that a real model, which
must also infer the class from speckled radar, does not reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import xarray as xr

from sar2ndvi import store
from sar2ndvi.errors import InputError
from sar2ndvi.synth.scene import Scene
from sar2ndvi.synth.terrain import Terrain

# the terrain terms are the simulator's own (same package), so the oracle cannot drift from
# the formula it inverts
from sar2ndvi.synth.vegetation import _environment

__all__ = ["oracle_ndvi"]


def _read(scene: Scene, name: str) -> np.ndarray:
    with rasterio.open(scene.truth(name)) as src:
        return src.read(1).astype(np.float64)


def oracle_ndvi(scene: Scene | str | Path, period: str = "pre") -> xr.DataArray:
    """The oracle's NDVI of a simulated scene (see the module doc).

    Args:
        scene: a simulated scene folder (`sar2ndvi simulate`) or an opened `Scene`.
        period: "pre" or "post" (the land cover and NDVI of that period).

    Returns:
        (y, x) float32 NDVI on the scene's 10 m truth grid, georeferenced (CRS and
        transform), pixel-centre coordinates; select the feature grid from it with
        ``.sel(x=features.x, y=features.y)``.
    """
    if period not in ("pre", "post"):
        raise InputError(f"period must be 'pre' or 'post', got {period!r}")
    scene = scene if isinstance(scene, Scene) else Scene.open(scene)
    grid = scene.grid
    terrain = Terrain(
        grid,
        *(_read(scene, n) for n in ("elevation", "slope", "aspect", "flow_accumulation")),
    )
    env = _environment(terrain)
    terms = np.stack([env.north, env.wet, env.band, env.steep, env.ridge, env.high], axis=-1)
    cover = _read(scene, f"land_cover_{period}").astype(np.int64)
    ndvi = _read(scene, f"ndvi_{period}")
    oracle = np.full(ndvi.shape, np.nan)
    for code in np.unique(cover):
        sel = (cover == code) & np.isfinite(ndvi)
        design = np.column_stack([np.ones(int(sel.sum())), terms[sel]])
        coef, *_ = np.linalg.lstsq(design, ndvi[sel], rcond=None)
        oracle[sel] = design @ coef
    x, y = grid.coords()
    da = xr.DataArray(
        np.clip(oracle, -1.0, 1.0).astype(np.float32),
        dims=("y", "x"),
        coords={"y": y, "x": x},
        name="ndvi",
        attrs={"long_name": f"oracle NDVI ({period}): true land cover and terrain terms"},
    )
    return store.georeference(da.to_dataset(), grid.crs, transform=grid.transform)["ndvi"]
