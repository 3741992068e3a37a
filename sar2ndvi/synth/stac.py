"""STAC metadata for simulated scenes, shaped like Microsoft Planetary Computer's items.

The property names, asset keys, extension lists and conventions follow the real
sentinel-1-rtc, sentinel-2-l2a and cop-dem-glo-30 items (see the fixtures under
shared/fixtures/stac). Values are computed from the simulated rasters. Hrefs are
relative to the item's JSON file, so a scene folder can be moved as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import box, mapping

from sar2ndvi.synth.grid import Grid

STAC_VERSION = "1.0.0"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

S1_COLLECTION = "sentinel-1-rtc"
S2_COLLECTION = "sentinel-2-l2a"
DEM_COLLECTION = "cop-dem-glo-30"

EXT = {
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "proj10": "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
}

#: Band descriptions as Planetary Computer titles them ("Band 2 - Blue - 10m").
S2_BAND_DESCRIPTIONS = {
    "B01": "Coastal aerosol",
    "B02": "Blue",
    "B03": "Green",
    "B04": "Red",
    "B05": "Vegetation red edge 1",
    "B06": "Vegetation red edge 2",
    "B07": "Vegetation red edge 3",
    "B08": "NIR",
    "B8A": "Vegetation red edge 4",
    "B09": "Water vapor",
    "B11": "SWIR (1.6)",
    "B12": "SWIR (2.2)",
}


def rfc3339(t: datetime) -> str:
    """UTC timestamp as RFC 3339 with microseconds and a Z suffix."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def footprint(grid: Grid) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in lon/lat (densified GeoJSON polygon) and its bbox."""
    poly = mapping(box(*grid.bounds))
    geom = transform_geom(grid.crs, "EPSG:4326", poly, antimeridian_cutting=True, precision=7)
    lonlat_bbox = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)
    return geom, [round(v, 7) for v in lonlat_bbox]


def _epsg(crs: CRS) -> int:
    code = crs.to_epsg()
    if code is None:
        raise ValueError(f"the simulator's CRS must have an EPSG code, got {crs.to_string()}")
    return code


def _transform6(t: Affine) -> list[float]:
    return [t.a, t.b, t.c, t.d, t.e, t.f]


def _grid_proj(grid: Grid) -> dict[str, Any]:
    return {
        "proj:bbox": list(grid.bounds),
        "proj:shape": [grid.height, grid.width],
        "proj:transform": _transform6(grid.transform),
    }


def _links() -> list[dict[str, str]]:
    return [
        {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../collection.json", "type": "application/json"},
        {"rel": "collection", "href": "../collection.json", "type": "application/json"},
    ]


def _item(
    item_id: str,
    collection: str,
    grid_or_geom: Grid | tuple[dict, list[float]],
    properties: dict[str, Any],
    assets: dict[str, Any],
    extensions: list[str],
) -> dict:
    geom, bbox = footprint(grid_or_geom) if isinstance(grid_or_geom, Grid) else grid_or_geom
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": item_id,
        "geometry": geom,
        "bbox": bbox,
        "properties": properties,
        "links": _links(),
        "assets": assets,
        "collection": collection,
    }


@dataclass(frozen=True)
class WrittenAsset:
    """A raster the simulator wrote: its path relative to the item JSON, its size and checksum."""

    href: str
    size: int
    checksum: str


# --- Sentinel-1 RTC -------------------------------------------------------------------------

#: S1A reference: absolute orbit 53498 at 2024-04-19T04:58Z (a real item of the fixtures).
_S1A_REF = (datetime(2024, 4, 19, 4, 58), 53498)
_S1_ORBITS_PER_CYCLE = 175
S1_SLICE_DURATION = timedelta(seconds=24, microseconds=998_465)


