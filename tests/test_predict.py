"""Tiled, blended, chunk-wise prediction: exact reassembly and chunking independence."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr
from dask.callbacks import Callback
from hypothesis import given, settings
from hypothesis import strategies as st

from sar2ndvi.checkpoint import Checkpoint
from sar2ndvi.features import PAPER_CHANNELS
from sar2ndvi.model import UNet, UNetConfig
from sar2ndvi.patches import PatchSpec
from sar2ndvi.predict import ModelRunner, predict, predict_layers
from sar2ndvi.tiling import blend_window, lattice, patch_count, predict_image

BANDS = tuple(PAPER_CHANNELS)


class ChannelRunner(ModelRunner):
    """The identity "model": its prediction is one input channel, as is."""

    channel = 2

    def __call__(self, patches):
        return patches[None, :, self.channel].astype(np.float32)

    def __dask_tokenize__(self):
        return ("channel", self.channel, self.spec)


def channel_runner(spec: PatchSpec) -> ChannelRunner:
    c = len(BANDS)
    return ChannelRunner("unused", BANDS, np.zeros(c, np.float32), np.ones(c, np.float32), spec)


def features(shape, chunks, seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(len(BANDS), *shape)).astype(np.float32)
    arr = xr.DataArray(
        values,
        dims=("band", "y", "x"),
        coords={
            "band": list(BANDS),
            "y": np.arange(shape[0]) * -10.0,
            "x": np.arange(shape[1]) * 10.0,
        },
    )
    return arr.chunk({"band": 1, "y": chunks[0], "x": chunks[1]})


def unet_checkpoint(spec: PatchSpec, seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    net = UNet(UNetConfig(width=4, depth=2, dropout=0.0))
    meta = {
        "normalisation": {
            "band": list(BANDS),
            "center": [0.0] * len(BANDS),
            "scale": [1.0] * len(BANDS),
        },
        "patch": spec.to_dict(),
    }
    return Checkpoint.from_model(net, meta)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    size=st.sampled_from([8, 16, 32]),
    overlap_frac=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
)
def test_lattice_covers_every_pixel_and_blending_reassembles_exactly(h, w, size, overlap_frac):
    spec = PatchSpec(size, int(size * overlap_frac))
    for length in (h, w):
        origins = lattice(length, spec)
        covered = np.zeros(length, bool)
        for o in origins:
            covered[max(o, 0) : max(min(o + size, length), 0)] = True
        assert covered.all()
        assert origins[0] == -(spec.overlap // 2)
    image = np.random.default_rng(h * w).normal(size=(3, h, w)).astype(np.float32)
    out = predict_image(image, spec, lambda p: p[None, :, 1])
    np.testing.assert_array_equal(out[0], image[1])


def test_blend_window_is_smooth_symmetric_and_positive():
    w = blend_window(16)
    assert w.min() > 0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w[7, 7] == pytest.approx(w.max())


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(40, 120),
    w=st.integers(40, 120),
    cy=st.integers(33, 70),
    cx=st.integers(33, 70),
)
def test_identity_model_reassembles_the_channel_exactly_for_any_chunking(h, w, cy, cx):
    spec = PatchSpec(32, 16)
    feats = features((h, w), (cy, cx), seed=h + w)
    out = predict_layers(channel_runner(spec), feats)
    assert isinstance(out.data, da.Array)
    np.testing.assert_array_equal(out.sel(layer="ndvi").values, feats.sel(band=BANDS[2]).values)


def test_a_scene_smaller_than_a_patch_is_predicted_whole():
    spec = PatchSpec(64, 32)
    feats = features((20, 50), (20, 50))
    out = predict_layers(channel_runner(spec), feats).values[0]
    np.testing.assert_array_equal(out, feats.values[2])


def test_chunking_does_not_change_a_real_models_prediction():
    spec = PatchSpec(32, 16)
    ckpt = unet_checkpoint(spec)
    feats = features((100, 130), (50, 65))
    a = predict(ckpt, feats).values
    b = predict(ckpt, feats, chunks=(37, 100)).values
    ref = predict_image(feats.values, spec, ModelRunner.from_checkpoint(ckpt))[0]
    np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_allclose(a, ref, atol=2e-6)
    assert np.abs(a).max() <= 1.0


def test_predict_is_lazy_and_the_model_is_one_graph_key():
    spec = PatchSpec(32, 16)
    ckpt = unet_checkpoint(spec)
    executed = []

    class Count(Callback):
        def _posttask(self, key, result, dsk, state, id):
            executed.append(key)

    with Count():
        ndvi = predict(ckpt, features((96, 96), (48, 48)))
    assert executed == []
    graph = dict(ndvi.data.__dask_graph__())
    # the runner (with its weights) is one key every chunk task depends on
    runner_keys = [k for k in graph if str(k).startswith("ModelRunner")]
    assert len(runner_keys) == 1


def test_tta_and_uncertainty_layers():
    spec = PatchSpec(32, 16)
    ckpt = unet_checkpoint(spec)
    feats = features((64, 64), (64, 64))
    plain = predict_layers(ckpt, feats).values
    tta = predict_layers(ckpt, feats, tta=True, uncertainty=True)
    assert list(tta["layer"].values) == ["ndvi", "uncertainty"]
    values = tta.values
    assert (values[1] >= 0).all()
    assert values[1].max() > 0  # a random network is not flip-invariant
    assert not np.allclose(values[0], plain[0])


def test_mc_dropout_spreads_on_its_own_model_instance():
    spec = PatchSpec(32, 16)
    torch.manual_seed(0)
    net = UNet(UNetConfig(width=4, depth=2, dropout=0.5))
    ckpt = Checkpoint.from_model(net, unet_checkpoint(spec).metadata)
    sampling = ModelRunner.from_checkpoint(ckpt, mc_samples=4, uncertainty=True)
    plain = ModelRunner.from_checkpoint(ckpt)
    out = predict_layers(sampling, features((64, 64), (64, 64))).values
    assert out[1].max() > 0
    # batch norm stays in eval mode; only dropout samples, and never in the plain model
    # (threads predicting with and without MC dropout share no module)
    mods = list(sampling.model().modules())
    assert all(not m.training for m in mods if isinstance(m, torch.nn.BatchNorm2d))
    assert any(m.training for m in mods if isinstance(m, torch.nn.Dropout2d))
    assert all(not m.training for m in plain.model().modules())
    again = predict_layers(plain, features((64, 64), (64, 64))).values
    np.testing.assert_array_equal(again, predict_layers(plain, features((64, 64), (64, 64))).values)


def test_missing_bands_are_named():
    spec = PatchSpec(32, 16)
    feats = features((64, 64), (64, 64)).isel(band=slice(0, 5))
    with pytest.raises(Exception, match="lack"):
        predict(unet_checkpoint(spec), feats)


def test_patch_count_counts_the_patches_each_chunk_predicts():
    spec = PatchSpec(32, 16)
    counted = []

    class Counting(ChannelRunner):
        def __call__(self, patches):
            counted.append(len(patches))
            return super().__call__(patches)

    runner = Counting("unused", BANDS, np.zeros(9, np.float32), np.ones(9, np.float32), spec)
    feats = features((100, 90), (50, 45))
    with dask.config.set(scheduler="synchronous"):
        predict_layers(runner, feats, chunks=(50, 45)).compute()
    assert sum(counted) == patch_count((100, 90), ((50, 50), (45, 45)), spec)
