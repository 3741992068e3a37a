"""The Hualien paper's experiments: the local-statistics window sweep (Table 1) and the
patch-size comparison (128 / 64 against 256 / 128), on any cube.

- `ExperimentBudget`: what each model of a sweep is trained with (epochs, U-net width and
  depth, patience, batch size, seed, ...); `ExperimentBudget.quick()` is a small budget
  that a two-core machine finishes on a small simulated scene.
- `window_sweep(cube, out)`: one feature store per window (``variant("paper9", w)``), one
  model per store, every model scored on the same held-out block; one row per window.
- `patch_sweep(cube, out)`: one feature store, one model per patch configuration, trained
  on the same blocks and scored on the same test pixels.
- `write_results(rows, out, name, config)`: ``<name>.csv`` (one row per run),
  ``<name>.json`` (the configuration, seed, versions, cube and date) and ``<name>.png``
  (each metric against the window, or the patch configuration).
- `simulated_cube(out, size, seed)`: the demo's simulated scene, served, searched and built
  into ``out/cube.zarr`` (reused when complete).

Every run keeps its feature store, model and scores under ``out/windows/wNN/`` (or
``out/patches/pSIZE-OVERLAP/``): a sweep run again reuses what is complete and resumes an
interrupted training from its last epoch. See docs/experiments.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import sar2ndvi
from sar2ndvi.errors import InputError, OutputExistsError
from sar2ndvi.patches import PATCH_128, PatchSpec
from sar2ndvi.split import Split, load_split, make_split, min_block

__all__ = [
    "METRICS",
    "PAPER_TABLE1",
    "PAPER_WINDOWS",
    "PATCH_CONFIGS",
    "ExperimentBudget",
    "RunRow",
    "SceneTooSmallError",
    "patch_sweep",
    "plot_results",
    "read_results",
    "rows_table",
    "simulated_cube",
    "split_id",
    "window_sweep",
    "write_results",
]

#: The windows of the paper's Table 1, px.
PAPER_WINDOWS: tuple[int, ...] = tuple(range(11, 30, 2))
#: The paper's patch configurations: (size, overlap), px.
PATCH_CONFIGS: tuple[tuple[int, int], ...] = ((128, 64), (256, 128))
#: The metric columns, and whether lower is better.
METRICS: dict[str, bool] = {"rmse": True, "mae": True, "ssim": False, "psnr": False}
#: The paper's Table 1 (real Sentinel-1/2 data over Hualien, 2024): window -> RMSE, MAE,
#: SSIM, PSNR (dB). Only its trend is comparable with a sweep on another scene.
PAPER_TABLE1: dict[int, dict[str, float]] = {
    w: dict(zip(METRICS, v, strict=True))
    for w, v in {
        11: (0.0609, 0.0431, 0.8224, 30.34),
        13: (0.0613, 0.0414, 0.8251, 30.27),
        15: (0.0611, 0.0414, 0.8327, 30.31),
        17: (0.0614, 0.0426, 0.8244, 30.26),
        19: (0.0617, 0.0406, 0.8522, 30.22),
        21: (0.0622, 0.0438, 0.8243, 30.15),
        23: (0.0619, 0.0426, 0.8253, 30.19),
        25: (0.0626, 0.0435, 0.8178, 30.09),
        27: (0.0620, 0.0425, 0.8094, 30.17),
        29: (0.0596, 0.0410, 0.8290, 30.51),
    }.items()
}
#: What a run folder keeps besides its store and model: its configuration and scores.
RESULT_FILE = "result.json"
#: The training options that do not change the numbers (left out of the reuse check).
_FREE = ("device", "num_workers")

Echo = Callable[[str], None]


class SceneTooSmallError(InputError):
    """The cube is too small for a spatially disjoint split of the asked patches.

    Attributes:
        shape: (rows, cols) of the cube, px.
        needed: (rows, cols) of the smallest cube that works, px (a square one).
    """

    def __init__(self, message: str, shape: tuple[int, int], needed: tuple[int, int]) -> None:
        super().__init__(message)
        self.shape = shape
        self.needed = needed


# --------------------------------------------------------------------------- the budget


@dataclass(frozen=True)
class ExperimentBudget:
    """How each model of a sweep is trained (the same for every run of a sweep).

    Attributes:
        epochs: at most this many epochs per model.
        width: U-net filters of the first level.
        depth: U-net down-samplings (patch sides must be multiples of 2**depth).
        patience: early stopping, epochs without a better validation loss.
        batch_size: patches per step.
        learning_rate: AdamW's initial learning rate.
        patch: the window sweep's patches (the patch sweep sets its own).
        seed: seed of the split, the weights, the order, the augmentation (and of the
            simulated scene).
        scene_size: side (px) of the simulated scene when no cube is given.
        device: "auto", "cpu", "cuda", "cuda:N" (does not change the split or the seed).
        num_workers: loader processes (None: half the cores).
    """

    epochs: int = 40
    width: int = 32
    depth: int = 3
    patience: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-3
    patch: PatchSpec = PATCH_128
    seed: int = 0
    scene_size: int = 1024
    device: str = "auto"
    num_workers: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "width", "depth", "patience", "batch_size", "scene_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"budget {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def quick(cls, **changes: Any) -> ExperimentBudget:
        """A budget a two-core machine finishes: a 384 px simulated scene (a 342 x 335 px
        cube after the recipe's inset), 64 / 32 px patches (128 / 64 needs a cube of
        512 x 512 px for its split), a U-net of width 16, batches of 4, 40 epochs and no
        early stopping (every window trains as long). About 25 s per window on two idle
        cores; see docs/experiments.md for how it was chosen. `changes` override fields."""
        base = cls(
            epochs=40,
            width=16,
            depth=3,
            patience=40,
            batch_size=4,
            learning_rate=1e-3,
            patch=PatchSpec(64, 32),
            scene_size=384,
        )
        return replace(base, **changes)

    def train_config(
        self, patch: PatchSpec | None = None, *, block: int | None = None, buffer: int | None = None
    ) -> Any:
        """The `TrainConfig` of one run (`patch` defaults to the budget's)."""
        from sar2ndvi.model import UNetConfig
        from sar2ndvi.train import TrainConfig

        return TrainConfig(
            patch=patch or self.patch,
            model=UNetConfig(width=self.width, depth=self.depth),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            block=block,
            buffer=buffer,
            seed=self.seed,
            device=self.device,
            num_workers=self.num_workers,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = self.patch.to_dict()
        return d


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class RunRow:
    """One scored model of a sweep (baselines get rows of their own with `model` set).

    Attributes:
        experiment: "windows" or "patches".
        window: local-statistics window, px.
        patch_size, overlap: the run's patches, px.
        model: "U-net", "linear" or "random forest".
        rmse, mae: NDVI units; ssim: unitless; psnr: dB (data range 2).
        pixels: test pixels scored.
        val_rmse: the U-net's validation RMSE at its best epoch (NDVI; None for the
            baselines): a second, independent look at the same model.
        epochs: epochs trained; best_epoch: the kept epoch (1-based); train_seconds: the
            epochs' wall time, s (None for the baselines).
        seed: the run's seed.
        split_id: digest of the split whose test pixels were scored (equal across a sweep).
    """

    experiment: str
    window: int
    patch_size: int
    overlap: int
    model: str
    rmse: float
    mae: float
    ssim: float
    psnr: float
    pixels: int
    val_rmse: float | None
    epochs: int | None
    best_epoch: int | None
    train_seconds: float | None
    seed: int
    split_id: str


def split_id(split: Split) -> str:
    """A short digest of a split (shape, lattice, blocks, roles, seed)."""
    text = json.dumps(split.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _say(echo: Echo | None, line: str) -> None:
    if echo is not None:
        echo(line)


# --------------------------------------------------------------------------- the cube


def simulated_cube(
    out: str | os.PathLike,
    size: int = 512,
    seed: int = 0,
    *,
    progress: bool = False,
    echo: Echo | None = None,
) -> str:
    """The demo's simulated scene (`SceneConfig` defaults at `size` x `size` px) in
    ``out/scene``, served as a STAC API, searched and built into ``out/cube.zarr``; both
    reused when complete. Returns the cube store's path.

    The cube is smaller than the scene: the recipe's box is inset by 250 m on each side
    (a 384 px scene gives a 342 x 335 px cube).
    """
    from sar2ndvi import store
    from sar2ndvi.catalog import select_scenes
    from sar2ndvi.cube import build_cube
    from sar2ndvi.synth.area import scene_recipe
    from sar2ndvi.synth.config import SceneConfig
    from sar2ndvi.synth.scene import simulate
    from sar2ndvi.synth.server import serve_scene

    out = Path(out)
    cube_path = str(out / "cube.zarr")
    scene = simulate(SceneConfig(seed=seed, size=(size, size)), out / "scene", progress=progress)
    if store.is_complete(cube_path):
        _say(echo, f"{cube_path} is complete already: reused")
        return cube_path
    _say(echo, f"simulated scene in {scene.path}; searching and building {cube_path}")
    with serve_scene(scene) as server:
        recipe = scene_recipe(scene, url=server.url, name="simulated")
        selection = select_scenes(recipe)
    store.write(build_cube(recipe, selection), cube_path, progress=progress)
    return cube_path


def _cube_shape(tree: Any, path: str) -> tuple[int, int]:
    for group in ("s1", "dem"):
        if group in tree.children:
            ds = tree[f"/{group}"]
            return int(ds.sizes["y"]), int(ds.sizes["x"])
    raise InputError(f"{path} is not a cube store (no /s1 or /dem group); build one first")


def _cube_identity(attrs: Mapping[str, Any]) -> str:
    """What a feature store records of its cube (see `features._root_attrs`), as text."""
    keep = ("sar2ndvi:recipe", "sar2ndvi:items", "sar2ndvi:version")
    return json.dumps({k: attrs[k] for k in keep if k in attrs}, sort_keys=True)


def _recipe_name(attrs: Mapping[str, Any]) -> str | None:
    recipe = attrs.get("sar2ndvi:recipe")
    return recipe.get("name") if isinstance(recipe, Mapping) else None


# --------------------------------------------------------------------------- one run


def _check_split(
    shape: tuple[int, int], spec: PatchSpec, seed: int, *, block: int | None, buffer: int | None
) -> Split:
    """The split the runs will make, or a SceneTooSmallError naming the size needed."""
    try:
        return make_split(shape, spec, block=block, buffer=buffer, seed=seed)
    except InputError as exc:
        buf = spec.size if buffer is None else buffer
        block = max(block or 0, min_block(spec, buf))
        side = 2 * block  # 2 x 2 blocks hold the train, validation and test roles
        if shape[0] >= side and shape[1] >= side:
            raise  # not a size problem (e.g. a block off the stride)
        raise SceneTooSmallError(
            f"the {shape[0]} x {shape[1]} px cube is too small for {spec.size} px patches "
            f"with a {spec.overlap} px overlap: the spatially disjoint train/val/test split "
            f"needs three blocks of at least {block} x {block} px ({buf} px between roles), "
            f"i.e. a cube of at least {side} x {side} px (or {block} x {3 * block}); use a "
            "larger scene or smaller patches",
            shape,
            (side, side),
        ) from exc


def _features_store(
    cube_tree: Any,
    path: Path,
    spec: Any,
    *,
    overwrite: bool,
    progress: bool,
    echo: Echo | None,
    label: str,
) -> str:
    """The run's feature store: reused when complete and made with `spec` from this cube."""
    from sar2ndvi import store
    from sar2ndvi.features import write_features

    target = str(path)
    if store.is_complete(target) and not overwrite:
        attrs = store.open(target).attrs
        same_spec = attrs.get("sar2ndvi:feature_spec") == json.loads(json.dumps(spec.to_dict()))
        if not same_spec or _cube_identity(attrs.get("sar2ndvi:cube", {})) != _cube_identity(
            cube_tree.attrs
        ):
            raise OutputExistsError(
                f"{target} holds features of another cube or recipe (window "
                f"{attrs.get('sar2ndvi:window')}); pass overwrite (--overwrite) to replace "
                "them, or use another output folder"
            )
        _say(echo, f"{label}: features {target} reused")
        return target
    _say(echo, f"{label}: features ({spec.name}, window {spec.window} px) -> {target}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_features(cube_tree, target, spec, overwrite=overwrite, progress=progress)
    return target


def _train_and_score(
    features: str,
    run_dir: Path,
    config: Any,
    key: dict[str, Any],
    *,
    experiment: str,
    window: int,
    baselines: bool,
    eval_split: Split | None,
    overwrite: bool,
    progress: bool,
    echo: Echo | None,
    label: str,
) -> tuple[list[RunRow], Split]:
    """Train (or resume) one model, score it on the held-out block, keep the rows in
    ``run_dir/result.json``; a complete run with the same key is read back instead."""
    from sar2ndvi.checkpoint import LAST
    from sar2ndvi.evaluate import BASELINES, UNET, evaluate
    from sar2ndvi.train import SPLIT_FILE, resolve_device, train

    model_dir = run_dir / "model"
    result_path = run_dir / RESULT_FILE
    if result_path.exists() and not overwrite:
        saved = json.loads(result_path.read_text())
        names = {f.name for f in fields(RunRow)}
        # rows of an older layout are scored again (the finished training is reused)
        same_layout = all(set(r) == names for r in saved.get("rows", []))
        if saved.get("key") == key and same_layout and (model_dir / SPLIT_FILE).exists():
            _say(echo, f"{label}: model and scores reused ({result_path})")
            return [RunRow(**r) for r in saved["rows"]], load_split(model_dir / SPLIT_FILE)
    result_path.unlink(missing_ok=True)
    if (model_dir / LAST).exists() and not overwrite:
        doing = f"resuming the training in {model_dir} (from its last epoch)"
    else:
        doing = (
            f"training a U-net (width {config.model.width}, depth {config.model.depth}, "
            f"{config.patch.size}/{config.patch.overlap} px patches, up to {config.epochs} "
            f"epochs) -> {model_dir}"
        )
    _say(echo, f"{label}: {doing}")
    try:
        # resume: an interrupted run continues from its last epoch; a finished one returns
        result = train(
            features,
            model_dir,
            config,
            resume=not overwrite,
            overwrite=overwrite,
            progress=progress,
        )
    except InputError as exc:
        if "another configuration" not in str(exc):
            raise
        raise OutputExistsError(
            f"{model_dir} holds a model trained with another budget; pass overwrite "
            f"(--overwrite) to retrain it, or use another output folder ({exc})"
        ) from exc
    split = load_split(model_dir / SPLIT_FILE)
    device = str(resolve_device(config.device))
    evaluation = evaluate(
        model_dir,
        features,
        split=eval_split,
        baselines=BASELINES if baselines else (),
        seed=config.seed,
        device=device,
    )
    history = result.history
    seconds = float(sum(h["seconds"] for h in history))
    sid = split_id(eval_split or split)
    best = result.best_epoch  # 1-based; 0 when no epoch ever improved (a NaN loss)
    best_val_rmse = float(history[best - 1]["val_rmse"]) if history and best >= 1 else None
    rows = []
    for name, scores in evaluation.table.items():
        unet = name == UNET
        rows.append(
            RunRow(
                experiment=experiment,
                window=window,
                patch_size=config.patch.size,
                overlap=config.patch.overlap,
                model=name,
                rmse=float(scores["rmse"]),
                mae=float(scores["mae"]),
                ssim=float(scores["ssim"]),
                psnr=float(scores["psnr"]),
                pixels=int(scores["n_pixels"]),
                val_rmse=best_val_rmse if unet else None,
                epochs=len(history) if unet else None,
                best_epoch=result.best_epoch if unet else None,
                train_seconds=round(seconds, 2) if unet else None,
                seed=config.seed,
                split_id=sid,
            )
        )
    u = rows[0]
    _say(
        echo,
        f"{label}: RMSE {u.rmse:.4f}  MAE {u.mae:.4f}  SSIM {u.ssim:.4f}  PSNR {u.psnr:.2f} dB "
        f"on {u.pixels} test px; best epoch {u.best_epoch} of {u.epochs}, {seconds:.0f} s",
    )
    tmp = result_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "rows": [asdict(r) for r in rows]}, indent=1))
    os.replace(tmp, result_path)
    return rows, split


def _run_key(config: Any, **extra: Any) -> dict[str, Any]:
    """What decides a run's numbers: the training config (less device and workers) and
    `extra` (features, cube, baselines), JSON-normalised for comparison with a saved one."""
    train = {k: v for k, v in config.to_dict().items() if k not in _FREE}
    return json.loads(json.dumps({"train": train, **extra}, sort_keys=True))


def _same_roles(a: Split, b: Split) -> bool:
    return (
        a.shape == b.shape
        and a.block == b.block
        and a.seed == b.seed
        and np.array_equal(a.roles, b.roles)
    )


# --------------------------------------------------------------------------- the sweeps


def window_sweep(
    cube: str | os.PathLike,
    out: str | os.PathLike,
    windows: Sequence[int] = PAPER_WINDOWS,
    budget: ExperimentBudget | None = None,
    *,
    baselines: bool = False,
    variant_name: str = "paper9",
    overwrite: bool = False,
    progress: bool = False,
    echo: Echo | None = None,
) -> list[RunRow]:
    """The paper's Table 1: a model per local-statistics window, scored on the same
    held-out block.

    For each window w: the feature store ``out/windows/wNN/features.zarr``
    (``variant(variant_name, w)``), the model ``out/windows/wNN/model`` and its scores
    ``out/windows/wNN/result.json``; each reused when complete, so an interrupted sweep run
    again resumes. Every model is trained with the same `budget` (same seed, patches and
    block size) and so on the same split; this is checked, not assumed.

    Args:
        cube: a cube store (`sar2ndvi build`, `simulated_cube`).
        out: the sweep's folder.
        windows: odd windows, px (default 11, 13, ..., 29).
        budget: the training budget (default: `ExperimentBudget()`, the paper's).
        baselines: also score the linear and random-forest baselines for each window.
        variant_name: the feature recipe (default the paper's 9 channels).
        overwrite: recompute runs whose folder holds another configuration.
        progress: progress bars for the stores and the epochs.
        echo: called with one line per step (e.g. `print`).

    Returns:
        One `RunRow` per window (and per baseline), in the order of `windows`.

    Raises:
        SceneTooSmallError: the cube cannot hold the split (before anything is written).
        InputError: a run's folder holds a model trained on another split.
    """
    from sar2ndvi import store
    from sar2ndvi.features import variant

    budget = budget or ExperimentBudget()
    windows = [int(w) for w in windows]
    if not windows or len(set(windows)) != len(windows):
        raise InputError(f"windows must be distinct odd sizes in px, got {windows}")
    specs = [variant(variant_name, w) for w in windows]  # validates every window first
    cube = os.fspath(cube)
    tree = store.open(cube)
    shape = _cube_shape(tree, cube)
    config = budget.train_config()
    expected = _check_split(shape, config.patch, budget.seed, block=None, buffer=None)
    _say(
        echo,
        f"window sweep over {windows} on {cube} ({shape[0]} x {shape[1]} px); split: "
        f"{expected.block} px blocks, {len(expected.patches('test'))} test patches",
    )
    out = Path(out)
    fingerprint = tree.attrs.get(store.FINGERPRINT_ATTR)
    rows: list[RunRow] = []
    for w, spec in zip(windows, specs, strict=True):
        run_dir = out / "windows" / f"w{w:02d}"
        label = f"window {w}"
        features = _features_store(
            tree,
            run_dir / "features.zarr",
            spec,
            overwrite=overwrite,
            progress=progress,
            echo=echo,
            label=label,
        )
        key = _run_key(config, features=spec.to_dict(), cube=fingerprint, baselines=baselines)
        run_rows, split = _train_and_score(
            features,
            run_dir,
            config,
            key,
            experiment="windows",
            window=w,
            baselines=baselines,
            eval_split=None,
            overwrite=overwrite,
            progress=progress,
            echo=echo,
            label=label,
        )
        # the table compares windows only if every model saw the same blocks
        if split != expected:
            raise InputError(
                f"{run_dir / 'model' / 'split.json'} differs from the split of the sweep's "
                f"budget (seed {budget.seed}, {expected.block} px blocks): the windows would "
                "be scored on different pixels; rerun with overwrite (--overwrite)"
            )
        rows += run_rows
    return rows


def _patch_label(size: int, overlap: int) -> str:
    return f"p{size}-{overlap}"


def patch_sweep(
    cube: str | os.PathLike,
    out: str | os.PathLike,
    configs: Sequence[tuple[int, int]] = PATCH_CONFIGS,
    budget: ExperimentBudget | None = None,
    *,
    window: int = 19,
    baselines: bool = False,
    variant_name: str = "paper9",
    overwrite: bool = False,
    progress: bool = False,
    echo: Echo | None = None,
) -> list[RunRow]:
    """The paper's patch-size test: one feature store (``out/patches/features.zarr``), one
    model per (size, overlap) configuration (``out/patches/pSIZE-OVERLAP/``).

    To compare like with like, every model is trained on the same blocks (the block side
    and the buffer of the largest patches, which the smaller ones fit too) and scored on
    the same test pixels: those of the largest configuration's split.

    Raises:
        SceneTooSmallError: the cube cannot hold the largest patches' split; the message
            names the cube size needed (1024 x 1024 px for 256 / 128 patches). Raised
            before anything is written.
    """
    from sar2ndvi import store
    from sar2ndvi.features import variant

    budget = budget or ExperimentBudget()
    specs = [PatchSpec(int(s), int(o)) for s, o in configs]
    if not specs or len(set(specs)) != len(specs):
        raise InputError(f"patch configurations must be distinct (size, overlap), got {configs}")
    multiple = 2**budget.depth
    for spec in specs:
        if spec.size % multiple:
            raise InputError(
                f"patch size {spec.size} px is not a multiple of {multiple} (2**depth for a "
                f"U-net of depth {budget.depth}); use other patches or a shallower U-net"
            )
    feature_spec = variant(variant_name, window)
    cube = os.fspath(cube)
    tree = store.open(cube)
    shape = _cube_shape(tree, cube)
    largest = max(specs, key=lambda s: (s.size, s.stride))
    buffer = largest.size
    reference = _check_split(shape, largest, budget.seed, block=None, buffer=buffer)
    configs_by_spec = {}
    for spec in specs:
        try:
            split = make_split(shape, spec, block=reference.block, buffer=buffer, seed=budget.seed)
        except InputError as exc:
            raise InputError(
                f"patches {spec.size}/{spec.overlap} px do not fit the sweep's common "
                f"{reference.block} px blocks (set by {largest.size}/{largest.overlap} px "
                f"patches): {exc}"
            ) from exc
        if not _same_roles(split, reference):  # same blocks, seed, fractions: same roles
            raise InputError(
                f"patches {spec.size}/{spec.overlap} px get other block roles than "
                f"{largest.size}/{largest.overlap} px on the common {reference.block} px blocks"
            )
        configs_by_spec[spec] = budget.train_config(spec, block=reference.block, buffer=buffer)
    _say(
        echo,
        f"patch sweep over {[f'{s.size}/{s.overlap}' for s in specs]} on {cube} "
        f"({shape[0]} x {shape[1]} px); common split: {reference.block} px blocks, "
        f"{buffer} px buffer; scored on the test pixels of the "
        f"{largest.size}/{largest.overlap} lattice",
    )
    out = Path(out) / "patches"
    features = _features_store(
        tree,
        out / "features.zarr",
        feature_spec,
        overwrite=overwrite,
        progress=progress,
        echo=echo,
        label=f"window {window}",
    )
    fingerprint = tree.attrs.get(store.FINGERPRINT_ATTR)
    rows: list[RunRow] = []
    for spec in specs:
        config = configs_by_spec[spec]
        run_dir = out / _patch_label(spec.size, spec.overlap)
        key = _run_key(
            config,
            features=feature_spec.to_dict(),
            cube=fingerprint,
            baselines=baselines,
            evaluation=reference.to_dict(),
        )
        run_rows, split = _train_and_score(
            features,
            run_dir,
            config,
            key,
            experiment="patches",
            window=window,
            baselines=baselines,
            eval_split=reference,
            overwrite=overwrite,
            progress=progress,
            echo=echo,
            label=f"patches {spec.size}/{spec.overlap}",
        )
        if not _same_roles(split, reference):
            raise InputError(
                f"{run_dir / 'model' / 'split.json'} has other blocks than the sweep's common "
                "split; rerun with overwrite (--overwrite)"
            )
        rows += run_rows
    return rows


# --------------------------------------------------------------------------- results

_COLUMNS = [f.name for f in fields(RunRow)]


def write_results(
    rows: Sequence[RunRow],
    out: str | os.PathLike,
    name: str,
    config: Mapping[str, Any],
    *,
    cube: str | None = None,
) -> dict[str, Path]:
    """Write a sweep's rows: ``out/<name>.csv`` (one row per run, metrics at full
    precision), ``out/<name>.json`` (`config`, seed, package and library versions, cube
    path and recipe, the date, and the rows) and ``out/<name>.png`` (each metric against
    the window, or the patch configuration; the paper's Table 1 alongside for windows).

    Returns:
        {"csv": ..., "json": ..., "png": ...} paths.
    """
    import torch

    if not rows:
        raise InputError(f"no result rows to write for {name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{name}.{kind}" for kind in ("csv", "json", "png")}
    tmp = paths["csv"].with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})
    os.replace(tmp, paths["csv"])

    recipe = None
    if cube is not None:
        from sar2ndvi import store

        recipe = _recipe_name(store.open(cube).attrs)
    experiment = rows[0].experiment
    sidecar = {
        "experiment": experiment,
        "config": dict(config),
        "seed": rows[0].seed,
        "cube": cube,
        "recipe": recipe,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "sar2ndvi": sar2ndvi.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "files": {k: p.name for k, p in paths.items()},
        "rows": [asdict(r) for r in rows],
    }
    if experiment == "windows":
        sidecar["paper_table1"] = {str(w): v for w, v in PAPER_TABLE1.items()}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sidecar, indent=1, default=_json_default))
    os.replace(tmp, paths["json"])
    plot_results(rows, paths["png"])
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, PatchSpec):
        return value.to_dict()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_results(path: str | os.PathLike) -> list[RunRow]:
    """The rows of a ``<name>.csv`` written by `write_results`."""
    ints = {"window", "patch_size", "overlap", "pixels", "epochs", "best_epoch", "seed"}
    floats = {"rmse", "mae", "ssim", "psnr", "val_rmse", "train_seconds"}
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            values: dict[str, Any] = {}
            for k, v in raw.items():
                if k in ints or k in floats:
                    values[k] = None if v == "" else (int(v) if k in ints else float(v))
                else:
                    values[k] = v
            rows.append(RunRow(**values))
    return rows


