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


@main.command()
@click.option("--api", "api_url", required=True, help="STAC API URL.")
@click.option(
    "--collection", "collections", multiple=True, required=True, help="Collection id (repeatable)."
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
def search(
    api_url: str,
    collections: tuple[str, ...],
    bbox: str | None,
    when: str | None,
    where: tuple[str, ...],
    max_items: int | None,
) -> None:
    """Search a STAC API and print the items as a table."""
    from sar2ndvi.catalog import search as run

    box = None
    if bbox:
        try:
            box = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise click.BadParameter(
                "give four numbers: west,south,east,north", param_hint="--bbox"
            ) from None
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
    """The main job on the embedded default: simulate, serve as a STAC API, search."""
    from sar2ndvi.catalog import find_scenes
    from sar2ndvi.synth.scene import simulate as run
    from sar2ndvi.synth.server import serve_scene

    config = _config(**scene_options)
    console.rule("[bold]1/3 simulate the study area")
    start = time.perf_counter()
    scene = run(config, out / "scene", overwrite=overwrite, progress=True)
    _print_scene(scene, time.perf_counter() - start)
    console.rule("[bold]2/3 serve it as a STAC API (rustac)")
    with serve_scene(scene) as server:
        console.print(f"STAC API at {server.url}")
        console.rule("[bold]3/3 search: Sentinel-1 by orbit, Sentinel-2, DEM")
        selection = find_scenes(
            server.url,
            scene.bbox,
            config.event_datetime,
            pre_days=config.pre_days,
            post_days=config.post_days,
        )
        rows = selection.rows()
        _print_items(rows, f"{len(rows)} scenes around the {config.event_date} event")
    console.print(
        f"[green]done[/]: scene in {scene.path}; truth layers in {scene.path / 'truth'}",
        soft_wrap=True,
    )
