"""The `sar2ndvi` command."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

import sar2ndvi
from sar2ndvi.errors import OutputExistsError, Sar2ndviError

console = Console()
if not console.is_terminal:
    # piped or captured: no terminal width to respect, and folded ids are unreadable
    console = Console(width=200)
err_console = Console(stderr=True)

#: The demo's scene side (px): large enough for three spatially disjoint blocks of 128 px
#: patches with a one-patch buffer between them.
DEMO_SIZE = "1024"
DEMO_EPOCHS = 20


def _size(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    from sar2ndvi.synth.config import parse_size

    try:
        return parse_size(value)
    except Sar2ndviError as err:
        raise click.BadParameter(str(err)) from None


class _Group(click.Group):
    """Turns the package's own errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Sar2ndviError as err:
            # one unwrapped line, so that it can be read in logs and grepped
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(sar2ndvi.__version__, prog_name="sar2ndvi")
def main() -> None:
    """Optical-like NDVI from Sentinel-1 radar, and landslide maps from it."""


def _scene_options(f: Any, size: str = "512") -> Any:
    f = click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of every random draw; the same seed gives the same bytes.",
    )(f)
    f = click.option(
        "--size",
        default=size,
        show_default=True,
        callback=_size,
        help="Scene size in 10 m pixels: N or ROWSxCOLS.",
    )(f)
    f = click.option(
        "--dem",
        type=str,
        default=None,
        help="A DEM GeoTIFF, or 'fractal' for seeded synthetic mountains "
        "[default: the packaged Big Tujunga SRTM DEM].",
    )(f)
    f = click.option(
        "--event-date",
        type=click.DateTime(["%Y-%m-%d"]),
        default="2024-04-03",
        show_default=True,
        help="Date of the simulated earthquake (UTC).",
    )(f)
    f = click.option(
        "--pre-days",
        type=int,
        default=36,
        show_default=True,
        help="Length of the pre-event acquisition window, days.",
    )(f)
    f = click.option(
        "--post-days",
        type=int,
        default=36,
        show_default=True,
        help="Length of the post-event acquisition window, days.",
    )(f)
    f = click.option(
        "--overwrite", is_flag=True, help="Replace an output folder that holds something else."
    )(f)
    return f


def _demo_scene_options(f: Any) -> Any:
    return _scene_options(f, size=DEMO_SIZE)


def _config(
    seed: int,
    size: tuple[int, int],
    dem: str | None,
    event_date: Any,
    pre_days: int,
    post_days: int,
) -> Any:
    """The SceneConfig of the scene options (validated: bad values raise InputError)."""
    from sar2ndvi.synth.config import SceneConfig

    return SceneConfig(
        seed=seed,
        size=size,
        terrain="fractal" if dem == "fractal" else "dem",
        dem=None if dem in (None, "fractal") else dem,
        event_date=date(event_date.year, event_date.month, event_date.day),
        pre_days=pre_days,
        post_days=post_days,
    )


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The scene folder to create.",
)
@_scene_options
def simulate(out: Path, overwrite: bool, **scene_options: Any) -> None:
    """Simulate a study area before and after an earthquake: COGs, STAC items, truth."""
    from sar2ndvi.synth.scene import simulate as run

    config = _config(**scene_options)
    start = time.perf_counter()
    scene = run(config, out, overwrite=overwrite, progress=True)
    _print_scene(scene, time.perf_counter() - start)


def _print_scene(scene: Any, seconds: float) -> None:
    m = scene.manifest
    table = Table(title=f"scene {m['id']}", show_header=False, box=None)
    table.add_row("folder", str(scene.path))
    table.add_row(
        "grid", f"{m['grid']['crs']}  {m['grid']['shape'][0]} x {m['grid']['shape'][1]} px at 10 m"
    )
    table.add_row("bbox (lon/lat)", ", ".join(f"{v:.5f}" for v in m["bbox"]))
    table.add_row(
        "event",
        f"{m['event']['date']}  M{m['event']['magnitude']}  {m['event']['landslides']} landslides",
    )
    for c, n in m["collections"].items():
        table.add_row(c, f"{n} items")
    table.add_row("time", f"{seconds:.1f} s" if seconds > 0.5 else "reused (already complete)")
    console.print(table)


