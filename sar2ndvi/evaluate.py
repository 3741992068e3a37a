"""Scoring a trained model on the test blocks of its split, against pixel-wise baselines.

The test pixels are those of the split's test patches (ground the model never saw, more
than a buffer away from every training patch) where the Sentinel-2 target is valid. On
exactly those pixels `evaluate` scores

- the U-net (tiled, blended prediction, `sar2ndvi.predict`),
- a per-pixel linear regression and a random forest (scikit-learn) trained on the pixels
  of the same training patches the U-net saw, on the same normalised channels,

with RMSE, MAE, SSIM and PSNR (`sar2ndvi.metrics`), and draws the paper's Figure 2:
ground-truth NDVI, predicted NDVI and absolute error side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from scipy import ndimage

from sar2ndvi import metrics, store
from sar2ndvi.checkpoint import Checkpoint, load_checkpoint, resolve
from sar2ndvi.errors import InputError
from sar2ndvi.patches import PatchDataset, PatchSpec, select_patches
from sar2ndvi.predict import ModelRunner, predict
from sar2ndvi.split import Split, load_split, make_split
from sar2ndvi.train import SPLIT_FILE

__all__ = ["Evaluation", "HeldOutArea", "evaluate", "held_out_areas", "write_figure"]

BASELINES = ("linear", "random forest")
UNET = "U-net"


@dataclass(frozen=True)
class HeldOutArea:
    """A connected piece of the test ground: its bounding box and which pixels of it are
    covered by test patches (True)."""

    rows: slice
    cols: slice
    covered: np.ndarray

    @property
    def pixels(self) -> int:
        return int(self.covered.sum())


def held_out_areas(split: Split) -> list[HeldOutArea]:
    """The test patches' footprint as connected areas, largest first.

    Works on cells of gcd(size, stride) px (every patch is a whole number of cells), so
    only a small coarse grid is held besides each area's box.
    """
    spec, (h, w) = split.spec, split.shape
    g = spec.cell
    origins = split.patches("test")
    if len(origins) == 0:
        raise InputError(f"the split of a {h} x {w} px scene has no test patch; use a larger scene")
    cells = np.zeros((-(-h // g), -(-w // g)), dtype=bool)
    n = spec.size // g
    for r, c in origins // g:
        cells[r : r + n, c : c + n] = True
    labels, _ = ndimage.label(cells)
    areas = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        covered = np.repeat(np.repeat(labels[box] == index, g, axis=0), g, axis=1)
        rows = slice(box[0].start * g, min(box[0].stop * g, h))
        cols = slice(box[1].start * g, min(box[1].stop * g, w))
        areas.append(
            HeldOutArea(rows, cols, covered[: rows.stop - rows.start, : cols.stop - cols.start])
        )
    return sorted(areas, key=lambda a: -a.pixels)


@dataclass
class Evaluation:
    """Scores per model on the same test pixels, and the largest test area's images.

    Attributes:
        table: model name -> {"rmse", "mae", "ssim", "psnr", "n_pixels"}.
        truth, prediction: the largest test area's Sentinel-2 and U-net NDVI (y, x)
            DataArrays, NaN outside the test pixels.
        areas: the test areas' boxes (row and column slices).
    """

    table: dict[str, dict[str, float]]
    truth: xr.DataArray
    prediction: xr.DataArray
    areas: list[tuple[slice, slice]] = field(default_factory=list)

    def format(self) -> str:
        return metrics.format_table(self.table)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.table,
            "held_out_areas": [
                {"rows": [r.start, r.stop], "cols": [c.start, c.stop]} for r, c in self.areas
            ],
            "data_range": metrics.NDVI_DATA_RANGE,
            "ssim": {"window": metrics.SSIM_WINDOW, "sigma": metrics.SSIM_SIGMA},
        }


def _split_for(model: str | os.PathLike | Checkpoint, checkpoint: Checkpoint) -> Split:
    """The training run's split: ``split.json`` beside the checkpoint, else rebuilt from
    the training configuration recorded in it (the split is a function of its seed)."""
    if not isinstance(model, Checkpoint):
        saved = resolve(model).parent / SPLIT_FILE
        if saved.exists():
            return load_split(saved)
    cfg = checkpoint.metadata.get("train_config")
    shape = checkpoint.metadata.get("shape")
    if cfg is None or shape is None:
        raise InputError(
            "cannot tell the test blocks: no split.json beside the checkpoint and no "
            "training configuration in it; pass split=..."
        )
    return make_split(
        (int(shape[0]), int(shape[1])),
        PatchSpec.from_dict(cfg["patch"]),
        fractions=tuple(cfg["fractions"]),
        block=cfg["block"],
        buffer=cfg["buffer"],
        seed=cfg["seed"],
    )


def pixel_sample(dataset: PatchDataset, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `budget` valid pixels of a dataset's patches, spread over the patches: (n, C)
    normalised features and (n,) targets (NDVI, or landslide labels)."""
    rng = np.random.default_rng(seed)
    per_patch = max(1, -(-budget // max(len(dataset), 1)))
    xs, ys = [], []
    for i in rng.permutation(len(dataset)):
        sample = dataset[int(i)]
        mask = sample["mask"][0].numpy().ravel()
        x = sample["x"].numpy().reshape(sample["x"].shape[0], -1)[:, mask].T
        y = sample["y"][0].numpy().ravel()[mask]
        if len(y) > per_patch:
            keep = rng.choice(len(y), per_patch, replace=False)
            x, y = x[keep], y[keep]
        xs.append(x)
        ys.append(y)
        if sum(len(v) for v in ys) >= budget:
            break
    if not ys or sum(len(v) for v in ys) == 0:
        raise InputError("the training patches hold no valid pixel for the baselines")
    return np.concatenate(xs)[:budget], np.concatenate(ys)[:budget]


def _fit_baselines(
    x: np.ndarray, y: np.ndarray, seed: int, names: Sequence[str] = BASELINES
) -> dict[str, Any]:
    """The baselines `names` fitted to (n, C) features `x` and (n,) targets `y` (only those:
    the forest is most of an evaluation's time)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    fitted: dict[str, Any] = {}
    if "linear" in names:
        fitted["linear"] = LinearRegression().fit(x, y)
    if "random forest" in names:
        forest = RandomForestRegressor(
            n_estimators=100, min_samples_leaf=5, max_features=0.5, n_jobs=-1, random_state=seed
        )
        fitted["random forest"] = forest.fit(x, y)
    return fitted


def _pooled(parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Scores of several areas pooled over their pixels: RMSE and PSNR from the pooled
    squared error, MAE weighted by pixel count, SSIM weighted by pixel count over the areas
    where it is defined (an area too clouded for any SSIM window is left out of it)."""
    n = np.array([p["n_pixels"] for p in parts], dtype=np.float64)
    total = float(n.sum())
    if total == 0:
        return {"rmse": np.nan, "mae": np.nan, "ssim": np.nan, "psnr": np.nan, "n_pixels": 0}
    has = n > 0
    mse = float((n[has] * np.array([p["rmse"] for p in parts])[has] ** 2).sum() / total)
    mae = float((n[has] * np.array([p["mae"] for p in parts])[has]).sum() / total)
    ssim = np.array([p["ssim"] for p in parts], dtype=np.float64)
    defined = has & np.isfinite(ssim)
    psnr = 20 * np.log10(metrics.NDVI_DATA_RANGE / np.sqrt(mse)) if mse > 0 else np.inf
    return {
        "rmse": float(np.sqrt(mse)),
        "mae": mae,
        "ssim": float((n[defined] * ssim[defined]).sum() / n[defined].sum())
        if defined.any()
        else float("nan"),
        "psnr": float(psnr),
        "n_pixels": int(total),
    }


def evaluate(
    model: str | os.PathLike | Checkpoint,
    features: str | os.PathLike,
    *,
    split: Split | None = None,
    baselines: Sequence[str] = BASELINES,
    baseline_pixels: int = 200_000,
    batch_size: int = 16,
    device: str = "cpu",
    tta: bool = False,
    seed: int = 0,
    storage_options: dict | None = None,
) -> Evaluation:
    """Score the U-net and the baselines on the test pixels of the split.

    Args:
        model: a training folder or checkpoint file (its ``split.json`` is used), or a
            `Checkpoint` (then `split`, or the configuration it records).
        features: the feature store the model was trained on (a path or an fsspec URL).
        split: override the split.
        baselines: any of "linear", "random forest".
        baseline_pixels: training pixels the baselines learn from (a random sample of the
            U-net's training patches' valid pixels).
        batch_size, device, tta: passed to `sar2ndvi.predict.predict`.
        seed: seed of the baselines' pixel sample and forest.
        storage_options: fsspec options for a feature store at a URL.

    Returns:
        The `Evaluation`; ``format()`` gives the printed table.
    """
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise InputError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    split = split or _split_for(model, checkpoint)
    meta = checkpoint.metadata
    period = meta.get("period", "pre")
    features = os.fspath(features)
    tree = store.open(features, storage_options=storage_options)
    group = tree[f"/{period}"].to_dataset()
    if (group.sizes["y"], group.sizes["x"]) != tuple(split.shape):
        raise InputError(
            f"{features} is {group.sizes['y']} x {group.sizes['x']} px but the model's split "
            f"is for {split.shape[0]} x {split.shape[1]} px: evaluate on the training store"
        )
    bands = list(meta["normalisation"]["band"])
    ndvi = predict(checkpoint, group, batch_size=batch_size, device=device, tta=tta)
    runner = ModelRunner.from_checkpoint(checkpoint)

    fitted: dict[str, Any] = {}
    if baselines:
        spec = PatchSpec.from_dict(meta["patch"])
        cfg = meta.get("train_config", {})
        origins = select_patches(
            tree,
            period,
            split.patches("train"),
            spec,
            min_valid=cfg.get("min_valid", 0.5),
        )
        train_set = PatchDataset(
            features, origins, spec, group=period, storage_options=storage_options
        )
        x, y = pixel_sample(train_set, baseline_pixels, seed)
        fitted = _fit_baselines(x, y, seed, baselines)

    parts: dict[str, list[dict[str, float]]] = {UNET: [], **{k: [] for k in fitted}}
    areas = held_out_areas(split)
    shown: tuple[xr.DataArray, xr.DataArray] | None = None
    for area in areas:
        box = {"y": area.rows, "x": area.cols}
        truth = group["target"].isel(box)
        valid = (group["gaps"].isel(box) == 0) & truth.notnull()
        feats = group["features"].sel(band=bands).isel(box)
        # one compute: the target is read once for the truth and its validity
        truth, valid, feats, pred = dask.compute(truth, valid, feats, ndvi.isel(box))
        mask = valid.values & area.covered & np.isfinite(feats.values).all(axis=0)
        parts[UNET].append(metrics.score(pred.values, truth.values, mask))
        if fitted:
            # the baselines see exactly the inputs the U-net sees
            table = runner.normalise(feats.values).reshape(len(bands), -1).T
            for name, regressor in fitted.items():
                guess = regressor.predict(table).reshape(mask.shape).astype(np.float32)
                parts[name].append(metrics.score(np.clip(guess, -1, 1), truth.values, mask))
        if shown is None:
            shown = (truth.where(mask), pred.where(mask))
    assert shown is not None
    table = {name: _pooled(p) for name, p in parts.items()}
    return Evaluation(table, shown[0], shown[1], [(a.rows, a.cols) for a in areas])


def write_figure(
    evaluation: Evaluation, path: str | os.PathLike, *, crs: str | None = None
) -> Path:
    """The paper's Figure 2 for the largest test area: ground truth, prediction and
    absolute error, with colour bars and map coordinates (km)."""
    # a bare Figure, not pyplot: no global backend switch, nothing left open in a notebook
    from matplotlib.figure import Figure

    truth, pred = evaluation.truth, evaluation.prediction
    x, y = truth["x"].values / 1000.0, truth["y"].values / 1000.0
    dx = float(x[1] - x[0]) if len(x) > 1 else 0.01
    dy = float(y[1] - y[0]) if len(y) > 1 else -0.01
    extent = (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)
    error = np.abs(pred - truth)
    fig = Figure(figsize=(15, 5), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (truth, "Sentinel-2 NDVI (ground truth)", "RdYlGn", (-0.2, 1.0)),
        (pred, "Predicted NDVI (U-net, from Sentinel-1)", "RdYlGn", (-0.2, 1.0)),
        (error, "Absolute error", "magma", (0.0, 0.3)),
    ]
    for ax, (image, title, cmap, (vmin, vmax)) in zip(axes, panels, strict=True):
        shown = ax.imshow(image.values, extent=extent, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title)
        ax.locator_params(nbins=4)
        ax.set_xlabel(f"easting (km){', ' + crs if crs else ''}")
        ax.set_ylabel("northing (km)")
        fig.colorbar(shown, ax=ax, shrink=0.8, label="NDVI" if cmap != "magma" else "|error|")
    scores = evaluation.table[UNET]
    n = len(evaluation.areas)
    where = "the test area" if n == 1 else f"the largest of {n} test areas (scores pooled)"
    fig.suptitle(
        f"U-net on {where}: RMSE {scores['rmse']:.4f}, MAE {scores['mae']:.4f}, "
        f"SSIM {scores['ssim']:.3f}, PSNR {scores['psnr']:.2f} dB"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(evaluation: Evaluation, out: str | os.PathLike, *, crs: str | None = None) -> Path:
    """``metrics.json``, ``metrics.txt`` (the printed table) and ``figure.png`` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(evaluation.to_dict(), indent=1, default=float))
    (out / "metrics.txt").write_text(evaluation.format() + "\n")
    write_figure(evaluation, out / "figure.png", crs=crs)
    return out
