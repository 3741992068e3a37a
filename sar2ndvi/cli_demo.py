"""``sar2ndvi demo``: the whole mission on the embedded default, stage by stage.

Simulate the study area, serve it as a STAC API, search it, build the cube, compute the
features, train and score the U-net, predict the post-event NDVI cube, compare the
landslide methods over the input settings, map the landslides of the whole scene from
radar alone, and write the report. Every stage prints what it does and how long it took;
a stage whose output is complete (and newer than its inputs) is reused, not recomputed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sar2ndvi.cli import (
    DEMO_EPOCHS,
    _build_selection,
    _config,
    _demo_scene_options,
    _evaluate,
    _features,
    _predict,
    _print_items,
    _print_scene,
    _train,
    console,
    main,
)
from sar2ndvi.report import (
    RunReport,
    StageTime,
    merge_stage_times,
    plot_training_curves,
    save_stage_times,
    write_run_report,
)

#: Stages, in order; ``--stop-after`` names one of the marked ones.
STAGES = (
    "simulate",
    "serve",
    "search",
    "cube",
    "features",
    "train",
    "evaluate",
    "predict",
    "landslides",
    "map",
    "report",
)
STOP_POINTS = ("features", "train", "predict", "landslides", "report")
#: The landslide comparison's budget in the demo: small U-nets that train in a few minutes
#: on two cores (the CLI's `evaluate-landslides` defaults are larger).
DEMO_SEGMENT = {"epochs": 8, "width": 8, "patch_size": 64, "overlap": 32}
#: The NDVI U-net's width in the demo (filters at level 1): 16 trains about three times as
#: fast as the CLI's default 32 on a CPU, and scored better on the simulated scene
#: (docs/training.md).
DEMO_WIDTH = 16
#: Written into the model folder when the demo's training ran to its end, with its options.
DEMO_TRAINED = "demo-trained.json"
#: The setting whose U-net maps the whole scene: radar-derived dNDVI and radar only.
MAP_SETTING = "5"


@dataclass
class _Run:
    """The stages of one demo run: numbering, rules, timings."""

    last: str
    overwrite: bool = False
    times: list[StageTime] = field(default_factory=list)

    @property
    def total(self) -> int:
        return STAGES.index(self.last) + 1

    def wants(self, stage: str) -> bool:
        return STAGES.index(stage) <= STAGES.index(self.last)

    @contextmanager
    def stage(
        self, name: str, title: str, reused: Callable[[], bool] = lambda: False
    ) -> Iterator[bool]:
        """Print the stage's rule, time it, record whether its output was reused (never
        with --overwrite, which recomputes everything)."""
        console.rule(f"[bold]{STAGES.index(name) + 1}/{self.total} {title}")
        was_reused = not self.overwrite and reused()
        start = time.perf_counter()
        yield was_reused
        seconds = time.perf_counter() - start
        self.times.append(StageTime(name, seconds, was_reused))
        console.print(
            f"{name} stage: {seconds:.1f} s" + (" (reused)" if was_reused else ""), soft_wrap=True
        )


def _newer(output: Path, *inputs: Path) -> bool:
    """`output` exists and was written after every existing input (by mtime)."""
    if not output.exists():
        return False
    mtime = output.stat().st_mtime
    return all(mtime >= p.stat().st_mtime for p in inputs if p.exists())


@dataclass(frozen=True)
class _Layout:
    """Where each stage writes, inside the working folder."""

    scene: Path
    cube: Path
    features: Path
    model: Path
    ndvi_evaluation: Path
    prediction: Path
    landslides: Path
    landslide_map: Path
    report: Path

    @classmethod
    def of(cls, out: Path) -> _Layout:
        return cls(
            scene=out / "scene",
            cube=out / "cube.zarr",
            features=out / "features.zarr",
            model=out / "model",
            ndvi_evaluation=out / "ndvi-evaluation",
            prediction=out / "ndvi-post.zarr",
            landslides=out / "landslides",
            landslide_map=out / "landslide-map",
            report=out / "report",
        )

    @property
    def segmenter(self) -> Path:
        """The segmentation run whose U-net maps the whole scene."""
        return self.landslides / "models" / f"setting-{MAP_SETTING}"


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/demo"),
    show_default=True,
    help="Working folder.",
)
@click.option(
    "--epochs", type=int, default=DEMO_EPOCHS, show_default=True, help="Training epochs (at most)."
)
@click.option(
    "--stop-after",
    type=click.Choice(STOP_POINTS),
    default="report",
    show_default=True,
    help="The last stage to run.",
)
@click.option(
    "--patch-size",
    type=click.Choice(["64", "128"]),
    default="128",
    show_default=True,
    help="NDVI U-net patch side, px (overlap: half); 64 fits scenes under 512 px.",
)
@click.option(
    "--landslide-epochs",
    type=int,
    default=DEMO_SEGMENT["epochs"],
    show_default=True,
    help="Segmentation U-net epochs (at most), per input setting.",
)
@_demo_scene_options
def demo(
    out: Path,
    overwrite: bool,
    epochs: int,
    stop_after: str,
    patch_size: str,
    landslide_epochs: int,
    **scene_options: Any,
) -> None:
    """The main job on the embedded default: simulate the study area, serve it as a STAC
    API, search it, build its Sentinel-1/Sentinel-2/DEM cube into Zarr, compute the feature
    stack and NDVI target, train the U-net on spatially disjoint blocks and score it on the
    held-out block against pixel-wise baselines, predict the post-event NDVI cube, compare
    landslide methods over the input settings, map the landslides from radar alone, and
    write an HTML report."""
    run_demo(
        out,
        overwrite=overwrite,
        epochs=epochs,
        stop_after=stop_after,
        patch_size=int(patch_size),
        landslide_epochs=landslide_epochs,
        **scene_options,
    )


def run_demo(
    out: Path,
    *,
    overwrite: bool = False,
    epochs: int = DEMO_EPOCHS,
    stop_after: str = "report",
    patch_size: int = 128,
    landslide_epochs: int = DEMO_SEGMENT["epochs"],
    **scene_options: Any,
) -> dict[str, Path]:
    """The demo's stages in order (see the module doc); returns the products by name."""
    from sar2ndvi.catalog import describe, select_scenes
    from sar2ndvi.synth.area import scene_recipe
    from sar2ndvi.synth.scene import simulate
    from sar2ndvi.synth.server import serve_scene

    out = Path(out)
    # "landslides" stops after both landslide stages: the comparison and the map
    run = _Run(last={"landslides": "map"}.get(stop_after, stop_after), overwrite=overwrite)
    paths = _Layout.of(out)
    config = _config(**scene_options)
    products: dict[str, Path] = {}

    with run.stage("simulate", "simulate the study area", paths.scene.is_dir):
        start = time.perf_counter()
        scene = simulate(config, paths.scene, overwrite=overwrite, progress=True)
        _print_scene(scene, time.perf_counter() - start)
    products["scene"] = scene.path
    with serve_scene(scene) as server:
        with run.stage("serve", "serve it as a STAC API (rustac)"):
            console.print(f"STAC API at {server.url}")
        with run.stage("search", "search: Sentinel-1 by orbit, Sentinel-2, DEM"):
            recipe = scene_recipe(scene, url=server.url, name="demo")
            selection = select_scenes(recipe)
            rows = selection.rows()
            _print_items(rows, f"{len(rows)} scenes around the {config.event_date} event")
    with run.stage(
        "cube", "build the cube on one 10 m grid and store it as Zarr", _complete(paths.cube)
    ):
        _build_selection(recipe, selection, str(paths.cube), overwrite=overwrite)
    products["cube"] = paths.cube
    with run.stage(
        "features", "features: the 9-channel stack and the NDVI target", _complete(paths.features)
    ):
        _features(str(paths.cube), str(paths.features), overwrite=overwrite)
    products["features"] = paths.features

    checkpoint = paths.model / "checkpoint.pt"
    if run.wants("train"):
        training = {"epochs": epochs, "patch_size": patch_size, "width": DEMO_WIDTH}
        finished = paths.model / DEMO_TRAINED
        with run.stage(
            "train",
            "train the U-net (spatially disjoint blocks)",
            lambda: checkpoint.exists() and _same_json(finished, training),
        ) as reused:
            if reused:
                console.print(
                    f"{paths.model} holds a trained model already: reused", soft_wrap=True
                )
            else:
                # an unfinished or different run in the model folder is started again
                finished.unlink(missing_ok=True)
                _train(
                    str(paths.features),
                    str(paths.model),
                    epochs=epochs,
                    patch_size=patch_size,
                    overlap=patch_size // 2,
                    width=DEMO_WIDTH,
                    overwrite=True,
                )
                finished.write_text(json.dumps(training))
        metrics = paths.ndvi_evaluation / "metrics.json"
        with run.stage(
            "evaluate",
            "evaluate on the held-out block against baselines",
            lambda: _newer(metrics, checkpoint),
        ) as reused:
            if reused:
                console.print(
                    (paths.ndvi_evaluation / "metrics.txt").read_text().rstrip(), soft_wrap=True
                )
            else:
                _evaluate(str(paths.model), str(paths.features), str(paths.ndvi_evaluation))
        products.update(model=paths.model, ndvi_evaluation=paths.ndvi_evaluation)
    if run.wants("predict"):
        with run.stage(
            "predict",
            "predict the post-event NDVI cube, chunk by chunk",
            _complete(paths.prediction),
        ):
            _predict(
                str(paths.model),
                str(paths.features),
                str(paths.prediction),
                overwrite=overwrite,
                period="post",
            )
        products["prediction"] = paths.prediction
    if run.wants("landslides"):
        budget = {**DEMO_SEGMENT, "epochs": landslide_epochs}
        budget["patch_size"] = min(budget["patch_size"], patch_size)
        budget["overlap"] = budget["patch_size"] // 2
        _landslide_stages(run, scene, paths, budget)
        products.update(landslides=paths.landslides, landslide_map=paths.landslide_map)
    if run.wants("report"):
        with run.stage("report", "write the report (HTML, figures beside it)"):
            items = [describe(item) for _, item in rows]
            page = _write_report(out, paths, config, recipe, items, run.times)
            console.print(f"report: {page}", soft_wrap=True)
        products["report"] = page
    save_stage_times(out, run.times)
    done = "; ".join(f"{name} in {path}" for name, path in products.items())
    console.print(f"[green]done[/]: {done}", soft_wrap=True)
    return products


