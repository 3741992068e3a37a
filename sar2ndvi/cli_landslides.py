"""The landslide commands of `sar2ndvi`: ``detect`` and ``evaluate-landslides``.

Both read their input stores (features, prediction, cube) from paths or fsspec URLs
(``--storage-option``) and compute on the active Dask scheduler (``--scheduler``); what
they write (``--out``) is a local folder. They add themselves to the `sar2ndvi`
command group (`sar2ndvi.cli.main`) when this module is imported.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sar2ndvi.cli import _compute_options, main

console = Console(highlight=False)


def _inputs(
    features: str, prediction: str | None, cube: str | None, storage_options: dict | None
) -> tuple[Any, Any, Any]:
    """The input stores opened (lazily) with the command's fsspec options: features and
    cube as DataTrees, the prediction as a Dataset (None where not given)."""
    from sar2ndvi import store

    so = storage_options or None
    opened = store.open(features, storage_options=so)
    ndvi = None if prediction is None else store.open(prediction, storage_options=so)
    if ndvi is not None:
        ndvi = ndvi.to_dataset()
    tree = None if cube is None else store.open(cube, storage_options=so)
    return opened, ndvi, tree


def _settings(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    from sar2ndvi.landslides import setting

    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    for key in keys:
        try:
            setting(key)
        except Exception as exc:
            raise click.BadParameter(str(exc)) from exc
    return keys


@click.command("detect")
@click.argument("features_store", metavar="FEATURES")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder, local: landslides.zarr, landslides.gpkg, landslides.geojson.",
)
@click.option(
    "--method",
    type=click.Choice(["threshold", "unet"]),
    default="threshold",
    show_default=True,
    help="NDVI change on slopes, or a trained segmentation U-net (--model).",
)
@click.option("--prediction", default=None, help="Radar-derived post-event NDVI store.")
@click.option("--cube", default=None, help="The cube store (for optical layers).")
@click.option("--model", default=None, help="Segmentation checkpoint (--method unet).")
@click.option("--optical", is_flag=True, help="Threshold Sentinel-2's dNDVI, not the radar's.")
@click.option("--threshold", type=float, default=None, help="dNDVI threshold [default: Otsu].")
@click.option("--min-slope", type=float, default=10.0, show_default=True, help="Degrees.")
@click.option("--min-area", type=float, default=500.0, show_default=True, help="m^2.")
@click.option(
    "--probability",
    type=float,
    default=None,
    help="U-net probability cut [default: the model's validation operating point].",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing landslides.zarr.")
@_compute_options
def detect(features_store: str, out: Path, **options: Any) -> None:
    """Map landslides over the scene: a mask cube (Zarr) and polygons (GPKG, GeoJSON).

    FEATURES, --prediction and --cube may be fsspec URLs (s3://..., with
    --storage-option); the outputs go to the local folder --out.
    """
    _detect(features_store, out, **options)


def _detect(
    features_store: str,
    out: Path,
    *,
    method: str = "threshold",
    prediction: str | None = None,
    cube: str | None = None,
    model: str | None = None,
    optical: bool = False,
    threshold: float | None = None,
    min_slope: float = 10.0,
    min_area: float = 500.0,
    probability: float | None = None,
    device: str = "auto",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, Path]:
    from sar2ndvi.detect import detect_threshold, detect_unet, write_detection
    from sar2ndvi.errors import InputError
    from sar2ndvi.train import resolve_device

    start = time.perf_counter()
    if method == "unet" and model is None:
        raise InputError("--method unet needs --model (a segmentation checkpoint)")
    features, ndvi, tree = _inputs(features_store, prediction, cube, storage_options)
    from sar2ndvi import store
    from sar2ndvi.errors import OutputExistsError

    if store.is_complete(str(Path(out) / "landslides.zarr")) and not overwrite:
        # refuse before any prediction is computed
        raise OutputExistsError(
            f"{Path(out) / 'landslides.zarr'} is complete already; pass --overwrite to replace it"
        )
    scratch = Path(out) / ".probability-scratch.zarr"
    if method == "unet":
        assert model is not None
        Path(out).mkdir(parents=True, exist_ok=True)
        layers, inputs = detect_unet(
            model,
            features,
            prediction=ndvi,
            cube=tree,
            probability=probability,
            min_area=min_area,
            device=str(resolve_device(device)),
            scratch=scratch,
        )
    else:
        layers, inputs = detect_threshold(
            features,
            prediction=ndvi,
            optical=optical,
            threshold=threshold,
            min_slope=min_slope,
            min_area=min_area,
        )
        console.print(
            f"dNDVI threshold {layers.attrs['threshold']:.3f} on slopes >= {min_slope} deg"
        )
    try:
        paths = write_detection(layers, inputs, out, overwrite=overwrite, progress=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import geopandas as gpd

    frame = gpd.read_file(paths["gpkg"])
    console.print(
        f"[green]done[/] in {time.perf_counter() - start:.1f} s: {len(frame)} landslides, "
        f"{frame['area_m2'].sum() / 1e6:.3f} km^2; {paths['store']}, {paths['gpkg']}, "
        f"{paths['geojson']}",
        soft_wrap=True,
    )
    return paths


@click.command("evaluate-landslides")
@click.argument("features_store", metavar="FEATURES")
@click.option("--inventory", required=True, help="Landslide polygons (GeoJSON, GPKG).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder, local: inputs.zarr, models, metrics, map.",
)
@click.option("--prediction", default=None, help="Radar-derived post-event NDVI store.")
@click.option("--cube", default=None, help="The cube store (post-event optical bands).")
@click.option("--model", default=None, help="The NDVI model's run folder: its split is used.")
@click.option(
    "--settings",
    default="1,2,3,4,5",
    show_default=True,
    callback=_settings,
    help="Input settings to compare.",
)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--width", type=int, default=16, show_default=True)
@click.option("--patch-size", type=int, default=64, show_default=True)
@click.option("--overlap", type=int, default=32, show_default=True)
@click.option("--threshold", type=float, default=None, help="dNDVI threshold [default: Otsu].")
@click.option("--min-slope", type=float, default=10.0, show_default=True)
@click.option("--min-area", type=float, default=500.0, show_default=True)
@click.option(
    "--probability",
    type=float,
    default=None,
    help="One probability cut for U-net and CART [default: each one's validation "
    "operating point].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=None, help="Loader processes.")
@_compute_options
def evaluate_landslides(features_store: str, inventory: str, out: Path, **options: Any) -> None:
    """Compare the segmentation U-net, CART and NDVI change over the input settings.

    FEATURES, --prediction and --cube may be fsspec URLs (s3://..., with
    --storage-option); the outputs go to the local folder --out.
    """
    _evaluate_landslides(features_store, inventory, out, **options)


def _evaluate_landslides(
    features_store: str,
    inventory: str,
    out: Path,
    *,
    prediction: str | None = None,
    cube: str | None = None,
    model: str | None = None,
    settings: tuple[str, ...] = ("1", "2", "3", "4", "5"),
    epochs: int = 30,
    width: int = 16,
    patch_size: int = 64,
    overlap: int = 32,
    threshold: float | None = None,
    min_slope: float = 10.0,
    min_area: float = 500.0,
    probability: float | None = None,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    storage_options: dict | None = None,
) -> Any:
    from sar2ndvi import store
    from sar2ndvi.landslide_eval import evaluate_landslides as run
    from sar2ndvi.landslide_eval import write_landslide_report
    from sar2ndvi.landslides import (
        SETTINGS,
        landslide_inputs,
        rasterize_inventory,
        write_inputs,
    )
    from sar2ndvi.patches import PatchSpec
    from sar2ndvi.segment import SegmentConfig
    from sar2ndvi.split import load_split, make_split

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    spec = PatchSpec(patch_size, overlap)
    layers = sorted({layer for key in settings for layer in SETTINGS[key].layers} | {"slope"})
    inputs_path = out / "inputs.zarr"
    if store.is_complete(inputs_path):
        console.print(f"reusing {inputs_path}")
    else:
        features, ndvi, tree = _inputs(features_store, prediction, cube, storage_options)
        inputs = landslide_inputs(features, layers, prediction=ndvi, cube=tree)
        labels = rasterize_inventory(inventory, inputs)
        console.print(f"writing the landslide layers {layers} to {inputs_path}", soft_wrap=True)
        write_inputs(
            inputs,
            inputs_path,
            labels=labels,
            progress=True,
            attrs={"sar2ndvi:inventory": str(Path(inventory).resolve())},
        )
    shape = tuple(store.open(str(inputs_path))["/inputs"].to_dataset()["gaps"].shape)
    if model is not None:
        split = load_split(Path(model) / "split.json").relattice(spec)
        console.print(f"the NDVI model's split ({model}), on {patch_size} px patches")
    else:
        split = make_split(shape, spec, seed=seed)
    config = SegmentConfig(
        patch=spec, width=width, epochs=epochs, seed=seed, device=device, num_workers=workers
    )
    evaluation = run(
        inputs_path,
        out,
        split,
        settings=settings,
        config=config,
        threshold=threshold,
        min_slope=min_slope,
        min_area=min_area,
        probability=probability,
    )
    write_landslide_report(evaluation, out)
    (out / "landslide-config.json").write_text(
        json.dumps({"segment_config": config.to_dict(), "split": split.to_dict()}, indent=1)
    )
    console.print(evaluation.format(), soft_wrap=True)
    console.print(
        f"[green]done[/] in {time.perf_counter() - start:.0f} s: "
        f"{out / 'landslide-metrics.csv'}, {out / 'landslide-map.png'}",
        soft_wrap=True,
    )
    return evaluation


main.add_command(detect)
main.add_command(evaluate_landslides)
