"""Landslide segmentation: the U-net's sigmoid twin, a class-balanced loss, and CART.

`train_segmentation` trains ``UNet(output="sigmoid")`` on the patches of a landslide input
store (`sar2ndvi.landslides.write_inputs`) restricted to one input setting's layers, with the
same spatially disjoint split as the NDVI model: training patches from the train blocks,
early stopping on the validation blocks, nothing from the test blocks. The loss is
class-balanced, because landslides cover a few percent of a scene:

    loss = BCE(logits, y; pos_weight) + dice_weight * (1 - soft Dice(sigmoid(logits), y))

over valid pixels only, with ``pos_weight`` = negatives / positives of the training pixels
(capped at `MAX_POS_WEIGHT`) unless given. The checkpoint is an ordinary sar2ndvi
checkpoint whose normalisation lists the setting's layers, so `sar2ndvi.predict` tiles,
blends and reassembles its probabilities like NDVI.

`fit_cart` is the Jolster paper's pixel-wise baseline: a scikit-learn decision tree (CART)
on a sample of the same training pixels and layers, with balanced class weights.

Both methods carry an operating point: the probability cut of highest MCC on the
validation patches (`sar2ndvi.confusion.ThresholdCurve`), chosen for the U-net at its best
epoch and stored in its checkpoint (``threshold``). A class-balanced loss or class weights
shift probabilities towards the landslide class, so 0.5 is not a neutral cut; choosing it
on validation ground keeps the test blocks unseen.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from sar2ndvi import store
from sar2ndvi.checkpoint import BEST, Checkpoint, save_checkpoint
from sar2ndvi.errors import InputError
from sar2ndvi.landslides import INPUT_GROUP, Setting
from sar2ndvi.model import UNet, UNetConfig
from sar2ndvi.patches import Augment, PatchDataset, PatchSpec, make_loader, select_patches
from sar2ndvi.split import Split
from sar2ndvi.train import resolve_device

__all__ = [
    "MAX_POS_WEIGHT",
    "CartBaseline",
    "SegmentConfig",
    "SegmentResult",
    "fit_cart",
    "segmentation_loss",
    "setting_channels",
    "train_segmentation",
]

#: Upper bound of the automatic positive-class weight (a scene almost free of landslides
#: would otherwise weigh its few positive pixels by thousands).
MAX_POS_WEIGHT = 20.0
METRICS_FILE = "metrics.csv"
#: Written last by a run that ran to its end: what it was trained on, and how it went.
FINISHED_FILE = "finished.json"


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of a segmentation run.

    Attributes:
        patch: patch size and overlap (the lattice of the split).
        width, depth, dropout: the U-net's shape (see `UNetConfig`).
        epochs: maximum epochs; `patience`: epochs without a better validation loss
            before stopping.
        batch_size, learning_rate, weight_decay: AdamW's settings.
        dice_weight: weight of the soft-Dice term.
        pos_weight: BCE weight of landslide pixels; None: negatives / positives of the
            training pixels, at most `MAX_POS_WEIGHT`.
        min_valid: patches with a smaller valid fraction are left out.
        augment: random horizontal and vertical flips.
        seed: seeds the weights, the order, the augmentation.
        device: "auto" (CUDA when present), "cpu" or "cuda[:n]".
        num_workers: DataLoader workers (None: `default_workers()`).
    """

    patch: PatchSpec = field(default_factory=PatchSpec)
    width: int = 16
    depth: int = 3
    dropout: float = 0.1
    epochs: int = 30
    patience: int = 6
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    pos_weight: float | None = None
    min_valid: float = 0.5
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch"] = self.patch.to_dict()
        return data


@dataclass
class SegmentResult:
    """A finished segmentation run: where its checkpoint is and how it went."""

    out: Path
    setting: str
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]]
    pos_weight: float
    #: Operating point: the probability cut of highest validation MCC at the best epoch.
    threshold: float

    @property
    def checkpoint(self) -> Path:
        return self.out / BEST


