"""The paper's experiments (`sar2ndvi experiment windows|patches`) on a small simulated
scene: the table, its sidecar, the plot, one split for every window, resuming, and the
patch test's size check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sar2ndvi.cli import main
from sar2ndvi.experiment import (
    METRICS,
    ExperimentBudget,
    patch_sweep,
    read_results,
    simulated_cube,
)
from sar2ndvi.patches import PatchSpec
from sar2ndvi.split import load_split

#: Scene side, px: its cube (about 210 px after the recipe's inset) holds 9 split blocks
#: of 32 / 16 px patches.
SIZE = 256
SEED = 3
WINDOWS = (11, 15)
#: A budget that only has to run: 32 / 16 px patches, a 2-level U-net of width 4.
TINY = [
    "--patch-size", "32", "--overlap", "16", "--depth", "2", "--width", "4",
    "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
]  # fmt: skip


def _windows_cli(out: Path, *extra: str):
    args = ["experiment", "windows", "--out", str(out), "--size", str(SIZE)]
    args += ["--seed", str(SEED), "--windows", ",".join(map(str, WINDOWS)), *TINY, *extra]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The simulated scene's cube, built by the library (the CLI then reuses it)."""
    return simulated_cube(tmp_path_factory.mktemp("experiment"), SIZE, SEED)


def test_window_sweep_through_the_cli(cube: str) -> None:
    """One sweep (without CUBE: the simulated scene, reused) and checks on what it wrote;
    one test, so that pytest-xdist does not run the sweep on both workers."""
    out = Path(cube).parent
    result = _windows_cli(out)
    assert result.exit_code == 0, result.output
    assert "cube.zarr is complete already: reused" in result.output
    _check_table(out)
    _check_same_split(out)
    _check_sidecar(out)
    _check_plot(out)
    _check_rerun_reuses(out)


def _check_table(sweep: Path) -> None:
    """One row per window, the metric columns, finite values in range."""
    rows = read_results(sweep / "window-sweep.csv")
    assert [r.window for r in rows] == list(WINDOWS)
    assert {r.model for r in rows} == {"U-net"}
    header = (sweep / "window-sweep.csv").read_text().splitlines()[0].split(",")
    assert {"window", *METRICS, "pixels", "epochs", "best_epoch", "train_seconds"} <= set(header)
    for r in rows:
        assert r.rmse > 0
        assert 0 < r.mae <= r.rmse
        assert -1 <= r.ssim <= 1
        # PSNR is that of NDVI's data range, 2: the CSV keeps full precision
        assert r.psnr == pytest.approx(20 * math.log10(2 / r.rmse), rel=1e-9)
        assert r.pixels > 0
        assert 0 < r.val_rmse < 1
        assert r.epochs == 2
        assert 1 <= r.best_epoch <= 2
        assert r.train_seconds > 0
        assert r.seed == SEED
        assert (r.patch_size, r.overlap) == (32, 16)


def _check_same_split(sweep: Path) -> None:
    """Every window's model was trained and scored on the same blocks and pixels."""
    from sar2ndvi import store

    rows = read_results(sweep / "window-sweep.csv")
    splits = [load_split(sweep / "windows" / f"w{w:02d}" / "model" / "split.json") for w in WINDOWS]
    assert splits[0] == splits[1]
    assert splits[0].seed == SEED
    assert splits[0].spec == PatchSpec(32, 16)
    assert len({r.split_id for r in rows}) == 1
    assert len({r.pixels for r in rows}) == 1  # the same test pixels
    # and the windows really differ: each store has its own local statistics
    for w in WINDOWS:
        attrs = store.open(str(sweep / "windows" / f"w{w:02d}" / "features.zarr")).attrs
        assert attrs["sar2ndvi:window"] == w


def _check_sidecar(sweep: Path) -> None:
    """The JSON beside the CSV: configuration, seed, versions, cube, date."""
    meta = json.loads((sweep / "window-sweep.json").read_text())
    assert meta["seed"] == SEED
    assert meta["config"]["windows"] == list(WINDOWS)
    budget = meta["config"]["budget"]
    assert budget["seed"] == SEED
    assert budget["epochs"] == 2
    assert budget["width"] == 4
    assert budget["patch"] == {"size": 32, "overlap": 16}
    assert meta["config"]["simulated"] == {"size": SIZE, "seed": SEED}
    assert meta["cube"] == str(sweep / "cube.zarr")
    assert meta["recipe"] == "simulated"
    assert meta["versions"]["sar2ndvi"]
    assert meta["date"].startswith("20")
    assert len(meta["rows"]) == len(WINDOWS)
    assert meta["paper_table1"]["19"]["ssim"] == pytest.approx(0.8522)


def _check_plot(sweep: Path) -> None:
    import matplotlib.image as mpimg

    png = sweep / "window-sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(png)
    h, w = image.shape[:2]
    assert 400 <= h <= 1500
    assert 600 <= w <= 2000
    assert np.ptp(image[..., :3]) > 0.5  # not a blank canvas


def _check_rerun_reuses(sweep: Path) -> None:
    """Run again: stores and models reused, nothing retrained, the same table."""
    checkpoints = [sweep / "windows" / f"w{w:02d}" / "model" / "checkpoint.pt" for w in WINDOWS]
    before = [p.stat().st_mtime_ns for p in checkpoints]
    table = (sweep / "window-sweep.csv").read_text()
    result = _windows_cli(sweep)
    assert result.exit_code == 0, result.output
    assert result.output.count("features.zarr reused") == len(WINDOWS)
    assert result.output.count("model and scores reused") == len(WINDOWS)
    assert "training a U-net" not in result.output
    assert [p.stat().st_mtime_ns for p in checkpoints] == before
    assert (sweep / "window-sweep.csv").read_text() == table


def test_bad_window_is_refused_before_any_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["experiment", "windows", "--out", str(tmp_path), "--windows", "11,12"]
    )
    assert result.exit_code == 2
    assert "window 12 must be an odd number" in result.output
    assert not any(tmp_path.iterdir())  # no scene simulated


def test_patch_sweep(cube: str, tmp_path: Path) -> None:
    """The paper's 256 px patches are refused on this small cube, naming the size needed,
    before anything is written; small configurations run, on the same test pixels."""
    result = CliRunner().invoke(main, ["experiment", "patches", cube, "--out", str(tmp_path)])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "too small for 256 px patches with a 128 px overlap" in out
    assert "at least 1024 x 1024 px" in out
    assert not (tmp_path / "patches").exists()

    budget = ExperimentBudget(
        epochs=1, width=4, depth=2, patience=1, batch_size=4, seed=SEED, num_workers=0
    )
    rows = patch_sweep(cube, tmp_path, ((16, 8), (32, 16)), budget, window=11)
    assert [(r.patch_size, r.overlap) for r in rows] == [(16, 8), (32, 16)]
    assert len({r.split_id for r in rows}) == 1
    assert len({r.pixels for r in rows}) == 1
    # both models were trained on the same blocks: the largest patches' block and buffer
    a, b = (
        load_split(tmp_path / "patches" / p / "model" / "split.json") for p in ("p16-8", "p32-16")
    )
    assert a.block == b.block
    assert a.buffer == b.buffer == 32
    assert np.array_equal(a.roles, b.roles)
    assert all(r.rmse > 0 and -1 <= r.ssim <= 1 for r in rows)
