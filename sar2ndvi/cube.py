"""STAC items to a lazy, Dask-backed cube of Sentinel-1, Sentinel-2 and a DEM on one grid.

The grid comes from the recipe (CRS, bounds snapped to whole pixels, 10 m). Two loading
engines give the same pixels: stackstac (the default) and odc-stac (`engine="odc"`).
Everything is float32 with NaN for no data, chunked as the recipe says, and nothing is
computed until the cube is stored or plotted.

The result is an `xarray.DataTree`:

- ``/s1``: ``vv``, ``vh`` (time, y, x), linear gamma0, with per-time coordinates
  ``orbit_state``, ``relative_orbit``, ``period`` ("pre"/"post") and ``item_id``;
- ``/s2``: reflectance bands ``B02``..``B12`` (time, y, x), ``scl`` and ``ndvi``; bands and
  NDVI are masked where SCL says no data, saturated, cloud shadow, cloud, cirrus or snow;
- ``/dem``: ``elevation`` (y, x), the DEM tiles mosaicked and resampled bilinearly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np
import pyproj
import pystac
import rasterio
import xarray as xr
from rasterio.enums import Resampling

import sar2ndvi
from sar2ndvi.catalog import SceneSelection, item_time_range, select_scenes
from sar2ndvi.errors import InputError
from sar2ndvi.items import (
    DEM_ASSET_ALIASES,
    S1_ASSET_ALIASES,
    S2_ASSET_ALIASES,
    ItemError,
    asset_key,
    check_terrain_corrected,
    normalise,
    s2_scale_offset,
)
from sar2ndvi.recipe import Recipe
from sar2ndvi.store import georeference, scrub_secrets
from sar2ndvi.synth.grid import Grid

Engine = Literal["stackstac", "odc"]
ENGINES: tuple[str, ...] = ("stackstac", "odc")

#: The Sentinel-2 bands a cube holds by default: the 10 m and 20 m ones.
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: SCL classes that are not a clear view of the ground: no data, saturated or defective,
#: cloud shadow, cloud (medium and high probability), thin cirrus, snow or ice.
SCL_MASKED: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)
S1_NODATA = -32768.0


@dataclass
class SkippedAsset:
    """An asset left out of the cube because it could not be read (on_error="skip")."""

    item: str
    asset: str
    reason: str


@dataclass
class LoadReport:
    """What went into a cube: item ids per sensor and any skipped assets."""

    items: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[SkippedAsset] = field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        return {
            "sar2ndvi:items": self.items,
            "sar2ndvi:skipped": [vars(s) for s in self.skipped],
        }


# --- items -> canonical items --------------------------------------------------------------


def _canonical(
    item: pystac.Item, names: Sequence[str], aliases: Mapping[str, tuple[str, ...]]
) -> pystac.Item:
    """A normalised copy of `item` whose assets are keyed by the canonical `names`."""
    out = normalise(item)
    keys = {name: asset_key(out, name, aliases) for name in names}
    out.assets = {name: out.assets[key] for name, key in keys.items()}
    return out


def _local_path(href: str) -> Path | None:
    """The local file of an href (a path or a file:// URL), None for remote ones."""
    if href.startswith("file://"):
        return Path(url2pathname(urlsplit(href).path))
    return Path(href) if "://" not in href else None


def _check_file(ds: Any, href: str, declared_epsg: Any) -> None:
    """RasterioIOError when an opened raster cannot give the pixels its item promises:
    no CRS, another CRS than the item's ``proj:epsg`` (its pixels would land elsewhere on
    the grid, silently NaN), or a local TIFF shorter than its last data block (a truncated
    download, whose header still opens)."""
    if ds.crs is None:
        raise rasterio.errors.RasterioIOError("the raster has no CRS")
    if declared_epsg is not None:
        epsg = ds.crs.to_epsg()
        same = (
            epsg == int(declared_epsg)
            if epsg is not None
            else pyproj.CRS.from_user_input(ds.crs.to_wkt()).equals(
                pyproj.CRS.from_epsg(int(declared_epsg)), ignore_axis_order=True
            )
        )
        if not same:
            raise rasterio.errors.RasterioIOError(
                f"the file is in {ds.crs.to_string()} but its item declares "
                f"EPSG:{declared_epsg}; fix the item's proj:* fields or the file"
            )
    path = _local_path(href)
    if path is None or ds.driver != "GTiff":
        return
    rows, cols = (math.ceil(n / b) for n, b in zip(ds.shape, ds.block_shapes[0], strict=True))
    end = 0
    for band in range(1, ds.count + 1):
        for i in range(rows):
            for j in range(cols):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=band)
                size = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=band)
                if offset and size:
                    end = max(end, int(offset) + int(size))
    have = path.stat().st_size
    if have < end:
        raise rasterio.errors.RasterioIOError(
            f"the file is truncated: {have} bytes, but its last data block ends at byte "
            f"{end} (an interrupted download or copy?); fetch it again"
        )


