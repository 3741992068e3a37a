"""Landslide mapping: scores against scikit-learn, rasterise/polygonise round trips, the
threshold method on planted landslides, the inventory's errors, segmentation training."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn import metrics as skm

from sar2ndvi import store
from sar2ndvi.change import detect_change, disk, label_objects, otsu_threshold
from sar2ndvi.confusion import Confusion, ThresholdCurve, confusion
from sar2ndvi.errors import InputError
from sar2ndvi.landslide_eval import object_counts
from sar2ndvi.landslides import SETTINGS, rasterize_inventory, read_inventory, setting
from sar2ndvi.polygons import polygonize, write_polygons
from sar2ndvi.segment import segmentation_loss

CRS = "EPSG:32611"
RES = 10.0


def grid(shape=(96, 128), chunks=32, x0=500_000.0, y0=4_000_000.0) -> xr.DataArray:
    """A georeferenced, chunked (y, x) zero array of 10 m pixels."""
    ny, nx = shape
    da_ = xr.DataArray(
        np.zeros(shape, np.float32),
        dims=("y", "x"),
        coords={"y": y0 - RES * (np.arange(ny) + 0.5), "x": x0 + RES * (np.arange(nx) + 0.5)},
    ).chunk(chunks)
    return store.georeference(da_.to_dataset(name="v"), CRS)["v"]


# --- scores -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_scores_match_scikit_learn(seed, p_pred, p_true):
    rng = np.random.default_rng(seed)
    pred, truth = rng.random((20, 30)) < p_pred, rng.random((20, 30)) < p_true
    valid = rng.random((20, 30)) < 0.8
    c = confusion(pred, truth, valid)
    y, p = truth[valid], pred[valid]
    assert c.total == valid.sum()
    assert c.precision == pytest.approx(skm.precision_score(y, p, zero_division=0))
    assert c.recall == pytest.approx(skm.recall_score(y, p, zero_division=0))
    assert c.f1 == pytest.approx(skm.f1_score(y, p, zero_division=0))
    assert c.iou == pytest.approx(skm.jaccard_score(y, p, zero_division=0))
    assert c.mcc == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from([10, 100, 1000]))
def test_threshold_curve_finds_the_cut_of_highest_mcc(seed, levels, bins):
    rng = np.random.default_rng(seed)
    truth = rng.random(500) < 0.2
    # scores on a few levels (like a tree's leaves) or continuous, leaning to the truth
    noise = rng.integers(0, levels, 500) / levels if levels > 1 else rng.random(500)
    score = np.clip(0.6 * truth + 0.7 * noise - 0.1, 0, 1)
    valid = rng.random(500) < 0.9
    curve = ThresholdCurve.of(score, truth, valid, bins=bins)
    cut, best = curve.best_threshold()
    y, s = truth[valid], score[valid]
    # the cut's confusion is the mask's, and no cut on the grid scores higher
    assert best == confusion(s >= cut, y)
    cuts = np.linspace(0, 1, bins + 1)
    grid_best = max(confusion(s >= t, y).mcc for t in cuts)
    if y.any() and (~y).any():
        assert best.mcc == pytest.approx(grid_best, abs=1e-12)
        assert best.mcc == pytest.approx(skm.matthews_corrcoef(y, s >= cut), abs=1e-12)
    for k in (0, bins // 3, bins // 2, bins):
        assert curve.at(k / bins) == confusion(s >= k / bins, y)
    halves = ThresholdCurve.of(score[:200], truth[:200], valid[:200], bins=bins)
    rest = ThresholdCurve.of(score[200:], truth[200:], valid[200:], bins=bins)
    assert (halves + rest).at(0.5) == curve.at(0.5)


def test_threshold_curve_sits_between_score_levels():
    # two score levels: every cut in (0.2, 0.7] separates them perfectly
    score = np.array([0.2] * 50 + [0.7] * 10)
    truth = np.array([0] * 50 + [1] * 10)
    cut, best = ThresholdCurve.of(score, truth).best_threshold()
    assert best.mcc == 1.0
    assert cut == pytest.approx(0.4505)  # midway between the cuts 0.201 and 0.7
    # no positive pixel: no cut is better than another, 0.5 is kept
    assert ThresholdCurve.of(score, np.zeros(60)).best_threshold()[0] == 0.5


def test_counts_pool_by_addition_and_masked_pixels_never_count():
    rng = np.random.default_rng(1)
    pred, truth = rng.random((40, 40)) < 0.3, rng.random((40, 40)) < 0.2
    whole = confusion(pred, truth)
    assert confusion(pred[:15], truth[:15]) + confusion(pred[15:], truth[15:]) == whole
    garbage = pred.copy()
    garbage[:, :10] = ~garbage[:, :10]
    valid = np.ones_like(pred)
    valid[:, :10] = False
    assert confusion(garbage, truth, valid) == confusion(pred, truth, valid)
    ref = truth.astype(np.float32)
    ref[:, :10] = np.nan  # NaN in the reference: unscored
    assert confusion(garbage, ref) == confusion(pred, truth, valid)
    assert Confusion(0, 0, 5, 5).precision == 0.0
    assert Confusion(0, 0, 5, 5).mcc == 0.0
    with pytest.raises(InputError, match="only 0 and 1"):
        confusion(np.full((2, 2), 2), truth[:2, :2])


def test_object_counts():
    ids = np.zeros((20, 20), np.int32)
    ids[2:5, 2:5], ids[10:14, 10:14], ids[16:19, 1:3] = 1, 2, 3
    pred = np.zeros((20, 20), bool)
    pred[3, 3] = True  # hits landslide 1
    pred[0:2, 15:18] = True  # a false object
    scored = np.ones((20, 20), bool)
    scored[15:, :] = False  # landslide 3 is outside the scored area
    counts = object_counts(pred, ids, scored)
    assert (counts.reference, counts.hit, counts.predicted, counts.matched) == (2, 1, 2, 1)
    assert counts.hit_rate == 0.5
    assert counts.matched_rate == 0.5


# --- inventory, rasterise, polygonise --------------------------------------------------------


def blobs(shape, seed, n=6) -> np.ndarray:
    """Distinct 8-connected-separated random blobs, labelled 1..k."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    for _ in range(n):
        r, c = rng.integers(4, shape[0] - 12), rng.integers(4, shape[1] - 12)
        h, w = rng.integers(2, 9, size=2)
        mask[r : r + h, c : c + w] = True
    mask = ndimage.binary_opening(mask)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    return labels.astype(np.int32)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([16, 32, 50]))
