"""Lazy, chunk-wise NDVI prediction from a feature stack.

`predict(model, features)` returns a Dask-backed (y, x) NDVI `DataArray` on the features'
grid, in chunks of `DEFAULT_CHUNK` px (or as asked). Each chunk is read with a halo of one
patch (mirrored at the scene edges), covered by the patches of one global lattice, run
through the model in batches under ``torch.inference_mode()``, blended with a Hann window
and cropped back (see `sar2ndvi.tiling`), so memory is one chunk per task whatever the
scene size, and the chunking does not change the result.

The model travels once: a checkpoint *path* is loaded once per process (a cache keyed by
the file's path, size and modification time, shared by the threads of a worker); an
in-memory model or `Checkpoint` enters the graph as a single Dask key that every chunk
task depends on, so `dask.distributed` ships it to each worker once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr
from torch import nn

from sar2ndvi.checkpoint import Checkpoint, load_checkpoint, resolve, weights_digest
from sar2ndvi.errors import InputError
from sar2ndvi.patches import Augment, AugmentOps, PatchSpec
from sar2ndvi.tiling import Block, halo, predict_block, predict_image

__all__ = ["TTA_OPS", "ModelRunner", "normalise_channels", "predict", "predict_layers"]

#: Test-time augmentation: the identity and the flips (their physics: `patches.Augment`).
TTA_OPS: tuple[AugmentOps, ...] = (
    AugmentOps(),
    AugmentOps(hflip=True),
    AugmentOps(vflip=True),
    AugmentOps(hflip=True, vflip=True),
)

#: Default output chunk side (px). A chunk is predicted by every patch that touches it, so
#: patches across chunk borders run once per chunk they touch: with 128 px patches every
#: 64 px, 1024 px chunks repeat about 27 % of the patches, 256 px chunks 125 %.
DEFAULT_CHUNK = 1024

_CACHE: dict[tuple[Any, ...], nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def _cached_model(path: str, stamp: tuple[int, int], device: str, sampling: bool) -> nn.Module:
    """The checkpoint's model, loaded once per process, device and mode (threads share it).

    `sampling` models keep their dropout layers active (Monte-Carlo dropout): a separate
    instance, so that no thread ever flips the mode of a model another thread is using.
    """
    key = (path, stamp, device, sampling)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _dropout_mode(load_checkpoint(path).model(device), active=sampling)
        return _CACHE[key]


def normalise_channels(x: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(..., C, H, W) physical features -> a network's inputs: centred and scaled per
    channel as in training (``(x - center) / scale``), float32, no data (NaN, inf) -> 0."""
    out = (x - center[:, None, None]) / scale[:, None, None]
    return np.nan_to_num(out.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(eq=False)
class ModelRunner:
    """A model on batches of feature patches in physical units: normalisation, test-time
    augmentation and Monte-Carlo dropout around the network's forward pass.

    Pickles small when made from a checkpoint path (the weights are loaded on the worker);
    from an in-memory checkpoint it carries the weights.

    Attributes:
        source: a checkpoint file path, or a `Checkpoint`.
        bands: the feature bands, in the model's channel order.
        center, scale: (C,) normalisation: x' = (x - center) / scale.
        spec: the patch size and overlap.
        device: torch device to run on.
        batch_size: patches per forward pass.
        tta: average over the flips of `TTA_OPS` (channels transformed with the geometry).
        mc_samples: > 0: that many forward passes with dropout active (Monte-Carlo dropout).
        uncertainty: add a second layer, the standard deviation across the augmentations
            and/or dropout samples.
    """

    source: str | Checkpoint
    bands: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    spec: PatchSpec
    device: str = "cpu"
    batch_size: int = 16
    tta: bool = False
    mc_samples: int = 0
    uncertainty: bool = False

    @classmethod
    def from_checkpoint(cls, model: str | os.PathLike | Checkpoint, **options: Any) -> ModelRunner:
        """A runner for a checkpoint file/folder or an in-memory `Checkpoint`."""
        if isinstance(model, Checkpoint):
            checkpoint, source = model, model
        else:
            path = resolve(model)
            checkpoint, source = load_checkpoint(path), str(path)
        meta = checkpoint.metadata
        norm, patch = meta.get("normalisation"), meta.get("patch")
        if norm is None or patch is None:
            raise InputError(
                "the checkpoint has no normalisation or patch metadata; train it with "
                "sar2ndvi.train (or pass them in Checkpoint.metadata)"
            )
        return cls(
            source=source,
            bands=tuple(norm["band"]),
            center=np.asarray(norm["center"], dtype=np.float32),
            scale=np.asarray(norm["scale"], dtype=np.float32),
            spec=PatchSpec.from_dict(patch),
            **options,
        )

    @property
    def layers(self) -> int:
        return 2 if self.uncertainty else 1

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        if isinstance(self.source, Checkpoint):
            ident: Any = weights_digest(self.source.state_dict)
        else:
            st = os.stat(self.source)
            ident = (self.source, st.st_size, st.st_mtime_ns)
        return (
            ident,
            self.bands,
            self.spec,
            self.device,
            self.batch_size,
            self.tta,
            self.mc_samples,
            self.uncertainty,
        )

    def model(self) -> nn.Module:
        sampling = self.mc_samples > 0
        if isinstance(self.source, Checkpoint):
            with _CACHE_LOCK:
                if getattr(self, "_model", None) is None:
                    self._model = _dropout_mode(self.source.model(self.device), active=sampling)
            return self._model
        st = os.stat(self.source)
        return _cached_model(self.source, (st.st_size, st.st_mtime_ns), self.device, sampling)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_model", None)
        return state

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """(..., C, H, W) physical features -> the model's inputs (`normalise_channels`)."""
        return normalise_channels(x, self.center, self.scale)

    def _forward(self, net: nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            return net(t)[:, 0].float().cpu().numpy()

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """(N, C, size, size) physical features -> (layers, N, size, size) NDVI [and spread]."""
        net = self.model()
        ops = TTA_OPS if self.tta else TTA_OPS[:1]
        samples = max(1, self.mc_samples)
        flips = Augment(hflip=True, vflip=True)
        outputs = []
        for op in ops:
            x = patches
            if op != AugmentOps():
                x = np.stack([flips.apply({"x": p}, op, self.bands)["x"] for p in patches])
            x = self.normalise(x)
            for _ in range(samples):
                y = self._forward(net, x)
                # undo the flip on the output (flips are their own inverse)
                outputs.append(_unflip(y, op))
        stack = np.stack(outputs)
        mean = stack.mean(axis=0)
        if not self.uncertainty:
            return mean[None]
        return np.stack([mean, stack.std(axis=0)])


def _dropout_mode(net: nn.Module, active: bool) -> nn.Module:
    """`net` (in eval mode) with its dropout layers sampling (Monte-Carlo) or not; batch
    norm stays in eval mode. Monte-Carlo samples draw from torch's global generator: they
    differ from run to run unless it is seeded and the prediction runs on one thread."""
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.Dropout | nn.Dropout2d):
            m.train(active)
    return net


def _unflip(y: np.ndarray, op: AugmentOps) -> np.ndarray:
    if op.hflip:
        y = y[..., ::-1]
    if op.vflip:
        y = y[..., ::-1, :]
    return y


def _block(
    data: np.ndarray,
    runner: ModelRunner,
    starts: tuple[np.ndarray, np.ndarray],
    scene: tuple[int, int],
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    """One output chunk: (layers, h, w) from the chunk's (C, h + 2d, w + 2d) data."""
    assert block_id is not None
    d = halo(runner.spec)
    by, bx = block_id[1], block_id[2]
    r0, c0 = int(starts[0][by]), int(starts[0][by + 1])
    q0, q1 = int(starts[1][bx]), int(starts[1][bx + 1])
    block = Block((r0, q0), (c0 - r0, q1 - q0), scene, d)
    return predict_block(
        data, block, runner.spec, runner, layers=runner.layers, batch_size=runner.batch_size
    )


def _whole(data: np.ndarray, runner: ModelRunner) -> np.ndarray:
    return predict_image(
        data, runner.spec, runner, layers=runner.layers, batch_size=runner.batch_size
    )


def _features_array(features: Any, period: str) -> xr.DataArray:
    """The (band, y, x) feature DataArray from a store path, DataTree, Dataset or array."""
    if isinstance(features, str | os.PathLike):
        from sar2ndvi import store

        features = store.open(features)
    if isinstance(features, xr.DataTree):
        if period not in features.children:
            raise InputError(f"the feature store has no /{period} group")
        features = features[f"/{period}"].to_dataset()
    if isinstance(features, xr.Dataset):
        if "features" not in features:
            raise InputError("the dataset has no 'features' variable (band, y, x)")
        features = features["features"]
    if not isinstance(features, xr.DataArray) or features.dims != ("band", "y", "x"):
        raise InputError(
            "features must be a (band, y, x) DataArray, a feature store group or a path"
        )
    return features


def _ordered_bands(features: xr.DataArray, bands: Sequence[str]) -> xr.DataArray:
    have = [str(b) for b in features["band"].values]
    missing = [b for b in bands if b not in have]
    if missing:
        raise InputError(
            f"the model was trained on bands {list(bands)}; the features lack {missing}"
        )
    return features.sel(band=list(bands))


def predict_layers(
    model: str | os.PathLike | Checkpoint | ModelRunner,
    features: Any,
    *,
    period: str = "pre",
    batch_size: int = 16,
    device: str = "cpu",
    tta: bool = False,
    mc_samples: int = 0,
    uncertainty: bool = False,
    chunks: int | tuple[int, int] | None = None,
) -> xr.DataArray:
    """Lazy (layer, y, x) float32 prediction: layer "ndvi", and "uncertainty" when asked.

    See `predict` for the arguments.
    """
    if isinstance(model, ModelRunner):
        runner = model
    else:
        if isinstance(model, nn.Module):
            raise InputError(
                "predict needs the normalisation and patch size the network was trained "
                "with: pass its checkpoint (a path or Checkpoint.from_model(net, metadata))"
            )
        runner = ModelRunner.from_checkpoint(
            model,
            device=device,
            batch_size=batch_size,
            tta=tta,
            mc_samples=mc_samples,
            uncertainty=uncertainty,
        )
    array = _ordered_bands(_features_array(features, period), runner.bands)
    data = array.data if isinstance(array.data, da.Array) else da.from_array(array.values)
    cy, cx = (chunks, chunks) if isinstance(chunks, int) else (chunks or (DEFAULT_CHUNK,) * 2)
    data = data.rechunk({1: cy, 2: cx})
    data = data.rechunk({0: -1}).astype(np.float32)
    d = halo(runner.spec)
    scene = (int(data.shape[1]), int(data.shape[2]))
    names = ["ndvi", "uncertainty"][: runner.layers]
    if min(scene) <= d:
        # smaller than the halo (tiny scenes): one block, mirrored as NumPy does (Dask's
        # mirrored overlap cannot reach further than a chunk)
        whole = data.rechunk(-1)
        out = da.map_blocks(
            _whole,
            whole,
            dask.delayed(runner, pure=True, traverse=False),
            dtype=np.float32,
            chunks=((runner.layers,), *whole.chunks[1:]),
            meta=np.empty((0, 0, 0), dtype=np.float32),
        )
    else:
        # every chunk must be at least the halo deep for Dask's mirrored overlap
        data = data.rechunk({1: _min_chunks(data.chunks[1], d), 2: _min_chunks(data.chunks[2], d)})
        padded = da.overlap.overlap(data, depth={0: 0, 1: d, 2: d}, boundary="reflect")
        starts = (
            np.concatenate([[0], np.cumsum(data.chunks[1])]),
            np.concatenate([[0], np.cumsum(data.chunks[2])]),
        )
        shared = dask.delayed(runner, pure=True, traverse=False)
        out = da.map_blocks(
            _block,
            padded,
            shared,
            starts,
            scene,
            dtype=np.float32,
            chunks=((runner.layers,), *data.chunks[1:]),
            meta=np.empty((0, 0, 0), dtype=np.float32),
            name="sar2ndvi-predict-" + dask.base.tokenize(data, runner),
        )
    georef = {"spatial_ref": array["spatial_ref"]} if "spatial_ref" in array.coords else {}
    return xr.DataArray(
        out,
        dims=("layer", "y", "x"),
        coords={"layer": names, "y": array["y"], "x": array["x"], **georef},
        attrs={"patch_size": runner.spec.size, "patch_overlap": runner.spec.overlap},
    )


def _min_chunks(sizes: Sequence[int], minimum: int) -> tuple[int, ...]:
    """`sizes` with chunks smaller than `minimum` merged with their neighbours until every
    chunk is at least `minimum` (Dask's mirrored overlap needs that much depth); chunks
    already large enough stay as they are."""
    out: list[int] = []
    for s in sizes:
        if out and out[-1] < minimum:
            out[-1] += s
        else:
            out.append(s)
    if len(out) > 1 and out[-1] < minimum:
        last = out.pop()
        out[-1] += last
    return tuple(out)


def predict(
    model: str | os.PathLike | Checkpoint,
    features: str | os.PathLike | xr.DataTree | xr.Dataset | xr.DataArray,
    *,
    period: str = "pre",
    batch_size: int = 16,
    device: str = "cpu",
    tta: bool = False,
    mc_samples: int = 0,
    chunks: int | tuple[int, int] | None = None,
) -> xr.DataArray:
    """Lazy (y, x) NDVI predicted from a feature stack, on its grid.

    Args:
        model: a checkpoint file or training folder, or a `Checkpoint` (its metadata
            holds the normalisation and patch size).
        features: a feature store (path or DataTree; `period` picks the group), a group's
            Dataset, or a (band, y, x) DataArray in physical units.
        period: the store group to predict ("pre" or "post").
        batch_size: patches per forward pass.
        device: "cpu", "cuda", ...
        tta: average the prediction over flips (aspect channels transformed to match).
        mc_samples: Monte-Carlo dropout passes (0: none).
        chunks: output chunk size (px) in y and x, one number or (y, x); default
            `DEFAULT_CHUNK` (large chunks repeat fewer border patches; memory per task is
            about 50 bytes per pixel of chunk and halo).

    Returns:
        float32 (y, x) NDVI in [-1, 1], Dask-backed; nothing is computed until asked.
    """
    layers = predict_layers(
        model,
        features,
        period=period,
        batch_size=batch_size,
        device=device,
        tta=tta,
        mc_samples=mc_samples,
        chunks=chunks,
    )
    ndvi = layers.sel(layer="ndvi", drop=True)
    ndvi.name = "ndvi"
    ndvi.attrs.update(long_name="NDVI predicted from Sentinel-1", units="1")
    return ndvi
