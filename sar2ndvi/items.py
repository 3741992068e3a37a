"""Real-world STAC items made loadable: projection fields, asset keys, scaling, refusals.

Providers spell the same thing differently. Planetary Computer names Sentinel-2 assets
`B04`, `B08`, `SCL` and leaves scaling to `s2:processing_baseline`; Earth Search names them
`red`, `nir`, `scl` and declares `raster:bands` scale and offset. The projection extension
v2 writes `proj:code: "EPSG:32633"` where v1 wrote `proj:epsg: 32633`, and stackstac reads
only the latter. This module turns such items into one shape and refuses items that cannot
go on a map grid at all (Sentinel-1 GRD in radar geometry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pystac

from sar2ndvi.errors import InputError

#: Canonical Sentinel-2 band names and the Earth Search (common-name style) asset keys.
S2_ASSET_ALIASES: Mapping[str, tuple[str, ...]] = {
    "B01": ("coastal",),
    "B02": ("blue",),
    "B03": ("green",),
    "B04": ("red",),
    "B05": ("rededge1",),
    "B06": ("rededge2",),
    "B07": ("rededge3",),
    "B08": ("nir",),
    "B8A": ("nir08",),
    "B09": ("nir09",),
    "B11": ("swir16",),
    "B12": ("swir22",),
    "SCL": ("scl",),
}
S1_ASSET_ALIASES: Mapping[str, tuple[str, ...]] = {"vv": ("VV",), "vh": ("VH",)}
DEM_ASSET_ALIASES: Mapping[str, tuple[str, ...]] = {"data": ("elevation", "dem")}

#: L2A digital numbers: reflectance = DN * 1e-4 - 0.1 from processing baseline 04.00 on.
L2A_SCALE = 1e-4
L2A_OFFSET_SINCE_04_00 = -0.1


class ItemError(InputError):
    """An item cannot be used; the message names the item (and asset)."""


def _epsg_from_code(code: Any) -> int | None:
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def _normalise_projection_fields(fields: dict[str, Any]) -> None:
    """proj:code 'EPSG:n' -> proj:epsg n, in place (projection extension v2 -> v1 reading)."""
    if fields.get("proj:epsg") is None:
        epsg = _epsg_from_code(fields.get("proj:code"))
        if epsg is not None:
            fields["proj:epsg"] = epsg


def has_projection(item: pystac.Item) -> bool:
    """Whether the item (or one of its assets) says where its pixels are on a map."""
    keys = ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson", "proj:transform")
    if any(item.properties.get(k) is not None for k in keys):
        return True
    return any(a.extra_fields.get(k) is not None for a in item.assets.values() for k in keys)


def normalise(item: pystac.Item) -> pystac.Item:
    """A self-contained copy of `item` that stackstac and odc-stac read the same way.

    Asset hrefs become absolute and links are dropped (loaders must not resolve an
    item's root link over the network), and projection fields are read as v1.
    """
    out = item.clone()
    for asset in out.assets.values():
        asset.href = asset.get_absolute_href() or asset.href
    out.clear_links()
    _normalise_projection_fields(out.properties)
    for asset in out.assets.values():
        _normalise_projection_fields(asset.extra_fields)
    if out.properties.get("proj:epsg") is None:
        # stackstac reads the item-level code; take it from the assets when they agree.
        codes = {a.extra_fields.get("proj:epsg") for a in out.assets.values()} - {None}
        if len(codes) == 1:
            out.properties["proj:epsg"] = codes.pop()
    return out


def check_terrain_corrected(item: pystac.Item) -> None:
    """Refuse Sentinel-1 items in radar geometry (GRD/SLC without map projection)."""
    collection = item.collection_id or ""
    product = item.properties.get("sar:product_type")
    if collection.startswith("sentinel-1-grd") or (
        product in ("GRD", "SLC") and not has_projection(item)
    ):
        raise ItemError(
            f"item {item.id} (collection {collection or '?'}) is Sentinel-1 {product or 'GRD'} "
            "in radar geometry, with no proj:* metadata to place it on a map grid; use a "
            "terrain-corrected collection such as Planetary Computer's 'sentinel-1-rtc'"
        )


def asset_key(item: pystac.Item, name: str, aliases: Mapping[str, tuple[str, ...]]) -> str:
    """The item's asset key for a canonical band `name` (e.g. 'B04' -> 'B04' or 'red')."""
    if name in item.assets:
        return name
    for alias in aliases.get(name, ()):
        if alias in item.assets:
            return alias
    for key, asset in item.assets.items():
        bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        if len(bands) == 1 and bands[0].get("name") == name:
            return key
    raise ItemError(
        f"item {item.id} has no asset for band {name!r} (looked for "
        f"{', '.join((name, *aliases.get(name, ())))}; it has {', '.join(sorted(item.assets))})"
    )


def processing_baseline(item: pystac.Item) -> str | None:
    """`s2:processing_baseline` (e.g. '05.10'), or None."""
    value = item.properties.get("s2:processing_baseline")
    return str(value) if value is not None else None


def baseline_at_least(baseline: str, reference: str = "04.00") -> bool:
    """Compare processing baselines as version numbers ('05.10' >= '04.00')."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in text.split("."))
        except ValueError:
            raise InputError(f"processing baseline {text!r} is not like '05.10'") from None

    return parse(baseline) >= parse(reference)


def s2_scale_offset(item: pystac.Item, key: str) -> tuple[float, float]:
    """(scale, offset) turning an S2 L2A asset's digital numbers into reflectance.

    Declared `raster:bands` scale/offset win (Earth Search declares them per item).
    Otherwise (Planetary Computer) the offset follows `s2:processing_baseline`: -0.1
    (i.e. DN - 1000) from baseline 04.00 on, 0 before; never guessed from the date.
    """
    bands = item.assets[key].extra_fields.get("raster:bands") or []
    if bands and ("scale" in bands[0] or "offset" in bands[0]):
        return float(bands[0].get("scale", 1.0)), float(bands[0].get("offset", 0.0))
    baseline = processing_baseline(item)
    if baseline is None:
        raise ItemError(
            f"item {item.id} asset {key}: no s2:processing_baseline and no raster:bands "
            "scale/offset, so whether its digital numbers carry the +1000 offset of baseline "
            "04.00 cannot be known; add the property or use a collection that declares it"
        )
    offset = L2A_OFFSET_SINCE_04_00 if baseline_at_least(baseline) else 0.0
    return L2A_SCALE, offset