def test_polygonise_then_rasterise_round_trip_keeps_every_pixel(seed, chunks):
    like = grid(chunks=chunks)
    labels = blobs(like.shape, seed)
    lazy = xr.DataArray(labels, dims=("y", "x"), coords=like.coords).chunk(chunks)
    weights = xr.DataArray(
        np.random.default_rng(seed).random(like.shape), dims=("y", "x"), coords=like.coords
    )
    frame = polygonize(lazy, {"mean_w": weights})
    ids = np.unique(labels[labels > 0])
    assert list(frame["id"]) == list(ids)
    # areas: the polygons' geometric area, the pixel count, and the stored column agree
    counts = np.bincount(labels.ravel())[ids]
    assert np.allclose(frame.geometry.area, counts * RES**2)
    assert np.array_equal(frame["pixels"], counts)
    assert np.allclose(frame["area_m2"], counts * RES**2)
    means = ndimage.mean(weights.values, labels, ids)
    assert np.allclose(frame["mean_w"], means)
    back = rasterize_inventory(frame.drop(columns="id"), like).values
    # rasterize numbers polygons by row (sorted by id): 1..k in order
    remap = np.zeros(labels.max() + 1, np.int32)
    remap[ids] = np.arange(1, len(ids) + 1)
    assert np.array_equal(back, remap[labels])


