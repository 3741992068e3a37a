"""The `sar2ndvi` command."""

from __future__ import annotations

import contextlib
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
from sar2ndvi.errors import Sar2ndviError

console = Console()
if not console.is_terminal:
    # piped or captured: no terminal width to respect, and folded ids are unreadable
    console = Console(width=200)
err_console = Console(stderr=True)


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


def _scene_options(f: Any) -> Any:
    f = click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of every random draw; the same seed gives the same bytes.",
    )(f)
    f = click.option(
        "--size",
        default="512",
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
def build(
    recipe: str,
    out: str,
    engine: str,
    on_error: str,
    zarr_format: str,
    overwrite: bool,
    workdir: Path | None,
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
) -> None:
    from sar2ndvi import store
    from sar2ndvi.catalog import select_scenes
    from sar2ndvi.cube import open_source

    if store.is_complete(out) and not overwrite:
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
) -> None:
    """Build the cube of `selection` and store it at `out` (reused when complete)."""
    from sar2ndvi import store
    from sar2ndvi.cube import build_cube

    if store.is_complete(out) and not overwrite:
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
    store.write(cube, out, overwrite=overwrite, zarr_format=zarr_format, progress=True)


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
def features(
    cube: str, out: str, window: int | None, variant_name: str, train_period: str, overwrite: bool
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
    )
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s: {out}", soft_wrap=True)


def _features(
    cube_path: str,
    out: str,
    *,
    window: int | None = None,
    variant_name: str = "paper9",
    train_period: str = "pre",
    overwrite: bool = False,
) -> None:
    from sar2ndvi import store
    from sar2ndvi.features import variant, write_features

    spec = variant(variant_name, window)
    if store.is_complete(out) and not overwrite:
        console.print(f"{out} is complete already: reused", soft_wrap=True)
    else:
        console.print(
            f"features: {', '.join(spec.channels)}; window {spec.window} px; "
            f"normalised on the {train_period}-event period",
            soft_wrap=True,
        )
        write_features(
            store.open(cube_path),
            out,
            spec,
            train_period=train_period,
            overwrite=overwrite,
            progress=True,
        )
    _print_feature_summary(out)


def _print_feature_summary(path: str) -> None:
    from sar2ndvi import store

    tree = store.open(path)
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


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/demo"),
    show_default=True,
    help="Working folder.",
)
@_scene_options
def demo(out: Path, overwrite: bool, **scene_options: Any) -> None:
    """The main job on the embedded default: simulate the study area, serve it as a STAC
    API, search it, build its Sentinel-1/Sentinel-2/DEM cube into Zarr, and compute the
    feature stack and NDVI target."""
    from sar2ndvi.catalog import select_scenes
    from sar2ndvi.synth.area import scene_recipe
    from sar2ndvi.synth.scene import simulate as run
    from sar2ndvi.synth.server import serve_scene

    config = _config(**scene_options)
    console.rule("[bold]1/5 simulate the study area")
    start = time.perf_counter()
    scene = run(config, out / "scene", overwrite=overwrite, progress=True)
    _print_scene(scene, time.perf_counter() - start)
    console.rule("[bold]2/5 serve it as a STAC API (rustac)")
    with serve_scene(scene) as server:
        console.print(f"STAC API at {server.url}")
        console.rule("[bold]3/5 search: Sentinel-1 by orbit, Sentinel-2, DEM")
        recipe = scene_recipe(scene, url=server.url, name="demo")
        selection = select_scenes(recipe)
        rows = selection.rows()
        _print_items(rows, f"{len(rows)} scenes around the {config.event_date} event")
    console.rule("[bold]4/5 build the cube on one 10 m grid and store it as Zarr")
    start = time.perf_counter()
    cube_path = str(out / "cube.zarr")
    _build_selection(recipe, selection, cube_path, overwrite=overwrite)
    console.print(f"cube stage: {time.perf_counter() - start:.1f} s", soft_wrap=True)
    console.rule("[bold]5/5 features: the 9-channel stack and the NDVI target")
    start = time.perf_counter()
    features_path = str(out / "features.zarr")
    _features(cube_path, features_path, overwrite=overwrite)
    console.print(f"feature stage: {time.perf_counter() - start:.1f} s", soft_wrap=True)
    console.print(
        f"[green]done[/]: scene in {scene.path} (truth layers in {scene.path / 'truth'}); "
        f"cube in {cube_path}; features in {features_path}",
        soft_wrap=True,
    )
