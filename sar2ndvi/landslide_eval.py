"""The Jolster comparison on held-out ground: settings x methods, pixel and object scores.

`evaluate_landslides` trains, for each input setting (`sar2ndvi.landslides.SETTINGS`), the
segmentation U-net and the pixel-wise CART on the train blocks of the split, and scores
them on the test blocks only (the pixels of the test patches, exactly as the NDVI
evaluation); the NDVI-change threshold method (`sar2ndvi.change`) is scored on the same
pixels for the two settings whose change layer is the whole story: setting 2 (Sentinel-2
dNDVI) and setting 5 (radar-derived dNDVI). All methods see the same pixels: those where
every stored layer has data.

Pixel scores: precision, recall, F1, MCC and IoU of the landslide class (`Confusion`).
Object scores: the share of inventory landslides in the test area that the prediction
touches (``hit``), and the share of predicted objects (8-connected) that touch an
inventory landslide (``matched``).

The U-net and CART cut their probabilities at their own operating points, chosen on the
validation blocks (`sar2ndvi.segment`), unless one fixed cut is given (``probability``);
the cuts are reported with the scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
from scipy import ndimage

from sar2ndvi import store
from sar2ndvi.change import EIGHT, detect_change
from sar2ndvi.confusion import SCORE_KEYS, Confusion, confusion
from sar2ndvi.errors import InputError
from sar2ndvi.evaluate import held_out_areas
from sar2ndvi.landslides import INPUT_GROUP, SETTINGS, setting
from sar2ndvi.predict import normalise_channels, predict_layers
from sar2ndvi.segment import SegmentConfig, fit_cart, setting_channels, train_segmentation
from sar2ndvi.split import Split
from sar2ndvi.train import resolve_device

__all__ = [
    "METHODS",
    "METRICS_FORMAT",
    "LandslideEvaluation",
    "ObjectCounts",
    "evaluate_landslides",
    "object_counts",
    "write_landslide_figure",
]

UNET, CART, THRESHOLD = "U-net", "CART", "dNDVI threshold"
METHODS = (UNET, CART, THRESHOLD)
#: Settings scored with the threshold method, and the change layer it thresholds.
THRESHOLD_LAYERS = {"2": "dndvi", "5": "radar_dndvi"}
#: Version of ``landslide-metrics.json``; 2 added the rows' probability ``cut`` (operating
#: points chosen on validation blocks), so results of version 1 are not comparable.
METRICS_FORMAT = "sar2ndvi-landslide-metrics/2"


@dataclass(frozen=True)
class ObjectCounts:
    """Object-level counts: inventory landslides hit, predicted objects matched."""

    reference: int = 0
    hit: int = 0
    predicted: int = 0
    matched: int = 0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(
            self.reference + other.reference,
            self.hit + other.hit,
            self.predicted + other.predicted,
            self.matched + other.matched,
        )

    @property
    def hit_rate(self) -> float:
        return self.hit / self.reference if self.reference else 0.0

    @property
    def matched_rate(self) -> float:
        return self.matched / self.predicted if self.predicted else 0.0


def object_counts(
    predicted: np.ndarray, reference_ids: np.ndarray, scored: np.ndarray
) -> ObjectCounts:
    """Object scores of a predicted mask against inventory ids over the `scored` pixels.

    An inventory landslide counts when any of its pixels is scored, and is hit when any of
    its scored pixels is predicted; a predicted object (8-connected, within the scored
    pixels) is matched when it touches a scored inventory pixel.
    """
    pred = np.asarray(predicted, dtype=bool) & scored
    ids = np.where(scored, reference_ids, 0)
    present = np.unique(ids[ids > 0])
    hit = np.unique(ids[(ids > 0) & pred])
    labels, n = ndimage.label(pred, structure=EIGHT)
    touched = np.unique(labels[(labels > 0) & (ids > 0)])
    return ObjectCounts(len(present), len(hit), int(n), len(touched))


@dataclass
class LandslideEvaluation:
    """Scores per (setting, method), pooled over the test areas."""

    pixels: dict[tuple[str, str], Confusion]
    objects: dict[tuple[str, str], ObjectCounts]
    thresholds: dict[str, float] = field(default_factory=dict)
    shown: dict[str, Any] = field(default_factory=dict)
    #: (setting, method) -> the probability cut of the U-net and CART rows.
    cuts: dict[tuple[str, str], float] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (key, method), counts in self.pixels.items():
            objects = self.objects[(key, method)]
            out.append(
                {
                    "setting": key,
                    "inputs": SETTINGS[key].name,
                    "method": method,
                    **counts.to_dict(),
                    "hit_rate": objects.hit_rate,
                    "matched_rate": objects.matched_rate,
                    "landslides": objects.reference,
                    "objects": objects.predicted,
                    "cut": self.cuts.get((key, method)),
                }
            )
        return out

    def format(self) -> str:
        """The settings x methods table: pixel scores and object scores."""
        head = (
            f"{'setting':<34} {'method':<16}"
            + "".join(
                f"{k if k != 'f1' else 'F1':>10}"
                for k in ("precision", "recall", "f1", "mcc", "iou")
            )
            + f"{'hit':>8}{'matched':>9}{'cut':>7}"
        )
        lines = [head, "-" * len(head)]
        for row in self.rows():
            label = f"{row['setting']}: {row['inputs']}"
            lines.append(
                f"{label:<34} {row['method']:<16}"
                + "".join(f"{row[k]:>10.3f}" for k in SCORE_KEYS)
                + f"{row['hit_rate']:>8.2f}{row['matched_rate']:>9.2f}"
                + (f"{row['cut']:>7.3f}" if row["cut"] is not None else f"{'-':>7}")
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": METRICS_FORMAT, "rows": self.rows(), "thresholds": self.thresholds}


def evaluate_landslides(
    inputs: str | os.PathLike,
    out: str | os.PathLike,
    split: Split,
    *,
    settings: Sequence[str] = tuple(SETTINGS),
    config: SegmentConfig | None = None,
    cart_pixels: int = 200_000,
    threshold: float | None = None,
    min_slope: float = 10.0,
    min_area: float = 500.0,
    probability: float | None = None,
    progress: bool = True,
) -> LandslideEvaluation:
    """Train and score every (setting, method) on the split (see the module doc).

    Args:
        inputs: a labelled input store (`sar2ndvi.landslides.write_inputs`) holding the
            layers of every requested setting.
        out: folder for the segmentation runs (``models/setting-<k>/``).
        split: the spatial split (the NDVI model's, for ground neither model saw).
        settings: setting keys to run.
        config: segmentation training settings (its patch must be the split's).
        cart_pixels: training pixels of each CART.
        threshold, min_slope, min_area: the change method's settings (`detect_change`);
            threshold None: Otsu's on the scene.
        probability: one probability cut (a pixel at or above it is a landslide) for the
            U-net and CART; None: each model's operating point, chosen on the validation
            blocks.
        progress: print progress.
    """
    config = config or SegmentConfig(patch=split.spec)
    inputs, out = os.fspath(inputs), Path(out)
    chosen = [setting(k) for k in settings]
    tree = store.open(inputs)
    group = tree[f"/{INPUT_GROUP}"].to_dataset()
    if "landslide_id" not in group:
        raise InputError(f"{inputs}: the input store has no inventory labels (landslide_id)")
    if (group.sizes["y"], group.sizes["x"]) != tuple(split.shape):
        raise InputError(
            f"{inputs} is {group.sizes['y']} x {group.sizes['x']} px but the split is for "
            f"{split.shape[0]} x {split.shape[1]} px"
        )
    bands = [str(b) for b in group["band"].values]
    norm = tree["/normalisation"].to_dataset()
    center = np.asarray(norm["center"].values, dtype=np.float32)
    scale = np.asarray(norm["scale"].values, dtype=np.float32)
    for s in chosen:
        setting_channels(bands, s)  # fail before any training when a layer is missing

    device = str(resolve_device(config.device))
    probabilities: dict[tuple[str, str], Any] = {}
    carts: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    cuts: dict[tuple[str, str], float] = {}
    for s in chosen:
        if progress:
            print(f"setting {s.key} ({s.name}): training the segmentation U-net", flush=True)
        run = train_segmentation(
            inputs, out / "models" / f"setting-{s.key}", s, split, config, progress=progress
        )
        probabilities[(s.key, UNET)] = predict_layers(
            run.checkpoint, inputs, period=INPUT_GROUP, device=device
        ).isel(layer=0, drop=True)
        carts[s.key] = fit_cart(inputs, s, split, pixels=cart_pixels, seed=config.seed)
        cuts[(s.key, UNET)] = run.threshold if probability is None else probability
        cuts[(s.key, CART)] = carts[s.key].threshold if probability is None else probability
        if s.key in THRESHOLD_LAYERS:
            change = detect_change(
                group["features"].sel(band=THRESHOLD_LAYERS[s.key]),
                group["features"].sel(band="slope") if "slope" in bands else None,
                threshold=threshold,
                min_slope=min_slope,
                min_area=min_area,
            )
            thresholds[s.key] = change.threshold
            probabilities[(s.key, THRESHOLD)] = change.layers["mask"].astype(np.float32)

    pixels: dict[tuple[str, str], Confusion] = {}
    objects: dict[tuple[str, str], ObjectCounts] = {}
    shown: dict[str, Any] = {}
    for area in held_out_areas(split):
        box = {"y": area.rows, "x": area.cols}
        lazy = {key: prob.isel(box) for key, prob in probabilities.items()}
        feats, ids, gaps, computed = dask.compute(
            group["features"].isel(box),
            group["landslide_id"].isel(box),
            group["gaps"].isel(box),
            lazy,
        )
        scored = area.covered & (gaps.values == 0)
        truth = ids.values > 0
        predicted: dict[tuple[str, str], np.ndarray] = {
            key: prob.values >= cuts.get(key, 0.5) for key, prob in computed.items()
        }
        for s in chosen:
            channels = setting_channels(bands, s)
            x = normalise_channels(feats.values, center, scale)[channels]
            proba = carts[s.key].probability(x.reshape(len(channels), -1).T)
            predicted[(s.key, CART)] = proba.reshape(scored.shape) >= cuts[(s.key, CART)]
        for s in chosen:
            for method in METHODS:
                key = (s.key, method)
                if key not in predicted:
                    continue
                pixels[key] = pixels.get(key, Confusion()) + confusion(
                    predicted[key], truth, scored
                )
                objects[key] = objects.get(key, ObjectCounts()) + object_counts(
                    predicted[key], ids.values, scored
                )
        if not shown:
            shown = {
                "area": (area.rows, area.cols),
                "x": feats["x"].values,
                "y": feats["y"].values,
                "scored": scored,
                "truth": truth,
                "background": {
                    b: feats.sel(band=b).values for b in ("radar_ndvi", "post_ndvi") if b in bands
                },
                "predicted": predicted,
            }
    return LandslideEvaluation(pixels, objects, thresholds, shown, cuts)


def write_landslide_figure(
    evaluation: LandslideEvaluation, path: str | os.PathLike, *, setting_key: str = "5"
) -> Path:
    """The map overlay of one setting on the largest test area: post-event NDVI (radar-
    derived when stored), inventory outlines and each method's predicted outlines."""
    # a bare Figure, not pyplot: no global backend switch, nothing left open in a notebook
    from matplotlib.figure import Figure

    shown = evaluation.shown
    methods = [m for m in METHODS if (setting_key, m) in shown.get("predicted", {})]
    if not methods:
        raise InputError(f"setting {setting_key} was not evaluated: no figure to draw")
    background = shown["background"]
    name = "radar_ndvi" if "radar_ndvi" in background else next(iter(background), None)
    x, y = shown["x"] / 1000.0, shown["y"] / 1000.0
    extent = (x[0], x[-1], y[-1], y[0])
    fig = Figure(figsize=(5 * len(methods), 5.4), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        if name is not None:
            image = ax.imshow(
                np.where(shown["scored"], background[name], np.nan),
                cmap="RdYlGn",
                vmin=-0.2,
                vmax=1.0,
                extent=extent,
            )
        ax.contour(x, y, shown["truth"].astype(float), levels=[0.5], colors="black", linewidths=0.8)
        ax.contour(
            x,
            y,
            shown["predicted"][(setting_key, method)].astype(float),
            levels=[0.5],
            colors="magenta",
            linewidths=0.8,
        )
        scores = evaluation.pixels[(setting_key, method)]
        ax.set_title(f"{method}: F1 {scores.f1:.2f}, MCC {scores.mcc:.2f}")
        ax.set_xlabel("easting, km")
    axes[0][0].set_ylabel("northing, km")
    if name is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=f"{name} (background)")
    fig.suptitle(
        f"setting {setting_key} ({SETTINGS[setting_key].name}): inventory (black) and "
        "predicted (magenta) outlines on the test area"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_landslide_report(evaluation: LandslideEvaluation, out: str | os.PathLike) -> Path:
    """``landslide-metrics.json``, ``landslide-metrics.csv``, ``landslide-metrics.txt`` and
    ``landslide-map.png`` in `out`."""
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "landslide-metrics.json").write_text(json.dumps(evaluation.to_dict(), indent=1))
    (out / "landslide-metrics.txt").write_text(evaluation.format() + "\n")
    rows = evaluation.rows()
    with (out / "landslide-metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = {k for k, _ in evaluation.pixels}
    chosen = "5" if "5" in keys else sorted(keys)[0]
    write_landslide_figure(evaluation, out / "landslide-map.png", setting_key=chosen)
    return out