_TITLES = {"rmse": "RMSE", "mae": "MAE", "ssim": "SSIM", "psnr": "PSNR (dB)"}


def plot_results(rows: Iterable[RunRow], path: str | os.PathLike) -> Path:
    """Four small panels, one per metric, against the window (or the patch configuration),
    one line per model; for a window sweep the paper's Table 1 on a second axis (grey,
    "paper (Hualien)"): another scene, so only its trend compares."""
    # a bare Figure, not pyplot: no global backend switch, nothing left open in a notebook
    from matplotlib.figure import Figure

    rows = list(rows)
    windows = rows[0].experiment == "windows"
    if windows:
        xs = sorted({r.window for r in rows})

        def x_of(r: RunRow) -> float:
            return float(r.window)

        labels = [str(w) for w in xs]
        positions = [float(w) for w in xs]
        xlabel = "local-statistics window (px)"
    else:
        keys = list(dict.fromkeys((r.patch_size, r.overlap) for r in rows))

        def x_of(r: RunRow) -> float:
            return float(keys.index((r.patch_size, r.overlap)))

        labels = [f"{s}/{o}" for s, o in keys]
        positions = [float(i) for i in range(len(keys))]
        xlabel = "patch size / overlap (px)"
    models = list(dict.fromkeys(r.model for r in rows))
    fig = Figure(figsize=(9, 6.8), layout="constrained")
    axes = fig.subplots(2, 2)
    legend: list[Any] = []
    extra: list[Any] = []
    for ax, metric in zip(axes.ravel(), METRICS, strict=True):
        handles = []
        for i, model in enumerate(models):
            mine = sorted((r for r in rows if r.model == model), key=x_of)
            (line,) = ax.plot(
                [x_of(r) for r in mine],
                [getattr(r, metric) for r in mine],
                marker="o",
                linestyle="-" if i == 0 else "--",
                color=f"C{i}",
                label=f"{model} (this run)" if i == 0 else model,
            )
            handles.append(line)
        unet = sorted((r for r in rows if r.val_rmse is not None), key=x_of)
        if metric == "rmse" and unet:
            # the held-out block is small: the validation RMSE is a second look
            (val_line,) = ax.plot(
                [x_of(r) for r in unet],
                [r.val_rmse for r in unet],
                marker=".",
                linestyle="--",
                color="C0",
                alpha=0.6,
                label=f"{unet[0].model}, validation RMSE",
            )
            extra = [val_line]
        if windows:
            paper = [w for w in xs if w in PAPER_TABLE1]
            if paper:
                twin = ax.twinx()
                (line,) = twin.plot(
                    paper,
                    [PAPER_TABLE1[w][metric] for w in paper],
                    marker="s",
                    markersize=4,
                    color="0.55",
                    linestyle=":",
                    label="paper (Hualien)",
                )
                twin.tick_params(axis="y", colors="0.45", labelsize=8)
                handles.append(line)
        better = "lower" if METRICS[metric] else "higher"
        ax.set_title(f"{_TITLES[metric]} ({better} is better)", fontsize=10)
        ax.set_xticks(positions, labels)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        legend = handles  # the same lines in every panel: one legend for the figure
    fig.legend(
        handles=[*legend[:1], *extra, *legend[1:]],
        loc="outside lower center",
        ncols=len(legend) + len(extra),
        fontsize=8,
        frameon=False,
    )
    first = rows[0]
    what = (
        f"{first.patch_size}/{first.overlap} px patches" if windows else f"window {first.window} px"
    )
    pixels = max(r.pixels for r in rows)
    fig.suptitle(
        f"{'Window' if windows else 'Patch'} sweep: {what}, seed {first.seed}, "
        f"{pixels} test px" + ("; paper on the grey right-hand axes" if windows else ""),
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def rows_table(rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """The rows as plain dicts (e.g. for ``pandas.DataFrame(rows_table(rows))``)."""
    return [asdict(r) for r in rows]