def _check_readable(
    items: list[pystac.Item], names: Sequence[str], on_error: str, report: LoadReport
) -> list[pystac.Item]:
    """Open each asset's header (cheap for COGs) so that a missing, truncated,
    mis-projected or corrupt file is reported with its item and asset, rather than deep
    inside a Dask compute (or not at all)."""
    kept = []
    for item in items:
        problem = None
        for name in names:
            href = item.assets[name].href
            declared = item.assets[name].extra_fields.get("proj:epsg") or item.properties.get(
                "proj:epsg"
            )
            try:
                with rasterio.open(href) as ds:
                    _check_file(ds, href, declared)
            except (rasterio.errors.RasterioIOError, OSError) as err:
                # signed hrefs carry tokens: never put them in a message or a log line
                problem = (name, scrub_secrets(f"cannot read {href}: {err}"))
                break
        if problem is None:
            kept.append(item)
        elif on_error == "skip":
            report.skipped.append(SkippedAsset(item.id, problem[0], problem[1]))
        else:
            raise ItemError(
                f"item {item.id} asset {problem[0]}: {problem[1]}; pass "
                "on_error='skip' to build the cube without it"
            )
    return kept


def _time(item: pystac.Item) -> np.datetime64:
    """The item's datetime (or, for a range-only item, its start) as naive UTC."""
    t = item.datetime or item_time_range(item)[0]
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(t, "ns")


def _sorted(items: Sequence[pystac.Item]) -> list[pystac.Item]:
    return sorted(items, key=lambda it: (_time(it), it.id))


def _prepared(
    items: Sequence[pystac.Item],
    names: Sequence[str],
    aliases: Mapping[str, tuple[str, ...]],
    on_error: str,
    report: LoadReport,
    what: str,
) -> list[pystac.Item]:
    """Canonical, time-ordered, readable items (unreadable ones raise or are skipped)."""
    canon = _sorted([_canonical(it, names, aliases) for it in items])
    canon = _check_readable(canon, names, on_error, report)
    if not canon:
        raise InputError(f"no readable {what} item left to build the cube from")
    return canon


# --- engines -------------------------------------------------------------------------------


def _load(
    items: list[pystac.Item],
    names: Sequence[str],
    grid: Grid,
    chunks: Mapping[str, int],
    engine: str,
    resampling: str,
) -> xr.DataArray:
    """(time, band, y, x) float32 on `grid`, NaN where no data, one time step per item."""
    if engine == "stackstac":
        arr = _load_stackstac(items, names, grid, chunks, resampling)
    elif engine == "odc":
        arr = _load_odc(items, names, grid, chunks, resampling)
    else:
        raise InputError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    # Engine-specific attributes (stackstac's RasterSpec and Affine, odc's crs) are not
    # serialisable and say nothing the georeferencing does not: start clean.
    arr.attrs = {}
    return arr


def _load_stackstac(
    items: list[pystac.Item],
    names: Sequence[str],
    grid: Grid,
    chunks: Mapping[str, int],
    resampling: str,
) -> xr.DataArray:
    import stackstac

    epsg = grid.crs.to_epsg()
    arr = stackstac.stack(
        [it.to_dict(transform_hrefs=False) for it in items],
        assets=list(names),
        epsg=epsg,
        resolution=grid.resolution,
        bounds=grid.bounds,
        snap_bounds=False,
        chunksize=(chunks.get("time", 1), 1, chunks["y"], chunks["x"]),
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),
        rescale=False,
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        resampling=Resampling[resampling],
        errors_as_nodata=(),  # a missing asset is an error, never silent NaN
    )
    return arr.drop_vars([c for c in arr.coords if c not in ("time", "band", "y", "x")])


def _load_odc(
    items: list[pystac.Item],
    names: Sequence[str],
    grid: Grid,
    chunks: Mapping[str, int],
    resampling: str,
) -> xr.DataArray:
    import odc.stac
    from odc.geo.geobox import GeoBox

    geobox = GeoBox((grid.height, grid.width), grid.transform, grid.crs.to_wkt())
    order = {it.id: i for i, it in enumerate(items)}
    ds = odc.stac.load(
        items,
        bands=list(names),
        geobox=geobox,
        chunks={"time": chunks.get("time", 1), "y": chunks["y"], "x": chunks["x"]},
        groupby=lambda item, parsed, idx: order[item.id],
        resampling=resampling,
        dtype="float32",
        fail_on_error=True,
        preserve_original_order=True,
    )
    arr = ds[list(names)].to_dataarray("band").transpose("time", "band", "y", "x")
    arr = arr.astype(np.float32)
    return arr.drop_vars([c for c in arr.coords if c not in ("time", "band", "y", "x")])