def _same_json(path: Path, expected: dict[str, Any]) -> bool:
    """Whether `path` holds exactly `expected` as JSON."""
    try:
        return json.loads(path.read_text()) == expected
    except (OSError, ValueError):
        return False


def _complete(path: Path) -> Callable[[], bool]:
    from sar2ndvi import store

    return lambda: store.is_complete(str(path))


def _landslide_stages(run: _Run, scene: Any, paths: _Layout, budget: dict[str, int]) -> None:
    """The landslide comparison (settings x methods) and the scene-wide radar-only map."""
    from sar2ndvi.cli_landslides import _detect, _evaluate_landslides

    metrics = paths.landslides / "landslide-metrics.json"
    with run.stage(
        "landslides",
        "landslides: segmentation U-net vs CART vs NDVI change, over the input settings",
        lambda: (
            _newer(metrics, paths.prediction / "item.json", paths.model / "checkpoint.pt")
            and _current_format(metrics)
            and _same_budget(paths.landslides / "landslide-config.json", budget)
        ),
    ) as reused:
        if reused:
            console.print(
                (paths.landslides / "landslide-metrics.txt").read_text().rstrip(), soft_wrap=True
            )
        else:
            _evaluate_landslides(
                str(paths.features),
                str(scene.truth("landslides.geojson")),
                paths.landslides,
                prediction=str(paths.prediction),
                cube=str(paths.cube),
                model=str(paths.model),
                **budget,
            )
    polygons = paths.landslide_map / "landslides.gpkg"
    with run.stage(
        "map",
        f"map the landslides of the whole scene from radar alone (setting {MAP_SETTING} U-net)",
        lambda: _newer(polygons, paths.segmenter / "checkpoint.pt"),
    ) as reused:
        if reused:
            console.print(f"{polygons} is up to date: reused", soft_wrap=True)
        else:
            _detect(
                str(paths.features),
                paths.landslide_map,
                method="unet",
                model=str(paths.segmenter),
                prediction=str(paths.prediction),
                cube=str(paths.cube),
                overwrite=True,
            )


