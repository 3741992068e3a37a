"""The `sar2ndvi` command: clear errors, and the quick-start demo end to end."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import sar2ndvi
from sar2ndvi.cli import main


def test_version_from_the_installed_console_script():
    exe = [sys.executable, "-m", "sar2ndvi.cli"]
    result = subprocess.run(
        [*exe[:1], "-c", "from sar2ndvi.cli import main; main()", "--version"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert sar2ndvi.__version__ in result.stdout


def test_simulate_with_a_missing_dem_fails_cleanly(tmp_path):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["simulate", "--out", str(tmp_path / "s"), "--dem", str(tmp_path / "nope.tif")]
    )
    assert result.exit_code == 2
    assert "nope.tif does not exist" in result.output
    assert "Traceback" not in result.output


def test_simulate_with_a_nonsense_size(tmp_path):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["simulate", "--out", str(tmp_path / "s"), "--size", "12x12"]
    )
    assert result.exit_code == 2
    assert "size" in result.output


def test_simulate_refuses_to_clobber(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["simulate", "--out", str(out), "--size", "64"]
    )
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert (out / "keep.txt").exists()


def test_simulate_with_a_nonsense_date_window(tmp_path):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["simulate", "--out", str(tmp_path / "s"), "--pre-days", "3"]
    )
    assert result.exit_code == 2
    assert "pre_days/post_days (3/36)" in result.output
    assert not (tmp_path / "s").exists()


def test_search_with_a_bad_filter():
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["search", "--api", "http://127.0.0.1:9", "--collection", "x", "--where", "cloudy"]
    )
    assert result.exit_code == 2
    assert "PROPERTY<op>VALUE" in result.output


def test_search_prints_the_served_items(stac_api, scene):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main,
        [
            "search",
            "--api",
            stac_api.url,
            "--collection",
            "sentinel-1-rtc",
            "--where",
            "sat:orbit_state=ascending",
        ],
    )
    assert result.exit_code == 0, result.output
    n = len(scene.item_paths("sentinel-1-rtc")) // 2
    assert f"{n} items from {stac_api.url}" in result.output


def test_demo_end_to_end(tmp_path):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["demo", "--out", str(tmp_path / "demo"), "--size", "96"]
    )
    assert result.exit_code == 0, result.output
    assert "S1 pre ascending" in result.output
    assert "S2 post" in result.output
    assert "DEM" in result.output
    assert (tmp_path / "demo" / "scene" / "scene.json").is_file()
    # a second run reuses the scene
    again = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["demo", "--out", str(tmp_path / "demo"), "--size", "96"]
    )
    assert again.exit_code == 0, again.output