@main.command()
@click.argument("scene_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=None, help="Port [default: a free one].")
def serve(scene_dir: Path, host: str, port: int | None) -> None:
    """Serve a simulated scene as a STAC API on loopback until interrupted."""
    from sar2ndvi.synth.server import serve_scene

    with serve_scene(scene_dir, host=host, port=port) as server:
        console.print(f"STAC API at [bold]{server.url}[/]  (Ctrl-C to stop)")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    console.print("stopped")


def _parse_query(expressions: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """'eo:cloud_cover<=20', 'sat:orbit_state=ascending' -> query-extension dict."""
    ops = (("<=", "lte"), (">=", "gte"), ("!=", "neq"), ("<", "lt"), (">", "gt"), ("=", "eq"))
    query: dict[str, dict[str, Any]] = {}
    for expr in expressions:
        for symbol, op in ops:
            if symbol in expr:
                prop, raw = expr.split(symbol, 1)
                value: Any = raw.strip()
                with contextlib.suppress(ValueError):
                    value = float(value) if "." in value else int(value)
                query.setdefault(prop.strip(), {})[op] = value
                break
        else:
            raise click.BadParameter(
                f"{expr!r} is not PROPERTY<op>VALUE with op one of = != < <= > >=",
                param_hint="--where",
            )
    return query


def _workdir_option(f: Any) -> Any:
    return click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where a synthetic source is simulated [default: out/<recipe name>].",
    )(f)


def _storage_options(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Any]:
    """--storage-option KEY=VALUE pairs -> fsspec options. A VALUE that parses as JSON (true,
    5, {"region_name": "eu-west-1"}) is that value, except for credentials (key, secret,
    token, ...), which stay text; a dotted KEY nests (client_kwargs.region_name=eu-west-1)."""
    from sar2ndvi.store import scrub_secrets

    options: dict[str, Any] = {}
    for pair in values:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            # never echo the value: it may be a credential
            raise click.BadParameter(
                "give KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:9000",
                param_hint="--storage-option",
            )
        *parents, name = key.strip().split(".")
        value: Any = raw
        if scrub_secrets({name: 0}):  # not a credential: JSON values allowed
            with contextlib.suppress(ValueError):
                value = json.loads(raw)
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return options


def _features_storage_option(local: str) -> Any:
    """``--storage-option`` for a command that reads a FEATURES store at a URL and writes
    `local` to a local folder."""
    return click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_storage_options,
        help="An fsspec/s3fs option for a FEATURES store at a URL (s3://...), repeatable; "
        f"never printed nor stored; {local} stays local.",
    )


def _compute_options(f: Any) -> Any:
    """--scheduler and --storage-option for a heavy command, which then runs inside
    `sar2ndvi.compute.compute_context` (an active client, the scheduler, or threads) and
    receives ``storage_options`` (a dict) for its fsspec URLs."""

    @functools.wraps(f)
    def command(*args: Any, scheduler: str | None, **kwargs: Any) -> Any:
        from sar2ndvi.compute import compute_context

        with compute_context(scheduler, echo=lambda line: console.print(line, soft_wrap=True)):
            return f(*args, **kwargs)

    command = click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_storage_options,
        help="An fsspec/s3fs option for s3:// (and other) URLs, repeatable, e.g. "
        "endpoint_url=http://127.0.0.1:9000; never printed nor stored.",
    )(command)
    return click.option(
        "--scheduler",
        envvar="DASK_SCHEDULER_ADDRESS",
        default=None,
        metavar="ADDRESS",
        help="Compute on this Dask scheduler (tcp://host:8786) "
        "[default: $DASK_SCHEDULER_ADDRESS, else local threads].",
    )(command)


