"""The patch lattice, cloudy-patch selection, the Zarr patch loader and the augmentation.

Most tests read a synthetic feature store whose values are known everywhere
(features[b, y, x] = 1000 b + y + x / 1000, NaNs, gaps and clouds at chosen places), so
every patch the loader returns is checked exactly against the NumPy source.
"""

from __future__ import annotations

import itertools
import pickle

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from dask.callbacks import Callback
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from sar2ndvi import store
from sar2ndvi.errors import InputError
from sar2ndvi.features import ORBIT_CHANNELS, PAPER_CHANNELS, terrain_encodings
from sar2ndvi.geometry import ASCENDING, DESCENDING, horn_slope_aspect, layover_shadow
from sar2ndvi.patches import (
    PATCH_128,
    PATCH_256,
    Augment,
    AugmentOps,
    PatchDataset,
    PatchSpec,
    TileSampler,
    make_loader,
    patch_generator,
    patch_origins,
    patch_validity,
    select_patches,
)

SHAPE = (200, 264)  # not a multiple of the chunk: partial edge chunks
CHUNK = 64
SPEC = PatchSpec(48, 16)  # stride 32, cell 16: patches straddle chunk edges


# --------------------------------------------------------------------------- a known store


def synthetic_arrays(shape=SHAPE, bands=PAPER_CHANNELS, seed=0) -> dict[str, np.ndarray]:
    """Known values: features 1000 b + y + x/1000; NaNs, gaps and a cloud at set places."""
    h, w = shape
    b, y, x = np.meshgrid(np.arange(len(bands)), np.arange(h), np.arange(w), indexing="ij")
    features = (1000.0 * b + y + x / 1000.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    features[rng.random(features.shape) < 0.002] = np.nan  # scattered no-data
    target = ((y[0] % 50) / 50.0 - 0.2).astype(np.float32)
    target[20:90, 30:140] = np.nan  # a cloud
    gaps = np.zeros(shape, dtype=np.uint8)
    gaps[150:, 200:] = 1  # a radar gap in one corner
    center = (1000.0 * np.arange(len(bands)) + 80.0).astype(np.float32)
    scale = np.linspace(2.0, 5.0, len(bands)).astype(np.float32)
    return {"features": features, "target": target, "gaps": gaps, "center": center,
            "scale": scale}


def write_store(path, arrays, bands=PAPER_CHANNELS, chunk=CHUNK):
    """A feature store with the layout of `write_features`, from NumPy arrays."""
    h, w = arrays["target"].shape
    coords = {"y": 3_000_000.0 - 10.0 * np.arange(h) - 5.0, "x": 500_000.0 + 10.0 * np.arange(w)}

    def period() -> xr.Dataset:
        ds = xr.Dataset(
            {
                "features": (("band", "y", "x"), arrays["features"]),
                "target": (("y", "x"), arrays["target"]),
                "gaps": (("y", "x"), arrays["gaps"]),
                "clear_count": (("y", "x"), np.ones((h, w), dtype=np.int16)),
            },
            coords={**coords, "band": list(bands)},
        ).chunk({"band": 1, "y": chunk, "x": chunk})
        return store.georeference(ds, "EPSG:32651")

    quality = xr.Dataset(
        {f"{k}_{o}": (("y", "x"), np.zeros((h, w), dtype=np.uint8))
         for k in ("layover", "shadow") for o in ("ascending", "descending")},
        coords=coords,
    ).chunk({"y": chunk, "x": chunk})
    norm = xr.Dataset(
        {"center": ("band", arrays["center"]), "scale": ("band", arrays["scale"])},
        coords={"band": list(bands)},
    )
    tree = xr.DataTree.from_dict({
        "/pre": period(),
        "/post": period(),
        "/quality": store.georeference(quality, "EPSG:32651"),
        "/normalisation": norm,
    })
    tree.attrs["sar2ndvi:window"] = 19
    store.write(tree, path, progress=False)
    return path


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    arrays = synthetic_arrays()
    path = write_store(tmp_path_factory.mktemp("patches") / "features.zarr", arrays)
    return str(path), arrays


@pytest.fixture(scope="module")
def orbit_store(tmp_path_factory):
    arrays = synthetic_arrays(shape=(96, 96), bands=ORBIT_CHANNELS)
    path = tmp_path_factory.mktemp("orbits") / "features.zarr"
    write_store(path, arrays, bands=ORBIT_CHANNELS, chunk=32)
    return str(path), arrays


def reference_sample(arrays, origin, size):
    """What PatchDataset must return for a patch without augmentation, from NumPy."""
    r, c = origin
    f = arrays["features"][:, r:r + size, c:c + size]
    t = arrays["target"][r:r + size, c:c + size]
    g = arrays["gaps"][r:r + size, c:c + size]
    x = (f - arrays["center"][:, None, None]) / arrays["scale"][:, None, None]
    mask = np.isfinite(t) & (g == 0) & np.isfinite(f).all(axis=0)
    return {
        "x": np.where(np.isfinite(x), x, 0).astype(np.float32),
        "y": np.where(np.isfinite(t), t, 0).astype(np.float32)[None],
        "mask": mask[None],
    }


def assert_sample_equal(sample, expected, origin):
    for key in ("x", "y", "mask"):
        np.testing.assert_array_equal(sample[key].numpy(), expected[key], err_msg=key)
    assert sample["origin"].tolist() == list(origin)


# --------------------------------------------------------------------------- the lattice


def test_patch_spec_stride_presets_and_validation():
    assert PatchSpec(128, 64) == PATCH_128
    assert (PATCH_128.stride, PATCH_128.cell) == (64, 64)
    assert PATCH_256.stride == 128
    assert PatchSpec(40, 10).cell == 10  # gcd(40, 30)
    assert PatchSpec.from_dict(PATCH_256.to_dict()) == PATCH_256
    for bad in ((128, 128), (128, -1), (0, 0), (128.0, 64)):
        with pytest.raises(InputError, match="patch"):
            PatchSpec(*bad)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 90), w=st.integers(1, 90),
    size=st.integers(1, 40), overlap_frac=st.floats(0, 0.95),
)
def test_patch_origins_are_the_full_windows_on_the_stride_lattice(h, w, size, overlap_frac):
    spec = PatchSpec(size, min(size - 1, int(size * overlap_frac)))
    origins = patch_origins((h, w), spec)
    # brute force: every (r, c) on the stride lattice whose window fits
    expected = [(r, c) for r in range(0, h, spec.stride) for c in range(0, w, spec.stride)
                if r + size <= h and c + size <= w]
    assert origins.dtype == np.int64
    assert origins.shape == (len(expected), 2)
    assert [tuple(o) for o in origins] == expected