def _current_format(metrics_json: Path) -> bool:
    """Whether `metrics_json` was written by this version's landslide comparison (an older
    one scored with other rules, e.g. a fixed 0.5 probability cut)."""
    from sar2ndvi.landslide_eval import METRICS_FORMAT

    try:
        return json.loads(metrics_json.read_text()).get("format") == METRICS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _same_budget(config_json: Path, budget: dict[str, int]) -> bool:
    """Whether the landslide comparison in `config_json` ran with this budget."""
    try:
        config = json.loads(config_json.read_text())["segment_config"]
    except (OSError, ValueError, KeyError):
        return False
    return (
        config.get("epochs") == budget["epochs"]
        and config.get("width") == budget["width"]
        and config.get("patch") == {"size": budget["patch_size"], "overlap": budget["overlap"]}
    )


def _write_report(
    out: Path,
    paths: _Layout,
    config: Any,
    recipe: Any,
    items: list[dict[str, Any]],
    times: list[StageTime],
) -> Path:
    """The HTML report of what the stages left in `out`."""
    figures: list[tuple[str, Path]] = []
    if (paths.model / "metrics.csv").exists():
        curves = plot_training_curves(
            paths.model / "metrics.csv", paths.report / "ndvi-training.png", title="NDVI U-net"
        )
        figures.append(("NDVI U-net: loss per epoch and validation RMSE", curves))
    figures.append(
        (
            "Held-out block: Sentinel-2 NDVI, the U-net's NDVI from radar, absolute error",
            paths.ndvi_evaluation / "figure.png",
        )
    )
    segmenter = paths.segmenter / "metrics.csv"
    if segmenter.exists():
        curves = plot_training_curves(
            segmenter,
            paths.report / "landslide-training.png",
            title=f"landslide U-net, setting {MAP_SETTING}",
        )
        figures.append(
            (f"Landslide U-net (setting {MAP_SETTING}): loss and validation MCC", curves)
        )
    figures.append(
        (
            "Test block: post-event NDVI, inventory outlines and predicted outlines",
            paths.landslides / "landslide-map.png",
        )
    )
    report = RunReport(
        title="sar2ndvi demo: NDVI from radar and landslides on the simulated study area",
        recipe={
            "scene": f"simulated, seed {config.seed}, {config.size[0]} x {config.size[1]} px",
            "terrain": config.dem
            or ("the packaged Big Tujunga SRTM DEM" if config.terrain == "dem" else "fractal"),
            "event": str(config.event_date),
            "pre-event window (days)": config.pre_days,
            "post-event window (days)": config.post_days,
            "grid": f"{recipe.resolution:g} m in {recipe.crs.to_string()}",
            "bbox (lon/lat)": ", ".join(f"{v:.4f}" for v in recipe.bbox),
            "collections": ", ".join(f"{k}: {v}" for k, v in recipe.collections.items()),
        },
        items=items,
        ndvi_metrics=_json(paths.ndvi_evaluation / "metrics.json"),
        landslide_metrics=_json(paths.landslides / "landslide-metrics.json"),
        detection=_detection_summary(paths.landslide_map),
        figures=figures,
        stage_times=merge_stage_times(out, times),
    )
    return write_run_report(report, paths.report)


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _detection_summary(folder: Path) -> dict[str, Any] | None:
    polygons = folder / "landslides.gpkg"
    if not polygons.exists():
        return None
    import geopandas as gpd

    frame = gpd.read_file(polygons)
    return {
        "method": f"segmentation U-net, setting {MAP_SETTING} (radar-derived dNDVI, VV, VH)",
        "landslides": len(frame),
        "area (km^2)": f"{frame['area_m2'].sum() / 1e6:.3f}" if len(frame) else "0",
        "mask cube (Zarr)": str(folder / "landslides.zarr"),
        "polygons": f"{polygons}, {folder / 'landslides.geojson'}",
    }


main.add_command(demo)
