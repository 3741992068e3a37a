"""The predicted NDVI cube: what GDAL, xarray, STAC and dask.distributed see of it."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
import rasterio
import torch
from click.testing import CliRunner

from sar2ndvi import store
from sar2ndvi.checkpoint import Checkpoint, save_checkpoint
from sar2ndvi.cli import main
from sar2ndvi.errors import InputError
from sar2ndvi.features import PAPER_CHANNELS
from sar2ndvi.model import UNet, UNetConfig
from sar2ndvi.patches import PatchSpec
from sar2ndvi.predict import predict
from sar2ndvi.publish import ITEM_FILE, write_prediction
from tests.support import write_learnable_store

SPEC = PatchSpec(32, 16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    features = str(write_learnable_store(root / "features.zarr", shape=(100, 140), chunk=48))
    torch.manual_seed(1)
    net = UNet(UNetConfig(width=4, depth=2, dropout=0.2))
    norm = store.open(features)["/normalisation"].to_dataset()
    meta = {
        "normalisation": {"band": list(PAPER_CHANNELS),
                          "center": [float(v) for v in norm["center"].values],
                          "scale": [float(v) for v in norm["scale"].values]},
        "patch": SPEC.to_dict(),
    }
    model = root / "model" / "checkpoint.pt"
    save_checkpoint(Checkpoint.from_model(net, meta), model)
    return features, str(model.parent)


def test_the_output_opens_in_gdal_with_the_inputs_grid(inputs, tmp_path):
    features, model = inputs
    out = write_prediction(model, features, tmp_path / "ndvi.zarr", progress=False)
    with rasterio.open(f'ZARR:"{features}":/pre/target') as src:
        crs, transform = src.crs, src.transform
    with rasterio.open(f'ZARR:"{out}":/ndvi') as src:
        assert src.crs == crs
        assert src.transform == transform
        values = src.read(1)
    gaps = store.open(features)["/pre"]["gaps"].values == 1
    expected = np.where(gaps, np.nan, predict(model, features).values)
    np.testing.assert_array_equal(values, expected)
    assert np.isnan(values[gaps]).all()
    assert np.isfinite(values[~gaps]).all()
    tree = store.open(out)
    attrs = tree.attrs
    assert attrs["sar2ndvi:model"]["checkpoint"].endswith("checkpoint.pt")
    assert attrs["sar2ndvi:features"]["store"] == features
    assert attrs["sar2ndvi:feature_spec"]["name"] == "paper9"
    assert {"layover_ascending", "shadow_descending"} <= set(tree.to_dataset().data_vars)


def test_the_stac_item_describes_the_output(inputs, tmp_path):
    features, model = inputs
    out = write_prediction(
        model, features, tmp_path / "ndvi.zarr", progress=False, tta=True, uncertainty=True
    )
    item = pystac.Item.from_dict(json.loads((tmp_path / "ndvi.zarr" / ITEM_FILE).read_text()))
    asset = item.assets["ndvi"]
    assert asset.href == out
    assert item.properties["proj:code"] == "EPSG:32611"
    assert item.properties["proj:shape"] == [100, 140]
    with rasterio.open(f'ZARR:"{out}":/ndvi') as src:
        assert tuple(item.properties["proj:transform"]) == tuple(src.transform)[:6]
    assert {"ndvi", "uncertainty"} <= set(asset.extra_fields["sar2ndvi:variables"])
    lon0, lat0, lon1, lat1 = item.bbox
    assert lon0 < lon1 and lat0 < lat1  # noqa: PT018
    ds = store.open(out).to_dataset()
    assert float(ds["uncertainty"].min()) >= 0


def test_uncertainty_needs_several_predictions(inputs, tmp_path):
    features, model = inputs
    with pytest.raises(InputError, match="tta"):
        write_prediction(model, features, tmp_path / "x.zarr", uncertainty=True, progress=False)


def test_distributed_cluster_predicts_what_threads_predict(inputs):
    distributed = pytest.importorskip("distributed")
    features, model = inputs
    threaded = predict(model, features).values
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster):
        on_cluster = predict(model, features).compute().values
    # the same patches, blended the same way; only torch's float32 reductions may differ
    # (a worker runs one thread)
    np.testing.assert_allclose(on_cluster, threaded, rtol=0, atol=1e-6)


def test_cli_predict(inputs, tmp_path):
    features, model = inputs
    out = tmp_path / "cli.zarr"
    result = CliRunner().invoke(
        main, ["predict", model, features, "--out", str(out), "--period", "pre"]
    )
    assert result.exit_code == 0, result.output
    assert store.is_complete(out)
    assert (out / ITEM_FILE).exists()


def test_cli_reuses_only_the_same_prediction(inputs, tmp_path):
    features, model = inputs
    out = tmp_path / "reuse.zarr"
    args = ["predict", model, features, "--out", str(out), "--period", "pre"]
    assert CliRunner().invoke(main, args).exit_code == 0
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert "reused" in again.output
    other = CliRunner().invoke(main, [*args, "--tta"])
    assert other.exit_code == 2
    assert "another model, features or options" in other.output