@pytest.mark.parametrize(("shape", "spec"), [((200, 264), SPEC), ((300, 420), PATCH_128),
                                             ((77, 130), PatchSpec(40, 10))])
def test_patch_origins_equal_xbatchers_windows(shape, spec):
    h, w = shape
    ds = xr.Dataset(
        {"features": (("band", "y", "x"), np.zeros((2, h, w), np.float32)),
         "target": (("y", "x"), np.zeros((h, w), np.float32))},
        coords={"y": 1000.0 - 10.0 * np.arange(h), "x": 10.0 * np.arange(w)},
    )
    gen = patch_generator(ds, spec)
    rows = {float(v): i for i, v in enumerate(ds.y.values)}
    cols = {float(v): i for i, v in enumerate(ds.x.values)}
    seen = [(rows[float(b.y[0])], cols[float(b.x[0])]) for b in gen]
    assert all(b.sizes["y"] == b.sizes["x"] == spec.size for b in gen)
    assert seen == [tuple(o) for o in patch_origins(shape, spec)]


def test_patch_generator_rejects_what_it_cannot_cut():
    ds = xr.Dataset({"t": (("y", "x"), np.zeros((30, 30)))})
    with pytest.raises(InputError, match="smaller than one 64-px patch"):
        patch_generator(ds, PatchSpec(64, 32))
    with pytest.raises(InputError, match="'y' and 'x'"):
        patch_generator(xr.Dataset({"t": (("a", "b"), np.zeros((3, 3)))}), SPEC)