def _on_grid(arr: xr.DataArray, grid: Grid) -> xr.DataArray:
    """Exact pixel-centre coordinates of `grid` (both engines, bit for bit)."""
    x, y = grid.coords()
    if arr.sizes["x"] != grid.width or arr.sizes["y"] != grid.height:
        raise RuntimeError(f"loaded {dict(arr.sizes)}, expected {grid.shape} (y, x)")
    return arr.assign_coords(x=x, y=y)


# --- the three sensors ---------------------------------------------------------------------


def _period(items: Sequence[pystac.Item], event: datetime) -> np.ndarray:
    return np.array(["pre" if _time(it) < np.datetime64(event, "ns") else "post" for it in items])


def load_s1(
    items: Sequence[pystac.Item],
    grid: Grid,
    chunks: Mapping[str, int],
    *,
    event: datetime,
    engine: str = "stackstac",
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> xr.Dataset:
    """Sentinel-1 RTC `vv` and `vh` (time, y, x), linear gamma0, NaN for no data."""
    report = report if report is not None else LoadReport()
    for it in items:
        check_terrain_corrected(it)
    canon = _prepared(items, ("vv", "vh"), S1_ASSET_ALIASES, on_error, report, "Sentinel-1")
    arr = _on_grid(_load(canon, ("vv", "vh"), grid, chunks, engine, "bilinear"), grid)
    # RTC nodata is -32768; zero or negative power is not a measurement either.
    arr = arr.where(arr > 0)
    ds = xr.Dataset({"vv": arr.isel(band=0, drop=True), "vh": arr.isel(band=1, drop=True)})
    ds = ds.assign_coords(
        time=[_time(it) for it in canon],
        item_id=("time", [it.id for it in canon]),
        orbit_state=("time", [str(it.properties.get("sat:orbit_state", "")) for it in canon]),
        relative_orbit=(
            "time",
            np.array(
                [int(it.properties.get("sat:relative_orbit", -1)) for it in canon], dtype=np.int32
            ),
        ),
        period=("time", _period(canon, event)),
    )
    for pol in ("vv", "vh"):
        ds[pol].attrs.update(
            long_name=f"{pol.upper()} backscatter, terrain-flattened gamma0",
            units="1",
            scale="linear power",
            nodata="NaN",
        )
    report.items["s1"] = [it.id for it in canon]
    return ds


def load_s2(
    items: Sequence[pystac.Item],
    grid: Grid,
    chunks: Mapping[str, int],
    *,
    event: datetime,
    bands: Sequence[str] = S2_BANDS,
    engine: str = "stackstac",
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> xr.Dataset:
    """Sentinel-2 L2A reflectance bands, SCL and NDVI (time, y, x), masked by SCL."""
    report = report if report is not None else LoadReport()
    names = (*bands, "SCL")
    canon = _prepared(items, names, S2_ASSET_ALIASES, on_error, report, "Sentinel-2")
    # Harmonise digital numbers item by item (by processing baseline or declared
    # raster:bands scale/offset, never by date).
    scale = np.array([[s2_scale_offset(it, b)[0] for b in bands] for it in canon], np.float32)
    offset = np.array([[s2_scale_offset(it, b)[1] for b in bands] for it in canon], np.float32)
    dn = _on_grid(_load(canon, bands, grid, chunks, engine, "bilinear"), grid)
    scl = _on_grid(_load(canon, ("SCL",), grid, chunks, engine, "nearest"), grid).isel(
        band=0, drop=True
    )
    clear = ~scl.isin(SCL_MASKED) & scl.notnull()
    reflectance = (
        dn.where(dn > 0) * xr.DataArray(scale, dims=("time", "band"))
        + xr.DataArray(offset, dims=("time", "band"))
    ).where(clear)
    ds = xr.Dataset(
        {b: reflectance.isel(band=i, drop=True).astype(np.float32) for i, b in enumerate(bands)}
    )
    ds["scl"] = scl.astype(np.float32)
    red, nir = ds["B04"], ds["B08"]
    ds["ndvi"] = ((nir - red) / (nir + red)).clip(-1, 1).astype(np.float32)
    ds = ds.assign_coords(
        time=[_time(it) for it in canon],
        item_id=("time", [it.id for it in canon]),
        processing_baseline=(
            "time",
            [str(it.properties.get("s2:processing_baseline", "")) for it in canon],
        ),
        cloud_cover=(
            "time",
            np.array(
                [float(it.properties.get("eo:cloud_cover", np.nan)) for it in canon],
                dtype=np.float32,
            ),
        ),
        period=("time", _period(canon, event)),
    )
    for b in bands:
        ds[b].attrs.update(
            long_name=f"surface reflectance {b}", units="1", masked_scl_classes=list(SCL_MASKED)
        )
    ds["scl"].attrs.update(
        long_name="scene classification (SCL), nearest neighbour", flag_values=list(range(12))
    )
    ds["ndvi"].attrs.update(
        long_name="NDVI, (B08 - B04) / (B08 + B04)", units="1", masked_scl_classes=list(SCL_MASKED)
    )
    report.items["s2"] = [it.id for it in canon]
    return ds


def load_dem(
    items: Sequence[pystac.Item],
    grid: Grid,
    chunks: Mapping[str, int],
    *,
    engine: str = "stackstac",
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> xr.Dataset:
    """The DEM tiles mosaicked onto the grid (bilinear): `elevation` (y, x) in metres."""
    report = report if report is not None else LoadReport()
    canon = _prepared(items, ("data",), DEM_ASSET_ALIASES, on_error, report, "DEM")
    arr = _on_grid(
        _load(canon, ("data",), grid, {**chunks, "time": 1}, engine, "bilinear"), grid
    ).isel(band=0, drop=True)
    # Tiles share their edge pixels: the first tile that has a value wins (lazy, per chunk).
    from stackstac import mosaic

    elevation = mosaic(arr, dim="time")
    elevation = elevation.astype(np.float32)
    elevation.attrs.update(long_name="elevation", units="m")
    report.items["dem"] = [it.id for it in canon]
    return xr.Dataset({"elevation": elevation})


def build_cube(
    recipe: Recipe,
    selection: SceneSelection,
    *,
    engine: str = "stackstac",
    on_error: Literal["raise", "skip"] = "raise",
) -> xr.DataTree:
    """The lazy cube of a recipe's scenes: a DataTree with /s1, /s2 and /dem on one grid.

    Args:
        recipe: the study area, grid, event and chunking.
        selection: the scenes (from `catalog.select_scenes`).
        engine: "stackstac" or "odc"; both give the same pixels.
        on_error: "raise" (default) stops at the first asset that cannot be read, naming
            the item and asset; "skip" leaves such items out and records them in the
            root attribute "sar2ndvi:skipped".
    """
    if engine not in ENGINES:
        raise InputError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error: {on_error!r} is not 'raise' or 'skip'")
    grid = recipe.grid()
    chunks = dict(recipe.chunks)
    report = LoadReport()
    common = {"engine": engine, "on_error": on_error, "report": report}
    s1 = load_s1(selection.s1_items(), grid, chunks, event=recipe.event, **common)
    s2 = load_s2(selection.s2_items(), grid, chunks, event=recipe.event, **common)
    dem = load_dem(selection.dem, grid, chunks, **common)
    tree = xr.DataTree.from_dict(
        {
            "/s1": georeference(s1, grid.crs, grid.transform),
            "/s2": georeference(s2, grid.crs, grid.transform),
            "/dem": georeference(dem, grid.crs, grid.transform),
        }
    )
    tree.attrs.update(
        {
            "title": f"sar2ndvi cube: {recipe.name}",
            "sar2ndvi:version": sar2ndvi.__version__,
            "sar2ndvi:recipe": recipe.to_dict(),
            "sar2ndvi:engine": engine,
            "Conventions": "CF-1.8",
            **report.attrs(),
        }
    )
    return tree


@contextmanager
def open_source(recipe: Recipe, workdir: str | Path | None = None) -> Iterator[str | None]:
    """Make a recipe's source searchable: yields an API URL, or None for static sources.

    A "synthetic" source is simulated into `workdir/scene` (reused when complete) and
    served by a local STAC API for the duration of the block.
    """
    if recipe.source.type != "synthetic":
        yield recipe.source.url if recipe.source.type == "api" else None
        return
    from sar2ndvi.synth.config import SceneConfig
    from sar2ndvi.synth.scene import simulate
    from sar2ndvi.synth.server import serve_scene

    if workdir is None:
        raise InputError(
            f"{recipe.path or recipe.name}: a synthetic source needs a working "
            "folder to simulate the scene into"
        )
    config = SceneConfig(seed=recipe.source.seed, size=tuple(recipe.source.size))
    scene = simulate(config, Path(workdir) / "scene", progress=False)
    with serve_scene(scene) as server:
        yield server.url


def cube_from_recipe(
    recipe: Recipe,
    *,
    workdir: str | Path | None = None,
    engine: str = "stackstac",
    on_error: Literal["raise", "skip"] = "raise",
) -> xr.DataTree:
    """Search the recipe's source and build its lazy cube (the search happens now, the
    pixels are read only when the cube is computed or stored)."""
    with open_source(recipe, workdir) as api_url:
        selection = select_scenes(recipe, api_url=api_url)
    return build_cube(recipe, selection, engine=engine, on_error=on_error)
