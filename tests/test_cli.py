"""The `sar2ndvi` command: clear errors, and the quick-start demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import sar2ndvi
from sar2ndvi.cli import main
from sar2ndvi.cli_demo import STAGES


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


@pytest.mark.slow
def test_demo_runs_every_stage_then_reuses_them(tmp_path):
    """The README's first command, small: all 11 stages, the report, then a re-run that
    reuses every product."""
    args = ["demo", "--out", str(tmp_path / "demo"), "--size", "320", "--epochs", "1",
            "--patch-size", "64", "--landslide-epochs", "1"]  # fmt: skip
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    for stage in range(1, 12):
        assert f"{stage}/11 " in result.output
    page = (out / "report" / "index.html").read_text()
    metrics = json.loads((out / "ndvi-evaluation" / "metrics.json").read_text())["metrics"]
    rmse = metrics["U-net"]["rmse"]
    assert f"{rmse:.4f}" in page  # the NDVI table
    rows = json.loads((out / "landslides" / "landslide-metrics.json").read_text())["rows"]
    assert {r["setting"] for r in rows} == {"1", "2", "3", "4", "5"}
    assert f"{rows[0]['mcc']:.3f}" in page  # the landslide table
    for png in ("figure.png", "ndvi-training.png", "landslide-map.png", "landslide-training.png"):
        assert (out / "report" / png).stat().st_size > 10_000, png
        assert f'src="{png}"' in page
    assert (out / "landslide-map" / "landslides.gpkg").is_file()
    times = json.loads((out / "stage-times.json").read_text())
    assert [t["name"] for t in times] == list(STAGES)
    # a second run recomputes nothing: every product stage says it was reused
    again = CliRunner(env={"COLUMNS": "240"}).invoke(main, args)
    assert again.exit_code == 0, again.output
    for stage in ("cube", "features", "train", "evaluate", "predict", "landslides", "map"):
        assert f"{stage} stage: " in again.output
        line = next(x for x in again.output.splitlines() if x.startswith(f"{stage} stage: "))
        assert line.endswith("(reused)"), line
    rerun = {t["name"]: t for t in json.loads((out / "stage-times.json").read_text())}
    # reused stages keep the seconds of the run that computed them
    assert rerun["train"]["reused"]
    assert rerun["train"]["seconds"] == next(t for t in times if t["name"] == "train")["seconds"]
    # a landslide comparison written by an older version (other scoring rules) is redone;
    # its finished segmentation runs are reused
    metrics_json = out / "landslides" / "landslide-metrics.json"
    old = json.loads(metrics_json.read_text())
    del old["format"]
    metrics_json.write_text(json.dumps(old))
    third = CliRunner(env={"COLUMNS": "240"}).invoke(main, [*args, "--stop-after", "landslides"])
    assert third.exit_code == 0, third.output
    line = next(x for x in third.output.splitlines() if x.startswith("landslides stage: "))
    assert not line.endswith("(reused)"), line
    assert third.output.count("finished run: reused") == 5
    assert json.loads(metrics_json.read_text())["rows"] == rows


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


@pytest.mark.parametrize(
    "module", ["sar2ndvi.cli_demo", "sar2ndvi.cli_landslides", "sar2ndvi.cli_experiment"]
)
def test_command_modules_import_in_any_order(module):
    """A command module imported before `sar2ndvi.cli` still ends up in the group."""
    code = f"import {module}\nfrom sar2ndvi.cli import main\nprint(sorted(main.commands))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("demo", "detect", "evaluate-landslides", "experiment", "train"):
        assert f"'{name}'" in result.stdout


def test_a_stage_forced_by_overwrite_is_never_reported_reused():
    from sar2ndvi.cli_demo import _Run

    for overwrite, expected in ((False, True), (True, False)):
        run = _Run(last="report", overwrite=overwrite)
        with run.stage("cube", "build", lambda: True) as reused:
            assert reused is expected
        assert run.times[0].reused is expected
