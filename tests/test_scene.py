"""The scene folder: determinism, the physics seen through the written products, safety."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject

from sar2ndvi.errors import InputError, OutputExistsError
from sar2ndvi.synth import scene as scene_module
from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.scene import Scene, simulate

TINY = (64, 96)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1, masked=False), ds.profile


def _items(scene, collection):
    return [(p, json.loads(p.read_text())) for p in scene.item_paths(collection)]


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path):
    a = simulate(SceneConfig(seed=3, size=TINY), tmp_path / "a", progress=False)
    b = simulate(SceneConfig(seed=3, size=TINY), tmp_path / "b", progress=False)
    c = simulate(SceneConfig(seed=4, size=TINY), tmp_path / "c", progress=False)
    files_a = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    assert a.manifest["files"] == b.manifest["files"]
    differing = [k for k, v in a.manifest["files"].items() if c.manifest["files"].get(k) != v]
    assert len(differing) > len(a.manifest["files"]) // 2


def test_manifest_lists_every_file_with_its_checksum(scene):
    from sar2ndvi.synth.cog import multihash_sha256

    on_disk = {str(p.relative_to(scene.path)) for p in scene.path.rglob("*") if p.is_file()}
    assert on_disk - {"scene.json"} == set(scene.manifest["files"])
    for rel, checksum in list(scene.manifest["files"].items())[::7]:
        assert multihash_sha256(scene.path / rel) == checksum


# --- physics, read back from the products -------------------------------------------------


def _ndvi_from_s2(path, item):
    def reflectance(band):
        dn, _ = _read(path.parent / item["assets"][band]["href"])
        offset = 1000 if item["properties"]["s2:processing_baseline"] >= "04.00" else 0
        return (dn.astype(np.float64) - offset) / 10000.0

    red, nir = reflectance("B04"), reflectance("B08")
    return (nir - red) / (nir + red)


def test_s2_ndvi_after_harmonisation_equals_the_truth_in_clear_pixels(scene):
    truth = {"pre": _read(scene.truth("ndvi_pre"))[0], "post": _read(scene.truth("ndvi_post"))[0]}
    event = scene.manifest["event"]["date"]
    checked = 0
    for path, item in _items(scene, "sentinel-2-l2a"):
        period = "pre" if item["properties"]["datetime"] < event else "post"
        scl, _ = _read(path.parent / item["assets"]["SCL"]["href"])
        clear = np.repeat(np.repeat(np.isin(scl, [4, 5, 6]), 2, 0), 2, 1)
        clear = clear[: truth[period].shape[0], : truth[period].shape[1]]
        if clear.mean() < 0.3:
            continue
        ndvi = _ndvi_from_s2(path, item)
        error = np.abs(ndvi - truth[period])[clear]
        assert np.median(error) < 0.02, item["id"]
        checked += 1
    assert checked >= 2


def test_ignoring_the_baseline_offset_would_bias_ndvi(scene):
    # The test above is sensitive to harmonisation: reading a 05.10 scene without
    # removing the +1000 offset lowers NDVI by a lot.
    truth = _read(scene.truth("ndvi_pre"))[0]
    for path, item in _items(scene, "sentinel-2-l2a"):
        if item["properties"]["s2:processing_baseline"] != "05.10":
            continue
        red, _ = _read(path.parent / item["assets"]["B04"]["href"])
        nir, _ = _read(path.parent / item["assets"]["B08"]["href"])
        naive = (nir.astype(float) - red) / (nir.astype(float) + red)
        veg = truth > 0.6
        assert np.nanmedian(truth[veg] - naive[veg]) > 0.05
        return
    pytest.fail("no scene with baseline 05.10")


def test_radar_shadow_is_nodata_and_isolated_gaps_are_rare(scene):
    for path, item in _items(scene, "sentinel-1-rtc"):
        orbit = item["properties"]["sat:orbit_state"]
        shadow = _read(scene.truth(f"shadow_{orbit}"))[0].astype(bool)
        vv, profile = _read(path.parent / item["assets"]["vv"]["href"])
        assert profile["nodata"] == -32768
        nodata = vv == -32768
        assert nodata[shadow].all()
        assert nodata[~shadow].mean() < 0.005
        assert np.all(vv[~nodata] > 0)


def test_vh_sees_vegetation(scene):
    cover = _read(scene.truth("land_cover_pre"))[0]
    forest, bare = cover == 5, np.isin(cover, [2, 3])
    if forest.sum() < 50 or bare.sum() < 50:
        pytest.skip("test scene lacks forest or bare ground")
    event = scene.manifest["event"]["date"]
    for path, item in _items(scene, "sentinel-1-rtc"):
        if item["properties"]["datetime"] > event:
            continue
        vh, _ = _read(path.parent / item["assets"]["vh"]["href"])
        vh = np.where(vh == -32768, np.nan, vh)
        assert np.nanmean(vh[forest]) > 1.5 * np.nanmean(vh[bare])


def test_landslides_strip_vegetation_on_steep_slopes(scene):
    slides = _read(scene.truth("landslides"))[0].astype(bool)
    if slides.sum() < 20:
        pytest.skip("too few landslide pixels in the test scene")
    slope = _read(scene.truth("slope"))[0]
    pre, post = _read(scene.truth("ndvi_pre"))[0], _read(scene.truth("ndvi_post"))[0]
    # Slides start on steep ground and run out onto gentler slopes: their pixels are
    # steeper on average, and steep (> 30 deg) ground is clearly over-represented.
    assert slope[slides].mean() > slope.mean() + 3
    assert (slope[slides] > 30).mean() > 1.3 * (slope > 30).mean()
    assert np.median(post[slides]) < 0.25
    assert pre[slides].mean() - post[slides].mean() > 0.2
    # outside the slides, NDVI changes only on the clearings (the non-landslide change)
    cleared = _read(scene.truth("disturbances"))[0].astype(bool)
    assert not (cleared & slides).any()
    unchanged = ~slides & ~cleared
    np.testing.assert_array_equal(pre[unchanged], post[unchanged])


def test_dem_product_reprojects_back_onto_the_terrain(scene):
    truth, profile = _read(scene.truth("elevation"))
    back = np.full(truth.shape, np.nan, np.float32)
    for path, item in _items(scene, "cop-dem-glo-30"):
        with rasterio.open(path.parent / item["assets"]["data"]["href"]) as ds:
            part = np.full(truth.shape, np.nan, np.float32)
            reproject(
                ds.read(1),
                part,
                src_transform=ds.transform,
                src_crs=ds.crs,
                dst_transform=profile["transform"],
                dst_crs=profile["crs"],
                dst_nodata=np.nan,
                resampling=Resampling.bilinear,
            )
            back = np.where(np.isnan(back), part, back)
    assert not np.isnan(back).any()
    assert np.median(np.abs(back - truth)) < 10.0  # a 30 m DEM of 10 m terrain


# --- the output folder ----------------------------------------------------------------------


def test_rerun_reuses_a_complete_scene(tmp_path):
    config = SceneConfig(seed=1, size=TINY)
    first = simulate(config, tmp_path / "s", progress=False)
    stamp = (first.path / "scene.json").stat().st_mtime_ns
    again = simulate(config, tmp_path / "s", progress=False)
    assert again.fingerprint == first.fingerprint
    assert (first.path / "scene.json").stat().st_mtime_ns == stamp


def test_a_different_simulation_is_not_overwritten_without_permission(tmp_path):
    out = tmp_path / "s"
    first = simulate(SceneConfig(seed=1, size=TINY), out, progress=False)
    before = (out / "scene.json").read_bytes()
    with pytest.raises(OutputExistsError, match=r"different simulation .*--overwrite"):
        simulate(SceneConfig(seed=2, size=TINY), out, progress=False)
    assert (out / "scene.json").read_bytes() == before
    replaced = simulate(SceneConfig(seed=2, size=TINY), out, overwrite=True, progress=False)
    assert replaced.fingerprint != first.fingerprint
    assert not list(tmp_path.glob(".s.*"))


def test_a_folder_with_other_files_is_refused(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="not empty"):
        simulate(SceneConfig(size=TINY), out, progress=False)
    assert (out / "thesis.txt").read_text() == "precious"


def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = scene_module.simulate_s2_acquisition

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scene_module, "simulate_s2_acquisition", failing)
    with pytest.raises(KeyboardInterrupt):
        simulate(SceneConfig(size=TINY), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    assert not list(tmp_path.iterdir())


def test_fractal_terrain_scene(tmp_path):
    scene = simulate(
        SceneConfig(seed=2, size=TINY, terrain="fractal"), tmp_path / "f", progress=False
    )
    elevation = _read(scene.truth("elevation"))[0]
    assert elevation.shape == TINY
    assert elevation.max() - elevation.min() > 50
    assert scene.manifest["config"]["terrain"] == "fractal"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_dem_without_crs_is_refused(tmp_path):
    path = tmp_path / "nocrs.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=400, height=400, count=1, dtype="float32"
    ) as ds:
        ds.write(np.zeros((400, 400), np.float32), 1)
    with pytest.raises(InputError, match="CRS"):
        simulate(SceneConfig(size=TINY, dem=str(path)), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_a_scene_larger_than_the_dem_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"size|larger|exceed|maximum"):
        simulate(SceneConfig(size=(4000, 4000)), tmp_path / "s", progress=False)


def test_open_rejects_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(InputError, match="not a simulated scene"):
        Scene.open(tmp_path)
