"""Training the U-net on a feature store: spatially disjoint patches, the composite loss,
AdamW with a plateau schedule, early stopping, per-epoch metrics and resumable checkpoints.

`train(features, out)` writes, in the folder `out`:

- ``checkpoint.pt``: the best weights (lowest validation loss) with everything prediction
  needs (model config, feature recipe, normalisation, patch size; see `sar2ndvi.checkpoint`);
- ``last.pt``: the latest state, with optimizer, scheduler, RNG states and history, from
  which ``train(..., resume=True)`` continues exactly where a run stopped;
- ``split.json``: the train / validation / test blocks (reproducible from the seed);
- ``metrics.csv``: one row per epoch (losses, their terms, validation RMSE, learning rate);
- ``config.json``: the training configuration.

Runs on the CPU by default and on CUDA when present (``device="auto"``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sar2ndvi import store
from sar2ndvi.checkpoint import BEST, LAST, Checkpoint, load_checkpoint, save_checkpoint
from sar2ndvi.errors import InputError
from sar2ndvi.loss import CompositeLoss, LossWeights
from sar2ndvi.model import UNet, UNetConfig
from sar2ndvi.patches import Augment, PatchDataset, PatchSpec, make_loader, select_patches
from sar2ndvi.split import Split, load_split, make_split

__all__ = ["TrainConfig", "TrainResult", "resolve_device", "store_metadata", "train"]

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (besides the feature store).

    Attributes:
        patch: patch size and overlap (the paper: 128 / 64).
        model: the U-net's shape; `in_channels` is taken from the store's bands.
        loss: weights of the L1, SSIM and gradient terms.
        epochs: at most this many passes over the training patches.
        batch_size: patches per optimisation step.
        learning_rate: AdamW's initial learning rate.
        weight_decay: AdamW's decoupled weight decay.
        patience: stop after this many epochs without a better validation loss.
        lr_patience: the learning rate is halved when this many epochs in a row have not
            improved the validation loss (the next epoch uses the halved rate; the
            ``lr`` column of metrics.csv is the rate after the epoch's schedule step).
        min_valid: patches with a smaller valid fraction (clouds, radar gaps) are dropped.
        fractions: area fractions of the train, validation and test blocks.
        block: split block side (px); None for the default (4 patches).
        buffer: minimum gap (px) between patches of different roles; None = one patch.
        seed: seed of the split, the initial weights, the order and the augmentation.
        augment: physics-preserving flips (None: no augmentation).
        period: the feature store group to train on.
        num_workers: DataLoader worker processes (None: half the cores, at most 4).
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    """

    patch: PatchSpec = field(default_factory=PatchSpec)
    model: UNetConfig = field(default_factory=UNetConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    lr_patience: int = 3
    min_valid: float = 0.5
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    block: int | None = None
    buffer: int | None = None
    seed: int = 0
    augment: Augment | None = field(default_factory=Augment)
    period: str = "pre"
    num_workers: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "lr_patience"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"training {name} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise InputError("learning_rate must be > 0 and weight_decay >= 0")
        if self.period not in ("pre", "post"):
            raise InputError(f"period must be 'pre' or 'post', got {self.period!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = self.patch.to_dict()
        d["model"] = self.model.to_dict()
        d["loss"] = self.loss.to_dict()
        d["fractions"] = list(self.fractions)
        d["augment"] = None if self.augment is None else asdict(self.augment)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        d = dict(data)
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InputError(f"unknown training options {sorted(unknown)}")
        if "patch" in d:
            d["patch"] = PatchSpec.from_dict(d["patch"])
        if "model" in d:
            d["model"] = UNetConfig.from_dict(d["model"])
        if "loss" in d:
            d["loss"] = LossWeights.from_dict(d["loss"])
        if "fractions" in d:
            d["fractions"] = tuple(d["fractions"])
        if d.get("augment") is not None:
            d["augment"] = Augment(**d["augment"])
        return cls(**d)


@dataclass
class TrainResult:
    """What a run produced: the folder, the best epoch and loss, the per-epoch history."""

    out: Path
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]]
    stopped_early: bool

    @property
    def checkpoint(self) -> Path:
        return self.out / BEST


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but this machine has no CUDA device")
    return resolved