def s1_absolute_orbit(start: datetime, relative_orbit: int) -> int:
    """The S1A absolute orbit closest to `start` that lies on `relative_orbit`."""
    ref_time, ref_orbit = _S1A_REF
    estimate = ref_orbit + round((start - ref_time).total_seconds() / 86400 * 175 / 12)
    offset = ((estimate - 73) % _S1_ORBITS_PER_CYCLE + 1) - relative_orbit
    if offset > _S1_ORBITS_PER_CYCLE // 2:
        offset -= _S1_ORBITS_PER_CYCLE
    elif offset < -(_S1_ORBITS_PER_CYCLE // 2):
        offset += _S1_ORBITS_PER_CYCLE
    return estimate - offset


def s1_item_id(start: datetime, relative_orbit: int) -> str:
    """The item id as the real ones spell it: S1A_IW_GRDH_1SDV_<start>_<end>_<orbit>_<dt>_rtc."""
    end = start + S1_SLICE_DURATION
    absolute = s1_absolute_orbit(start, relative_orbit)
    return (
        f"S1A_IW_GRDH_1SDV_{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}_"
        f"{absolute:06d}_{_datatake(absolute):06X}_rtc"
    )


def _datatake(absolute_orbit: int) -> int:
    return (absolute_orbit * 2654435761) % 0xFFFFFF


def s1_item(
    start: datetime,
    orbit_state: str,
    relative_orbit: int,
    grid: Grid,
    assets: Mapping[str, WrittenAsset],
    enl: float,
) -> dict:
    """A sentinel-1-rtc item for one simulated acquisition with assets `vv` and `vh`."""
    end = start + S1_SLICE_DURATION
    absolute = s1_absolute_orbit(start, relative_orbit)
    item_id = s1_item_id(start, relative_orbit)
    props = {
        "datetime": rfc3339(start + (end - start) / 2),
        "platform": "SENTINEL-1A",
        "s1:shape": [grid.width, grid.height],
        **{k: v for k, v in _grid_proj(grid).items() if k != "proj:transform"},
        "proj:epsg": _epsg(grid.crs),
        "end_datetime": rfc3339(end),
        "constellation": "Sentinel-1",
        "s1:resolution": "high",
        "proj:transform": [*_transform6(grid.transform), 0.0, 0.0, 1.0],
        "s1:datatake_id": str(_datatake(absolute)),
        "start_datetime": rfc3339(start),
        "s1:orbit_source": "RESORB",
        "s1:slice_number": "5",
        "s1:total_slices": "9",
        "sar:looks_range": 5,
        "sat:orbit_state": orbit_state,
        "sar:product_type": "GRD",
        "sar:looks_azimuth": 1,
        "sar:polarizations": ["VV", "VH"],
        "sar:frequency_band": "C",
        "sat:absolute_orbit": absolute,
        "sat:relative_orbit": relative_orbit,
        "s1:processing_level": "1",
        "sar:instrument_mode": "IW",
        "sar:center_frequency": 5.405,
        "sar:resolution_range": 20,
        "s1:product_timeliness": "Fast-24h",
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:observation_direction": "right",
        "sar:pixel_spacing_azimuth": 10,
        "sar:looks_equivalent_number": enl,
        "s1:instrument_configuration_ID": "7",
        "sat:platform_international_designator": "2014-016A",
    }
    out_assets = {}
    for pol in ("vh", "vv"):
        a = assets[pol]
        out_assets[pol] = {
            "href": a.href,
            "file:size": a.size,
            "file:checksum": a.checksum,
            "type": COG_TYPE,
            "roles": ["data"],
            "title": f"{pol.upper()}: vertical transmit, "
            f"{'horizontal' if pol == 'vh' else 'vertical'} receive",
            "description": (
                "Terrain-corrected gamma naught values of signal transmitted with vertical "
                f"polarization and received with {'horizontal' if pol == 'vh' else 'vertical'} "
                "polarization with radiometric terrain correction applied."
            ),
            "raster:bands": [
                {"nodata": -32768, "data_type": "float32", "spatial_resolution": grid.resolution}
            ],
        }
    extensions = [EXT["sar"], EXT["sat"], EXT["proj"], EXT["file"], EXT["raster"]]
    return _item(item_id, S1_COLLECTION, grid, props, out_assets, extensions)


# --- Sentinel-2 L2A -------------------------------------------------------------------------

#: Absolute orbits of the two platforms at a reference time (S2B from the fixtures).
_S2_REF = {
    "Sentinel-2A": (datetime(2024, 4, 19, 9, 55), 45999),
    "Sentinel-2B": (datetime(2024, 4, 19, 9, 55), 37185),
}


def mgrs_tile(grid: Grid) -> str:
    """The MGRS tile id (e.g. '11SLT') of the 100 km square that holds the grid's centre.

    Sentinel-2 tiles belong to the UTM zone of their own CRS, even where (at high
    latitude) a tile reaches beyond that zone's 6 degrees of longitude, so the zone comes
    from the grid's CRS when it is a WGS 84 / UTM one.
    """
    from pyproj import Transformer

    left, bottom, right, top = grid.bounds
    cx, cy = (left + right) / 2, (bottom + top) / 2
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    epsg = grid.crs.to_epsg() or 0
    if 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760:
        zone, (e, n) = epsg % 100, (cx, cy)
    else:
        zone = int((lon + 180) // 6) + 1
        utm = CRS.from_dict({"proj": "utm", "zone": zone, "south": lat < 0})
        e, n = Transformer.from_crs("EPSG:4326", utm, always_xy=True).transform(lon, lat)
    band = "CDEFGHJKLMNPQRSTUVWX"[min(int((lat + 80) // 8), 19)]
    column_sets = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
    column = column_sets[(zone - 1) % 3][int(e // 100_000) - 1]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(n // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def scl_percentages(scl: np.ndarray) -> dict[str, float]:
    """The s2:*_percentage properties and eo:cloud_cover from an SCL array (percent)."""
    total = scl.size
    valid = scl != 0
    n_valid = max(int(valid.sum()), 1)

    def share(*codes: int) -> float:
        return round(float(np.isin(scl, codes).sum()) / n_valid * 100, 6)

    return {
        "eo:cloud_cover": share(8, 9, 10),
        "s2:water_percentage": share(6),
        "s2:snow_ice_percentage": share(11),
        "s2:vegetation_percentage": share(4),
        "s2:thin_cirrus_percentage": share(10),
        "s2:cloud_shadow_percentage": share(3),
        "s2:nodata_pixel_percentage": round((total - int(valid.sum())) / total * 100, 6),
        "s2:unclassified_percentage": share(7),
        "s2:dark_features_percentage": share(2),
        "s2:not_vegetated_percentage": share(5),
        "s2:degraded_msi_data_percentage": 0.0,
        "s2:high_proba_clouds_percentage": share(9),
        "s2:medium_proba_clouds_percentage": share(8),
        "s2:saturated_defective_pixel_percentage": share(1),
    }


def _s2_names(start: datetime, platform: str, grid: Grid, relative_orbit: int) -> dict[str, Any]:
    code = "S2A" if platform.endswith("2A") else "S2B"
    ref_time, ref_orbit = _S2_REF[platform]
    absolute = ref_orbit + round((start - ref_time).total_seconds() / 86400 * 14.3)
    generated = start + timedelta(hours=2, minutes=35, seconds=41, microseconds=775_234)
    tile = mgrs_tile(grid)
    stamp, gen = f"{start:%Y%m%dT%H%M%S}", f"{generated:%Y%m%dT%H%M%S}"
    item_id = f"{code}_MSIL2A_{stamp}_R{relative_orbit:03d}_T{tile}_{gen}"
    return {
        "code": code,
        "absolute": absolute,
        "generated": generated,
        "tile": tile,
        "stamp": stamp,
        "gen": gen,
        "id": item_id,
    }


def s2_item_id(start: datetime, platform: str, grid: Grid, relative_orbit: int = 70) -> str:
    """The item id, spelled as the real ones: S2B_MSIL2A_<start>_R<orbit>_T<tile>_<generated>."""
    return str(_s2_names(start, platform, grid, relative_orbit)["id"])


def s2_item(
    start: datetime,
    platform: str,
    grid: Grid,
    band_grids: Mapping[str, Grid],
    assets: Mapping[str, WrittenAsset],
    bands: Mapping[str, Any],
    scl: np.ndarray,
    processing_baseline: str,
    sun_zenith: float,
    sun_azimuth: float,
    relative_orbit: int = 70,
) -> dict:
    """A sentinel-2-l2a item: assets B01..B12, B8A and SCL at their native resolutions.

    Args:
        bands: S2 band metadata by name (common_name, center_wavelength,
            full_width_half_max), from `optical.S2_BANDS`.
        scl: the scene classification (any resolution) the percentages are computed from.
    """
    names = _s2_names(start, platform, grid, relative_orbit)
    code, absolute, tile = names["code"], names["absolute"], names["tile"]
    stamp, gen, generated, item_id = names["stamp"], names["gen"], names["generated"], names["id"]
    baseline_code = processing_baseline.replace(".", "")
    doy = start.timetuple().tm_yday
    earth_sun = 1 - 0.01672 * np.cos(np.radians(0.9856 * (doy - 4)))
    props = {
        "datetime": rfc3339(start),
        "platform": platform,
        "proj:epsg": _epsg(grid.crs),
        "instruments": ["msi"],
        "s2:mgrs_tile": tile,
        "constellation": "Sentinel 2",
        "s2:granule_id": f"{code}_OPER_MSI_L2A_TL_MSFT_{gen}_A{absolute:06d}_T{tile}_N"
        f"{processing_baseline}",
        "s2:datatake_id": f"G{code}_{stamp}_{absolute:06d}_N{processing_baseline}",
        "s2:product_uri": f"{code}_MSIL2A_{stamp}_N{baseline_code}_R{relative_orbit:03d}_T{tile}_"
        f"{gen}.SAFE",
        "s2:datastrip_id": f"{code}_OPER_MSI_L2A_DS_MSFT_{gen}_S{stamp}_N{processing_baseline}",
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": "descending",
        "s2:datatake_type": "INS-NOBS",
        "s2:generation_time": rfc3339(generated),
        "sat:relative_orbit": relative_orbit,
        "s2:mean_solar_zenith": round(sun_zenith, 10),
        "s2:mean_solar_azimuth": round(sun_azimuth, 10),
        "s2:processing_baseline": processing_baseline,
        "s2:reflectance_conversion_factor": round(float(1 / earth_sun**2), 12),
        **scl_percentages(scl),
    }
    out_assets: dict[str, Any] = {}
    for name in sorted(assets):
        a, g = assets[name], band_grids[name]
        res = round(g.resolution)
        entry: dict[str, Any] = {
            "href": a.href,
            **_grid_proj(g),
            "gsd": float(res),
            "type": COG_TYPE,
            "roles": ["data"],
        }
        if name == "SCL":
            entry["title"] = "Scene classfication map (SCL)"  # sic, as published
        else:
            b = bands[name]
            number = name[1:].lstrip("0")
            desc = S2_BAND_DESCRIPTIONS[name]
            entry["title"] = f"Band {number} - {desc} - {res}m"
            band_meta = {"name": name}
            if getattr(b, "common_name", None):
                band_meta["common_name"] = b.common_name
            band_meta.update(
                {
                    "description": f"Band {number} - {desc}",
                    "center_wavelength": b.center_wavelength,
                    "full_width_half_max": b.full_width_half_max,
                }
            )
            entry["eo:bands"] = [band_meta]
        out_assets[name] = entry
    extensions = [EXT["eo"], EXT["sat"], EXT["proj"]]
    return _item(item_id, S2_COLLECTION, grid, props, out_assets, extensions)


# --- Copernicus DEM -------------------------------------------------------------------------


def dem_tile_name(lat_floor: int, lon_floor: int) -> str:
    """e.g. 'N34_00_W119_00' for the 1 degree tile whose south-west corner is (34N, 119W)."""
    ns = "N" if lat_floor >= 0 else "S"
    ew = "E" if lon_floor >= 0 else "W"
    return f"{ns}{abs(lat_floor):02d}_00_{ew}{abs(lon_floor):03d}_00"


def dem_item(tile: str, shape: tuple[int, int], transform: Affine, asset: WrittenAsset) -> dict:
    """A cop-dem-glo-30 item for one (partial) 1-degree tile in EPSG:4326."""
    height, width = shape
    left, top = transform.c, transform.f
    right, bottom = left + width * transform.a, top + height * transform.e
    geom = mapping(box(left, bottom, right, top))
    geom = {"type": "Polygon", "coordinates": [[list(p) for p in geom["coordinates"][0]]]}
    props = {
        "gsd": 30,
        "datetime": "2021-04-22T00:00:00Z",
        "platform": "TanDEM-X",
        "proj:epsg": 4326,
        "proj:shape": [height, width],
        "proj:transform": _transform6(transform),
    }
    assets = {"data": {"href": asset.href, "title": tile, "type": COG_TYPE, "roles": ["data"]}}
    return _item(
        f"Copernicus_DSM_COG_10_{tile}_DEM",
        DEM_COLLECTION,
        (geom, [left, bottom, right, top]),
        props,
        assets,
        [EXT["proj10"]],
    )


# --- Collections and the catalog --------------------------------------------------------------

COLLECTION_TEXT = {
    S1_COLLECTION: (
        "Sentinel 1 Radiometrically Terrain Corrected (RTC) (simulated)",
        "Simulated Sentinel-1 IW GRD backscatter with radiometric terrain "
        "correction: linear gamma naught, VV and VH, 10 m, nodata -32768.",
    ),
    S2_COLLECTION: (
        "Sentinel-2 Level-2A (simulated)",
        "Simulated Sentinel-2 MSI Level-2A surface reflectance as L2A digital "
        "numbers (offset +1000 from processing baseline 04.00) with the scene "
        "classification (SCL).",
    ),
    DEM_COLLECTION: (
        "Copernicus DEM GLO-30 (simulated)",
        "Elevation of the simulated terrain in 1 arc-second tiles, EPSG:4326.",
    ),
}


def collection(collection_id: str, items: Iterable[dict]) -> dict:
    """A collection whose extents cover `items`, linking to each of them."""
    items = list(items)
    bboxes = np.array([it["bbox"] for it in items]) if items else np.zeros((1, 4))
    times = sorted(it["properties"]["datetime"] for it in items) or [None]
    title, description = COLLECTION_TEXT[collection_id]
    links = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ] + [
        {"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/json"}
        for it in items
    ]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": collection_id,
        "title": title,
        "description": description,
        "license": "proprietary" if collection_id != DEM_COLLECTION else "other",
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        float(bboxes[:, 0].min()),
                        float(bboxes[:, 1].min()),
                        float(bboxes[:, 2].max()),
                        float(bboxes[:, 3].max()),
                    ]
                ]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": links,
    }


def catalog(scene_id: str, collection_ids: Iterable[str], description: str) -> dict:
    """The root catalog of a scene folder."""
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": scene_id,
        "description": description,
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
        + [
            {"rel": "child", "href": f"./{c}/collection.json", "type": "application/json"}
            for c in collection_ids
        ],
    }


def write_json(path: Path, document: dict) -> Path:
    """Write JSON deterministically (key order as built, 1-space indent, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
