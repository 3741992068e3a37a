"""Zarr stores: georeferencing, encoding, resumable chunk-wise writes, and safe opening.

`write` turns a lazy (Dask-backed) `xarray.Dataset` or `xarray.DataTree` into a Zarr store
(local path or any fsspec URL) that GDAL, QGIS and xarray open as is:

1. an existing store is never overwritten without ``overwrite=True``; an *incomplete* store
   (an interrupted earlier write of the same cube) is resumed instead;
2. all metadata is written first, with the root attribute ``sar2ndvi:complete = False``;
3. the data is computed and written region by region (groups of whole Dask chunks), each region
   recorded as done by a marker under ``<store>/.sar2ndvi/done/`` only after its chunks are
   written, so a crash at any point leaves a store that a re-run finishes;
4. when every region is written the root attribute becomes ``True``, the metadata is
   consolidated again and the markers are removed.

`open` refuses incomplete stores. See docs/store.md for the layout and for opening stores
with GDAL (``ZARR:"path":/group/var``) and QGIS.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import affine
import dask
import dask.array as da
import dask.threaded
import fsspec
import numcodecs
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem

from sar2ndvi import __version__
from sar2ndvi.errors import Sar2ndviError

__all__ = [
    "COMPLETE_ATTR",
    "FINGERPRINT_ATTR",
    "VERSION_ATTR",
    "IncompleteStoreError",
    "StoreError",
    "StoreExistsError",
    "georeference",
    "is_complete",
    "open",
    "scrub_secrets",
    "write",
]

#: Root attribute: True only when every chunk of every variable has been written.
COMPLETE_ATTR = "sar2ndvi:complete"
#: Root attribute: hash of the store's structure (groups, variables, shapes, chunks, dtypes).
FINGERPRINT_ATTR = "sar2ndvi:fingerprint"
#: Root attribute: the sar2ndvi version that wrote the store.
VERSION_ATTR = "sar2ndvi:version"
#: Name of the CF grid-mapping coordinate.
GRID_MAPPING = "spatial_ref"
#: Default upper bound on the uncompressed size of one region (a group of whole chunks that is
#: computed, written and marked done together).
REGION_BYTES = 32 * 2**20
#: At most this many chunks along each of y and x in one region.
REGION_TILE = 2

_STATE_DIR = ".sar2ndvi"
_PLAN = "plan.json"
_DONE = "done"


class StoreError(Sar2ndviError):
    """A Zarr store cannot be written or opened; the message names the store."""


class StoreExistsError(StoreError, FileExistsError):
    """The target already holds a store (or something else) that would be overwritten."""


class IncompleteStoreError(StoreError):
    """The store was not completely written (an interrupted write)."""


# --------------------------------------------------------------------------- secrets


_URL_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s?#\"'<>]*)[?#][^\s\"'<>]*")
#: user:password@ in a URL
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#\"'<>@]+@")
#: secret parameters outside a URL (a bare SAS query, a connection string, a message)
_SECRET_PARAM = re.compile(
    r"\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature|x-goog-credential|token|access_token|sas_token|api_?key|password|"
    r"accountkey|sharedaccesssignature|sharedaccesskey)=[^\s&;\"'<>]*",
    re.IGNORECASE,
)
_SECRET_KEY = re.compile(
    r"token|secret|passw|signature|credential|api[_\-]?key|access[_\-]?key|^sig$|^sas$"
    r"|^key$|account[_\-]?key|private[_\-]?key|connection[_\-]?string|authori[sz]ation"
    r"|^auth$|cookie",
    re.IGNORECASE,
)


def scrub_secrets(value: Any) -> Any:
    """`value` with secrets removed, for attributes that end up in a (possibly public) store.

    URLs inside strings lose their query string and fragment (SAS tokens ``?se=..&sig=..``,
    ``X-Amz-Signature=..``, ``token=..``) and any ``user:password@``; secret parameters
    outside a URL (``sig=..``, ``AccountKey=..`` of a connection string) lose their value;
    mapping keys named like token, secret, password, signature, credential, key, API/access/
    account key or connection string are dropped (s3fs's ``key``/``secret``/``token``).
    Lists, tuples and dicts are scrubbed recursively; other values are returned as they are.
    """
    if isinstance(value, str):
        value = _URL_USERINFO.sub(r"\1", _URL_QUERY.sub(r"\1", value))
        return _SECRET_PARAM.sub(r"\1=[redacted]", value)
    if isinstance(value, Mapping):
        return {
            k: scrub_secrets(v)
            for k, v in value.items()
            if not (isinstance(k, str) and _SECRET_KEY.search(k))
        }
    if isinstance(value, list | tuple):
        return type(value)(scrub_secrets(v) for v in value)
    return value


# --------------------------------------------------------------------------- georeferencing


def _spatial_dims(var: xr.Variable | xr.DataArray) -> bool:
    return "y" in var.dims and "x" in var.dims


def _transform_from_coords(ds: xr.Dataset) -> affine.Affine:
    """The affine transform of the pixel-centre 1-D regular `x`/`y` coordinates of `ds`."""
    for dim in ("x", "y"):
        if dim not in ds.coords or ds[dim].ndim != 1:
            raise StoreError(
                f"cannot derive a transform: the cube has no 1-D {dim!r} coordinate; "
                "pass transform= to store.georeference"
            )
        if ds[dim].size < 2:
            raise StoreError(
                f"cannot derive a transform: {dim!r} has fewer than 2 pixels; "
                "pass transform= to store.georeference"
            )
    x = np.asarray(ds["x"].values, dtype="float64")
    y = np.asarray(ds["y"].values, dtype="float64")
    rx, ry = x[1] - x[0], y[1] - y[0]
    for name, c, r in (("x", x, rx), ("y", y, ry)):
        if r == 0 or not np.allclose(np.diff(c), r, rtol=1e-9, atol=abs(r) * 1e-6):
            raise StoreError(
                f"cannot derive a transform: the {name!r} coordinate is not regular; "
                "pass transform= to store.georeference"
            )
    return affine.Affine(rx, 0.0, x[0] - rx / 2, 0.0, ry, y[0] - ry / 2)


def _set_grid_mapping(ds: xr.Dataset) -> xr.Dataset:
    """Put ``grid_mapping = "spatial_ref"`` in the attrs of every data variable with y/x."""
    ds = ds.copy()
    for name, var in ds.data_vars.items():
        if _spatial_dims(var):
            var = ds[name]
            var.encoding.pop("grid_mapping", None)
            var.attrs["grid_mapping"] = GRID_MAPPING
    return ds


def georeference(ds: xr.Dataset, crs: Any, transform: affine.Affine | None = None) -> xr.Dataset:
    """`ds` with a CF ``spatial_ref`` coordinate and ``grid_mapping`` on its y/x variables.

    ``spatial_ref`` (a scalar int coordinate) carries ``crs_wkt``, ``spatial_ref``, the
    CF grid-mapping attributes and ``GeoTransform`` (GDAL's ``"c a b f d e"``), written
    with rioxarray. `crs` is anything pyproj understands (``"EPSG:32611"``, a WKT string,
    a `pyproj.CRS`, an EPSG code). `transform` defaults to the one implied by the 1-D
    regular pixel-centre ``x``/``y`` coordinates. Lazy: nothing is computed.
    """
    if transform is None:
        transform = _transform_from_coords(ds)
    try:
        out = ds.rio.write_crs(crs, grid_mapping_name=GRID_MAPPING)
    except Exception as exc:
        raise StoreError(f"invalid CRS {crs!r}: {exc}") from exc
    out = out.rio.write_transform(transform, grid_mapping_name=GRID_MAPPING)
    out = out.rio.write_grid_mapping(GRID_MAPPING)
    return _set_grid_mapping(out)


def _ensure_georeferenced(ds: xr.Dataset, where: str) -> xr.Dataset:
    """`ds` georeferenced, or StoreError naming the first y/x variable when it has no CRS."""
    spatial = [str(n) for n, v in ds.data_vars.items() if _spatial_dims(v)]
    if not spatial:
        return ds
    if GRID_MAPPING in ds.variables and (
        "crs_wkt" in ds[GRID_MAPPING].attrs or "spatial_ref" in ds[GRID_MAPPING].attrs
    ):
        if "GeoTransform" not in ds[GRID_MAPPING].attrs:
            ds = ds.rio.write_transform(_transform_from_coords(ds), grid_mapping_name=GRID_MAPPING)
        return _set_grid_mapping(ds)
    crs = ds.attrs.get("crs")
    if crs is None:
        try:
            crs = ds.rio.crs
        except Exception:
            crs = None
    if crs is None:
        raise StoreError(
            f"variable {where}{spatial[0]} has no CRS; call store.georeference(ds, crs) first"
        )
    out = georeference(ds, crs)
    if "crs" in out.attrs and not isinstance(out.attrs["crs"], str | int):
        out.attrs = {k: v for k, v in out.attrs.items() if k != "crs"}
    return out


# --------------------------------------------------------------------------- fsspec / zarr


@dataclass
class _Target:
    url: str
    fs: fsspec.AbstractFileSystem
    path: str

    @classmethod
    def of(cls, target: str | os.PathLike, storage_options: dict | None) -> _Target:
        url = os.fspath(target)
        try:
            fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except Exception as exc:
            shown = scrub_secrets(f"{url}: cannot open this location: {exc}")
            raise StoreError(shown) from exc
        if isinstance(fs, LocalFileSystem):
            fs = LocalFileSystem(auto_mkdir=True)
        # `url` names the store in messages and progress bars: never with a signed query
        return cls(url=scrub_secrets(url), fs=fs, path=path.rstrip("/") or path)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def zarr_store(self, read_only: bool = False) -> Any:
        if self.local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        return zarr.storage.FsspecStore.from_mapper(
            self.fs.get_mapper(self.path), read_only=read_only
        )

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def exists(self) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self.path))

    def is_empty_dir(self) -> bool:
        return bool(self.fs.isdir(self.path)) and not self.fs.ls(self.path, detail=False)

    def read_json(self, *parts: str) -> Any:
        try:
            return json.loads(self.fs.cat_file(self.join(*parts)))
        except (FileNotFoundError, ValueError, OSError):
            return None

    def rm(self) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)
        self.fs.invalidate_cache()


def _root_attrs(t: _Target) -> tuple[int, dict] | None:
    """(zarr_format, root attributes) read without consolidated metadata, or None."""
    zattrs = t.read_json(".zattrs")
    if t.fs.exists(t.join(".zgroup")):
        return 2, zattrs if isinstance(zattrs, dict) else {}
    meta = t.read_json("zarr.json")
    if isinstance(meta, dict) and meta.get("node_type") == "group":
        return 3, dict(meta.get("attributes") or {})
    return None


def _consolidated_complete(t: _Target) -> bool | None:
    """The complete flag in v2 consolidated metadata, None when there is none."""
    meta = t.read_json(".zmetadata")
    if not isinstance(meta, dict):
        return None
    root = (meta.get("metadata") or {}).get(".zattrs") or {}
    return root.get(COMPLETE_ATTR) is True


def _is_complete(t: _Target) -> bool:
    state = _root_attrs(t)
    if state is None or state[1].get(COMPLETE_ATTR) is not True:
        return False
    return _consolidated_complete(t) is not False


def is_complete(target: str | os.PathLike, *, storage_options: dict | None = None) -> bool:
    """True when `target` is a sar2ndvi store whose every chunk has been written."""
    t = _Target.of(target, storage_options)
    if not t.exists():
        return False
    return _is_complete(t)


# --------------------------------------------------------------------------- preparation


def _nodes(obj: xr.Dataset | xr.DataTree) -> list[tuple[str, xr.Dataset]]:
    """(group path, dataset) pairs, parents before children; root group path is ""."""
    if isinstance(obj, xr.Dataset):
        return [("", obj)]
    if isinstance(obj, xr.DataTree):
        out = []
        for node in obj.subtree:
            ds = node.to_dataset(inherit=True)
            # DataTree inherits only indexed coordinates: give each group the nearest
            # ancestor's grid mapping, so that every group stands alone (GDAL, QGIS).
            if GRID_MAPPING not in ds.variables:
                for parent in node.parents:
                    if GRID_MAPPING in parent.variables:
                        ds = ds.assign_coords({GRID_MAPPING: parent[GRID_MAPPING].variable})
                        break
            out.append((node.path.strip("/"), ds))
        return out
    raise StoreError(f"store.write needs an xarray Dataset or DataTree, not {type(obj).__name__}")


def _regular_chunks(var: xr.Variable) -> xr.Variable:
    """`var` rechunked so that every Dask chunk but the last along each dim has one size."""
    if not isinstance(var.data, da.Array):
        return var
    new = {}
    for dim, c in zip(var.dims, var.chunks, strict=True):
        if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0]):
            new[dim] = max(c)
    return var.chunk(new) if new else var


def _compressor(zarr_format: int, level: int) -> Any:
    if zarr_format == 2:
        return numcodecs.Blosc(cname="zstd", clevel=level, shuffle=numcodecs.Blosc.SHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="shuffle")


def _prepare(ds: xr.Dataset, group: str, zarr_format: int, level: int) -> xr.Dataset:
    """Transpose y/x last, regularise chunks, georeference, scrub attrs, set encodings.

    Works on shallow copies: the caller's variables, attrs and encodings are left alone.
    """
    where = f"/{group}/" if group else "/"
    if "y" in ds.dims and "x" in ds.dims:
        ds = ds.transpose(..., "y", "x")
    ds = xr.Dataset(
        {n: _regular_chunks(v) for n, v in ds.data_vars.variables.items()},
        {n: _regular_chunks(ds.variables[n]) for n in ds.coords},
        attrs=dict(ds.attrs),
    )
    ds = _ensure_georeferenced(ds, where)
    comp = _compressor(zarr_format, level)
    data_vars, coords = {}, {}
    for name, var in ds.variables.items():
        var = var.copy(deep=False)
        var.attrs = scrub_secrets(dict(var.attrs))
        enc: dict[str, Any] = {"compressors": (comp,)}
        if isinstance(var.data, da.Array) and var.ndim:
            enc["chunks"] = tuple(c[0] for c in var.chunks)
        var.encoding = enc
        (coords if name in ds.coords else data_vars)[name] = var
    return xr.Dataset(data_vars, coords, attrs=scrub_secrets(dict(ds.attrs)))


def _fingerprint(nodes: list[tuple[str, xr.Dataset]], zarr_format: int, level: int) -> str:
    desc: dict[str, Any] = {"zarr_format": zarr_format, "compressor_level": level, "groups": {}}
    for group, ds in nodes:
        gd = {}
        for name in sorted(map(str, ds.variables)):
            var = ds.variables[name]
            vd: dict[str, Any] = {
                "dims": list(map(str, var.dims)),
                "shape": list(var.shape),
                "dtype": str(var.dtype),
                "chunks": [list(c) for c in var.chunks] if var.chunks else None,
            }
            if name in ds.indexes and not isinstance(var.data, da.Array):
                vd["values"] = hashlib.sha256(
                    np.ascontiguousarray(var.values).tobytes()
                ).hexdigest()
            gd[name] = vd
        desc["groups"][group] = gd
    blob = json.dumps(desc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- regions


def _region_step(chunks: tuple[tuple[int, ...], ...], itemsize: int, budget: int) -> list[int]:
    """Chunks per region along each dim: spatial tiles of whole chunks.

    A region spans the leading dims (time, band) first, as far as the budget allows, then
    grows along x and y. Tiles that cover every band or time step compute the shared
    upstream work of a pixel block once, and keep memory per region bounded by the budget
    whatever the scene size.
    """
    ndim = len(chunks)
    nblocks = [len(c) for c in chunks]
    size = [c[0] for c in chunks]
    step = [1] * ndim
    inner = itemsize * math.prod(size)
    order = [*range(ndim - 2), ndim - 1, ndim - 2] if ndim >= 2 else list(range(ndim))
    for d in order:
        fit = max(1, budget // max(inner, 1))
        # at most a fixed tile of chunks along y and x: the same pixels per region at any
        # scene size, so that memory does not grow with the scene
        cap = min(nblocks[d], REGION_TILE) if d >= ndim - 2 else nblocks[d]
        step[d] = int(min(cap, fit))
        inner *= step[d]
        if step[d] < cap:  # the byte budget binds: the slower dims stay one chunk wide
            break
    return step


def _regions(
    chunks: tuple[tuple[int, ...], ...], step: list[int]
) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """(region key, element slices) for each region, in C order."""
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    counts = [math.ceil(len(c) / s) for c, s in zip(chunks, step, strict=True)]
    for idx in itertools.product(*(range(n) for n in counts)):
        slices = []
        for d, i in enumerate(idx):
            b0 = i * step[d]
            b1 = min(b0 + step[d], len(chunks[d]))
            slices.append(slice(int(bounds[d][b0]), int(bounds[d][b1])))
        yield ".".join(map(str, idx)) if idx else "0", tuple(slices)


def _write_region(sources: list[da.Array], targets: list[Any], region: tuple[slice, ...]) -> None:
    """Compute one region of sibling variables together (their shared upstream work once,
    their chunks in parallel, with the active Dask scheduler) and write it.

    With Dask's local threads, the region runs in a pool of its own that is drained before
    an error propagates: a failing chunk never leaves sibling chunks still being written
    behind the caller's back.
    """
    stored = da.store(
        [s[region] for s in sources],
        targets,
        regions=[region] * len(sources),
        lock=False,
        compute=False,
    )
    if dask.base.get_scheduler(collections=sources) is dask.threaded.get:
        workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            dask.compute(stored, scheduler="threads", pool=pool)
    else:
        dask.compute(stored)


@dataclass
class _Job:
    group: str
    name: str
    source: da.Array
    step: list[int]

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}" if self.group else self.name


def _jobs(nodes: list[tuple[str, xr.Dataset]], budget: int) -> list[_Job]:
    from xarray.backends.zarr import encode_zarr_variable

    jobs = []
    for group, ds in nodes:
        for name in ds.variables:
            var = ds.variables[name]
            if not isinstance(var.data, da.Array) or var.ndim == 0:
                continue
            enc = encode_zarr_variable(var, name=str(name))
            if not isinstance(enc.data, da.Array):
                enc = enc.chunk(dict(zip(var.dims, var.chunks, strict=True)))
            step = _region_step(enc.data.chunks, enc.dtype.itemsize, budget)
            jobs.append(_Job(group, str(name), enc.data, step))
    return jobs


# --------------------------------------------------------------------------- write


def write(
    obj: xr.Dataset | xr.DataTree,
    target: str | os.PathLike,
    *,
    overwrite: bool = False,
    zarr_format: int = 2,
    consolidated: bool = True,
    storage_options: dict | None = None,
    attrs: Mapping[str, Any] | None = None,
    compressor_level: int = 5,
    progress: bool = True,
    region_bytes: int | None = None,
) -> str:
    """Write a lazy cube to a Zarr store at `target` (a path or fsspec URL); return `target`.

    Metadata first (root attribute ``sar2ndvi:complete`` False), then the data region by
    region (groups of whole Dask chunks of at most `region_bytes`, default `REGION_BYTES`,
    uncompressed), each recorded as done once written, then the complete flag. A store left
    incomplete by an interrupted write of the same cube is resumed: only the regions not yet
    written are computed. Raises StoreExistsError when `target` already holds a complete
    store, a different cube or something else, unless `overwrite` is True.

    Variables with y/x dims get y, x as their last two dims and must be georeferenced (a
    ``spatial_ref`` coordinate, a rioxarray CRS or a ``crs`` attribute). `attrs` (provenance)
    are added to the root attributes after `scrub_secrets`, with ``sar2ndvi:version``.
    Compression is Blosc/zstd at `compressor_level`; `consolidated` metadata is written for
    Zarr v2 (GDAL and xarray read it faster); Zarr v3 stores are not consolidated.
    """
    if zarr_format not in (2, 3):
        raise StoreError(f"{os.fspath(target)}: zarr_format must be 2 or 3, not {zarr_format!r}")
    if not 0 <= int(compressor_level) <= 9:
        raise StoreError(
            f"{os.fspath(target)}: compressor_level must be 0..9, not {compressor_level!r}"
        )
    t = _Target.of(target, storage_options)
    budget = int(region_bytes or REGION_BYTES)

    nodes = [(g, _prepare(ds, g, zarr_format, compressor_level)) for g, ds in _nodes(obj)]
    fingerprint = _fingerprint(nodes, zarr_format, compressor_level)
    jobs = _jobs(nodes, budget)

    resume_plan = _check_target(t, fingerprint, overwrite)
    if resume_plan is None:
        root_attrs = dict(nodes[0][1].attrs)
        root_attrs.update(scrub_secrets(dict(attrs or {})))
        root_attrs[VERSION_ATTR] = __version__
        root_attrs[FINGERPRINT_ATTR] = fingerprint
        root_attrs[COMPLETE_ATTR] = False
        nodes[0][1].attrs = root_attrs
        for _, ds in nodes[1:]:
            for key in (COMPLETE_ATTR, FINGERPRINT_ATTR):
                ds.attrs.pop(key, None)
        plan = {"fingerprint": fingerprint, "regions": {j.key: j.step for j in jobs}}
        _write_metadata(t, nodes, zarr_format, consolidated)
        t.fs.pipe_file(t.join(_STATE_DIR, _PLAN), json.dumps(plan).encode())
    else:
        plan = resume_plan
        for j in jobs:
            step = plan["regions"].get(j.key)
            if step is None or len(step) != j.source.ndim:
                raise StoreError(f"{t.url}: the resume plan has no region grid for {j.key}")
            j.step = list(step)

    _write_data(t, jobs, progress)

    # Finalise: flag, consolidate, drop markers (in this order: a crash in between leaves a
    # store that is either flagged incomplete or complete and consistent).
    zstore = t.zarr_store()
    root = zarr.open_group(zstore, mode="r+", zarr_format=zarr_format, use_consolidated=False)
    root.attrs[COMPLETE_ATTR] = True
    if consolidated and zarr_format == 2:
        _consolidate(zstore)
    t.fs.invalidate_cache()
    if t.fs.exists(t.join(_STATE_DIR)):
        t.fs.rm(t.join(_STATE_DIR), recursive=True)
    return os.fspath(target)


def remove(target: str | os.PathLike, *, storage_options: dict | None = None) -> None:
    """Delete a store (a no-op when there is none)."""
    t = _Target.of(target, storage_options)
    if t.exists():
        t.rm()


def add_group(
    target: str | os.PathLike,
    group: str,
    ds: xr.Dataset,
    *,
    storage_options: dict | None = None,
) -> str:
    """Add (or replace) a small group, computed now, in a complete store.

    For results that can only be computed from what a store already holds, such as
    statistics over a stored stack. While the group is written the store is flagged
    incomplete, so a reader never sees it half-added; a crash leaves it incomplete, and
    the write that made it, run again, starts it over.
    """
    t = _Target.of(target, storage_options)
    if not _is_complete(t):
        raise IncompleteStoreError(f"{t.url} is not a complete store; cannot add /{group} to it")
    state = _root_attrs(t)
    assert state is not None
    zarr_format = state[0]
    group = group.strip("/")
    data = ds.compute()
    if any(_spatial_dims(v) for v in data.data_vars.values()):
        data = _ensure_georeferenced(data, f"/{group}")
    for var in data.variables.values():
        var.encoding = {}
    zstore = t.zarr_store()
    root = zarr.open_group(zstore, mode="r+", zarr_format=zarr_format, use_consolidated=False)
    root.attrs[COMPLETE_ATTR] = False
    if zarr_format == 2:
        _consolidate(zstore)
    try:
        data.to_zarr(zstore, group=group, mode="w", zarr_format=zarr_format, consolidated=False)
    except Exception as exc:
        raise StoreError(f"{t.url}: cannot write group /{group}: {exc}") from exc
    root.attrs[COMPLETE_ATTR] = True
    if zarr_format == 2:
        _consolidate(zstore)
    t.fs.invalidate_cache()
    return t.url


def _check_target(t: _Target, fingerprint: str, overwrite: bool) -> dict | None:
    """None to start afresh (removing what is there), or the saved plan to resume."""
    if not t.exists() or t.is_empty_dir():
        return None
    state = _root_attrs(t)
    hint = "pass overwrite=True to replace it, or write to another path"
    if state is None or COMPLETE_ATTR not in state[1]:
        if not overwrite:
            raise StoreExistsError(f"{t.url} already exists and is not a sar2ndvi store; {hint}")
        t.rm()
        return None
    attrs = state[1]
    if overwrite:
        t.rm()
        return None
    if _is_complete(t):
        raise StoreExistsError(f"{t.url} already holds a complete store; {hint}")
    if attrs.get(FINGERPRINT_ATTR) != fingerprint:
        raise StoreExistsError(
            f"{t.url} holds an incomplete store of a different cube (other groups, variables, "
            f"shapes, chunks, dtypes or format), so it cannot be resumed; {hint}"
        )
    plan = t.read_json(_STATE_DIR, _PLAN)
    if not isinstance(plan, dict) or plan.get("fingerprint") != fingerprint:
        # The metadata step itself was interrupted: nothing was marked done, start over.
        t.rm()
        return None
    return plan


def _write_metadata(
    t: _Target, nodes: list[tuple[str, xr.Dataset]], zarr_format: int, consolidated: bool
) -> None:
    t.rm()
    zstore = t.zarr_store()
    for group, ds in nodes:
        try:
            ds.to_zarr(
                zstore,
                group=group or None,
                mode="w" if not group else "w-",
                compute=False,
                zarr_format=zarr_format,
                consolidated=False,
            )
        except Exception as exc:
            raise StoreError(
                f"{t.url}: cannot write the metadata of group /{group}: {exc}"
            ) from exc
    if consolidated and zarr_format == 2:
        _consolidate(zstore)


def _consolidate(zstore: Any) -> None:
    """Consolidate v2 metadata, ignoring our own `.sar2ndvi` bookkeeping folder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\.sar2ndvi.*not recognized")
        zarr.consolidate_metadata(zstore, zarr_format=2)


#: errno values of a full disk, a file-size limit and an exhausted quota
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _disk_full(exc: BaseException) -> str:
    """A hint to free space when an OSError in `exc`'s chain says the disk is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return "the disk (or quota) is full: free some space; "
        seen = seen.__cause__ or seen.__context__
    return ""


def _write_data(t: _Target, jobs: list[_Job], progress: bool) -> None:
    from tqdm.auto import tqdm

    done_root = t.join(_STATE_DIR, _DONE)
    t.fs.invalidate_cache()
    done: set[str] = set()
    if t.fs.exists(done_root):
        prefix = done_root + "/"
        done = {p[len(prefix) :] for p in t.fs.find(done_root) if p.startswith(prefix)}
    # Siblings: variables of one group with the same shape, chunks and region grid (e.g. a
    # prediction and its uncertainty) are computed region by region together.
    siblings: dict[tuple[Any, ...], list[_Job]] = {}
    for j in jobs:
        siblings.setdefault((j.group, j.source.shape, j.source.chunks, tuple(j.step)), []).append(j)
    work: list[tuple[list[_Job], str, tuple[slice, ...]]] = []
    total = 0
    for sibs in siblings.values():
        for key, region in _regions(sibs[0].source.chunks, sibs[0].step):
            total += len(sibs)
            todo = [j for j in sibs if f"{j.key}/{key}" not in done]
            if todo:
                work.append((todo, key, region))
    if not work:
        return
    zstore = t.zarr_store()
    root = zarr.open_group(zstore, mode="r+", use_consolidated=False)
    arrays: dict[str, Any] = {}
    bar = tqdm(
        total=total,
        initial=total - sum(len(todo) for todo, _, _ in work),
        disable=not progress,
        desc=f"writing {t.url}",
        unit="region",
    )
    try:
        for todo, key, region in work:
            for j in todo:
                if j.key not in arrays:
                    arr = root[j.key]
                    if tuple(arr.shape) != j.source.shape or arr.dtype != j.source.dtype:
                        raise StoreError(
                            f"{t.url}: /{j.key} on disk is {arr.dtype}{tuple(arr.shape)} but "
                            f"the cube's is {j.source.dtype}{j.source.shape}; pass overwrite=True"
                        )
                    arrays[j.key] = arr
                    t.fs.makedirs(t.join(_STATE_DIR, _DONE, j.key), exist_ok=True)
            try:
                _write_region([j.source for j in todo], [arrays[j.key] for j in todo], region)
                for j in todo:
                    t.fs.pipe_file(t.join(_STATE_DIR, _DONE, j.key, key), b"")
            except Exception as exc:
                names = ", ".join(f"/{j.key}" for j in todo)
                raise StoreError(
                    f"{t.url}: writing {names} stopped at region {key} "
                    f"({scrub_secrets(str(exc))}); {_disk_full(exc)}the store is "
                    "incomplete: re-run the same write to finish it"
                ) from exc
            bar.update(len(todo))
    finally:
        bar.close()


# --------------------------------------------------------------------------- open


def open(
    target: str | os.PathLike,
    *,
    group: str | None = None,
    storage_options: dict | None = None,
    chunks: Any = None,
) -> xr.DataTree | xr.Dataset:
    """Open a complete store lazily: the whole tree (group None) or one group as a Dataset.

    `chunks` is passed to xarray; the default ``{}`` gives Dask arrays chunked like the
    store. Raises IncompleteStoreError for a store an interrupted write left behind and
    StoreError when there is no Zarr store at `target`.
    """
    t = _Target.of(target, storage_options)
    if not t.exists():
        raise StoreError(f"{t.url}: no such store")
    state = _root_attrs(t)
    if state is None:
        raise StoreError(f"{t.url} is not a Zarr store (no root group metadata)")
    if COMPLETE_ATTR in state[1] and not _is_complete(t):
        raise IncompleteStoreError(
            f"{t.url} is incomplete (an interrupted write?): re-run the command that wrote it "
            "to finish it, or pass overwrite=True to start over"
        )
    kwargs: dict[str, Any] = {
        "engine": "zarr",
        "chunks": {} if chunks is None else chunks,
        "consolidated": state[0] == 2 and t.fs.exists(t.join(".zmetadata")),
        "zarr_format": state[0],
    }
    zstore = t.zarr_store(read_only=True)
    try:
        if group is None:
            return xr.open_datatree(zstore, **kwargs)
        return xr.open_dataset(zstore, group=group.strip("/") or None, **kwargs)
    except (FileNotFoundError, KeyError) as exc:
        raise StoreError(f"{t.url}: no group {group!r} in this store ({exc})") from exc