def store_metadata(
    features: str | os.PathLike, period: str, storage_options: dict | None = None
) -> dict[str, Any]:
    """What a checkpoint records about the feature store it was trained on (a path, or a
    URL opened with fsspec's `storage_options`, recorded without credentials)."""
    tree = store.open(features, storage_options=storage_options)
    if period not in tree.children:
        raise InputError(f"{features}: the feature store has no /{period} group")
    if "normalisation" not in tree.children:
        raise InputError(f"{features}: the feature store has no /normalisation statistics")
    norm = tree["/normalisation"].to_dataset()
    bands = [str(b) for b in norm["band"].values]
    stack_bands = [str(b) for b in tree[f"/{period}"]["band"].values]
    if bands != stack_bands:
        raise InputError(
            f"{features}: normalisation bands {bands} differ from the stack's {stack_bands}"
        )
    attrs = tree.attrs
    return {
        "features": attrs.get("sar2ndvi:feature_spec"),
        "normalisation": {
            "band": bands,
            "center": [float(v) for v in norm["center"].values],
            "scale": [float(v) for v in norm["scale"].values],
        },
        "feature_store": store.scrub_secrets(os.fspath(features)),
        "feature_fingerprint": attrs.get(store.FINGERPRINT_ATTR),
        "shape": [int(tree[f"/{period}"].sizes["y"]), int(tree[f"/{period}"].sizes["x"])],
        "period": period,
    }


def _rng_state() -> dict[str, Any]:
    """Torch's global generator (initial weights, dropout); the split, the order and the
    augmentation use their own generators seeded from (seed, epoch)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _batches(loader: Iterable[dict[str, torch.Tensor]], device: torch.device):
    for batch in loader:
        yield (
            # channels-last convolutions are ~20 % faster on CPUs (oneDNN) and on GPUs
            batch["x"].to(device, non_blocking=True, memory_format=torch.channels_last),
            batch["y"].to(device, non_blocking=True),
            batch["mask"].to(device, non_blocking=True),
        )


def _validate(
    model: UNet, loader: Iterable, loss_fn: CompositeLoss, device: torch.device
) -> dict[str, float]:
    """Validation loss (mean over batches, weighted by valid pixels) and RMSE."""
    model.eval()
    total, weight, squared, pixels = 0.0, 0.0, 0.0, 0
    with torch.inference_mode():
        for x, y, mask in _batches(loader, device):
            pred = model(x)
            n = float(mask.sum())
            total += float(loss_fn(pred, y, mask)) * n
            weight += n
            squared += float(((pred - y) ** 2)[mask].sum())
            pixels += int(n)
    if weight == 0:
        raise InputError("the validation patches hold no valid pixel")
    return {"val_loss": total / weight, "val_rmse": math.sqrt(squared / pixels)}


def _json_number(value: float) -> float | None:
    """JSON has no NaN or infinity: None stands for them in checkpoint metadata."""
    return float(value) if math.isfinite(value) else None


def _write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    """The whole metrics table, rewritten atomically each epoch (it is small)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _prepare_split(out: Path, shape: tuple[int, int], config: TrainConfig, resume: bool) -> Split:
    split = make_split(
        shape,
        config.patch,
        fractions=config.fractions,
        block=config.block,
        buffer=config.buffer,
        seed=config.seed,
    )
    path = out / SPLIT_FILE
    if path.exists() and resume:
        saved = load_split(path)
        if saved != split:
            raise InputError(f"{path} differs from the split this configuration makes")
    split.save(path)
    return split


def _patches(
    features: str, split: Split, role: str, config: TrainConfig, storage_options: dict | None
) -> np.ndarray:
    origins = select_patches(
        features,
        config.period,
        split.patches(role),
        config.patch,
        min_valid=config.min_valid,
        storage_options=storage_options,
    )
    if len(origins) == 0:
        raise InputError(
            f"{features}: no {role} patch of {config.patch.size} px has >= "
            f"{config.min_valid:.0%} valid pixels; use a larger scene, smaller patches or "
            "a lower min_valid"
        )
    return origins


