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
        main, ["demo", "--out", str(tmp_path / "demo"), "--size", "96", "--stop-after", "features"]
    )
    assert result.exit_code == 0, result.output
    assert "S1 pre ascending" in result.output
    assert "S2 post" in result.output
    assert "DEM" in result.output
    assert (tmp_path / "demo" / "scene" / "scene.json").is_file()
    from sar2ndvi import store

    assert store.is_complete(tmp_path / "demo" / "cube.zarr")
    # a second run reuses the scene
    again = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["demo", "--out", str(tmp_path / "demo"), "--size", "96", "--stop-after", "features"]
    )
    assert again.exit_code == 0, again.output


def _recipe_file(tmp_path, scene, api_url):
    """The test scene's recipe as a TOML file, pointing at the served API."""
    from sar2ndvi.synth.area import scene_recipe

    r = scene_recipe(scene, url=api_url, chunk=64, name="cli-test")
    w, s, e, n = r.bbox
    text = f"""name = "cli-test"
[area]
bbox = [{w}, {s}, {e}, {n}]
crs = "EPSG:32611"
[event]
date = {r.event.date().isoformat()}
pre = [{r.pre.start.date().isoformat()}, {r.pre.end.date().isoformat()}]
post = [{r.post.start.date().isoformat()}, {r.post.end.date().isoformat()}]
[source]
type = "api"
url = "{api_url}"
[chunks]
x = 64
y = 64
"""
    path = tmp_path / "cli-test.toml"
    path.write_text(text)
    return path


def test_search_a_recipe_prints_scenes_by_role(tmp_path, scene, stac_api):
    path = _recipe_file(tmp_path, scene, stac_api.url)
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["search", str(path)])
    assert result.exit_code == 0, result.output
    assert "S1 pre ascending" in result.output
    assert "S2 post" in result.output
    n = sum(scene.manifest["collections"].values())
    assert f"{n} scenes for recipe 'cli-test'" in result.output


def test_build_writes_a_complete_store_and_reuses_it(tmp_path, scene, stac_api):
    from sar2ndvi import store

    path = _recipe_file(tmp_path, scene, stac_api.url)
    out = tmp_path / "cube.zarr"
    runner = CliRunner(env={"COLUMNS": "240"})
    result = runner.invoke(main, ["build", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert store.is_complete(out)
    again = runner.invoke(main, ["build", str(path), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "reused" in again.output


def test_build_with_a_broken_recipe_names_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[area]\nbbox = [10, 50, 9, 51]\n')
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        main, ["build", str(bad), "--out", str(tmp_path / "c.zarr")])
    assert result.exit_code == 2
    assert "bad.toml: area.bbox" in result.output
    assert not (tmp_path / "c.zarr").exists()
