"""Predicted NDVI as a georeferenced Zarr cube, with its provenance and a STAC item.

`write_prediction(model, features, out)` stores, on the features' grid:

- ``ndvi`` (y, x) float32: the U-net's NDVI (`sar2ndvi.predict`);
- ``uncertainty`` (y, x) float32, when asked: the spread across test-time flips and/or
  Monte-Carlo dropout samples;
- the layover / shadow quality layers of the feature store (where the paper finds the
  residual errors);

NDVI (and uncertainty) are NaN where the radar had no data (the features' ``gaps``).
The cube is written chunk by chunk with `sar2ndvi.store.write` (resumable, GDAL-readable
as ``ZARR:"ndvi.zarr":/ndvi``), its root attributes naming the checkpoint (absolute path
and weights digest), the feature recipe and the input store; and ``item.json``, a STAC
item (projection, xarray-assets and processing extensions) describing the output so that
catalogues and other tools find it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
import xarray as xr

import sar2ndvi
from sar2ndvi import store
from sar2ndvi.checkpoint import Checkpoint, load_checkpoint, resolve, weights_digest
from sar2ndvi.errors import InputError
from sar2ndvi.predict import ModelRunner, predict_layers

__all__ = [
    "ITEM_FILE",
    "ensure_item",
    "has_item",
    "prediction_dataset",
    "stac_item",
    "write_item",
    "write_prediction",
]

#: The STAC item written inside the output store's folder.
ITEM_FILE = "item.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
XARRAY_ASSETS = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"


def _provenance(
    model: str | os.PathLike | Checkpoint,
    checkpoint: Checkpoint,
    features: str,
    tree: Any,
    period: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    return {
        "title": "sar2ndvi predicted NDVI",
        "sar2ndvi:model": {
            "checkpoint": None if isinstance(model, Checkpoint) else str(resolve(model).resolve()),
            "weights_sha256": weights_digest(checkpoint.state_dict),
            "config": checkpoint.config.to_dict(),
            "patch": checkpoint.metadata.get("patch"),
            "trained_on": checkpoint.metadata.get("feature_store"),
        },
        "sar2ndvi:feature_spec": tree.attrs.get("sar2ndvi:feature_spec"),
        "sar2ndvi:features": {
            "store": features,
            "fingerprint": tree.attrs.get(store.FINGERPRINT_ATTR),
            "period": period,
        },
        "sar2ndvi:cube": tree.attrs.get("sar2ndvi:cube"),
        "sar2ndvi:prediction": options,
    }


def prediction_dataset(
    model: str | os.PathLike | Checkpoint,
    features: str | os.PathLike,
    *,
    period: str = "pre",
    batch_size: int = 16,
    device: str = "cpu",
    tta: bool = False,
    mc_samples: int = 0,
    uncertainty: bool = False,
    chunks: int | tuple[int, int] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """The lazy output dataset of `write_prediction` (nothing computed); `storage_options`
    are fsspec's for a feature store at a URL."""
    features = _absolute(os.fspath(features))
    tree = store.open(features, storage_options=storage_options)
    if f"{period}" not in tree.children:
        raise InputError(f"{features}: the feature store has no /{period} group")
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    if uncertainty and not (tta or mc_samples):
        raise InputError(
            "an uncertainty layer needs several predictions per pixel: pass tta=True "
            "(--tta) and/or mc_samples > 0 (--mc-samples)"
        )
    runner = ModelRunner.from_checkpoint(
        model if not isinstance(model, Checkpoint) else checkpoint,
        batch_size=batch_size,
        device=device,
        tta=tta,
        mc_samples=mc_samples,
        uncertainty=uncertainty,
    )
    group = tree[f"/{period}"].to_dataset()
    layers = predict_layers(runner, group, chunks=chunks)
    if "gaps" in group:
        # no prediction where the radar saw nothing (shadow, swath edges): the network's
        # output there comes from zero-filled inputs
        gaps = group["gaps"].chunk(dict(zip(("y", "x"), layers.chunks[1:], strict=True)))
        layers = layers.where(gaps == 0)
    out = xr.Dataset(
        {
            "ndvi": layers.sel(layer="ndvi", drop=True).assign_attrs(
                long_name="NDVI predicted from Sentinel-1 (U-net)",
                units="1",
                valid_min=-1.0,
                valid_max=1.0,
            )
        }
    )
    if uncertainty:
        out["uncertainty"] = layers.sel(layer="uncertainty", drop=True).assign_attrs(
            long_name="standard deviation of the NDVI across "
            + " and ".join(
                s for s, on in (("test-time flips", tta), ("MC-dropout samples", mc_samples)) if on
            ),
            units="1",
        )
    if "quality" in tree.children:
        quality = tree["/quality"].to_dataset()
        for name, layer in quality.data_vars.items():
            out[name] = layer.chunk(dict(zip(("y", "x"), out["ndvi"].chunks, strict=True)))
    if "spatial_ref" in group.coords:
        out = out.assign_coords(spatial_ref=group["spatial_ref"])
        for name in out.data_vars:
            out[name].attrs["grid_mapping"] = "spatial_ref"
    options = {
        "period": period,
        "tta": tta,
        "mc_samples": mc_samples,
        "uncertainty": uncertainty,
        "batch_size": batch_size,
    }
    out.attrs.update(_provenance(model, checkpoint, features, tree, period, options))
    return out


