"""Simulate a whole scene and write it as COGs, STAC metadata and truth layers.

A scene folder looks like this (a self-contained STAC catalog with relative hrefs, so the
folder can be moved or copied as a whole):

    DIR/
      scene.json                      manifest: config, fingerprint, grid, file checksums
      catalog.json                    the STAC root catalog
      sentinel-1-rtc/collection.json  and <item-id>/<item-id>.json, vv.tif, vh.tif
      sentinel-2-l2a/collection.json  and <item-id>/<item-id>.json, B01.tif .. B12.tif, SCL.tif
      cop-dem-glo-30/collection.json  and <item-id>/<item-id>.json, data.tif
      truth/                          the known truth: NDVI, land cover, landslides, ...

The folder is written under a temporary name and renamed into place when complete, so a
reader never sees a half-written scene, and an interrupted run leaves no `DIR` behind.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS, Transformer
from tqdm.auto import tqdm

import sar2ndvi
from sar2ndvi.errors import InputError, OutputExistsError
from sar2ndvi.synth import stac
from sar2ndvi.synth.cog import multihash_sha256, write_cog
from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.dem_tiles import DemTile, dem_tiles
from sar2ndvi.synth.disturbance import Disturbances, simulate_disturbances
from sar2ndvi.synth.grid import Grid
from sar2ndvi.synth.landslides import (
    Landslides,
    default_earthquake,
    simulate_landslides,
    strip_vegetation,
    write_inventory,
)
from sar2ndvi.synth.optical import (
    S2_BANDS,
    block_mean,
    block_mode,
    simulate_s2_acquisition,
    to_l2a_digital_numbers,
)
from sar2ndvi.synth.radar import ASCENDING, DESCENDING, simulate_s1_acquisition
from sar2ndvi.synth.schedule import Acquisition, plan, solar_position
from sar2ndvi.synth.soil import soil_moisture
from sar2ndvi.synth.terrain import Terrain, fractal_terrain, terrain_from_dem
from sar2ndvi.synth.vegetation import LandCover, Vegetation, simulate_vegetation

MANIFEST = "scene.json"
FORMAT_VERSION = 1
#: Terrain is simulated this many pixels beyond the scene on every side, so that slopes at
#: the scene edge see real neighbours and the EPSG:4326 DEM tiles are fully covered.
TERRAIN_MARGIN = 24
#: Fresh landslide debris is rougher than the soil it replaced: extra soil backscatter, dB.
LANDSLIDE_ROUGHNESS_DB = 2.5
ENL = 4.4
FRACTAL_BASE_M, FRACTAL_RELIEF_M, FRACTAL_RELIEF_WIDTH_PX = 300.0, 2000.0, 2048
NEW_BASELINE, OLD_BASELINE = "05.10", "03.01"


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """An independent, stable random stream per (seed, component name)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())]))


@dataclass(frozen=True)
class Scene:
    """A simulated scene on disk (see the module docstring for the layout)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Scene:
        """Open a complete scene folder; InputError if `path` is not one."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise InputError(
                f"{path} is not a simulated scene (no {MANIFEST}); create one with "
                f"`sar2ndvi simulate --out {path}`"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{manifest_path} is not valid JSON: {err}") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise InputError(f"{manifest_path}: unknown scene format {manifest.get('format')!r}")
        return cls(path, manifest)

    @property
    def catalog(self) -> Path:
        """The root STAC catalog (catalog.json)."""
        return self.path / "catalog.json"

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def grid(self) -> Grid:
        """The 10 m analysis grid of the truth layers."""
        g = self.manifest["grid"]
        return Grid.from_origin(
            g["crs"],
            g["transform"][2],
            g["transform"][5],
            g["transform"][0],
            g["shape"][1],
            g["shape"][0],
        )

    @property
    def bbox(self) -> list[float]:
        """The scene's (west, south, east, north) in degrees."""
        return list(self.manifest["bbox"])

    def collection_dir(self, collection_id: str) -> Path:
        return self.path / collection_id

    def item_paths(self, collection_id: str | None = None) -> list[Path]:
        """Paths of the item JSON files, for one collection or all, sorted."""
        ids = [collection_id] if collection_id else list(self.manifest["collections"])
        return sorted(p for c in ids for p in (self.path / c).glob("*/*.json"))

    def truth(self, name: str) -> Path:
        """Path of a truth layer, e.g. `truth("ndvi_pre")` -> truth/ndvi_pre.tif."""
        p = self.path / "truth" / (name if "." in name else f"{name}.tif")
        if not p.exists():
            raise InputError(
                f"{self.path}: no truth layer {name!r} (have: "
                f"{sorted(q.stem for q in (self.path / 'truth').iterdir())})"
            )
        return p