def setting_channels(bands: Sequence[str], setting: Setting) -> list[int]:
    """Indices of the setting's layers among the store's bands, in the setting's order."""
    bands = list(bands)
    missing = [layer for layer in setting.layers if layer not in bands]
    if missing:
        raise InputError(
            f"setting {setting.key} ({setting.name}) needs the layers {missing}, which the "
            f"input store lacks (it holds {bands}); write it with those layers"
        )
    return [bands.index(layer) for layer in setting.layers]


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    pos_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Class-balanced BCE + soft Dice over the valid pixels of a batch.

    Args:
        logits: (B, 1, H, W) pre-sigmoid outputs.
        target: (B, 1, H, W) 0/1 labels (any value where `mask` is False).
        mask: (B, 1, H, W) bool, True where a pixel counts.

    Returns:
        A scalar; masked pixels get no gradient. A batch without valid pixels gives 0.
    """
    weight = mask.to(logits.dtype)
    n = weight.sum()
    if float(n) == 0:
        return logits.sum() * 0.0
    y = torch.where(mask, target, torch.zeros_like(target))
    bce = F.binary_cross_entropy_with_logits(
        logits, y, weight=weight, pos_weight=logits.new_tensor(pos_weight), reduction="sum"
    )
    loss = bce / n
    if dice_weight:
        p = torch.sigmoid(logits) * weight
        inter = (p * y).sum()
        dice = (2 * inter + 1.0) / (p.sum() + (y * weight).sum() + 1.0)
        loss = loss + dice_weight * (1.0 - dice)
    return loss


def _positive_weight(dataset: PatchDataset) -> float:
    positives = negatives = 0
    for i in range(len(dataset)):
        sample = dataset.read(i)
        labels = sample["y"][sample["mask"]]
        positives += int(np.count_nonzero(labels > 0.5))
        negatives += int(np.count_nonzero(labels <= 0.5))
    if positives == 0:
        raise InputError(
            "the training patches hold no landslide pixel: the inventory does not reach the "
            "train blocks (use a larger scene or another split seed)"
        )
    return float(min(negatives / positives, MAX_POS_WEIGHT))


def _select(x: torch.Tensor, channels: list[int], all_bands: int) -> torch.Tensor:
    return x if channels == list(range(all_bands)) else x[:, channels]


def _validate(
    model: UNet,
    loader: Any,
    channels: list[int],
    bands: int,
    device: torch.device,
    pos_weight: float,
    dice_weight: float,
) -> dict[str, float]:
    """Validation loss (pixel-weighted mean), the MCC of the 0.5 cut, and the operating
    point: the probability cut of highest validation MCC (`ThresholdCurve`)."""
    from sar2ndvi.confusion import ThresholdCurve

    model.eval()
    total, weight, curve = 0.0, 0.0, ThresholdCurve.empty()
    with torch.inference_mode():
        for batch in loader:
            x = _select(batch["x"], channels, bands).to(device)
            y, mask = batch["y"].to(device), batch["mask"].to(device)
            logits = model.logits(x)
            n = float(mask.sum())
            total += (
                float(
                    segmentation_loss(
                        logits, y, mask, pos_weight=pos_weight, dice_weight=dice_weight
                    )
                )
                * n
            )
            weight += n
            probability = torch.sigmoid(logits.float()).cpu().numpy()
            curve = curve + ThresholdCurve.of(
                probability, batch["y"].numpy() > 0.5, batch["mask"].numpy()
            )
    if weight == 0:
        raise InputError("the validation patches hold no valid pixel")
    threshold, best = curve.best_threshold()
    half = curve.at(0.5)
    return {
        "val_loss": total / weight,
        "val_mcc": half.mcc,
        "val_f1": half.f1,
        "val_best_mcc": best.mcc,
        "threshold": threshold,
    }


def train_segmentation(
    inputs: str | os.PathLike,
    out: str | os.PathLike,
    setting: Setting,
    split: Split,
    config: SegmentConfig | None = None,
    *,
    progress: bool = True,
) -> SegmentResult:
    """Train the segmentation U-net on one setting's layers (see the module doc).

    Args:
        inputs: a labelled landslide input store (`sar2ndvi.landslides.write_inputs`).
        out: the run's folder: ``checkpoint.pt`` (best validation loss), ``metrics.csv``,
            ``config.json``.
        setting: the input setting.
        split: the spatial split (its lattice must be `config.patch`).
        config: the run's settings (default `SegmentConfig()`).
        progress: print one line per epoch.

    Raises:
        InputError: no usable training or validation patch, no landslide in training.
    """
    config = config or SegmentConfig()
    inputs, out = os.fspath(inputs), Path(out)
    if split.spec != config.patch:
        raise InputError(f"the split is for {split.spec} patches but the config has {config.patch}")
    identity = _run_identity(inputs, setting, split, config)
    finished = _finished_run(out, identity)
    if finished is not None:
        if progress:
            print(f"  setting {setting.key}: {out} holds this finished run: reused", flush=True)
        return finished
    (out / FINISHED_FILE).unlink(missing_ok=True)
    origins = {
        role: select_patches(
            inputs, INPUT_GROUP, split.patches(role), config.patch, min_valid=config.min_valid
        )
        for role in ("train", "val")
    }
    for role, found in origins.items():
        if len(found) == 0:
            raise InputError(f"{inputs}: the split's {role} blocks hold no usable patch")
    augment = Augment(hflip=True, vflip=True) if config.augment else None
    train_set = PatchDataset(
        inputs, origins["train"], config.patch, group=INPUT_GROUP, augment=augment, seed=config.seed
    )
    val_set = PatchDataset(inputs, origins["val"], config.patch, group=INPUT_GROUP)
    bands = train_set.bands
    channels = setting_channels(bands, setting)
    pos_weight = config.pos_weight or _positive_weight(train_set)

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model_config = UNetConfig(
        in_channels=len(channels),
        width=config.width,
        depth=config.depth,
        dropout=config.dropout,
        output="sigmoid",
    )
    model = UNet(model_config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    train_loader = make_loader(
        train_set, config.batch_size, shuffle=True, num_workers=config.num_workers, seed=config.seed
    )
    val_loader = make_loader(
        val_set, config.batch_size, shuffle=False, num_workers=config.num_workers, seed=config.seed
    )
    layout = train_set.layout
    metadata = {
        "task": "landslides",
        "setting": setting.key,
        "setting_name": setting.name,
        "period": INPUT_GROUP,
        "inputs": os.path.abspath(inputs),
        "normalisation": {
            "band": list(setting.layers),
            "center": [float(layout.center[i]) for i in channels],
            "scale": [float(layout.scale[i]) for i in channels],
        },
        "patch": config.patch.to_dict(),
        "split": split.to_dict(),
        "segment_config": config.to_dict(),
        "pos_weight": pos_weight,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(metadata["segment_config"], indent=1))

    history: list[dict[str, float]] = []
    best_val, best_epoch, bad, threshold = math.inf, -1, 0, 0.5
    for epoch in range(config.epochs):
        started = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        for batch in train_loader:
            x = _select(batch["x"], channels, len(bands)).to(device)
            y, mask = batch["y"].to(device), batch["mask"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = segmentation_loss(
                model.logits(x), y, mask, pos_weight=pos_weight, dice_weight=config.dice_weight
            )
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        val = _validate(
            model, val_loader, channels, len(bands), device, pos_weight, config.dice_weight
        )
        scheduler.step(val["val_loss"])
        improved = val["val_loss"] < best_val
        if improved:
            best_val, best_epoch, bad = val["val_loss"], epoch, 0
            threshold = val["threshold"]
            meta = {
                **metadata,
                "epoch": epoch + 1,
                "val_loss": val["val_loss"],
                # the operating point `detect` and `evaluate_landslides` cut at by default
                "threshold": val["threshold"],
            }
            save_checkpoint(Checkpoint.from_model(model, meta), out / BEST)
        else:
            bad += 1
        row = {
            "epoch": epoch + 1,
            "train_loss": total / max(steps, 1),
            **val,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        _write_history(out / METRICS_FILE, history)
        if progress:
            print(
                f"  setting {setting.key} epoch {epoch + 1:3d}  train {row['train_loss']:.4f}  "
                f"val {val['val_loss']:.4f}  val MCC {val['val_mcc']:.3f} "
                f"({val['val_best_mcc']:.3f} at {val['threshold']:.3f})  "
                f"{row['seconds']:.0f} s" + ("  *" if improved else ""),
                flush=True,
            )
        if bad >= config.patience:
            break
    result = SegmentResult(
        out, setting.key, best_epoch + 1, best_val, history, pos_weight, threshold
    )
    _write_finished(out, identity, result)
    return result


def _run_identity(
    inputs: str, setting: Setting, split: Split, config: SegmentConfig
) -> dict[str, Any]:
    """What makes two runs the same: the input store's content fingerprint, the setting,
    the split and the training settings."""
    attrs = store.open(inputs).attrs
    return {
        "inputs": os.path.abspath(inputs),
        "inputs_fingerprint": attrs.get(store.FINGERPRINT_ATTR),
        "setting": setting.key,
        "split": split.to_dict(),
        "segment_config": config.to_dict(),
    }


def _finished_run(out: Path, identity: dict[str, Any]) -> SegmentResult | None:
    """The finished run in `out` when it was made from the same `identity`, else None."""
    path = out / FINISHED_FILE
    if not path.is_file() or not (out / BEST).is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # JSON turns tuples into lists: compare through the same round trip
    if record.get("identity") != json.loads(json.dumps(identity)):
        return None
    if "threshold" not in record:  # written before runs chose an operating point
        return None
    return SegmentResult(
        out,
        record["setting"],
        record["best_epoch"],
        record["best_val_loss"],
        record["history"],
        record["pos_weight"],
        record["threshold"],
    )


def _write_finished(out: Path, identity: dict[str, Any], result: SegmentResult) -> None:
    record = {
        "identity": identity,
        "setting": result.setting,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "history": result.history,
        "pos_weight": result.pos_weight,
        "threshold": result.threshold,
    }
    tmp = out / (FINISHED_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / FINISHED_FILE)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


@dataclass(frozen=True)
class CartBaseline:
    """A fitted pixel-wise CART and its operating point.

    Attributes:
        tree: the fitted ``sklearn.tree.DecisionTreeClassifier``.
        threshold: the landslide-probability cut of highest MCC on validation pixels
            (0.5 when the split has no validation patch).
    """

    tree: Any
    threshold: float

    def probability(self, x: np.ndarray) -> np.ndarray:
        """(n, C) normalised pixels of the setting's layers -> (n,) landslide probability."""
        return self.tree.predict_proba(x)[:, 1]