@main.command()
@click.argument("recipe", required=False)
@click.option("--api", "api_url", default=None, help="STAC API URL (without a RECIPE).")
@click.option(
    "--collection",
    "collections",
    multiple=True,
    help="Collection id (repeatable; without a RECIPE).",
)
@click.option("--bbox", default=None, help="west,south,east,north in degrees.")
@click.option(
    "--datetime", "when", default=None, help="Instant or interval, e.g. 2024-03-01/2024-04-02."
)
@click.option(
    "--where",
    multiple=True,
    help="Property filter, e.g. 'eo:cloud_cover<=20' (repeatable; applied on the client too).",
)
@click.option("--max-items", type=int, default=None, help="Stop after this many items.")
@_workdir_option
def search(
    recipe: str | None,
    api_url: str | None,
    collections: tuple[str, ...],
    bbox: str | None,
    when: str | None,
    where: tuple[str, ...],
    max_items: int | None,
    workdir: Path | None,
) -> None:
    """Search for scenes: by RECIPE (a cubes/*.toml file or a name such as 'synthetic'),
    printed by role, or ad hoc with --api and --collection."""
    if recipe is not None:
        _search_recipe(recipe, workdir)
        return
    if api_url is None or not collections:
        raise click.UsageError("give a RECIPE, or --api and at least one --collection")
    from sar2ndvi.catalog import search as run

    box = None
    if bbox:
        try:
            box = [float(v) for v in bbox.split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise click.BadParameter(
                "give four numbers: west,south,east,north", param_hint="--bbox"
            )
    items = run(
        api_url,
        collections=collections,
        bbox=box,
        datetime=when,
        query=_parse_query(where),
        max_items=max_items,
    )
    _print_items([("", it) for it in items], f"{len(items)} items from {api_url}")


def _search_recipe(name: str, workdir: Path | None) -> None:
    from sar2ndvi.catalog import select_scenes
    from sar2ndvi.cube import open_source
    from sar2ndvi.recipe import load_recipe

    recipe = load_recipe(name)
    with open_source(recipe, workdir or Path("out") / recipe.name) as api_url:
        selection = select_scenes(recipe, api_url=api_url, require=())
    rows = selection.rows()
    _print_items(rows, f"{len(rows)} scenes for recipe {recipe.name!r}")
    empty = [role for role, n in _role_counts(selection).items() if n == 0]
    if empty:
        err_console.print(f"[yellow]no scenes for:[/] {', '.join(empty)}", soft_wrap=True)


def _role_counts(selection: Any) -> dict[str, int]:
    counts = {
        f"S1 {p}": sum(len(selection.s1.get((p, o), [])) for o in ("ascending", "descending"))
        for p in ("pre", "post")
    }
    counts.update({f"S2 {p}": len(selection.s2.get(p, [])) for p in ("pre", "post")})
    counts["DEM"] = len(selection.dem)
    return counts


@main.command()
@click.argument("recipe")
@click.option(
    "--out",
    type=str,
    required=True,
    help="The Zarr store to write: a path or an fsspec URL (s3://...).",
)
@click.option(
    "--engine",
    type=click.Choice(["stackstac", "odc"]),
    default="stackstac",
    show_default=True,
    help="The STAC loader.",
)
@click.option(
    "--on-error",
    type=click.Choice(["raise", "skip"]),
    default="raise",
    show_default=True,
    help="An unreadable asset stops the build, or is skipped and recorded.",
)
@click.option(
    "--zarr-format",
    type=click.Choice(["2", "3"]),
    default="2",
    show_default=True,
    help="Zarr format (GDAL 3.10 reads v2 only).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing complete store.")
@_workdir_option
@_compute_options
def build(
    recipe: str,
    out: str,
    engine: str,
    on_error: str,
    zarr_format: str,
    overwrite: bool,
    workdir: Path | None,
    storage_options: dict[str, Any],
) -> None:
    """Build a recipe's cube (Sentinel-1, Sentinel-2, DEM on one grid) into a Zarr store.

    An interrupted build, run again, finishes the chunks it had not written.
    """
    from sar2ndvi.recipe import load_recipe

    loaded = load_recipe(recipe)
    start = time.perf_counter()
    _build(
        loaded,
        out,
        engine=engine,
        on_error=on_error,
        zarr_format=int(zarr_format),
        overwrite=overwrite,
        workdir=workdir or Path("out") / loaded.name,
        storage_options=storage_options,
    )
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s: {out}", soft_wrap=True)


def _build(
    recipe: Any,
    out: str,
    *,
    engine: str,
    on_error: str,
    zarr_format: int,
    overwrite: bool,
    workdir: Path,
    storage_options: dict[str, Any] | None = None,
) -> None:
    from sar2ndvi import store
    from sar2ndvi.catalog import select_scenes
    from sar2ndvi.cube import open_source

    if store.is_complete(out, storage_options=storage_options) and not overwrite:
        console.print(
            f"{out} is complete already: reused (pass --overwrite to rebuild)", soft_wrap=True
        )
        return
    with open_source(recipe, workdir) as api_url:
        selection = select_scenes(recipe, api_url=api_url)
    _build_selection(
        recipe,
        selection,
        out,
        engine=engine,
        on_error=on_error,
        zarr_format=zarr_format,
        overwrite=overwrite,
        storage_options=storage_options,
    )


def _build_selection(
    recipe: Any,
    selection: Any,
    out: str,
    *,
    engine: str = "stackstac",
    on_error: str = "raise",
    zarr_format: int = 2,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Build the cube of `selection` and store it at `out` (reused when complete)."""
    from sar2ndvi import store
    from sar2ndvi.cube import build_cube

    if store.is_complete(out, storage_options=storage_options) and not overwrite:
        console.print(f"{out} is complete already: reused", soft_wrap=True)
        return
    counts = ", ".join(f"{k} {v}" for k, v in _role_counts(selection).items())
    console.print(f"scenes: {counts}", soft_wrap=True)
    cube = build_cube(recipe, selection, engine=engine, on_error=on_error)  # type: ignore[arg-type]
    grid = recipe.grid()
    console.print(
        f"cube: {grid.height} x {grid.width} px at {grid.resolution:g} m in "
        f"{grid.crs.to_string()}; writing {out}",
        soft_wrap=True,
    )
    store.write(
        cube,
        out,
        overwrite=overwrite,
        zarr_format=zarr_format,
        progress=True,
        storage_options=storage_options,
    )


@main.command()
@click.argument("cube")
@click.option("--out", type=str, required=True, help="The feature store to write (Zarr).")
@click.option(
    "--window",
    type=int,
    default=None,
    help="Local-statistics window, odd, in pixels [default: the variant's, 19].",
)
@click.option(
    "--variant",
    "variant_name",
    default="paper9",
    show_default=True,
    help="Feature recipe: paper9, orbits4 or paper9+indices.",
)
@click.option(
    "--train-period",
    type=click.Choice(["pre", "post"]),
    default="pre",
    show_default=True,
    help="The period whose statistics normalise the stack.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing complete store.")
@_compute_options
def features(
    cube: str,
    out: str,
    window: int | None,
    variant_name: str,
    train_period: str,
    overwrite: bool,
    storage_options: dict[str, Any],
) -> None:
    """Compute the model's feature stack and NDVI target from a cube store."""
    start = time.perf_counter()
    _features(
        cube,
        out,
        window=window,
        variant_name=variant_name,
        train_period=train_period,
        overwrite=overwrite,
        storage_options=storage_options,
    )
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s: {out}", soft_wrap=True)


@main.command()
@click.argument("features_store", metavar="FEATURES")
@click.option(
    "--out", type=str, required=True, help="The run's folder (checkpoints, split, metrics)."
)
@click.option("--epochs", type=int, default=40, show_default=True, help="At most this many epochs.")
@click.option("--patch-size", type=int, default=128, show_default=True, help="Patch side, px.")
@click.option("--overlap", type=int, default=64, show_default=True, help="Patch overlap, px.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--width", type=int, default=32, show_default=True, help="U-net filters, level 1.")
@click.option("--depth", type=int, default=3, show_default=True, help="U-net down-samplings.")
@click.option("--patience", type=int, default=8, show_default=True, help="Early stopping.")
@click.option("--block", type=int, default=None, help="Split block side, px [default: 4 patches].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--workers", type=int, default=None, help="Loader processes [default: cores/2].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@_features_storage_option("the run's folder (--out)")
def train(features_store: str, out: str, **options: Any) -> None:
    """Train the U-net on a feature store (spatially disjoint train/val/test blocks)."""
    _train(features_store, out, **options)


def _train(
    features_store: str,
    out: str,
    *,
    epochs: int = 40,
    patch_size: int = 128,
    overlap: int = 64,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    width: int = 32,
    depth: int = 3,
    patience: int = 8,
    block: int | None = None,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    from sar2ndvi.model import UNetConfig
    from sar2ndvi.patches import PatchSpec
    from sar2ndvi.train import TrainConfig
    from sar2ndvi.train import train as run

    config = TrainConfig(
        patch=PatchSpec(patch_size, overlap),
        model=UNetConfig(width=width, depth=depth),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        block=block,
        seed=seed,
        device=device,
        num_workers=workers,
    )
    console.print(
        f"training a U-net (width {width}, depth {depth}) on {features_store}: "
        f"{patch_size} px patches, {overlap} px overlap, up to {epochs} epochs",
        soft_wrap=True,
    )
    result = run(
        features_store,
        out,
        config,
        resume=resume,
        overwrite=overwrite,
        storage_options=storage_options or None,
    )
    console.print(
        f"best epoch {result.best_epoch}: validation loss {result.best_val_loss:.4f}"
        f"{' (stopped early)' if result.stopped_early else ''}; weights in {result.checkpoint}",
        soft_wrap=True,
    )
    return result


@main.command()
@click.argument("model")
@click.argument("features_store", metavar="FEATURES")
@click.option("--out", type=str, default=None, help="Folder for metrics.json and figure.png.")
@click.option("--tta", is_flag=True, help="Average the U-net over flips.")
@click.option("--no-baselines", is_flag=True, help="Score the U-net only.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@_features_storage_option("the report (--out)")
def evaluate(
    model: str,
    features_store: str,
    out: str | None,
    tta: bool,
    no_baselines: bool,
    device: str,
    seed: int,
    storage_options: dict[str, Any],
) -> None:
    """Score a trained model on its test blocks against linear and random-forest baselines."""
    _evaluate(
        model,
        features_store,
        out,
        tta=tta,
        baselines=not no_baselines,
        seed=seed,
        device=device,
        storage_options=storage_options,
    )


def _evaluate(
    model: str,
    features_store: str,
    out: str | None,
    *,
    tta: bool = False,
    baselines: bool = True,
    seed: int = 0,
    device: str = "cpu",
    storage_options: dict[str, Any] | None = None,
) -> Any:
    from sar2ndvi import store
    from sar2ndvi.evaluate import BASELINES, write_report
    from sar2ndvi.evaluate import evaluate as run

    so = storage_options or None
    result = run(
        model,
        features_store,
        tta=tta,
        baselines=BASELINES if baselines else (),
        seed=seed,
        device=device,
        storage_options=so,
    )
    console.print(result.format(), highlight=False, soft_wrap=True)
    if out is not None:
        crs = store.open(features_store, storage_options=so)["/pre"].to_dataset().rio.crs
        write_report(result, out, crs=None if crs is None else crs.to_string())
        console.print(f"report: {out}/metrics.json, {out}/figure.png", soft_wrap=True)
    return result


@main.command()
@click.argument("model")
@click.argument("features_store", metavar="FEATURES")
@click.option("--out", type=str, required=True, help="The NDVI store to write (Zarr).")
@click.option(
    "--period",
    type=click.Choice(["pre", "post"]),
    default="post",
    show_default=True,
    help="Which period's features to predict.",
)
@click.option("--tta", is_flag=True, help="Average over flips (aspect channels follow).")
@click.option("--mc-samples", type=int, default=0, show_default=True, help="MC-dropout passes.")
@click.option("--uncertainty", is_flag=True, help="Add the spread across --tta/--mc-samples.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N.")
@click.option("--chunks", type=int, default=1024, show_default=True, help="Output chunk side, px.")
@click.option("--overwrite", is_flag=True, help="Replace an existing complete store.")
@_compute_options
def predict(model: str, features_store: str, out: str, overwrite: bool, **options: Any) -> None:
    """Predict NDVI for a whole feature store, chunk by chunk, into a georeferenced Zarr
    cube (with a STAC item)."""
    _predict(model, features_store, out, overwrite=overwrite, **options)


def _predict(
    model: str, features_store: str, out: str, *, overwrite: bool = False, **options: Any
) -> str:
    from sar2ndvi import store
    from sar2ndvi.publish import ITEM_FILE, write_prediction

    so = options.get("storage_options")
    if store.is_complete(out, storage_options=so) and not overwrite:
        from sar2ndvi.publish import ensure_item, same_prediction

        if not same_prediction(out, model, features_store, **options):
            raise OutputExistsError(
                f"{out} holds a prediction made with another model, features or options; "
                "pass --overwrite to replace it, or write to another --out"
            )
        console.print(f"{out} is complete already (same model and inputs): reused", soft_wrap=True)
        # a run stopped between the store and its STAC item: write the item, from the store
        item = ensure_item(out, storage_options=so)
        if item is not None:
            console.print(f"wrote its missing STAC item {item}", soft_wrap=True)
        return out
    console.print(
        f"predicting NDVI from {features_store} ({options.get('period', 'pre')}) with "
        f"{model}; writing {out}",
        soft_wrap=True,
    )
    url = write_prediction(model, features_store, out, overwrite=overwrite, **options)
    console.print(
        f'NDVI in {url} (GDAL: ZARR:"{url}":/ndvi); STAC item {url}/{ITEM_FILE}',
        soft_wrap=True,
    )
    return url


def _features(
    cube_path: str,
    out: str,
    *,
    window: int | None = None,
    variant_name: str = "paper9",
    train_period: str = "pre",
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    from sar2ndvi import store
    from sar2ndvi.features import variant, write_features

    spec = variant(variant_name, window)
    so = storage_options
    if store.is_complete(out, storage_options=so) and not overwrite:
        console.print(f"{out} is complete already: reused", soft_wrap=True)
    else:
        console.print(
            f"features: {', '.join(spec.channels)}; window {spec.window} px; "
            f"normalised on the {train_period}-event period",
            soft_wrap=True,
        )
        write_features(
            store.open(cube_path, storage_options=so),
            out,
            spec,
            train_period=train_period,
            overwrite=overwrite,
            progress=True,
            storage_options=so,
        )
    _print_feature_summary(out, storage_options=so)


def _print_feature_summary(path: str, storage_options: dict[str, Any] | None = None) -> None:
    from sar2ndvi import store

    tree = store.open(path, storage_options=storage_options)
    stats = tree["/normalisation"].to_dataset().compute()
    table = Table(title=f"feature store {path}")
    for col in ("band", "centre", "scale"):
        table.add_column(col)
    for band in stats.band.values:
        table.add_row(
            str(band),
            f"{float(stats.center.sel(band=band)):.4g}",
            f"{float(stats.scale.sel(band=band)):.4g}",
        )
    console.print(table)
    for period in ("pre", "post"):
        if period in tree.children:
            ds = tree[f"/{period}"].to_dataset()
            gaps = float(ds["gaps"].mean().compute()) * 100
            clear = float(ds["target"].notnull().mean().compute()) * 100
            console.print(
                f"{period}: radar gaps (shadow, edges) {gaps:.2f} % of pixels; "
                f"NDVI target available on {clear:.1f} %",
                soft_wrap=True,
            )


def _print_items(rows: list[tuple[str, Any]], title: str) -> None:
    from sar2ndvi.catalog import describe

    table = Table(title=title)
    show_role = any(role for role, _ in rows)
    if show_role:
        table.add_column("role")
    for col in ("id", "collection", "datetime", "orbit", "cloud %", "baseline"):
        table.add_column(col, overflow="fold")
    for role, item in rows:
        d = describe(item)
        cloud = f"{d['cloud']:.1f}" if isinstance(d["cloud"], float | int) else ""
        cells = [
            d["id"],
            d["collection"],
            str(d["datetime"])[:19],
            d["orbit"],
            cloud,
            d["baseline"],
        ]
        table.add_row(*([role] if show_role else []), *cells)
    console.print(table)


# The landslide commands, the demo and the experiments live in their own modules, which
# add themselves to `main` when imported. A plain `import` (not `from ... import`) here,
# last, so that either side may be imported first: a module being imported is returned
# as it is.
import sar2ndvi.cli_demo  # noqa: E402
import sar2ndvi.cli_experiment  # noqa: E402
import sar2ndvi.cli_landslides  # noqa: E402