# --- the output folder ------------------------------------------------------------------------


def _check_target(out: Path, config: SceneConfig, overwrite: bool) -> Scene | None:
    """Return the existing scene if it is this same simulation; refuse to clobber others."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    if (out / MANIFEST).is_file():
        try:
            existing = Scene.open(out)
        except InputError:
            existing = None
        if existing is not None and existing.fingerprint == config.fingerprint() and not overwrite:
            return existing
        if not overwrite:
            old = existing.manifest.get("config", {}) if existing else {}
            raise OutputExistsError(
                f"{out} already holds a different simulation (seed {old.get('seed')}, size "
                f"{old.get('size')}, terrain {old.get('terrain')}); pass --overwrite to replace "
                "it, or choose another --out"
            )
    elif any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} is not empty and holds no simulated scene; refusing to write into it. "
            "Choose an empty or new folder, or pass --overwrite to replace its contents"
        )
    return None


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A sibling temporary folder that replaces `out` only when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- simulation ------------------------------------------------------------------------------


def _crop(terrain: Terrain, m: int) -> Terrain:
    t = terrain.grid.transform
    res = terrain.grid.resolution
    grid = Grid.from_origin(
        terrain.grid.crs,
        t.c + m * res,
        t.f - m * res,
        res,
        terrain.grid.width - 2 * m,
        terrain.grid.height - 2 * m,
    )
    crop = (slice(m, -m), slice(m, -m))
    return Terrain(
        grid,
        terrain.elevation[crop],
        terrain.slope[crop],
        terrain.aspect[crop],
        terrain.flow_accumulation[crop],
    )


def _terrain(config: SceneConfig) -> Terrain:
    rows, cols = config.size
    padded = (rows + 2 * TERRAIN_MARGIN, cols + 2 * TERRAIN_MARGIN)
    if config.terrain == "fractal":
        # Fractal relief is scaled to the scene so that slopes stay mountain-like (median
        # about 26 deg) at any size: 2000 m of relief suits a 20 km wide scene.
        span = FRACTAL_RELIEF_M * min(1.0, max(padded) / FRACTAL_RELIEF_WIDTH_PX)
        return fractal_terrain(
            padded,
            rng_for(config.seed, "terrain"),
            config.resolution,
            relief=(FRACTAL_BASE_M, FRACTAL_BASE_M + span),
        )
    return terrain_from_dem(config.dem_path, padded, config.resolution)


def _cloud_fractions(acqs: list[Acquisition], rng: np.random.Generator) -> list[float]:
    """Cloud cover per S2 acquisition: mostly clear before, cloudier after (the scenario),
    with at least one nearly clear view in each period so a reference NDVI exists."""
    fractions = []
    for a in acqs:
        alpha, beta = (0.6, 2.5) if a.period == "pre" else (1.3, 1.2)
        fractions.append(float(rng.beta(alpha, beta)))
    for period in ("pre", "post"):
        idx = [i for i, a in enumerate(acqs) if a.period == period]
        if idx:
            clear = idx[int(rng.integers(len(idx)))]
            fractions[clear] = float(rng.uniform(0.0, 0.03))
    return fractions


def _baselines(acqs: list[Acquisition], rng: np.random.Generator) -> list[str]:
    """Processing baselines, mixed at random (not by date) with both kinds in each period,
    so that harmonisation code must read `s2:processing_baseline`."""
    out = [NEW_BASELINE if rng.random() < 0.6 else OLD_BASELINE for _ in acqs]
    for period, forced in (("pre", OLD_BASELINE), ("post", NEW_BASELINE)):
        idx = [i for i, a in enumerate(acqs) if a.period == period]
        if idx and forced not in (out[i] for i in idx):
            out[idx[int(rng.integers(len(idx)))]] = forced
    return out


class _Writer:
    """Writes rasters into the staging folder and remembers their checksums."""

    def __init__(self, root: Path, grid: Grid):
        self.root = root
        self.grid = grid
        self.files: dict[str, str] = {}

    def cog(self, rel: str, array: np.ndarray, grid: Grid | None = None, **kw: Any) -> Path:
        g = grid or self.grid
        path = write_cog(self.root / rel, array, g.transform, g.crs, **kw)
        self.files[rel] = multihash_sha256(path)
        return path

    def json(self, rel: str, document: dict) -> Path:
        path = stac.write_json(self.root / rel, document)
        self.files[rel] = multihash_sha256(path)
        return path

    def asset(self, item_dir: str, name: str) -> stac.WrittenAsset:
        rel = f"{item_dir}/{name}"
        return stac.WrittenAsset(f"./{name}", (self.root / rel).stat().st_size, self.files[rel])


def _write_truth(
    w: _Writer,
    terrain: Terrain,
    pre: Vegetation,
    post: Vegetation,
    slides: Landslides,
    cleared: Disturbances,
) -> None:
    layers = {
        "elevation": terrain.elevation,
        "slope": terrain.slope,
        "aspect": terrain.aspect,
        "flow_accumulation": terrain.flow_accumulation,
        "land_cover_pre": pre.land_cover,
        "land_cover_post": post.land_cover,
        "ndvi_pre": pre.ndvi,
        "ndvi_post": post.ndvi,
        "water_content_pre": pre.water_content,
        "water_content_post": post.water_content,
        "landslides": slides.mask.astype(np.uint8),
        "landslide_id": slides.label,
        "disturbances": cleared.mask.astype(np.uint8),
        "shaking": slides.shaking,
        "susceptibility": slides.susceptibility,
    }
    for name, array in layers.items():
        w.cog(f"truth/{name}.tif", np.ascontiguousarray(array))
    inventory = w.root / "truth" / "landslides.geojson"
    write_inventory(slides, inventory)
    w.files["truth/landslides.geojson"] = multihash_sha256(inventory)


def simulate(
    config: SceneConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> Scene:
    """Simulate a study area before and after an earthquake and write it to `out`.

    Args:
        config: what to simulate; the same config gives the same bytes.
        out: the scene folder to create. If it already holds this same simulation, it is
            returned as is (nothing is recomputed).
        overwrite: replace a folder that holds something else.
        progress: show a progress bar on stderr.

    Raises:
        OutputExistsError: `out` holds a different simulation or other files, and
            `overwrite` is False.
        InputError: the DEM cannot be used (missing, no CRS, too small for `size`).
    """
    out = Path(out)
    existing = _check_target(out, config, overwrite)
    if existing is not None:
        return existing
    acqs = plan(config, rng_for(config.seed, "schedule"))
    s1_acqs = [a for a in acqs if a.sensor == "s1"]
    s2_acqs = [a for a in acqs if a.sensor == "s2"]
    steps = 6 + len(s1_acqs) + len(s2_acqs)
    bar = tqdm(total=steps, desc="simulate", unit="step", disable=not progress, leave=False)

    def step(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    with _staging(out) as tmp:
        padded = _terrain(config)
        terrain = _crop(padded, TERRAIN_MARGIN)
        grid = terrain.grid
        step("terrain")
        pre = simulate_vegetation(terrain, rng_for(config.seed, "vegetation"))
        quake = default_earthquake(grid)
        slides = simulate_landslides(
            terrain,
            rng_for(config.seed, "landslides"),
            quake,
            density_per_km2=config.landslide_density,
        )
        post = strip_vegetation(pre, slides, rng_for(config.seed, "strip"))
        post, cleared = simulate_disturbances(
            terrain,
            post,
            slides,
            rng_for(config.seed, "disturbance"),
            density_per_km2=config.disturbance_density,
        )
        step("vegetation and landslides")
        w = _Writer(tmp, grid)
        _write_truth(w, terrain, pre, post, slides, cleared)
        step("truth")

        items: dict[str, list[dict]] = {
            c: [] for c in (stac.S1_COLLECTION, stac.S2_COLLECTION, stac.DEM_COLLECTION)
        }
        records: list[dict[str, Any]] = []
        moisture = soil_moisture(terrain, rng_for(config.seed, "soil"), len(s1_acqs))
        water = pre.land_cover == LandCover.WATER
        geometry_written: set[str] = set()
        rough = np.where(slides.mask, LANDSLIDE_ROUGHNESS_DB, 0.0).astype(np.float32)
        for a, mv in zip(s1_acqs, moisture, strict=True):
            veg = pre if a.period == "pre" else post
            geometry = ASCENDING if a.orbit_state == "ascending" else DESCENDING
            s1 = simulate_s1_acquisition(
                terrain.elevation,
                terrain.slope,
                terrain.aspect,
                grid.resolution,
                veg.water_content,
                mv,
                water,
                geometry,
                rng_for(config.seed, f"s1-{a.index}"),
                enl=ENL,
                roughness_db=rough if a.period == "post" else 0.0,
            )
            item_id = stac.s1_item_id(a.start, geometry.relative_orbit)
            item_dir = f"{stac.S1_COLLECTION}/{item_id}"
            for pol in ("vv", "vh"):
                w.cog(f"{item_dir}/{pol}.tif", getattr(s1, pol).astype(np.float32), nodata=-32768)
            w.cog(f"truth/soil_moisture/{item_id}.tif", mv.astype(np.float32))
            if a.orbit_state not in geometry_written:
                geometry_written.add(a.orbit_state)
                w.cog(f"truth/layover_{a.orbit_state}.tif", s1.layover.astype(np.uint8))
                w.cog(f"truth/shadow_{a.orbit_state}.tif", s1.shadow.astype(np.uint8))
                w.cog(
                    f"truth/local_incidence_{a.orbit_state}.tif",
                    s1.local_incidence.astype(np.float32),
                )
            item = stac.s1_item(
                a.start,
                a.orbit_state,
                geometry.relative_orbit,
                grid,
                {p: w.asset(item_dir, f"{p}.tif") for p in ("vv", "vh")},
                ENL,
            )
            items[stac.S1_COLLECTION].append(item)
            records.append(
                {
                    "item": item_id,
                    "collection": stac.S1_COLLECTION,
                    "datetime": item["properties"]["datetime"],
                    "period": a.period,
                    "orbit_state": a.orbit_state,
                    "mean_soil_moisture": round(float(mv.mean()), 6),
                }
            )
            step(f"S1 {a.start:%Y-%m-%d} {a.orbit_state}")

        lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(
            *np.mean(np.reshape(grid.bounds, (2, 2)), axis=0)
        )
        clouds = _cloud_fractions(s2_acqs, rng_for(config.seed, "clouds"))
        baselines = _baselines(s2_acqs, rng_for(config.seed, "baselines"))
        for a, cloud_fraction, baseline in zip(s2_acqs, clouds, baselines, strict=True):
            veg = pre if a.period == "pre" else post
            zenith, azimuth = solar_position(a.start, lon, lat)
            s2 = simulate_s2_acquisition(
                veg.ndvi,
                veg.land_cover,
                terrain.slope,
                terrain.aspect,
                rng_for(config.seed, f"s2-{a.index}"),
                resolution=grid.resolution,
                cloud_fraction=cloud_fraction,
                sun_zenith=zenith,
                sun_azimuth=azimuth,
            )
            item = _write_s2(w, a, grid, s2, baseline, zenith, azimuth)
            items[stac.S2_COLLECTION].append(item)
            records.append(
                {
                    "item": item["id"],
                    "collection": stac.S2_COLLECTION,
                    "datetime": item["properties"]["datetime"],
                    "period": a.period,
                    "cloud_fraction_drawn": round(cloud_fraction, 6),
                    "eo:cloud_cover": item["properties"]["eo:cloud_cover"],
                    "processing_baseline": baseline,
                }
            )
            step(f"S2 {a.start:%Y-%m-%d}")

        for tile in dem_tiles(padded.elevation, padded.grid, grid):
            name = stac.dem_tile_name(tile.lat_floor, tile.lon_floor)
            item_id = f"Copernicus_DSM_COG_10_{name}_DEM"
            item_dir = f"{stac.DEM_COLLECTION}/{item_id}"
            w.cog(f"{item_dir}/data.tif", tile.elevation, _geo_grid(tile))
            items[stac.DEM_COLLECTION].append(
                stac.dem_item(name, tile.shape, tile.transform, w.asset(item_dir, "data.tif"))
            )
        step("DEM")

        for collection_id, coll_items in items.items():
            for item in coll_items:
                w.json(f"{collection_id}/{item['id']}/{item['id']}.json", item)
            w.json(f"{collection_id}/collection.json", stac.collection(collection_id, coll_items))
        scene_id = f"sar2ndvi-synthetic-{config.fingerprint()}"
        w.json("catalog.json", stac.catalog(scene_id, items, _description(config)))
        w.json("truth/acquisitions.json", {"acquisitions": records})
        step("STAC")

        lonlat_bbox = stac.footprint(grid)[1]
        manifest = {
            "format": FORMAT_VERSION,
            "id": scene_id,
            "sar2ndvi_version": sar2ndvi.__version__,
            "fingerprint": config.fingerprint(),
            "config": config.to_dict(),
            "grid": {
                "crs": f"EPSG:{grid.crs.to_epsg()}",
                "shape": list(grid.shape),
                "transform": list(grid.transform)[:6],
            },
            "bbox": lonlat_bbox,
            "event": {
                "date": config.event_date.isoformat(),
                "epicentre": list(quake.epicentre),
                "magnitude": quake.magnitude,
                "landslides": len(slides.inventory),
            },
            "collections": {c: len(v) for c, v in items.items()},
            "files": dict(sorted(w.files.items())),
        }
        stac.write_json(tmp / MANIFEST, manifest)
        step("manifest")
    bar.close()
    return Scene.open(out)


def _geo_grid(tile: DemTile) -> Grid:
    return Grid(CRS.from_epsg(4326), tile.transform, tile.shape[1], tile.shape[0])


def _write_s2(
    w: _Writer, a: Acquisition, grid: Grid, s2: Any, baseline: str, zenith: float, azimuth: float
) -> dict:
    item_id = stac.s2_item_id(a.start, a.platform, grid)
    band_grids: dict[str, Grid] = {}
    arrays: dict[str, tuple[np.ndarray, Grid, int]] = {}
    for name, band in S2_BANDS.items():
        factor = round(band.resolution / grid.resolution)
        refl = s2.reflectance[name]
        coarse = refl if factor == 1 else block_mean(refl, factor)
        g = grid if factor == 1 else grid.downsampled(factor)
        arrays[name] = (to_l2a_digital_numbers(coarse, baseline), g, 0)
        band_grids[name] = g
    g20 = grid.downsampled(2)
    arrays["SCL"] = (block_mode(s2.scl, 2).astype(np.uint8), g20, 0)
    band_grids["SCL"] = g20
    item_dir = f"{stac.S2_COLLECTION}/{item_id}"
    for name, (array, g, nodata) in arrays.items():
        w.cog(f"{item_dir}/{name}.tif", array, g, nodata=nodata)
    assets = {name: w.asset(item_dir, f"{name}.tif") for name in arrays}
    return stac.s2_item(
        a.start,
        a.platform,
        grid,
        band_grids,
        assets,
        S2_BANDS,
        arrays["SCL"][0],
        baseline,
        zenith,
        azimuth,
    )


def _description(config: SceneConfig) -> str:
    terrain = "fractal terrain" if config.terrain == "fractal" else f"DEM {config.to_dict()['dem']}"
    return (
        f"Simulated study area ({config.size[0]}x{config.size[1]} px at 10 m, {terrain}, "
        f"seed {config.seed}) before and after an earthquake on {config.event_date}."
    )
