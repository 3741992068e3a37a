"""The `sar2ndvi experiment` commands: the paper's window sweep and patch-size test."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
if not console.is_terminal:
    console = Console(width=200, highlight=False)

#: Simulated scene side (px) of the patch test: its cube (about 50 px smaller, the
#: recipe's inset) must hold the 1024 x 1024 px split of 256 / 128 px patches.
PATCHES_SIZE = 1088


def _int_list(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"give comma-separated integers, got {value!r}") from None


def _patch_configs(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    configs = []
    for part in value.replace(" ", "").split(","):
        size, sep, overlap = part.partition("/")
        try:
            configs.append((int(size), int(overlap)))
        except ValueError:
            raise click.BadParameter(
                f"give SIZE/OVERLAP pairs, e.g. 128/64,256/128; got {part!r}"
            ) from None
        if not sep:
            raise click.BadParameter(f"give SIZE/OVERLAP, e.g. 128/64; got {part!r}")
    return tuple(configs)


def _budget_options(f: Any) -> Any:
    """Options shared by the sweeps: where, how much training, and which scene."""
    options = [
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            required=True,
            help="The experiment's folder (stores, models, tables, plot).",
        ),
        click.option(
            "--quick",
            is_flag=True,
            help="The small budget: a U-net of width 16, batches of 4, 40 epochs; for "
            "`windows` also 64/32 px patches and a 384 px simulated scene.",
        ),
        click.option("--epochs", type=int, default=None, help="At most this many epochs."),
        click.option("--width", type=int, default=None, help="U-net filters, level 1."),
        click.option("--depth", type=int, default=None, help="U-net down-samplings."),
        click.option("--patience", type=int, default=None, help="Early stopping, epochs."),
        click.option("--batch-size", type=int, default=None, help="Patches per step."),
        click.option("--lr", "learning_rate", type=float, default=None, help="Learning rate."),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed of the split, the weights and the order (and of the simulated scene).",
        ),
        click.option(
            "--size",
            type=int,
            default=None,
            help="Side (px) of the simulated scene when no CUBE is given.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda."),
        click.option("--workers", type=int, default=None, help="Loader processes."),
        click.option("--baselines", is_flag=True, help="Also score linear and random forest."),
        click.option(
            "--overwrite", is_flag=True, help="Redo runs whose folder holds another setup."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _budget(quick: bool, patch: tuple[int | None, int | None], **given: Any) -> Any:
    from sar2ndvi.experiment import ExperimentBudget
    from sar2ndvi.patches import PatchSpec

    budget = ExperimentBudget.quick() if quick else ExperimentBudget()
    changes = {k: v for k, v in given.items() if v is not None}
    size, overlap = patch
    if size is not None or overlap is not None:
        size = size if size is not None else budget.patch.size
        changes["patch"] = PatchSpec(size, overlap if overlap is not None else size // 2)
    from dataclasses import replace

    return replace(budget, **changes)


def _cube(cube: str | None, out: Path, budget: Any, size: int) -> tuple[str, dict | None]:
    """The cube store to sweep over: CUBE itself (a store), a recipe's cube built into
    OUT/cube.zarr, or the simulated scene's. Returns it and the simulation's settings."""
    from sar2ndvi import store
    from sar2ndvi.errors import InputError

    if cube is None:
        from sar2ndvi.experiment import simulated_cube

        console.print(f"simulated scene: {size} x {size} px, seed {budget.seed}")
        path = simulated_cube(
            out, size, budget.seed, progress=True, echo=lambda s: console.print(s, soft_wrap=True)
        )
        return path, {"size": size, "seed": budget.seed}
    if store.is_complete(cube):
        return cube, None
    if cube.rstrip("/").endswith(".zarr") or any(
        (Path(cube) / marker).exists() for marker in (".zattrs", "zarr.json")
    ):
        if "://" not in cube and not Path(cube).exists():
            raise InputError(
                f"no cube store at {cube}; build one with `sar2ndvi build RECIPE --out "
                f"{cube}`, or give a recipe"
            )
        raise InputError(
            f"{cube} is not a complete cube store; finish it with `sar2ndvi build` "
            "(an interrupted build resumes), or give a recipe"
        )
    from sar2ndvi.cli import _build
    from sar2ndvi.recipe import load_recipe

    try:
        recipe = load_recipe(cube)
    except InputError as exc:
        raise InputError(
            f"CUBE {cube!r} is neither a complete cube store nor a recipe: {exc}"
        ) from exc
    path = str(out / "cube.zarr")
    console.print(f"recipe {recipe.name!r}: building its cube into {path}", soft_wrap=True)
    _build(
        recipe,
        path,
        engine="stackstac",
        on_error="raise",
        zarr_format=2,
        overwrite=False,
        workdir=out / recipe.name,
    )
    return path, None


def _too_small_hint(exc: Any, simulated: dict | None) -> Any:
    """A SceneTooSmallError with, for the simulated scene, the --size that works."""
    from sar2ndvi.errors import InputError

    if simulated is None:
        return exc
    inset = simulated["size"] - min(exc.shape)  # the recipe's inset, px
    size = -(-(max(exc.needed) + inset) // 32) * 32
    return InputError(f"{exc}; for the simulated scene, use --size {size} or more")


def _print_rows(rows: list[Any], title: str, first: str) -> None:
    table = Table(title=title)
    columns = (first, "model", "RMSE", "MAE", "SSIM", "PSNR (dB)", "pixels", "val RMSE")
    for col in (*columns, "epochs", "s"):
        table.add_column(col, justify="left" if col in (first, "model") else "right")
    for r in rows:
        key = str(r.window) if first == "window" else f"{r.patch_size}/{r.overlap}"
        table.add_row(
            key,
            r.model,
            f"{r.rmse:.4f}",
            f"{r.mae:.4f}",
            f"{r.ssim:.4f}",
            f"{r.psnr:.2f}",
            str(r.pixels),
            "" if r.val_rmse is None else f"{r.val_rmse:.4f}",
            "" if r.epochs is None else f"{r.best_epoch}/{r.epochs}",
            "" if r.train_seconds is None else f"{r.train_seconds:.0f}",
        )
    console.print(table)


def _run_sweep(
    sweep: Callable[[str, Callable[[str], None]], list[Any]],
    settings: dict[str, Any],
    *,
    name: str,
    first: str,
    cube: str | None,
    out: Path,
    budget: Any,
    size: int,
    quick: bool,
    baselines: bool,
) -> None:
    """Get the cube (the simulated scene's when `cube` is None), run `sweep(cube_path,
    echo)`, then write and print its results with the experiment's `settings` and the
    budget, source and wall time that made them."""
    from sar2ndvi.experiment import SceneTooSmallError

    start = time.perf_counter()
    cube_path, simulated = _cube(cube, out, budget, size)
    try:
        rows = sweep(cube_path, lambda line: console.print(line, soft_wrap=True))
    except SceneTooSmallError as exc:
        raise _too_small_hint(exc, simulated) from exc
    seconds = time.perf_counter() - start
    config = {
        **settings,
        "budget": budget.to_dict(),
        "quick": quick,
        "baselines": baselines,
        "cube": cube_path,
        "source": cube,
        "simulated": simulated,
        "seconds": round(seconds, 1),
    }
    _finish(rows, out, name, config, cube_path, first)
    console.print(f"[green]done[/] in {seconds:.0f} s", soft_wrap=True)


def _finish(rows: list[Any], out: Path, name: str, config: dict, cube: str, first: str) -> None:
    from sar2ndvi.experiment import write_results

    paths = write_results(rows, out, name, config, cube=cube)
    _print_rows(rows, f"{name} ({rows[0].experiment}, seed {rows[0].seed})", first)
    console.print(
        f"results: {paths['csv']} (table), {paths['json']} (config, seed, versions), "
        f"{paths['png']} (plot)",
        soft_wrap=True,
    )


@click.group("experiment")
def experiment() -> None:
    """The Hualien paper's experiments: the local-statistics window sweep (Table 1) and
    the patch-size test (128/64 against 256/128)."""


def _windows(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from sar2ndvi.errors import InputError
    from sar2ndvi.features import variant

    windows = _int_list(ctx, param, value)
    for w in windows or ():
        try:
            variant("paper9", w)  # refused before any scene is simulated
        except InputError as exc:
            raise click.BadParameter(str(exc)) from None
    return windows


@experiment.command("windows")
@click.argument("cube", required=False)
@click.option(
    "--windows",
    callback=_windows,
    default=None,
    help="Comma-separated odd windows, px [default: 11,13,...,29].",
)
@click.option("--patch-size", type=int, default=None, help="Patch side, px.")
@click.option("--overlap", type=int, default=None, help="Patch overlap, px.")
@click.option(
    "--variant", "variant_name", default="paper9", show_default=True, help="Feature recipe."
)
@_budget_options
def windows_command(
    cube: str | None,
    windows: tuple[int, ...] | None,
    patch_size: int | None,
    overlap: int | None,
    variant_name: str,
    out: Path,
    quick: bool,
    seed: int,
    size: int | None,
    baselines: bool,
    overwrite: bool,
    **given: Any,
) -> None:
    """The window sweep (the paper's Table 1): a model per local-statistics window, all
    scored on the same held-out block; a CSV table and a plot of each metric against the
    window. CUBE is a cube store or a recipe; without it, the simulated scene."""
    from sar2ndvi.experiment import PAPER_WINDOWS, window_sweep

    given["num_workers"] = given.pop("workers")
    budget = _budget(quick, (patch_size, overlap), seed=seed, **given)
    windows = windows or PAPER_WINDOWS
    _run_sweep(
        lambda path, echo: window_sweep(
            path,
            out,
            windows,
            budget,
            baselines=baselines,
            variant_name=variant_name,
            overwrite=overwrite,
            progress=True,
            echo=echo,
        ),
        {"experiment": "windows", "windows": list(windows), "variant": variant_name},
        name="window-sweep",
        first="window",
        cube=cube,
        out=out,
        budget=budget,
        size=size or budget.scene_size,
        quick=quick,
        baselines=baselines,
    )


@experiment.command("patches")
@click.argument("cube", required=False)
@click.option(
    "--configs",
    callback=_patch_configs,
    default="128/64,256/128",
    show_default=True,
    help="Comma-separated SIZE/OVERLAP patch configurations, px.",
)
@click.option("--window", type=int, default=19, show_default=True, help="Local-statistics window.")
@click.option(
    "--variant", "variant_name", default="paper9", show_default=True, help="Feature recipe."
)
@_budget_options
def patches_command(
    cube: str | None,
    configs: tuple[tuple[int, int], ...],
    window: int,
    variant_name: str,
    out: Path,
    quick: bool,
    seed: int,
    size: int | None,
    baselines: bool,
    overwrite: bool,
    **given: Any,
) -> None:
    """The patch-size test: one model per patch configuration, trained on the same blocks
    and scored on the same test pixels. 256 px patches need a cube of 1024 x 1024 px (the
    simulated scene's default, --size 1088, gives one). CUBE is a cube store or a recipe."""
    from sar2ndvi.experiment import patch_sweep

    given["num_workers"] = given.pop("workers")
    budget = _budget(quick, (None, None), seed=seed, **given)
    _run_sweep(
        lambda path, echo: patch_sweep(
            path,
            out,
            configs,
            budget,
            window=window,
            baselines=baselines,
            variant_name=variant_name,
            overwrite=overwrite,
            progress=True,
            echo=echo,
        ),
        {
            "experiment": "patches",
            "configs": [list(c) for c in configs],
            "window": window,
            "variant": variant_name,
        },
        name="patch-sweep",
        first="patches",
        cube=cube,
        out=out,
        budget=budget,
        size=size or PATCHES_SIZE,
        quick=quick,
        baselines=baselines,
    )


# added to the `sar2ndvi` group on import (the import sits last, so either module may be
# imported first)
from sar2ndvi.cli import main  # noqa: E402

main.add_command(experiment)