def fit_cart(
    inputs: str | os.PathLike,
    setting: Setting,
    split: Split,
    *,
    pixels: int = 200_000,
    min_samples_leaf: int = 20,
    min_valid: float = 0.5,
    seed: int = 0,
) -> CartBaseline:
    """The pixel-wise CART baseline on the training pixels of one setting.

    A ``sklearn.tree.DecisionTreeClassifier`` (Gini, balanced class weights, leaves of at
    least `min_samples_leaf` pixels) on up to `pixels` valid pixels sampled across the
    training patches, inputs normalised as the U-net's. Its operating point is chosen as
    the U-net's is: the probability cut of highest MCC on up to `pixels` pixels of the
    validation patches.
    """
    from sklearn.tree import DecisionTreeClassifier

    from sar2ndvi.confusion import ThresholdCurve
    from sar2ndvi.evaluate import pixel_sample

    def sample(role: str) -> tuple[np.ndarray, np.ndarray] | None:
        origins = select_patches(
            inputs, INPUT_GROUP, split.patches(role), split.spec, min_valid=min_valid
        )
        if len(origins) == 0:
            return None
        dataset = PatchDataset(inputs, origins, split.spec, group=INPUT_GROUP)
        channels = setting_channels(dataset.bands, setting)
        x, y = pixel_sample(dataset, pixels, seed)
        return x[:, channels], y > 0.5

    train = sample("train")
    if train is None:
        raise InputError(f"{inputs}: the split's train blocks hold no usable patch")
    tree = DecisionTreeClassifier(
        class_weight="balanced", min_samples_leaf=min_samples_leaf, random_state=seed
    )
    fitted = CartBaseline(tree.fit(train[0], train[1].astype(np.int8)), 0.5)
    val = sample("val")
    if val is None:
        return fitted
    threshold, _ = ThresholdCurve.of(fitted.probability(val[0]), val[1]).best_threshold()
    return replace(fitted, threshold=threshold)
