"""Stores on object storage: S3 through s3fs, against moto's S3 server on loopback.

Cube, feature, prediction and landslide input stores are written to ``s3://`` URLs with
credentials in ``storage_options`` and compared object by object with the same stores
written to local disk; an interrupted write is resumed on S3; the U-net trains and is
scored from a feature store on S3 as from its local copy; `detect` reads its inputs from
S3; no credential or signature ends up in a store, a log line or a message.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
import xarray as xr
from click.testing import CliRunner

from sar2ndvi import store
from sar2ndvi.catalog import select_scenes
from sar2ndvi.checkpoint import load_checkpoint
from sar2ndvi.cli import main
from sar2ndvi.cube import build_cube
from sar2ndvi.evaluate import evaluate
from sar2ndvi.features import FeatureSpec, write_features
from sar2ndvi.landslides import landslide_inputs, rasterize_inventory, write_inputs
from sar2ndvi.model import UNetConfig
from sar2ndvi.patches import PatchDataset, PatchSpec, patch_origins
from sar2ndvi.publish import ITEM_FILE, same_prediction, write_prediction
from sar2ndvi.synth.area import scene_recipe
from sar2ndvi.train import TrainConfig, train
from tests.support import write_learnable_store, write_tiny_checkpoint

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.slow

BUCKET = "sar2ndvi-test"
# fake credentials, each a string that must never show up anywhere but in the requests
KEY_ID = "AKIASAR2NDVIFAKEKEY7"
SECRET = "sar2ndvi-fake-secret-never-stored"
SESSION = "sar2ndvi-fake-session-token-never-stored"
SIGNATURE = "sar2ndvi-fake-signature"
CREDENTIALS = (KEY_ID, SECRET, SESSION, SIGNATURE)
# signed hrefs as STAC items carry them: Planetary Computer SAS, S3 presigned
PC_HREF = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/T11/B04.tif"
SIGNED = [
    f"{PC_HREF}?st=2024-04-01T00%3A00Z&se=2024-04-02T00%3A00Z&sp=rl&sv=2024-05-04&sr=c"
    f"&skoid=abc&sig={SIGNATURE}",
    f"https://b.s3.amazonaws.com/k.tif?X-Amz-Credential={KEY_ID}%2F20240401"
    f"&X-Amz-Signature={SIGNATURE}",
]


@dataclass(frozen=True)
class S3:
    endpoint: str
    options: dict[str, Any]
    fs: Any

    def url(self, name: str) -> str:
        """A fresh s3:// URL in the test bucket (tests may share the server)."""
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/{name}"

    def objects(self, url: str) -> dict[str, bytes]:
        """Every object under `url`, by path relative to it."""
        prefix = url.removeprefix("s3://").rstrip("/")
        self.fs.invalidate_cache()
        paths = self.fs.find(prefix)
        return {p[len(prefix) + 1 :]: v for p, v in self.fs.cat(paths).items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free loopback port, a bucket, and fake credentials.

    The credentials go to s3fs through storage_options only; the environment is pointed
    away from any real AWS profile, config file or instance metadata for the duration.
    """
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        port = free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            options = {
                "endpoint_url": endpoint,
                "key": KEY_ID,
                "secret": SECRET,
                "token": SESSION,
                "client_kwargs": {"region_name": "us-east-1"},
            }
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
                aws_session_token=SESSION,
                region_name="us-east-1",
            ).create_bucket(Bucket=BUCKET)
            yield S3(endpoint, options, s3fs.S3FileSystem(**options))
        finally:
            server.stop()


def local_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def assert_no_credentials(objects: dict[str, bytes]) -> None:
    blob = b"\n".join(objects.values())
    for secret in (*CREDENTIALS, "X-Amz", "sig="):
        assert secret.encode() not in blob, secret


@pytest.fixture(scope="module")
def local_cube(scene, stac_api, tmp_path_factory):
    """The scene's cube, built from its STAC API and written to local disk."""
    recipe = scene_recipe(scene, url=stac_api.url, chunk=128)
    path = tmp_path_factory.mktemp("local") / "cube.zarr"
    store.write(build_cube(recipe, select_scenes(recipe)), path, progress=False)
    return path


def with_signed_hrefs(cube: xr.DataTree) -> xr.DataTree:
    """`cube` with signed asset hrefs in its item provenance (which the feature store
    copies), as a catalogue that signs its hrefs would give them."""
    items = dict(cube.attrs["sar2ndvi:items"])
    cube.attrs["sar2ndvi:items"] = {**items, "hrefs": list(SIGNED)}
    return cube


def test_features_on_s3_are_the_local_store_object_for_object(s3, local_cube, tmp_path):
    local = tmp_path / "features.zarr"
    spec = FeatureSpec(window=11)
    write_features(with_signed_hrefs(store.open(local_cube)), str(local), spec, progress=False)
    url = s3.url("features.zarr")
    cube = with_signed_hrefs(store.open(local_cube))
    assert write_features(cube, url, spec, progress=False, storage_options=s3.options) == url
    assert store.is_complete(url, storage_options=s3.options)
    remote = s3.objects(url)
    expected = local_files(local)
    assert sorted(remote) == sorted(expected)
    assert [k for k in remote if remote[k] != expected[k]] == []
    assert not [k for k in remote if k.startswith(".sar2ndvi")]  # markers gone
    # the temporary stage-1 store beside it is gone too (removal on S3)
    assert not s3.fs.exists(url.removeprefix("s3://") + ".stage1")
    assert_no_credentials(remote)
    tree = store.open(url, storage_options=s3.options)
    xr.testing.assert_identical(
        tree["/pre"].to_dataset().compute(), store.open(local)["/pre"].to_dataset().compute()
    )
    hrefs = tree.attrs["sar2ndvi:cube"]["sar2ndvi:items"]["hrefs"]
    assert hrefs == [PC_HREF, "https://b.s3.amazonaws.com/k.tif"]


def small_tree(s3: S3) -> xr.DataTree:
    """A small two-group cube (10 regions of at most 32 KiB), with signed hrefs and the
    storage options (as a careless caller might record them) in its attributes."""
    rng = np.random.default_rng(5)
    coords = {"y": 3_800_000.0 - 10.0 * (np.arange(96) + 0.5), "x": 10.0 * np.arange(128)}
    s1 = xr.Dataset(
        {
            name: (("time", "y", "x"), rng.normal(size=(4, 96, 128)).astype("float32"))
            for name in ("vv", "vh")
        },
        coords={"time": np.arange(4), **coords},
    )
    dem = xr.Dataset({"elevation": (("y", "x"), rng.normal(size=(96, 128)))}, coords=coords)
    tree = xr.DataTree.from_dict(
        {
            "/s1": store.georeference(s1, "EPSG:32611").chunk({"time": 1, "y": 32, "x": 32}),
            "/dem": store.georeference(dem, "EPSG:32611").chunk({"y": 32, "x": 32}),
        }
    )
    tree.attrs.update(hrefs=list(SIGNED), storage=dict(s3.options))
    tree["/s1"].attrs["source"] = f"see {SIGNED[0]}"
    return tree


def test_an_interrupted_s3_write_never_looks_complete_and_resumes(s3, monkeypatch, tmp_path):
    kwargs: dict[str, Any] = {"progress": False, "region_bytes": 2**15}
    local = tmp_path / "cube.zarr"
    store.write(small_tree(s3), local, **kwargs)
    url = s3.url("cube.zarr")
    calls: list[tuple[tuple[str, ...], tuple[slice, ...]]] = []
    real = store._write_region

    def spy(sources, targets, region, fail_at=None):
        calls.append((tuple(t.path for t in targets), region))
        if len(calls) == fail_at:
            raise OSError(f"connection reset reading {SIGNED[0]}")
        real(sources, targets, region)

    monkeypatch.setattr(store, "_write_region", lambda *a: spy(*a, fail_at=4))
    with pytest.raises(store.StoreError, match="re-run the same write") as err:
        store.write(small_tree(s3), url, storage_options=s3.options, **kwargs)
    # the message names the store and the href, never the href's signature
    assert url in str(err.value)
    assert PC_HREF in str(err.value)
    assert SIGNATURE not in str(err.value)

    half = s3.objects(url)
    assert json.loads(half[".zattrs"])[store.COMPLETE_ATTR] is False
    assert json.loads(half[".zmetadata"])["metadata"][".zattrs"][store.COMPLETE_ATTR] is False
    markers = [k for k in half if k.startswith(".sar2ndvi/done/")]
    assert len(markers) == sum(len(paths) for paths, _ in calls[:3])  # 3 regions written
    assert not store.is_complete(url, storage_options=s3.options)
    with pytest.raises(store.IncompleteStoreError, match="incomplete"):
        store.open(url, storage_options=s3.options)

    first, failed = calls[:3], calls[3]
    calls.clear()
    monkeypatch.setattr(store, "_write_region", spy)
    store.write(small_tree(s3), url, storage_options=s3.options, **kwargs)  # no overwrite
    # only the regions without a marker were computed again, the failed one among them
    assert failed in calls
    assert not [c for c in calls if c in first]
    assert len(first) + len(calls) == 10
    resumed = s3.objects(url)
    expected = local_files(local)
    assert sorted(resumed) == sorted(expected)
    assert [k for k in resumed if resumed[k] != expected[k]] == []
    assert_no_credentials(resumed)
    tree = store.open(url, storage_options=s3.options)
    assert tree.attrs["hrefs"] == [PC_HREF, "https://b.s3.amazonaws.com/k.tif"]
    assert tree.attrs["storage"] == {
        "endpoint_url": s3.endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
    }
    assert tree["/s1"].attrs["source"] == f"see {PC_HREF}"


@pytest.fixture(scope="module")
def model_and_features(tmp_path_factory, s3):
    root = tmp_path_factory.mktemp("s3-predict")
    features = write_learnable_store(root / "features.zarr", shape=(100, 140), chunk=48)
    model = write_tiny_checkpoint(root / "model" / "checkpoint.pt", features, seed=3, dropout=0.0)
    url = s3.url("features.zarr")
    s3.fs.put(str(features), url.removeprefix("s3://"), recursive=True)
    return str(model), str(features), url


def test_cli_predicts_from_and_to_s3(s3, model_and_features, caplog, tmp_path):
    model, features, remote_features = model_and_features
    caplog.set_level(logging.INFO)
    for name in ("sar2ndvi", "s3fs", "fsspec"):
        caplog.set_level(logging.DEBUG, logger=name)
    local = write_prediction(model, features, tmp_path / "ndvi.zarr", progress=False)
    url = s3.url("ndvi.zarr")
    options = [
        f"endpoint_url={s3.endpoint}",
        f"key={KEY_ID}",
        f"secret={SECRET}",
        f"token={SESSION}",
        "client_kwargs.region_name=us-east-1",
    ]
    args = ["predict", model, remote_features, "--out", url, "--period", "pre"]
    for option in options:
        args += ["--storage-option", option]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "dask: threaded scheduler" in first.output

    remote = s3.objects(url)
    expected = local_files(Path(local))
    assert sorted(remote) == sorted(expected)
    # chunks and array metadata are the same bytes; the attributes differ by the input URL
    differ = sorted(k for k in remote if remote[k] != expected[k])
    assert differ == [".zattrs", ".zmetadata", ITEM_FILE]
    tree = store.open(url, storage_options=s3.options)
    assert tree.attrs["sar2ndvi:features"]["store"] == remote_features
    np.testing.assert_array_equal(
        tree.to_dataset()["ndvi"].values, store.open(local).to_dataset()["ndvi"].values
    )
    assert json.loads(remote[ITEM_FILE])["assets"]["ndvi"]["href"] == url
    assert same_prediction(url, model, remote_features, storage_options=s3.options, period="pre")
    assert_no_credentials(remote)

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "reused" in again.output
    # a missing input: one line naming it
    missing_args = ["predict", model, s3.url("nothing.zarr"), "--out", s3.url("x.zarr")]
    missing = CliRunner().invoke(main, missing_args + args[len(missing_args) :])
    assert missing.exit_code == 2
    assert "nothing.zarr: no such store" in missing.output
    text = first.output + again.output + missing.output + caplog.text
    for secret in CREDENTIALS:
        assert secret not in text, secret


def test_storage_option_values(s3, model_and_features):
    from sar2ndvi.cli import _storage_options

    parsed = _storage_options(
        None,
        None,
        (
            "anon=false",
            "key=12345",
            "client_kwargs.region_name=eu-west-1",
            'config_kwargs={"max_pool_connections": 4}',
            "endpoint_url=http://h:9",
        ),
    )
    assert parsed == {
        "anon": False,
        "key": "12345",  # a credential stays text, whatever it looks like
        "client_kwargs": {"region_name": "eu-west-1"},
        "config_kwargs": {"max_pool_connections": 4},
        "endpoint_url": "http://h:9",
    }
    model, _, remote_features = model_and_features
    bad = CliRunner().invoke(
        main, ["predict", model, remote_features, "--out", "x.zarr", "--storage-option", SECRET]
    )
    assert bad.exit_code == 2
    assert "KEY=VALUE" in bad.output
    assert SECRET not in bad.output


def test_patch_dataset_reads_an_s3_store(s3, model_and_features):
    _, features, remote_features = model_and_features
    spec = PatchSpec(32, 16)
    origins = patch_origins((100, 140), spec)
    local = PatchDataset(features, origins, spec)
    remote = PatchDataset(remote_features, origins, spec, storage_options=s3.options)
    assert len(remote) == len(local) > 4
    for i in range(len(local)):
        a, b = local[i], remote[i]
        for key in ("x", "y", "mask"):
            assert torch.equal(a[key], b[key]), (i, key)


def cli_options(s3: S3) -> list[str]:
    """The fixture's storage options as ``--storage-option`` arguments."""
    pairs = [
        f"endpoint_url={s3.endpoint}",
        f"key={KEY_ID}",
        f"secret={SECRET}",
        f"token={SESSION}",
        "client_kwargs.region_name=us-east-1",
    ]
    return [arg for pair in pairs for arg in ("--storage-option", pair)]


def test_landslide_inputs_from_and_to_s3(s3, model_and_features, tmp_path):
    _, features, remote_features = model_and_features
    layers = ["pre_ndvi", "pre_vv", "post_vv", "pre_vh", "slope"]
    # one landslide polygon on the fixture's grid (EPSG:32611, x 390000.., y ..3800000)
    inventory = gpd.GeoDataFrame(
        geometry=[shapely.box(390_300, 3_799_300, 390_700, 3_799_700)], crs="EPSG:32611"
    )

    def write(source: str, out: str, options: dict | None) -> str:
        inputs = landslide_inputs(store.open(source, storage_options=options), layers)
        labels = rasterize_inventory(inventory, inputs)
        return write_inputs(inputs, out, labels=labels, storage_options=options)

    local = write(features, str(tmp_path / "inputs.zarr"), None)
    url = s3.url("inputs.zarr")
    assert write(remote_features, url, s3.options) == url
    assert store.is_complete(url, storage_options=s3.options)
    remote, expected = s3.objects(url), local_files(Path(local))
    assert sorted(remote) == sorted(expected)
    assert [k for k in remote if remote[k] != expected[k]] == []
    assert_no_credentials(remote)
    # the segmentation U-net's patches read from S3 as from disk
    spec = PatchSpec(32, 16)
    origins = patch_origins((100, 140), spec)
    a = PatchDataset(local, origins, spec, group="inputs")
    b = PatchDataset(url, origins, spec, group="inputs", storage_options=s3.options)
    assert a.bands == b.bands == tuple(layers)
    labelled = 0
    for i in range(len(a)):
        for key in ("x", "y", "mask"):
            assert torch.equal(a[i][key], b[i][key]), (i, key)
        labelled += int(b[i]["y"].sum() > 0)
    assert labelled > 0  # the landslide is in the patches


def test_cli_detect_reads_its_inputs_from_s3(s3, model_and_features, tmp_path):
    model = model_and_features[0]
    # one chunk: the labelling graph of many small chunks is slow on S3 and proves no more
    features = str(write_learnable_store(tmp_path / "f.zarr", shape=(96, 128), chunk=128))
    ndvi = write_prediction(model, features, tmp_path / "ndvi.zarr", progress=False, item=False)
    remote_features, remote_ndvi = s3.url("features.zarr"), s3.url("ndvi.zarr")
    for path, url in ((features, remote_features), (ndvi, remote_ndvi)):
        s3.fs.put(path, url.removeprefix("s3://"), recursive=True)
    common = ["--min-slope", "0", "--min-area", "0"]
    local = CliRunner().invoke(
        main, ["detect", features, "--prediction", ndvi, "--out", str(tmp_path / "a"), *common]
    )
    assert local.exit_code == 0, local.output
    args = ["detect", remote_features, "--prediction", remote_ndvi, "--out", str(tmp_path / "b")]
    remote = CliRunner().invoke(main, [*args, *common, *cli_options(s3)])
    assert remote.exit_code == 0, remote.output
    assert "dask: threaded scheduler" in remote.output
    a, b = (local_files(tmp_path / d / "landslides.zarr") for d in "ab")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    polygons = [gpd.read_file(tmp_path / d / "landslides.gpkg") for d in "ab"]
    assert len(polygons[0]) > 0
    assert polygons[0].equals(polygons[1])
    for secret in CREDENTIALS:
        assert secret not in remote.output, secret


@pytest.fixture(scope="module")
def train_features(tmp_path_factory, s3):
    """A feature store large enough for a train / val / test split, local and on S3."""
    features = write_learnable_store(
        tmp_path_factory.mktemp("s3-train") / "features.zarr", shape=(128, 192), chunk=64
    )
    url = s3.url("features.zarr")
    s3.fs.put(str(features), url.removeprefix("s3://"), recursive=True)
    return str(features), url


def test_training_and_scoring_from_s3_give_the_local_numbers(s3, train_features, tmp_path):
    features, url = train_features
    config = TrainConfig(
        patch=PatchSpec(32, 16),
        model=UNetConfig(width=4, depth=2),
        epochs=1,
        batch_size=8,
        block=64,
        seed=3,
        device="cpu",
        num_workers=0,
    )
    local = train(features, tmp_path / "local", config, progress=False)
    # the same run through the command line, from S3 (the run's folder stays local)
    args = ["train", url, "--out", str(tmp_path / "remote"), "--epochs", "1", "--patch-size",
            "32", "--overlap", "16", "--batch-size", "8", "--width", "4", "--depth", "2",
            "--block", "64", "--seed", "3", "--device", "cpu", "--workers", "0"]  # fmt: skip
    result = CliRunner().invoke(main, [*args, *cli_options(s3)])
    assert result.exit_code == 0, result.output
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("local", "remote"))
    assert list(a.state_dict) == list(b.state_dict)
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    assert b.metadata["feature_store"] == url  # no credential recorded
    assert b.metadata["normalisation"] == a.metadata["normalisation"]
    history = [json.loads(json.dumps(r)) for r in local.history]
    remote_rows = (tmp_path / "remote" / "metrics.csv").read_text().splitlines()
    assert len(remote_rows) == len(history) + 1
    assert remote_rows[1].split(",")[1] == str(history[0]["train_loss"])

    # scored from S3: the same table as from disk
    expected = evaluate(local.checkpoint, features, baselines=("linear",))
    got = evaluate(local.checkpoint, url, baselines=("linear",), storage_options=s3.options)
    assert got.table == expected.table
    assert got.table["U-net"]["n_pixels"] > 0
    report = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path / "local"), url, "--no-baselines", "--out",
         str(tmp_path / "report"), *cli_options(s3)],
    )  # fmt: skip
    assert report.exit_code == 0, report.output
    scores = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]["U-net"]
    assert scores == pytest.approx(expected.table["U-net"])
    text = result.output + report.output + (tmp_path / "remote" / "checkpoint.pt").read_bytes(
    ).decode("latin-1")  # fmt: skip
    for secret in CREDENTIALS:
        assert secret not in text, secret