def train(
    features: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
) -> TrainResult:
    """Train the U-net on a feature store and write the run's folder (see the module doc).

    Args:
        features: a feature store from `sar2ndvi.features.write_features`: a path or an
            fsspec URL (``s3://...``).
        out: the output folder (local: checkpoints, split and metrics).
        config: the run's settings (default: `TrainConfig()`).
        resume: continue from ``out/last.pt`` (same configuration required).
        overwrite: replace a finished run in `out`.
        progress: show a progress bar with the running loss.
        storage_options: fsspec options for a feature store at a URL (credentials,
            endpoint); they travel to the loader processes, and are never recorded.

    Raises:
        InputError: no usable patches, a bad configuration, or `out` holds another run.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    features = os.fspath(features)
    out = Path(out)
    so = storage_options
    meta = store_metadata(features, config.period, so)
    bands = meta["normalisation"]["band"]
    config = replace(config, model=replace(config.model, in_channels=len(bands)))
    if config.patch.size % config.model.multiple:
        raise InputError(
            f"patch size {config.patch.size} px is not a multiple of {config.model.multiple} "
            f"(2**depth for a U-net of depth {config.model.depth}); use e.g. "
            f"{config.patch.size - config.patch.size % config.model.multiple} px patches "
            "or a shallower U-net"
        )
    _check_out(out, config, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1))

    device = resolve_device(config.device)
    shape = (int(meta["shape"][0]), int(meta["shape"][1]))
    split = _prepare_split(out, shape, config, resume)
    train_origins = _patches(features, split, "train", config, so)
    val_origins = _patches(features, split, "val", config, so)

    torch.manual_seed(config.seed)
    model = UNet(config.model).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.5, patience=config.lr_patience
    )
    loss_fn = CompositeLoss(config.loss)
    train_set = PatchDataset(
        features,
        train_origins,
        config.patch,
        group=config.period,
        augment=config.augment,
        seed=config.seed,
        storage_options=so,
    )
    val_set = PatchDataset(
        features, val_origins, config.patch, group=config.period, storage_options=so
    )
    train_loader = make_loader(
        train_set,
        config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        seed=config.seed,
    )
    val_loader = make_loader(
        val_set,
        config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        seed=config.seed,
    )

    history: list[dict[str, float]] = []
    start_epoch, best_epoch, best_val, bad_epochs = 0, -1, math.inf, 0
    if resume and (out / LAST).exists():
        last = load_checkpoint(out / LAST, map_location="cpu")
        if last.training is None:
            raise InputError(f"{out / LAST} holds no training state to resume from")
        state = last.training
        model.load_state_dict(last.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_epoch = int(state["epoch"]) + 1, int(state["best_epoch"])
        best_val, bad_epochs = float(state["best_val_loss"]), int(state["bad_epochs"])
        history = json.loads(state["history"])
        _restore_rng(state["rng"])
    metadata = {
        **meta,
        "patch": config.patch.to_dict(),
        "train_config": config.to_dict(),
        "split": {role: len(split.patches(role)) for role in ("train", "val", "test")},
    }

    stopped_early = bad_epochs >= config.patience
    for epoch in range(start_epoch, config.epochs):
        if stopped_early:
            break
        started = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {"loss": 0.0, "l1": 0.0, "ssim": 0.0, "gradient": 0.0}
        steps = 0
        bar = tqdm(
            total=len(train_loader),
            disable=not progress,
            desc=f"epoch {epoch + 1}",
            unit="batch",
            leave=False,
        )
        for x, y, mask in _batches(train_loader, device):
            optimizer.zero_grad(set_to_none=True)
            pred = model(x)
            loss, terms = loss_fn.with_terms(pred, y, mask)
            loss.backward()
            optimizer.step()
            sums["loss"] += float(loss.detach())
            for k in ("l1", "ssim", "gradient"):
                sums[k] += float(terms.get(k, 0.0))
            steps += 1
            bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}")
            bar.update(1)
        bar.close()
        val = _validate(model, val_loader, loss_fn, device)
        scheduler.step(val["val_loss"])
        improved = val["val_loss"] < best_val
        if improved:
            best_val, best_epoch, bad_epochs = val["val_loss"], epoch, 0
        else:
            bad_epochs += 1
        row = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / max(steps, 1),
            "train_l1": sums["l1"] / max(steps, 1),
            "train_ssim": sums["ssim"] / max(steps, 1),
            "train_gradient": sums["gradient"] / max(steps, 1),
            **val,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        _write_metrics(out / METRICS_FILE, history)
        epoch_meta = {**metadata, "epoch": epoch + 1, "val_loss": _json_number(val["val_loss"])}
        if improved:
            save_checkpoint(Checkpoint.from_model(model, epoch_meta), out / BEST)
        stopped_early = bad_epochs >= config.patience
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_epoch": best_epoch,
            "best_val_loss": best_val,
            "bad_epochs": bad_epochs,
            "history": json.dumps(history),
            "rng": _rng_state(),
        }
        save_checkpoint(Checkpoint.from_model(model, epoch_meta, training_state), out / LAST)
        if progress:
            print(
                f"epoch {epoch + 1:3d}  train {row['train_loss']:.4f}  "
                f"val {val['val_loss']:.4f}  val RMSE {val['val_rmse']:.4f}  "
                f"lr {row['lr']:.1e}  {row['seconds']:.0f} s" + ("  *" if improved else ""),
                flush=True,
            )
    return TrainResult(out, best_epoch + 1, best_val, history, stopped_early)


def _check_out(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run folder needs resume (same config) or overwrite."""
    saved = out / CONFIG_FILE
    if not saved.exists():
        return
    if resume:
        # a resumed run may go on for longer, more patiently, on another device; what
        # shapes the numbers (data, model, loss, order, seeds) must match
        free = {"epochs", "patience", "device"}
        before = {k: v for k, v in json.loads(saved.read_text()).items() if k not in free}
        now = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in free}
        if before != now:
            raise InputError(
                f"{out} holds a run with another configuration ({saved}); resume it with the "
                "same settings, or train into another folder"
            )
        return
    if not overwrite:
        raise InputError(
            f"{out} already holds a training run; pass resume=True (--resume) to continue "
            "it or overwrite=True (--overwrite) to start again"
        )
    for name in (BEST, LAST, SPLIT_FILE, METRICS_FILE, CONFIG_FILE):
        (out / name).unlink(missing_ok=True)