def write_prediction(
    model: str | os.PathLike | Checkpoint,
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    item: bool = True,
    storage_options: dict | None = None,
    **options: Any,
) -> str:
    """Predict NDVI for a whole feature store and write it as a Zarr cube (see the module
    doc), chunk by chunk in flat memory; return the store's path.

    `options` are those of `prediction_dataset` (period, batch_size, device, tta,
    mc_samples, uncertainty, chunks). `out` and `features` are paths or fsspec URLs
    (``s3://...``); `storage_options` go to fsspec for both (the model is a local file).
    """
    so = storage_options
    ds = prediction_dataset(model, features, storage_options=so, **options)
    url = store.write(
        ds, _absolute(os.fspath(out)), overwrite=overwrite, progress=progress, storage_options=so
    )
    if item:
        write_item(url, ds, storage_options=so)
    return url


def same_prediction(
    out: str | os.PathLike,
    model: str | os.PathLike | Checkpoint,
    features: str | os.PathLike,
    storage_options: dict | None = None,
    **options: Any,
) -> bool:
    """Whether the complete store `out` was written by this model (same weights) from this
    feature store with these options: then it can be reused as it is."""
    attrs = store.open(out, storage_options=storage_options).attrs
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    recorded = attrs.get("sar2ndvi:prediction") or {}
    wanted = {k: v for k, v in options.items() if k in recorded}
    return (
        (attrs.get("sar2ndvi:model") or {}).get("weights_sha256")
        == weights_digest(checkpoint.state_dict)
        and (attrs.get("sar2ndvi:features") or {}).get("store")
        == store.scrub_secrets(_absolute(os.fspath(features)))
        and all(recorded[k] == v for k, v in wanted.items())
    )


def _absolute(path: str) -> str:
    """Local paths made absolute (they are recorded, and resolved from elsewhere); URLs as
    they are."""
    return path if "://" in path else os.path.abspath(path)


def _time_range(ds: xr.Dataset) -> tuple[datetime | None, datetime | None]:
    cube = ds.attrs.get("sar2ndvi:cube") or {}
    event = (cube.get("sar2ndvi:recipe") or {}).get("event") or {}
    period = (ds.attrs.get("sar2ndvi:features") or {}).get("period", "pre")
    window = event.get(period)
    if not window:
        return None, None

    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return parse(window[0]), parse(window[1])


