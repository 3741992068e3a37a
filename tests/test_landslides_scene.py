"""Landslide mapping end to end on a simulated event: `sar2ndvi detect` and
`sar2ndvi evaluate-landslides` against the simulator's inventory."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner

from sar2ndvi import store
from sar2ndvi.catalog import select_scenes
from sar2ndvi.checkpoint import load_checkpoint
from sar2ndvi.cli import main
from sar2ndvi.confusion import confusion
from sar2ndvi.cube import build_cube
from sar2ndvi.features import FeatureSpec, build_features
from sar2ndvi.landslides import landslide_inputs, rasterize_inventory, stack_layers
from sar2ndvi.predict import ModelRunner, predict_layers
from sar2ndvi.synth.area import scene_recipe
from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.scene import simulate
from sar2ndvi.synth.server import serve_scene


@pytest.fixture(scope="module")
def event(tmp_path_factory):
    """A 192 px simulated event with dense landslides: scene, cube and feature stores."""
    root = tmp_path_factory.mktemp("landslide-event")
    config = SceneConfig(seed=3, size=(192, 192), landslide_density=30.0)
    scene = simulate(config, root / "scene", progress=False)
    with serve_scene(scene) as api:
        recipe = scene_recipe(scene, url=api.url, chunk=96)
        selection = select_scenes(recipe)
    cube = root / "cube.zarr"
    store.write(build_cube(recipe, selection), cube, progress=False)
    features = root / "features.zarr"
    store.write(build_features(store.open(cube), FeatureSpec(window=11)), features, progress=False)
    return scene, cube, features


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_detect_maps_the_inventory_and_writes_polygons_a_gis_reads(event, tmp_path):
    scene, _, features = event
    out = tmp_path / "detect"
    output = _run(["detect", features, "--optical", "--out", out, "--min-area", 300])
    assert "landslides" in output
    layers = store.open(out / "landslides.zarr")
    layers = layers.to_dataset() if hasattr(layers, "to_dataset") else layers
    assert layers.rio.crs is not None
    assert layers.attrs["sar2ndvi:method"] == "threshold"
    mask = layers["mask"].values.astype(bool)
    truth = rasterize_inventory(scene.truth("landslides.geojson"), layers).values > 0
    scores = confusion(mask, truth)
    # Sentinel-2's dNDVI of a cloud-free post image finds the simulated scars well
    assert scores.mcc > 0.6, scores
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert set(polygons.columns) >= {"area_m2", "mean_dndvi", "mean_slope_deg", "confidence"}
    assert (polygons["mean_dndvi"] < 0).all()
    assert (polygons["mean_slope_deg"] >= 10).all()
    assert polygons.crs == layers.rio.crs
    # the polygons are the mask: burnt back, every pixel agrees
    back = rasterize_inventory(polygons, layers).values > 0
    assert np.array_equal(back, mask)
    assert np.isclose(polygons["area_m2"].sum(), mask.sum() * 100.0)
    assert len(gpd.read_file(out / "landslides.geojson")) == len(polygons)


def test_evaluate_landslides_scores_every_setting_and_method(event, tmp_path, monkeypatch):
    scene, cube, features = event
    out = tmp_path / "eval"
    args = [
        "evaluate-landslides", features, "--inventory", scene.truth("landslides.geojson"),
        "--cube", cube, "--settings", "2,3", "--epochs", "1", "--patch-size", "32",
        "--overlap", "16", "--width", "8", "--workers", "0", "--out", out,
    ]
    output = _run(args)
    assert "dNDVI threshold" in output
    assert "CART" in output
    rows = json.loads((out / "landslide-metrics.json").read_text())["rows"]
    keys = {(r["setting"], r["method"]) for r in rows}
    assert keys == {("2", "U-net"), ("2", "CART"), ("2", "dNDVI threshold"),
                    ("3", "U-net"), ("3", "CART")}
    # every method is scored on the same pixels
    totals = {r["tp"] + r["fp"] + r["fn"] + r["tn"] for r in rows}
    assert len(totals) == 1
    assert totals.pop() > 1000
    assert all(r["tp"] + r["fn"] > 0 for r in rows)  # the test blocks hold landslides
    by = {(r["setting"], r["method"]): r for r in rows}
    assert by[("2", "dNDVI threshold")]["mcc"] > 0.5
    for name in ("landslide-metrics.csv", "landslide-map.png", "landslide-config.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "models" / "setting-3" / "checkpoint.pt").exists()
    # each U-net and CART cuts at its operating point, chosen on the validation blocks and
    # reported; the U-net's is the one its checkpoint and finished run record
    cut = by[("3", "U-net")]["cut"]
    assert cut == load_checkpoint(out / "models" / "setting-3").metadata["threshold"]
    finished = json.loads((out / "models" / "setting-3" / "finished.json").read_text())
    assert finished["threshold"] == cut
    assert 0 <= by[("2", "CART")]["cut"] <= 1
    assert by[("2", "dNDVI threshold")]["cut"] is None
    # a re-run reuses the finished segmentation runs and scores the same
    again = _run(args)
    assert again.count("finished run: reused") == 2
    assert json.loads((out / "landslide-metrics.json").read_text())["rows"] == rows
    # a segmentation checkpoint maps the scene through `detect --method unet`, running the
    # network over the scene at most twice (object count, then the store), not once per
    # input chunk
    patches = []
    real_call = ModelRunner.__call__

    def counting(self, x):
        patches.append(len(x))
        return real_call(self, x)

    monkeypatch.setattr(ModelRunner, "__call__", counting)
    det = tmp_path / "unet"
    _run(["detect", features, "--method", "unet", "--model", out / "models" / "setting-3",
          "--out", det, "--min-area", 0])
    in_detect = sum(patches)
    patches.clear()
    model = out / "models" / "setting-3"
    layers = ["pre_vv", "post_vv"]
    predict_layers(model, stack_layers(landslide_inputs(features, layers), layers)).compute()
    assert 0 < in_detect <= 2 * sum(patches)
    layers = store.open(det / "landslides.zarr")
    layers = layers.to_dataset() if hasattr(layers, "to_dataset") else layers
    score = layers["score"].values
    assert np.nanmin(score) >= 0
    assert np.nanmax(score) <= 1
    assert np.array_equal(layers["mask"].values == 1, layers["label"].values > 0)
    # with no --probability, detect cuts at the checkpoint's operating point
    assert layers.attrs["sar2ndvi:probability"] == cut
    assert np.array_equal(layers["mask"].values == 1, score >= cut)