def test_polygons_do_not_depend_on_chunking(tmp_path):
    like = grid()
    labels = blobs(like.shape, 3, n=10)
    frames = [
        polygonize(xr.DataArray(labels, dims=("y", "x"), coords=like.coords).chunk(c))
        for c in (17, 96 * 128)
    ]
    assert all(a.equals(b) for a, b in zip(frames[0].geometry, frames[1].geometry, strict=True))
    for suffix in ("gpkg", "geojson"):
        path = write_polygons(frames[0], tmp_path / f"out.{suffix}")
        back = gpd.read_file(path)
        assert back.crs == frames[0].crs
        assert np.allclose(back.geometry.area.to_numpy(), frames[0].geometry.area.to_numpy())
        assert list(back["pixels"]) == list(frames[0]["pixels"])


def test_inventory_errors_name_the_problem(tmp_path):
    like = grid()
    with pytest.raises(InputError, match="no such landslide inventory"):
        read_inventory(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        read_inventory(bad)
    empty = gpd.GeoDataFrame(geometry=[], crs=CRS)
    with pytest.raises(InputError, match="holds no polygon"):
        rasterize_inventory(empty, like)
    square = shapely.box(500_100, 3_999_500, 500_300, 3_999_700)
    with pytest.raises(InputError, match="has no CRS"):
        rasterize_inventory(gpd.GeoDataFrame(geometry=[square]), like)
    elsewhere = gpd.GeoDataFrame(geometry=[square], crs="EPSG:32633")  # wrong UTM zone
    with pytest.raises(InputError, match="does not overlap the grid"):
        rasterize_inventory(elsewhere, like)
    points = gpd.GeoDataFrame(geometry=[shapely.Point(500_100, 3_999_500)], crs=CRS)
    with pytest.raises(InputError, match="are polygons"):
        rasterize_inventory(points, like)


def test_rasterize_reprojects_and_burns_pixel_centres():
    like = grid()
    square = shapely.box(500_100, 3_999_500, 500_300, 3_999_700)  # 20 x 20 px
    frame = gpd.GeoDataFrame(geometry=[square], crs=CRS).to_crs("EPSG:4326")
    ids = rasterize_inventory(frame, like).values
    assert ids.sum() == pytest.approx(400, abs=4)  # reprojection bends edges slightly
    exact = rasterize_inventory(gpd.GeoDataFrame(geometry=[square], crs=CRS), like).values
    assert exact.sum() == 400
    assert exact[30:50, 10:30].all()


# --- the threshold method ---------------------------------------------------------------------


def planted(shape=(120, 160), chunks=40):
    """Noiseless scene: NDVI change -0.5 inside two planted slides on a steep slope."""
    like = grid(shape, chunks)
    truth = np.zeros(shape, bool)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth |= ((yy - 40) / 18.0) ** 2 + ((xx - 50) / 9.0) ** 2 <= 1  # an elongated slide
    truth[70:100, 100:112] = True
    dndvi = np.where(truth, -0.5, 0.02).astype(np.float32)
    slope = np.full(shape, 30.0, np.float32)
    slope[:, 140:] = 2.0  # a flat valley floor
    dndvi[5:20, 145:155] = -0.6  # vegetation loss on the flat: a field, not a landslide
    wrap = lambda a: xr.DataArray(a, dims=("y", "x"), coords=like.coords).chunk(chunks)  # noqa: E731
    return wrap(dndvi), wrap(slope), truth


def test_threshold_method_finds_a_planted_landslide_exactly():
    dndvi, slope, truth = planted()
    result = detect_change(dndvi, slope, threshold=-0.2, min_area=500.0)
    mask = result.layers["mask"].values.astype(bool)
    c = confusion(mask, truth)
    assert c.iou > 0.9
    assert c.fp == 0  # the flat field is gated out by the slope
    # Otsu on the scene's dNDVI separates the two modes
    otsu = otsu_threshold(dndvi)
    assert -0.5 < otsu < 0.02
    assert confusion(detect_change(dndvi, slope).layers["mask"].values, truth).iou > 0.9


def test_change_cleaning_is_exact_across_chunks_and_drops_small_objects():
    rng = np.random.default_rng(5)
    shape = (90, 110)
    like = grid(shape, 30)
    noisy = np.where(rng.random(shape) < 0.2, -0.5, 0.0).astype(np.float32)
    noisy[20:40, 20:50] = -0.5  # one real slide: 600 px = 60,000 m^2
    dndvi = xr.DataArray(noisy, dims=("y", "x"), coords=like.coords)
    layers = [
        detect_change(dndvi.chunk(c), threshold=-0.2, min_area=2000.0, radius=1).layers
        for c in (23, 200)
    ]
    masks = [la["mask"].values for la in layers]
    assert np.array_equal(masks[0], masks[1])
    # the reference: whole-array scipy opening + closing, then the area filter
    fp = disk(1)
    ref = ndimage.binary_closing(ndimage.binary_opening(noisy < -0.2, fp), fp)
    lab, _ = ndimage.label(ref, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())
    ref = (sizes[lab] >= 20) & (lab > 0)
    assert np.array_equal(masks[0].astype(bool), ref)
    assert masks[0][20:40, 20:50].mean() > 0.95


def test_labels_merge_across_chunk_borders():
    import dask.array as da

    mask = np.zeros((40, 40), bool)
    mask[5:35, 18:22] = True  # crosses the chunk border at 20 both ways
    labels, n = label_objects(da.from_array(mask, chunks=20))
    assert n == 1
    assert set(np.unique(labels.compute())) == {0, 1}


# --- settings and segmentation ----------------------------------------------------------------


def test_settings_are_the_papers():
    assert SETTINGS["2"].layers == ("dndvi", "pre_vv", "post_vv")
    assert SETTINGS["3"].layers == ("pre_vv", "post_vv")
    assert set(SETTINGS["4"].layers) == {"post_B02", "post_B03", "post_B04", "post_B08", "dndvi"}
    assert not SETTINGS["5"].post_optical
    assert SETTINGS["2"].post_optical
    with pytest.raises(InputError, match="unknown landslide input setting"):
        setting(7)


def test_segmentation_loss_is_balanced_and_masked():
    torch.manual_seed(0)
    y = (torch.rand(2, 1, 16, 16) < 0.1).float()
    mask = torch.rand(2, 1, 16, 16) < 0.7
    perfect = torch.where(y > 0, 20.0, -20.0)
    assert float(segmentation_loss(perfect, y, mask)) < 1e-3
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    loss = segmentation_loss(logits, y, mask, pos_weight=5.0)
    loss.backward()
    assert float(loss) > 0
    assert bool((logits.grad[~mask] == 0).all())
    garbage = logits.detach().clone()
    garbage[~mask] = 99.0
    y2 = y.clone()
    y2[~mask] = 1 - y2[~mask]
    assert float(segmentation_loss(garbage, y2, mask, pos_weight=5.0)) == pytest.approx(float(loss))
    # missing a positive costs pos_weight times a false positive (BCE term)
    miss = segmentation_loss(torch.tensor([[[[-3.0]]]]), torch.ones(1, 1, 1, 1),
                             torch.ones(1, 1, 1, 1, dtype=bool), pos_weight=4.0, dice_weight=0)
    false = segmentation_loss(torch.tensor([[[[3.0]]]]), torch.zeros(1, 1, 1, 1),
                              torch.ones(1, 1, 1, 1, dtype=bool), pos_weight=4.0, dice_weight=0)
    assert float(miss) == pytest.approx(4 * float(false))