def stac_item(url: str, ds: xr.Dataset) -> dict[str, Any]:
    """A STAC item (as a dict) describing the prediction store at `url` (without any
    signed query or credentials: the item is meant to be shared)."""
    import pystac
    from pyproj import Transformer
    from shapely.geometry import box, mapping

    crs = ds.rio.crs
    if crs is None:
        raise InputError("the prediction has no CRS; cannot describe it in STAC")
    transform = ds.rio.transform()
    height, width = ds.sizes["y"], ds.sizes["x"]
    left, bottom, right, top = ds.rio.bounds()
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(
        np.array([left, right, right, left]), np.array([bottom, bottom, top, top])
    )
    bbox = [float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))]
    start, end = _time_range(ds)
    digest = ds.attrs["sar2ndvi:model"]["weights_sha256"]
    if start is None:
        # no acquisition window recorded (a store not made from a recipe): the item's time
        # is when the prediction was made, and says so
        when: dict[str, Any] = {
            "datetime": datetime.now(UTC),
            "properties": {"sar2ndvi:datetime": "processing time"},
        }
    else:
        when = {"datetime": None, "start_datetime": start, "end_datetime": end, "properties": {}}
    item = pystac.Item(
        id=f"sar2ndvi-ndvi-{os.path.basename(url.rstrip('/')).removesuffix('.zarr')}",
        geometry=mapping(box(*bbox)),
        bbox=bbox,
        stac_extensions=[PROJECTION, XARRAY_ASSETS, PROCESSING],
        **when,
    )
    epsg = crs.to_epsg()
    item.properties.update(
        {
            **({"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:wkt2": crs.to_wkt()}),
            "proj:shape": [int(height), int(width)],
            "proj:transform": list(transform)[:6],
            "processing:software": {"sar2ndvi": sar2ndvi.__version__},
            "processing:lineage": (
                f"U-net (weights sha256 {digest[:16]}...) on the feature store "
                f"{store.scrub_secrets(ds.attrs['sar2ndvi:features']['store'])}"
            ),
        }
    )
    # the layers first, then the rest by name: the same list for the lazy dataset and for
    # the stored one (which lists its variables in another order)
    first = ("ndvi", "uncertainty")
    variables = sorted(
        (str(v) for v in ds.data_vars),
        key=lambda v: (first.index(v) if v in first else len(first), v),
    )
    item.add_asset(
        "ndvi",
        pystac.Asset(
            href=store.scrub_secrets(url),
            media_type="application/vnd+zarr",
            roles=["data"],
            title="Predicted NDVI (Zarr v2, consolidated)",
            extra_fields={
                "xarray:open_kwargs": {"engine": "zarr", "consolidated": True, "chunks": {}},
                "sar2ndvi:variables": variables,
            },
        ),
    )
    return item.to_dict(include_self_link=False)


def write_item(url: str, ds: xr.Dataset, storage_options: dict | None = None) -> str:
    """Write `stac_item` into the store's folder as ``item.json``, atomically; return its
    path.

    A reader never sees half an item: on a local disk it is written to a temporary file
    beside it and renamed; on object storage it is one PUT (atomic by itself).
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    blob = json.dumps(stac_item(url, ds), indent=1).encode()
    path = url.rstrip("/") + "/" + ITEM_FILE
    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(fs_path, blob)
        return path
    tmp = f"{fs_path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fs_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def has_item(out: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """Whether the prediction store `out` holds a readable ``item.json`` (a JSON object)."""
    import fsspec

    path = _absolute(os.fspath(out)).rstrip("/") + "/" + ITEM_FILE
    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    try:
        item = json.loads(fs.cat_file(fs_path))
    except (FileNotFoundError, ValueError, OSError):
        return False
    return isinstance(item, dict) and "id" in item


def ensure_item(out: str | os.PathLike, storage_options: dict | None = None) -> str | None:
    """Write the STAC item of the complete prediction store `out` when it has none (a
    `write_prediction` stopped after the store and before the item); return its path, or
    None when there was one already. The item is made from the stored cube and its
    attributes: nothing is predicted again.

    Raises:
        IncompleteStoreError: `out` is not a complete store.
    """
    if has_item(out, storage_options):
        return None
    url = _absolute(os.fspath(out))
    stored = store.open(url, storage_options=storage_options)
    ds = stored.to_dataset() if isinstance(stored, xr.DataTree) else stored
    return write_item(url, ds, storage_options=storage_options)