# --------------------------------------------------------------------------- cloudy patches


def brute_validity(arrays, origins, size):
    valid = (np.isfinite(arrays["target"]) & (arrays["gaps"] == 0)
             & np.isfinite(arrays["features"]).all(axis=0))
    return np.array([valid[r:r + size, c:c + size].mean() for r, c in origins])


@pytest.mark.parametrize("spec", [SPEC, PatchSpec(40, 10), PatchSpec(64, 0)])
def test_patch_validity_matches_brute_force(known, spec):
    path, arrays = known
    origins = patch_origins(SHAPE, spec)
    expected = brute_validity(arrays, origins, spec.size)
    assert expected.min() < 0.5 < expected.max()  # the cloud makes some patches bad
    np.testing.assert_allclose(patch_validity(path, "pre", origins, spec), expected,
                               rtol=0, atol=1e-12)
    kept = select_patches(path, "pre", origins, spec, min_valid=0.5)
    np.testing.assert_array_equal(kept, origins[expected >= 0.5])


def test_patch_validity_reads_a_tree_or_a_dataset_too(known):
    path, arrays = known
    origins = patch_origins(SHAPE, SPEC)[::3]
    expected = brute_validity(arrays, origins, SPEC.size)
    for source in (store.open(path), store.open(path, group="pre")):
        np.testing.assert_allclose(patch_validity(source, "pre", origins, SPEC), expected,
                                   rtol=0, atol=1e-12)


def test_patch_validity_computes_chunk_by_chunk(known):
    # The largest result any Dask task produces is a chunk-sized piece, never the scene.
    path, arrays = known
    sizes: list[int] = []

    class Largest(Callback):
        def _posttask(self, key, result, dsk, state, id):
            sizes.append(getattr(result, "nbytes", 0))

    with Largest(), dask.config.set(scheduler="synchronous"):
        patch_validity(path, "pre", patch_origins(SHAPE, SPEC), SPEC)
    scene_bytes = arrays["features"].nbytes
    assert sizes
    assert max(sizes) <= 4 * CHUNK * CHUNK * 4 < scene_bytes / 10


def test_patch_validity_refuses_origins_off_the_lattice(known):
    path, _ = known
    with pytest.raises(InputError, match="off the patch lattice"):
        patch_validity(path, "pre", np.array([[0, 0], [8, 0]]), SPEC)
    with pytest.raises(InputError, match="does not fit"):
        patch_validity(path, "pre", np.array([[192, 0]]), SPEC)
    with pytest.raises(InputError, match="min_valid"):
        select_patches(path, "pre", patch_origins(SHAPE, SPEC), SPEC, min_valid=2)


# --------------------------------------------------------------------------- the loader


ONE_CELL = CHUNK * CHUNK * (4 * 9 + 4 + 1)  # bytes of one decoded cell: 9 bands, target, gaps


@pytest.mark.parametrize("cache_bytes", [256 * 2**20, 0, ONE_CELL])
def test_dataset_returns_the_stores_patches_exactly(known, cache_bytes):
    # A cache that holds the scene, none, and one that holds a single cell: same values.
    path, arrays = known
    origins = patch_origins(SHAPE, SPEC)
    ds = PatchDataset(path, origins, SPEC, cache_bytes=cache_bytes)
    assert len(ds) == len(origins)
    assert ds.bands == PAPER_CHANNELS
    for i in np.random.default_rng(0).permutation(len(origins)):
        sample = ds[int(i)]
        assert (sample["x"].dtype, sample["mask"].dtype) == (torch.float32, torch.bool)
        assert (sample["x"].shape, sample["y"].shape) == ((9, 48, 48), (1, 48, 48))
        assert_sample_equal(sample, reference_sample(arrays, origins[i], SPEC.size), origins[i])


