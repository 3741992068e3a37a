"""Zarr stores: round trips, GDAL georeferencing, overwrite protection, resume, URLs, secrets."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from pathlib import Path

import affine
import dask
import dask.array as da
import fsspec
import hypothesis.strategies as st
import numpy as np
import pytest
import rasterio
import xarray as xr
from hypothesis import HealthCheck, given, settings

from sar2ndvi import __version__, store

SHAPE = (3, 150, 170)  # (time, y, x): ragged last chunks with 2x64x64 chunks
CHUNKS = (2, 64, 64)
RES = 10.0
X0, Y0 = 499_980.0, 3_800_040.0  # upper-left corner, multiples of 10 m
SAS_URL = "https://x.blob.core.windows.net/c/f.tif?st=2024&se=2024&sig=abc%3D"


@pytest.fixture(autouse=True)
def _threaded_scheduler():
    with dask.config.set(scheduler="threads"):
        yield


class Source:
    """An array-like for `da.from_array` that counts block reads and can fail on one block."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...], fail_at=None):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.chunks = chunks
        self.fail_at = fail_at  # a chunk location; reading it raises while set
        self.calls: Counter = Counter()
        self._lock = threading.Lock()

    def __getitem__(self, key):
        out = self.data[key]
        if out.size == 0:
            return out
        loc = tuple(s.start // c for s, c in zip(key, self.chunks, strict=True))
        with self._lock:
            self.calls[loc] += 1
        if loc == self.fail_at:
            raise RuntimeError(f"simulated failure at block {loc}")
        return out.copy()

    def array(self) -> da.Array:
        return da.from_array(self, chunks=self.chunks, meta=np.empty((0,) * self.ndim, self.dtype))


def coords(ny: int, nx: int) -> dict:
    return {
        "x": X0 + RES / 2 + RES * np.arange(nx),
        "y": Y0 - RES / 2 - RES * np.arange(ny),
    }


def expected_transform() -> affine.Affine:
    return affine.Affine(RES, 0.0, X0, 0.0, -RES, Y0)


def make_data(seed: int = 0, shape=SHAPE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vv = rng.gamma(2.0, 0.05, shape).astype("float32")
    vh = (vv * rng.uniform(0.1, 0.3, shape)).astype("float32")
    vv[0, 10:30, 100:140] = np.nan
    vh[2, 140:, :20] = np.nan
    dem = rng.uniform(300, 2300, shape[1:]).astype("float32")
    dem[:5, :5] = np.nan
    return {"vv": vv, "vh": vh, "elevation": dem}


def make_tree(data: dict[str, np.ndarray], sources: dict[str, Source] | None = None):
    """DataTree /s1 (vv, vh) + /dem (elevation); vh is stored (y, time, x) on purpose."""
    sources = sources or {}
    _, ny, nx = data["vv"].shape
    time = np.array(["2024-03-01", "2024-03-13", "2024-03-25"], dtype="datetime64[ns]")

    def arr(name):
        if name in sources:
            return sources[name].array()
        chunks = CHUNKS if data[name].ndim == 3 else CHUNKS[1:]
        return da.from_array(data[name], chunks=chunks)

    s1 = xr.Dataset(
        {
            "vv": (("time", "y", "x"), arr("vv"), {"units": "1", "long_name": "VV power"}),
            "vh": (("y", "time", "x"), arr("vh").transpose(1, 0, 2)),
        },
        coords={"time": time[: data["vv"].shape[0]], **coords(ny, nx)},
        attrs={"sensor": "sentinel-1"},
    )
    s1 = store.georeference(s1, "EPSG:32611")
    dem = xr.Dataset(
        {"elevation": (("y", "x"), arr("elevation"), {"units": "m"})},
        coords=coords(ny, nx),
        attrs={"crs": "EPSG:32611"},  # georeferenced by write()
    )
    root = xr.Dataset(attrs={"title": "test cube", "source": SAS_URL, "token": "x"})
    return xr.DataTree.from_dict({"/": root, "/s1": s1, "/dem": dem})


def files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return make_data()


@pytest.fixture(scope="module")
def written(tmp_path_factory, data) -> Path:
    path = tmp_path_factory.mktemp("store") / "cube.zarr"
    url = store.write(make_tree(data), path, attrs={"items": ["S1A_1", "S1A_2"]}, progress=False)
    assert url == str(path)
    return path


# --------------------------------------------------------------------------- round trip


def test_round_trip_values_dims_and_attrs(written, data):
    tree = store.open(written)
    assert isinstance(tree, xr.DataTree)
    s1, dem = tree["s1"].to_dataset(), tree["dem"].to_dataset()
    for name in ("vv", "vh"):
        assert s1[name].dims == ("time", "y", "x")
        assert isinstance(s1[name].data, da.Array)  # lazy
        assert s1[name].chunks == ((2, 1), (64, 64, 22), (64, 64, 42))
        assert s1[name].dtype == np.float32
        np.testing.assert_array_equal(s1[name].values, data[name])
    np.testing.assert_array_equal(dem["elevation"].values, data["elevation"])
    np.testing.assert_array_equal(s1["x"].values, coords(150, 170)["x"])
    np.testing.assert_array_equal(s1["y"].values, coords(150, 170)["y"])
    assert s1["time"].dtype.kind == "M"
    assert s1["vv"].attrs["units"] == "1"
    assert s1.attrs["sensor"] == "sentinel-1"
    assert dem["elevation"].attrs["units"] == "m"
    assert tree.attrs["title"] == "test cube"
    assert tree.attrs["items"] == ["S1A_1", "S1A_2"]
    assert tree.attrs[store.VERSION_ATTR] == __version__
    assert tree.attrs[store.COMPLETE_ATTR] is True
    for ds in (s1, dem):
        for name, var in ds.data_vars.items():
            assert var.attrs.get("grid_mapping") == "spatial_ref", name
        ref = ds["spatial_ref"].attrs
        assert "crs_wkt" in ref
        assert "32611" in ref["crs_wkt"]
        gt = [float(v) for v in ref["GeoTransform"].split()]
        assert gt == [X0, RES, 0.0, Y0, 0.0, -RES]
    assert store.is_complete(written)
    assert not (written / ".sar2ndvi").exists()


def test_open_one_group_as_dataset(written, data):
    ds = store.open(written, group="/dem")
    assert isinstance(ds, xr.Dataset)
    np.testing.assert_array_equal(ds["elevation"].values, data["elevation"])
    with pytest.raises(store.StoreError, match="nope"):
        store.open(written, group="nope")


def test_rioxarray_reads_crs_and_transform(written):
    ds = store.open(written, group="s1")
    assert ds.rio.crs.to_epsg() == 32611
    assert ds["vv"].rio.transform() == expected_transform()


def test_write_dataset_and_numpy_variables(tmp_path, data):
    ds = xr.Dataset(
        {"elevation": (("y", "x"), data["elevation"])},  # numpy, not Dask
        coords=coords(150, 170),
    )
    ds = store.georeference(ds, 32611)
    path = store.write(ds, tmp_path / "dem.zarr", progress=False)
    back = store.open(path, group="/")
    np.testing.assert_array_equal(back["elevation"].values, data["elevation"])
    assert isinstance(store.open(path), xr.DataTree)


def test_input_cube_is_not_modified(tmp_path, data):
    tree = make_tree(data)
    store.write(tree, tmp_path / "a.zarr", progress=False)
    assert tree.attrs["token"] == "x"
    assert tree.attrs["source"] == SAS_URL
    assert tree["s1/vh"].dims == ("y", "time", "x")
    assert "spatial_ref" not in tree["dem"].coords


# --------------------------------------------------------------------------- GDAL


@pytest.mark.parametrize(
    ("var", "band_of"), [("s1/vv", "vv"), ("s1/vh", "vh"), ("dem/elevation", None)]
)
def test_gdal_reads_crs_transform_and_values(written, data, var, band_of):
    with rasterio.open(f'ZARR:"{written}":/{var}') as src:
        assert src.crs.to_epsg() == 32611
        assert src.transform == expected_transform()
        assert (src.height, src.width) == (150, 170)
        assert np.isnan(src.nodata)
        if band_of is None:
            assert src.count == 1
            np.testing.assert_array_equal(src.read(1), data["elevation"])
        else:
            assert src.count == 3  # the time dim becomes bands
            for t in range(3):
                np.testing.assert_array_equal(src.read(t + 1), data[band_of][t])


def test_gdal_index_into_extra_dim(written, data):
    # ZARR:"path":/group/var:<i> picks one index of the non-spatial dim (time).
    with rasterio.open(f'ZARR:"{written}":/s1/vv:1') as src:
        assert src.count == 1
        np.testing.assert_array_equal(src.read(1), data["vv"][1])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gdal_lists_subdatasets(written):
    with rasterio.open(str(written)) as src:
        assert any(s.endswith(":/s1/vv") for s in src.subdatasets)


def test_tree_with_coords_on_the_root(tmp_path, data):
    # DataTree inherits only indexed coords: write() gives the child the root's spatial_ref.
    root = store.georeference(xr.Dataset(coords=coords(150, 170)), "EPSG:32611")
    child = xr.Dataset({"elevation": (("y", "x"), da.from_array(data["elevation"], chunks=64))})
    tree = xr.DataTree.from_dict({"/": root, "/dem": child})
    path = tmp_path / "a.zarr"
    store.write(tree, path, progress=False)
    with rasterio.open(f'ZARR:"{path}":/dem/elevation') as src:
        assert src.crs.to_epsg() == 32611
        assert src.transform == expected_transform()
        np.testing.assert_array_equal(src.read(1), data["elevation"])
    back = store.open(path)
    assert back["dem/elevation"].attrs["grid_mapping"] == "spatial_ref"
    np.testing.assert_array_equal(back["dem/elevation"].values, data["elevation"])


# --------------------------------------------------------------------------- Zarr v3


def test_zarr_v3_round_trip(tmp_path, data):
    path = tmp_path / "v3.zarr"
    store.write(make_tree(data), path, zarr_format=3, progress=False)
    assert (path / "zarr.json").exists()
    assert not (path / ".zgroup").exists()
    meta = json.loads((path / "s1" / "vv" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == list(CHUNKS)
    assert any(c["name"] == "blosc" for c in meta["codecs"])
    assert store.is_complete(path)
    tree = store.open(path)
    for name in ("vv", "vh"):
        np.testing.assert_array_equal(tree[f"s1/{name}"].values, data[name])
    np.testing.assert_array_equal(tree["dem/elevation"].values, data["elevation"])
    assert tree["s1"].to_dataset()["spatial_ref"].attrs["GeoTransform"]


# --------------------------------------------------------------------------- overwrite


def test_no_overwrite_without_permission(tmp_path, data):
    path = tmp_path / "a.zarr"
    store.write(make_tree(data), path, progress=False)
    before = files(path)
    other = make_data(seed=1)
    with pytest.raises(store.StoreExistsError, match=r"a\.zarr.*overwrite=True"):
        store.write(make_tree(other), path, progress=False)
    assert files(path) == before
    store.write(make_tree(other), path, overwrite=True, progress=False)
    np.testing.assert_array_equal(store.open(path)["s1/vv"].values, other["vv"])
    assert files(path) != before


def test_not_a_sar2ndvi_store_is_protected(tmp_path, data):
    path = tmp_path / "thing"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    with pytest.raises(store.StoreExistsError, match="not a sar2ndvi store"):
        store.write(make_tree(data), path, progress=False)
    assert (path / "notes.txt").read_text() == "keep me"
    store.write(make_tree(data), path, overwrite=True, progress=False)
    assert not (path / "notes.txt").exists()
    assert store.is_complete(path)


def test_empty_directory_is_used(tmp_path, data):
    path = tmp_path / "empty.zarr"
    path.mkdir()
    store.write(make_tree(data), path, progress=False)
    assert store.is_complete(path)


# --------------------------------------------------------------------------- resume


def sources_for(data, fail_at=None):
    return {
        "vv": Source(data["vv"], CHUNKS, fail_at=fail_at),
        "vh": Source(data["vh"], CHUNKS),
        "elevation": Source(data["elevation"], CHUNKS[1:]),
    }


def test_interrupted_write_is_incomplete_then_resumes(tmp_path, data):
    n_blocks = 2 * 3 * 3  # vv: (2, 3, 3) chunks
    fail_at = (1, 0, 2)  # C order: block 11 of 18
    fail_index = 1 * 9 + 0 * 3 + 2
    src = sources_for(data, fail_at=fail_at)
    path = tmp_path / "resumed.zarr"
    # region_bytes=1: every region is one chunk, so the resume granularity is one chunk.
    with pytest.raises(store.StoreError, match="re-run") as info:
        store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    assert isinstance(info.value.__cause__, RuntimeError)

    assert not store.is_complete(path)
    assert json.loads((path / ".zattrs").read_text())[store.COMPLETE_ATTR] is False
    assert (
        json.loads((path / ".zmetadata").read_text())["metadata"][".zattrs"][store.COMPLETE_ATTR]
        is False
    )
    with pytest.raises(store.IncompleteStoreError, match=r"incomplete.*re-run"):
        store.open(path)
    with pytest.raises(store.IncompleteStoreError):
        store.open(path, group="s1")
    first_vv = dict(src["vv"].calls)
    assert sum(first_vv.values()) == fail_index + 1  # blocks before the failure, and it
    done = set(first_vv) - {fail_at}

    # Clear the fault and run the same write again.
    src["vv"].fail_at = None
    for s in src.values():
        s.calls.clear()
    store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    assert store.is_complete(path)
    resumed_vv = src["vv"].calls
    assert set(resumed_vv).isdisjoint(done)
    assert sum(resumed_vv.values()) == n_blocks - len(done)
    assert all(n == 1 for n in resumed_vv.values())
    assert not (path / ".sar2ndvi").exists()

    clean = tmp_path / "clean.zarr"
    store.write(make_tree(data), clean, region_bytes=1, progress=False)
    tree = store.open(path)
    for name in ("vv", "vh"):
        np.testing.assert_array_equal(tree[f"s1/{name}"].values, data[name])
    np.testing.assert_array_equal(tree["dem/elevation"].values, data["elevation"])
    assert files(path / "s1" / "vv") == files(clean / "s1" / "vv")
    assert files(path / "dem") == files(clean / "dem")


def test_different_cube_on_incomplete_store(tmp_path, data):
    path = tmp_path / "a.zarr"
    src = sources_for(data, fail_at=(0, 1, 1))
    with pytest.raises(store.StoreError):
        store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    assert not store.is_complete(path)
    small = make_data(shape=(3, 100, 120))
    before = files(path)
    with pytest.raises(store.StoreExistsError, match="different cube"):
        store.write(make_tree(small), path, progress=False)
    assert files(path) == before
    store.write(make_tree(small), path, overwrite=True, progress=False)
    np.testing.assert_array_equal(store.open(path)["s1/vv"].values, small["vv"])


def test_crash_before_the_complete_flag_recomputes_nothing(tmp_path, data, monkeypatch):
    real = store._write_data

    def crash_after_data(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("killed before the complete flag")

    monkeypatch.setattr(store, "_write_data", crash_after_data)
    src = sources_for(data)
    path = tmp_path / "a.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    assert not store.is_complete(path)
    assert (path / ".sar2ndvi" / "done" / "s1" / "vv").is_dir()
    monkeypatch.setattr(store, "_write_data", real)
    for s in src.values():
        s.calls.clear()
    store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    assert all(not s.calls for s in src.values())
    assert store.is_complete(path)
    np.testing.assert_array_equal(store.open(path)["s1/vv"].values, data["vv"])


def test_interrupted_metadata_step_starts_over(tmp_path, data):
    path = tmp_path / "a.zarr"
    src = sources_for(data, fail_at=(1, 1, 1))
    with pytest.raises(store.StoreError):
        store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    # No plan: as if the first run died while writing metadata; nothing counts as done.
    (path / ".sar2ndvi" / "plan.json").unlink()
    src["vv"].fail_at = None
    src["vv"].calls.clear()
    store.write(make_tree(data, src), path, region_bytes=1, progress=False)
    assert sum(src["vv"].calls.values()) == 18
    np.testing.assert_array_equal(store.open(path)["s1/vv"].values, data["vv"])


def test_corrupt_resume_plan_is_refused(tmp_path, data):
    path = tmp_path / "a.zarr"
    store.write(make_tree(data), path, progress=False)
    zattrs = json.loads((path / ".zattrs").read_text())
    zattrs[store.COMPLETE_ATTR] = False
    (path / ".zattrs").write_text(json.dumps(zattrs))
    plan = {"fingerprint": zattrs[store.FINGERPRINT_ATTR], "regions": {}}
    (path / ".sar2ndvi").mkdir()
    (path / ".sar2ndvi" / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(store.StoreError, match="resume plan"):
        store.write(make_tree(data), path, progress=False)


def test_missing_store(tmp_path):
    assert not store.is_complete(tmp_path / "nothing.zarr")
    with pytest.raises(store.StoreError, match="no such store"):
        store.open(tmp_path / "nothing.zarr")


# --------------------------------------------------------------------------- georeferencing


def test_missing_crs_names_the_variable(tmp_path, data):
    ds = xr.Dataset(
        {"ndvi": (("y", "x"), da.from_array(data["elevation"]))}, coords=coords(150, 170)
    )
    with pytest.raises(store.StoreError, match=r"/ndvi.*georeference"):
        store.write(ds, tmp_path / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_georeference_is_lazy_and_complete(data):
    ds = xr.Dataset(
        {
            "a": (("y", "x"), da.from_array(data["elevation"], chunks=64)),
            "series": (("t",), np.arange(4.0)),
        },
        coords=coords(150, 170),
    )
    out = store.georeference(ds, "EPSG:32611")
    assert isinstance(out["a"].data, da.Array)
    assert out["a"].attrs["grid_mapping"] == "spatial_ref"
    assert "grid_mapping" not in out["series"].attrs
    assert out["spatial_ref"].ndim == 0
    ref = out["spatial_ref"].attrs
    assert ref["grid_mapping_name"] == "transverse_mercator"
    assert "crs_wkt" in ref
    assert [float(v) for v in ref["GeoTransform"].split()] == [X0, RES, 0.0, Y0, 0.0, -RES]
    custom = affine.Affine(20.0, 0.0, 100.0, 0.0, -20.0, 900.0)
    out = store.georeference(ds, "EPSG:32611", custom)
    assert [float(v) for v in out["spatial_ref"].attrs["GeoTransform"].split()] == list(
        custom.to_gdal()
    )


def test_georeference_refuses_irregular_coords(data):
    x = coords(150, 170)["x"].copy()
    x[5] += 3
    ds = xr.Dataset(
        {"a": (("y", "x"), data["elevation"])}, coords={"x": x, "y": coords(150, 170)["y"]}
    )
    with pytest.raises(store.StoreError, match="not regular"):
        store.georeference(ds, "EPSG:32611")


# --------------------------------------------------------------------------- URLs and secrets


def test_memory_url_round_trip(data):
    url = f"memory://sar2ndvi-test-{uuid.uuid4().hex}/cube.zarr"
    fs = fsspec.filesystem("memory")
    try:
        assert store.write(make_tree(data), url, progress=False) == url
        assert store.is_complete(url)
        tree = store.open(url)
        np.testing.assert_array_equal(tree["s1/vh"].values, data["vh"])
        np.testing.assert_array_equal(tree["dem/elevation"].values, data["elevation"])
        with pytest.raises(store.StoreExistsError):
            store.write(make_tree(data), url, progress=False)
        assert not fs.exists(url + "/.sar2ndvi")
    finally:
        fs.rm(url.split("/cube.zarr")[0], recursive=True)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_secrets_are_scrubbed(tmp_path, data, zarr_format):
    path = tmp_path / "a.zarr"
    attrs = {
        "href": SAS_URL,
        "token": "x",
        "nested": {"items": [f"see {SAS_URL} now", "s3://b/k.tif?X-Amz-Signature=deadbeef"]},
        "storage": {"account": "x", "sas_token": "se=2024&sig=abc", "Password": "p"},
    }
    store.write(make_tree(data), path, attrs=attrs, zarr_format=zarr_format, progress=False)
    raw = "".join(
        p.read_text() for p in path.rglob("*") if p.name in {".zattrs", ".zmetadata", "zarr.json"}
    )
    for bad in ("sig=", "abc%3D", "X-Amz", "deadbeef", '"token"', "sas_token", "Password"):
        assert bad not in raw, bad
    root = store.open(path).attrs
    assert root["href"] == "https://x.blob.core.windows.net/c/f.tif"
    assert root["source"] == "https://x.blob.core.windows.net/c/f.tif"
    assert root["nested"]["items"] == [
        "see https://x.blob.core.windows.net/c/f.tif now",
        "s3://b/k.tif",
    ]
    assert root["storage"] == {"account": "x"}
    assert "token" not in root


def test_scrub_secrets_keeps_plain_values():
    value = {"a": 1, "b": [1.5, "text", "https://example.com/x.tif"], "c": ("d",)}
    assert store.scrub_secrets(value) == value


# --------------------------------------------------------------------------- memory


def test_regions_are_bounded(tmp_path, monkeypatch):
    shape, chunks = (4, 256, 256), (1, 32, 32)  # 512 chunks of 4 KiB
    values = np.arange(np.prod(shape), dtype="float32").reshape(shape)
    ds = xr.Dataset(
        {"v": (("time", "y", "x"), da.from_array(values, chunks=chunks))},
        coords={"time": np.arange(4), **coords(256, 256)},
    )
    ds = store.georeference(ds, "EPSG:32611")
    sizes = []
    real = store._write_region

    def spy(sources, targets, region):
        sizes.append(sum(s[region].nbytes for s in sources))
        real(sources, targets, region)

    monkeypatch.setattr(store, "_write_region", spy)
    budget = 64 * 1024  # 16 chunks
    store.write(ds, tmp_path / "a.zarr", region_bytes=budget, progress=False)
    assert max(sizes) <= budget
    assert sum(sizes) == values.nbytes
    assert len(sizes) == values.nbytes // budget
    np.testing.assert_array_equal(store.open(tmp_path / "a.zarr", group="/")["v"].values, values)


# --------------------------------------------------------------------------- property


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40)),
    chunk=st.tuples(st.integers(1, 3), st.integers(1, 16), st.integers(1, 16)),
    region_bytes=st.sampled_from([1, 200, 5000, None]),
    zarr_format=st.sampled_from([2, 3]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_chunks_round_trip(shape, chunk, region_bytes, zarr_format, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=shape).astype("float32")
    values[rng.random(shape) < 0.2] = np.nan
    ds = xr.Dataset(
        {"v": (("time", "y", "x"), da.from_array(values, chunks=chunk))},
        coords={"time": np.arange(shape[0]), **coords(shape[1], shape[2])},
    )
    ds = store.georeference(ds, "EPSG:32611", expected_transform())
    url = f"memory://sar2ndvi-prop-{uuid.uuid4().hex}.zarr"
    try:
        store.write(ds, url, region_bytes=region_bytes, zarr_format=zarr_format, progress=False)
        back = store.open(url, group="/")
        np.testing.assert_array_equal(back["v"].values, values)
        assert back["v"].chunks == da.from_array(values, chunks=chunk).chunks
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)