def test_dataset_reads_each_chunk_once_when_the_cache_holds_the_scene(known):
    path, _ = known
    origins = patch_origins(SHAPE, SPEC)
    ds = PatchDataset(path, origins, SPEC)
    for i in range(len(ds)):
        ds[i]
    touched = {((r + dr) // CHUNK, (c + dc) // CHUNK)
               for r, c in origins for dr in (0, SPEC.size - 1) for dc in (0, SPEC.size - 1)}
    cells = len(touched)
    assert ds.cache.misses == cells
    assert set(ds.cache.cells) == touched
    assert ds.cache.hits > 3 * cells  # overlapping patches reuse decoded cells


def test_dataset_pickles_without_zarr_handles(known):
    path, arrays = known
    origins = patch_origins(SHAPE, SPEC)
    ds = PatchDataset(path, origins, SPEC)
    ds[0]  # opens the store and fills the cache
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cache is None
    assert len(pickle.dumps(ds)) < 20_000
    assert_sample_equal(clone[5], reference_sample(arrays, origins[5], SPEC.size), origins[5])


def test_loader_with_two_workers_gives_every_patch_once_in_a_seeded_order(known):
    path, arrays = known
    origins = patch_origins(SHAPE, SPEC)
    ds = PatchDataset(path, origins, SPEC)

    def epochs(seed, n=2):
        loader = make_loader(ds, batch_size=5, num_workers=2, seed=seed)
        out = []
        for _ in range(n):
            batches = list(loader)
            out.append(torch.cat([b["origin"] for b in batches]).numpy())
            last = batches[-1]
        return out, last

    (first, second), last = epochs(seed=3)
    (again, _), _ = epochs(seed=3)
    (other, _), _ = epochs(seed=4)
    for order in (first, second, other):  # each epoch: a permutation of the patches
        assert sorted(map(tuple, order)) == sorted(map(tuple, origins))
    np.testing.assert_array_equal(first, again)  # same seed, same order
    assert not np.array_equal(first, second)  # a new order each epoch
    assert not np.array_equal(first, other)
    # what came through the worker processes is the store's data
    for k, origin in enumerate(last["origin"].numpy()):
        expected = reference_sample(arrays, origin, SPEC.size)
        np.testing.assert_array_equal(last["x"][k].numpy(), expected["x"])
        np.testing.assert_array_equal(last["mask"][k].numpy(), expected["mask"])


def test_tile_sampler_visits_tiles_together():
    origins = patch_origins(SHAPE, SPEC)
    tile = CHUNK
    sampler = TileSampler(origins, tile, shuffle=True, seed=1, mix=1)
    order = sampler.order(0)
    assert sorted(order) == list(range(len(origins)))
    tiles = [tuple(t) for t in origins[order] // tile]
    changes = sum(a != b for a, b in itertools.pairwise(tiles))
    assert changes == len(set(tiles)) - 1  # each tile's patches are consecutive
    # the tile order is shuffled, and so is the order within a tile; both change by epoch
    assert tiles != sorted(tiles)
    runs = np.split(order, np.flatnonzero(np.diff([hash(t) for t in tiles])) + 1)
    assert any(list(run) != sorted(run) for run in runs)
    assert not np.array_equal(order, sampler.order(1))
    # with mix = 3: consecutive groups of three tiles, their patches shuffled together
    mixed = TileSampler(origins, tile, seed=1, mix=3)
    order3 = mixed.order(0)
    groups: list[set] = [set()]
    for t in map(tuple, origins[order3] // tile):
        if t not in groups[-1] and len(groups[-1]) == 3:
            groups.append(set())
        groups[-1].add(t)
    assert len(groups) == -(-len(mixed.tiles) // 3)  # no tile comes back in a later group
    assert sum(map(len, groups)) == len(mixed.tiles)
    keys = list(iter(mixed))
    assert keys == [(int(i), 0) for i in order3]
    assert {k[1] for k in iter(mixed)} == {1}  # the next pass is epoch 1
    assert list(TileSampler(origins, tile, shuffle=False).order(5)) == list(range(len(origins)))


def test_tile_sampler_deals_contiguous_runs_of_batches_to_workers():
    origins = patch_origins((1024, 1024), PATCH_128)  # 225 patches on 16 tiles of 256 px
    plain = TileSampler(origins, 256, seed=0).order(0)
    dealt = TileSampler(origins, 256, seed=0, batch_size=16, workers=2).order(0)

    def batches(order):
        return [tuple(order[i:i + 16]) for i in range(0, len(order), 16)]

    # the same batches (the short one still last), in another order
    assert sorted(batches(dealt)) == sorted(batches(plain))
    assert batches(dealt)[-1] == batches(plain)[-1]
    # the DataLoader gives batch k to worker k % 2: each reads mostly its own tiles
    tiles: list[set] = [set(), set()]
    for k, batch in enumerate(batches(dealt)):
        tiles[k % 2] |= set(map(tuple, origins[list(batch)] // 256))
    assert len(tiles[0] | tiles[1]) == 16
    assert len(tiles[0] & tiles[1]) <= 4  # at most the one group of 4 tiles split between


def test_dataset_errors_name_the_culprit(known, tmp_path):
    path, _ = known
    with pytest.raises(InputError, match="cannot open"):
        PatchDataset(tmp_path / "missing.zarr", np.zeros((1, 2), int), SPEC)
    with pytest.raises(InputError, match=r"\(n, 2\)"):
        PatchDataset(path, np.zeros((3,), int), SPEC)
    with pytest.raises(InputError, match="does not fit"):
        PatchDataset(path, np.array([[0, 230]]), SPEC)
    with pytest.raises(InputError, match="no /during/features"):
        PatchDataset(path, np.zeros((1, 2), int), SPEC, group="during")


# --------------------------------------------------------------------------- augmentation


def reference_augment(x, bands, ops):
    """Band-by-band reference of the physics: what each op does to each named channel
    (aspect as the (east, north) vector (sin a, cos a) of the downslope direction)."""
    x = {b: x[i] for i, b in enumerate(bands)}
    if ops.hflip:  # east <-> west: the east component flips; the radar looks the other way
        x = {b: v[:, ::-1] for b, v in x.items()}
        if "sin_aspect" in x:
            x["sin_aspect"] = -x["sin_aspect"]
        for pol in ("vv", "vh"):
            if f"{pol}_asc" in x:
                x[f"{pol}_asc"], x[f"{pol}_desc"] = x[f"{pol}_desc"], x[f"{pol}_asc"]
    if ops.vflip:  # north <-> south: the north component flips
        x = {b: v[::-1, :] for b, v in x.items()}
        if "cos_aspect" in x:
            x["cos_aspect"] = -x["cos_aspect"]
    if ops.rot90:  # counter-clockwise: east -> north, north -> west
        x = {b: np.rot90(v) for b, v in x.items()}
        x["sin_aspect"], x["cos_aspect"] = -x["cos_aspect"], x["sin_aspect"]
    return np.stack([x[b] for b in bands])


ALL_OPS = [AugmentOps(h, v, r) for h in (False, True) for v in (False, True)
           for r in (False, True)]
TERRAIN = ("sin_aspect", "cos_aspect", "sin_slope")


def encodings(z: np.ndarray) -> np.ndarray:
    """(3, H, W) sin(aspect), cos(aspect), sin(slope) of a 10 m DEM (row 0 north)."""
    h, w = z.shape
    dem = xr.DataArray(z, dims=("y", "x"),
                       coords={"y": 5000.0 - 10.0 * np.arange(h), "x": 10.0 * np.arange(w)})
    enc = terrain_encodings(dem.chunk({"y": 24, "x": 24}))
    return np.stack([enc[b].values for b in TERRAIN])


def smooth_dem(seed: int, n: int = 64, relief: float = 3000.0) -> np.ndarray:
    z = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, (n, n)), 4) * relief
    # quantised to 1/256 m: Horn's sums are exact in float64 whatever the flip
    return np.round(z * 256) / 256


# The aspect is stored as float32 degrees: its rounding (half an ulp of 360 deg, 5e-7 rad)
# is the floor of any comparison of its sine or cosine.
ASPECT_ATOL = 2 * float(np.spacing(np.float32(360.0))) * np.pi / 180


@pytest.mark.parametrize("ops", ALL_OPS, ids=str)
@pytest.mark.parametrize("dem", ["smooth", "plane", "flat"])
def test_terrain_encodings_of_the_transformed_dem_are_the_transformed_encodings(dem, ops):
    # THE physics test: flipping/rotating the DEM and then encoding its terrain gives the
    # same channels as encoding the DEM and transforming the channels by Augment's rules.
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float64)
    z = {"smooth": smooth_dem(1, 48), "plane": 3.0 * xx - 5.0 * yy + 100.0,
         "flat": np.full((48, 48), 250.0)}[dem]
    truth = encodings(np.ascontiguousarray(_apply_spatial(z, ops)))
    mine = Augment(rotate=True).apply({"x": encodings(z)}, ops, TERRAIN)["x"]
    np.testing.assert_allclose(mine[2], truth[2], rtol=0, atol=0)  # sin(slope): invariant
    np.testing.assert_allclose(mine[:2], truth[:2], rtol=0, atol=ASPECT_ATOL)
    # and the rules are the band-by-band physics (the flat rule aside)
    if dem != "flat":
        np.testing.assert_array_equal(mine, reference_augment(encodings(z), TERRAIN, ops))


def _apply_spatial(a: np.ndarray, ops: AugmentOps) -> np.ndarray:
    if ops.hflip:
        a = a[:, ::-1]
    if ops.vflip:
        a = a[::-1, :]
    return np.rot90(a) if ops.rot90 else a


def test_an_east_west_mirror_turns_the_ascending_view_into_the_descending_one():
    # Why hflip swaps the orbit channels: the ascending radar (looking east, azimuth 78)
    # sees the mirrored terrain exactly as the descending one (looking west, 282) sees
    # the terrain, mirrored: same layover, same shadow.
    assert (360.0 - ASCENDING.look_azimuth) % 360 == DESCENDING.look_azimuth
    z = smooth_dem(2, 96, relief=1500.0)

    def masks(dem, orbit):
        slope, aspect = horn_slope_aspect(dem, 10.0)
        return layover_shadow(dem, 10.0, orbit, slope, aspect)

    layover_d, shadow_d = masks(z, DESCENDING)
    layover_a, shadow_a = masks(np.ascontiguousarray(z[:, ::-1]), ASCENDING)
    assert 0.001 < layover_d.mean() < 0.5
    assert 0.001 < shadow_d.mean() < 0.5
    np.testing.assert_array_equal(layover_a, layover_d[:, ::-1])
    np.testing.assert_array_equal(shadow_a, shadow_d[:, ::-1])


def test_hflip_swaps_ascending_and_descending_channels_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(-12, 3, (4, 8, 8)).astype(np.float32)
    out = Augment().apply({"x": x}, AugmentOps(hflip=True), ORBIT_CHANNELS)["x"]
    for i, j in ((0, 2), (1, 3), (2, 0), (3, 1)):  # vv_asc <-> vv_desc, vh_asc <-> vh_desc
        np.testing.assert_array_equal(out[i], x[j][:, ::-1])
    same = Augment().apply({"x": x}, AugmentOps(vflip=True), ORBIT_CHANNELS)["x"]
    np.testing.assert_array_equal(same, x[:, ::-1, :])


def test_rotations_are_refused_for_orbit_channels(orbit_store):
    with pytest.raises(InputError, match="north/south"):
        Augment(rotate=True).apply({"x": np.zeros((4, 8, 8))}, AugmentOps(rot90=True),
                                   ORBIT_CHANNELS)
    path, _ = orbit_store
    with pytest.raises(InputError, match="rotate=False"):
        PatchDataset(path, patch_origins((96, 96), PatchSpec(32, 16)), PatchSpec(32, 16),
                     augment=Augment(rotate=True))
    with pytest.raises(InputError, match="both sin_aspect and cos_aspect"):
        Augment(rotate=True).check(("vv", "sin_aspect"))


@pytest.mark.parametrize("ops", ALL_OPS, ids=str)
def test_augment_moves_x_y_and_mask_together(ops):
    bands = PAPER_CHANNELS
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (9, 16, 16)).astype(np.float32)
    x[8] = np.abs(x[8]) + 0.1  # sin(slope) > 0: no flat pixels
    y = x[0][None].copy()  # the target equals the vv channel, pixel for pixel
    mask = (x[1] > 0)[None]
    out = Augment(rotate=True).apply({"x": x, "y": y, "mask": mask, "id": 7}, ops, bands)
    np.testing.assert_array_equal(out["y"][0], out["x"][0])
    np.testing.assert_array_equal(out["mask"][0], out["x"][1] > 0)
    np.testing.assert_array_equal(out["x"], reference_augment(x, bands, ops))
    assert out["id"] == 7
    assert out["x"].flags.c_contiguous


@pytest.mark.parametrize("ops", ALL_OPS, ids=str)
def test_augment_normalises_in_the_same_pass_exactly(ops):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (9, 16, 16)).astype(np.float32)
    x[8] = np.abs(x[8])
    x[8, :4, :4] = 0.0  # some flat ground
    x[2, 5, 5] = np.nan
    center = rng.normal(0, 1, 9).astype(np.float32)
    scale = rng.uniform(0.5, 3, 9).astype(np.float32)
    aug = Augment(rotate=True)
    physical = aug.apply({"x": x}, ops, PAPER_CHANNELS)["x"]
    fused = aug.apply({"x": x}, ops, PAPER_CHANNELS, center=center, scale=scale)["x"]
    expected = (physical - center[:, None, None]) / scale[:, None, None]
    np.testing.assert_array_equal(fused, expected)


def test_read_returns_read_only_views_and_the_cache_stays_intact(known):
    path, arrays = known
    origins = patch_origins(SHAPE, SPEC)
    ds = PatchDataset(path, origins, SPEC, augment=Augment(rotate=True))
    inside = next(i for i, (r, c) in enumerate(origins)
                  if r // CHUNK == (r + 47) // CHUNK and c // CHUNK == (c + 47) // CHUNK)
    with pytest.raises(ValueError, match="read-only"):
        ds.read(inside)["x"][0, 0, 0] = 1.0
    for epoch in range(4):  # samples are new arrays: changing them leaves the cache alone
        ds[(inside, epoch)]["x"].mul_(0)
    r, c = origins[inside]
    again = ds.read(inside)
    np.testing.assert_array_equal(again["x"], arrays["features"][:, r:r + 48, c:c + 48])
    np.testing.assert_array_equal(again["y"][0], arrays["target"][r:r + 48, c:c + 48])


def test_augment_draws_each_flip_half_the_time_and_no_rotation_by_default():
    rng = np.random.default_rng(0)
    draws = [Augment().draw(rng) for _ in range(4000)]
    assert not any(d.rot90 for d in draws)
    for name in ("hflip", "vflip"):
        assert abs(np.mean([getattr(d, name) for d in draws]) - 0.5) < 0.03
    assert len(set(draws)) == 4
    rotating = {Augment(rotate=True).draw(rng) for _ in range(400)}
    assert len(rotating) == 8  # all symmetries of the square
    assert Augment(hflip=False, vflip=False).draw(rng) == AugmentOps()


def test_dataset_augments_in_physical_units_then_normalises(known):
    # sign changes do not commute with centring: the loader flips physical values
    path, arrays = known
    origins = patch_origins(SHAPE, SPEC)
    ds = PatchDataset(path, origins, SPEC, augment=Augment(), seed=11)
    seen = set()
    for epoch in range(3):
        for i in range(0, len(ds), 7):
            sample = ds[(i, epoch)]
            ops = Augment().draw(np.random.default_rng([11, epoch, i]))
            seen.add(ops)
            r, c = origins[i]
            raw = arrays["features"][:, r:r + 48, c:c + 48]
            phys = reference_augment(raw, PAPER_CHANNELS, ops)
            with np.errstate(invalid="ignore"):
                x = (phys - arrays["center"][:, None, None]) / arrays["scale"][:, None, None]
            np.testing.assert_array_equal(sample["x"].numpy(), np.nan_to_num(x, nan=0.0))
            assert sample["origin"].tolist() == [r, c]
    assert len(seen) == 4  # all four flips occur
