"""Cube recipes: the shipped recipes, the grid they resolve to, and every validation rule."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sar2ndvi.errors import InputError
from sar2ndvi.recipe import (
    KNOWN_KEYS,
    Recipe,
    RecipeError,
    Window,
    builtin_recipes,
    load_recipe,
    parse_recipe,
    strip_url,
)

ORIGIN = "bad.toml"


def base() -> dict[str, Any]:
    """A valid recipe, as tomllib would give it."""
    return {
        "name": "test-area",
        "description": "a test",
        "area": {"bbox": [121.45, 24.12, 121.65, 24.27], "crs": "utm", "resolution": 10.0},
        "event": {
            "date": date(2024, 4, 3),
            "pre": [date(2024, 2, 15), date(2024, 4, 2)],
            "post": [date(2024, 4, 4), date(2024, 5, 31)],
        },
        "source": {
            "type": "api",
            "url": "https://planetarycomputer.microsoft.com/api/stac/v1",
            "sign": "planetary-computer",
        },
        "collections": {"s1": "sentinel-1-rtc", "s2": "sentinel-2-l2a", "dem": "cop-dem-glo-30"},
        "filters": {"max_cloud": 60},
        "chunks": {"x": 1024, "y": 1024, "time": 1},
    }


def projected_edges(bbox: tuple[float, ...], crs: pyproj.CRS, n: int = 41) -> np.ndarray:
    """Points along the four edges of a lon/lat bbox, projected to `crs`: shape (2, 4n)."""
    w, s, e, nth = bbox
    lon = np.linspace(w, e, n)
    lat = np.linspace(s, nth, n)
    lons = np.concatenate([lon, lon, np.full(n, w), np.full(n, e)])
    lats = np.concatenate([np.full(n, s), np.full(n, nth), lat, lat])
    t = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return np.array(t.transform(lons, lats))


def assert_grid_covers(recipe: Recipe) -> None:
    grid = recipe.grid()
    left, bottom, right, top = grid.bounds
    res = recipe.resolution
    for v in grid.bounds:
        assert v / res == pytest.approx(round(v / res), abs=1e-6), (v, res)
    xy = projected_edges(recipe.bbox, recipe.crs)
    eps = 1e-6
    assert xy[0].min() >= left - eps
    assert xy[0].max() <= right + eps
    assert xy[1].min() >= bottom - eps
    assert xy[1].max() <= top + eps
    # snapped outward by less than one pixel (plus densification slack)
    assert xy[0].min() - left < res + 1
    assert top - xy[1].max() < res + 1


# --- the shipped recipes -----------------------------------------------------------------------


def test_builtin_recipes_listed() -> None:
    assert set(builtin_recipes()) == {"synthetic", "hualien-2024", "jolster-2019"}


@pytest.mark.parametrize(
    ("name", "epsg"), [("hualien-2024", 32651), ("jolster-2019", 32632), ("synthetic", 32611)]
)
def test_builtin_recipe_loads(name: str, epsg: int) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.crs.to_epsg() == epsg
    assert recipe.path == builtin_recipes()[name]
    assert recipe.resolution == 10.0
    assert set(recipe.collections) == {"s1", "s2", "dem"}
    assert recipe.pre.end < recipe.event <= recipe.post.start
    assert_grid_covers(recipe)
    # loading by path gives the same recipe
    assert load_recipe(builtin_recipes()[name]) == recipe


def test_hualien_values() -> None:
    r = load_recipe("hualien-2024")
    assert r.bbox == (121.45, 24.12, 121.65, 24.27)
    assert r.event == datetime(2024, 4, 2, 23, 58, 11)
    assert r.pre.interval() == "2024-02-15T00:00:00Z/2024-04-02T23:58:00Z"
    assert r.post.interval() == "2024-04-04T00:00:00Z/2024-05-31T23:59:59Z"
    assert r.source.type == "api"
    assert r.source.url == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert r.source.sign == "planetary-computer"
    assert r.max_cloud == 80.0
    assert dict(r.chunks) == {"x": 1024, "y": 1024, "time": 1}
    g = r.grid()
    assert g.bounds == (342480.0, 2668170.0, 362970.0, 2685000.0)
    assert g.shape == (1683, 2049)


def test_jolster_values() -> None:
    r = load_recipe("jolster-2019")
    assert r.event == datetime(2019, 7, 30)
    assert r.pre.interval() == "2019-06-29T00:00:00Z/2019-07-29T23:59:59Z"
    assert r.post.interval() == "2019-07-31T00:00:00Z/2019-08-30T23:59:59Z"
    assert 25 <= r.pre.days <= 32  # one month either side
    assert 25 <= r.post.days <= 32
    assert r.max_cloud == 80.0


def test_synthetic_values() -> None:
    r = load_recipe("synthetic")
    assert r.source.type == "synthetic"
    assert (r.source.seed, r.source.size) == (0, (512, 512))
    assert r.event == datetime(2024, 4, 3)
    assert r.pre.interval() == "2024-02-26T00:00:00Z/2024-04-02T23:59:59Z"
    # a post window starting on the event date is valid: the event is at 00:00 UTC
    assert r.post.interval() == "2024-04-03T00:00:00Z/2024-05-09T23:59:59Z"
    assert dict(r.chunks) == {"x": 256, "y": 256, "time": 1}
    g = r.grid()
    assert g.bounds == (391770.0, 3795850.0, 396710.0, 3800790.0)
    assert g.shape == (494, 494)


def test_synthetic_grid_inside_simulated_scene() -> None:
    """The recipe's grid lies inside the default scene's grid and shares its pixel edges."""
    from sar2ndvi.synth.config import SceneConfig
    from sar2ndvi.synth.scene import TERRAIN_MARGIN, _crop, _terrain

    recipe = load_recipe("synthetic")
    config = SceneConfig(seed=recipe.source.seed, size=recipe.source.size)
    scene = _crop(_terrain(config), TERRAIN_MARGIN).grid  # the grid `simulate` writes
    assert scene.crs == recipe.crs
    assert scene.shape == (512, 512)
    sl, sb, sr, st_ = scene.bounds
    gl, gb, gr, gt = recipe.grid().bounds
    assert sl < gl
    assert gr < sr
    assert sb < gb
    assert gt < st_
    for offset in (gl - sl, st_ - gt):
        assert offset % 10.0 == 0.0
    assert recipe.grid().resolution == scene.resolution


# --- Window -----------------------------------------------------------------------------------


def test_window_interval() -> None:
    w = Window(datetime(2024, 2, 15), datetime(2024, 4, 2, 23, 59, 59, 999999))
    assert w.interval() == "2024-02-15T00:00:00Z/2024-04-02T23:59:59Z"
    assert Window(datetime(2024, 1, 1, 6, 30), datetime(2024, 1, 1, 6, 30)).interval() == (
        "2024-01-01T06:30:00Z/2024-01-01T06:30:00Z"
    )


def test_datetimes_converted_to_naive_utc() -> None:
    data = base()
    taipei = timezone(timedelta(hours=8))
    data["event"]["date"] = datetime(2024, 4, 3, 7, 58, 11, tzinfo=taipei)
    data["event"]["pre"] = [date(2024, 2, 15), datetime(2024, 4, 2, 23, 0, tzinfo=UTC)]
    data["event"]["post"] = ["2024-04-03T00:00:00Z", "2024-05-31"]
    r = parse_recipe(data)
    assert r.event == datetime(2024, 4, 2, 23, 58, 11)
    assert r.event.tzinfo is None
    assert r.pre.interval() == "2024-02-15T00:00:00Z/2024-04-02T23:00:00Z"
    assert r.post.end == datetime(2024, 5, 31, 23, 59, 59, 999999)


def test_defaults() -> None:
    data = base()
    for key in ("collections", "filters", "chunks"):
        del data[key]
    del data["area"]["crs"]
    del data["area"]["resolution"]
    del data["description"]
    r = parse_recipe(data)
    assert r.crs.to_epsg() == 32651
    assert r.resolution == 10.0
    assert r.max_cloud == 100.0
    assert dict(r.collections) == {
        "s1": "sentinel-1-rtc",
        "s2": "sentinel-2-l2a",
        "dem": "cop-dem-glo-30",
    }
    assert dict(r.chunks) == {"x": 1024, "y": 1024, "time": 1}
    assert r.description == ""


# --- the area ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    west=st.floats(-180, 178),
    width=st.floats(0.001, 2.0),
    south=st.floats(-80, 82),
    height=st.floats(0.001, 2.0),
    resolution=st.sampled_from([10.0, 20.0, 30.0, 60.0]),
)
def test_grid_covers_any_bbox(
    west: float, width: float, south: float, height: float, resolution: float
) -> None:
    bbox = [west, south, west + width, south + height]
    data = base()
    data["area"] = {"bbox": bbox, "crs": "utm", "resolution": resolution}
    r = parse_recipe(data)
    lon, lat = west + width / 2, south + height / 2
    zone = math.floor((lon + 180) / 6) + 1
    assert r.crs.to_epsg() == (32600 if lat >= 0 else 32700) + zone
    assert_grid_covers(r)
    assert parse_recipe(r.to_dict()) == r


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (121.55, 24.2, 32651),
        (6.3, 61.5, 32632),
        (-118.15, 34.3, 32611),
        (-70.6, -33.4, 32719),  # Santiago: south
        (174.8, -41.3, 32760),  # Wellington: zone 60 south
        (-179.9, 10.0, 32601),
        (0.0, 0.0, 32631),
    ],
)
def test_utm_zone(lon: float, lat: float, epsg: int) -> None:
    data = base()
    data["area"]["bbox"] = [lon - 0.05, lat - 0.05, lon + 0.05, lat + 0.05]
    assert parse_recipe(data).crs.to_epsg() == epsg


def test_explicit_crs() -> None:
    for crs in ("EPSG:32651", 32651, "epsg:32651"):
        data = base()
        data["area"]["crs"] = crs
        assert parse_recipe(data).crs.to_epsg() == 32651
    data = base()
    data["area"]["crs"] = "EPSG:3826"  # TWD97 / TM2 zone 121, metres
    r = parse_recipe(data)
    assert r.crs.to_epsg() == 3826
    assert_grid_covers(r)


POLYGON = {
    "type": "Polygon",
    "coordinates": [
        [[121.5, 24.15], [121.6, 24.13], [121.62, 24.25], [121.48, 24.2], [121.5, 24.15]]
    ],
}


def test_geometry_inline() -> None:
    data = base()
    data["area"] = {"geometry": copy.deepcopy(POLYGON)}
    r = parse_recipe(data)
    assert r.bbox == (121.48, 24.13, 121.62, 24.25)
    assert r.geometry is not None
    assert r.geometry["type"] == "Polygon"
    assert_grid_covers(r)


@pytest.mark.parametrize("wrap", ["geometry", "feature", "collection"])
def test_geometry_file(tmp_path: Path, wrap: str) -> None:
    doc: dict = copy.deepcopy(POLYGON)
    if wrap in ("feature", "collection"):
        doc = {"type": "Feature", "properties": {}, "geometry": doc}
    if wrap == "collection":
        doc = {"type": "FeatureCollection", "features": [doc]}
    (tmp_path / "area.geojson").write_text(json.dumps(doc))
    data = base()
    data["area"] = {"geometry_file": "area.geojson"}
    r = parse_recipe(data, origin="x.toml", base_dir=tmp_path)
    assert r.bbox == (121.48, 24.13, 121.62, 24.25)
    # the provenance form carries the geometry itself, not the file name
    again = parse_recipe(r.to_dict())
    assert again == r


def test_geometry_file_collection_is_merged(tmp_path: Path) -> None:
    def square(x: float) -> dict:
        ring = [[x, 24.1], [x + 0.1, 24.1], [x + 0.1, 24.2], [x, 24.2], [x, 24.1]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}

    doc = {"type": "FeatureCollection", "features": [square(121.4), square(121.6)]}
    (tmp_path / "two.geojson").write_text(json.dumps(doc))
    data = base()
    data["area"] = {"geometry_file": "two.geojson"}
    r = parse_recipe(data, base_dir=tmp_path)
    assert r.geometry is not None
    assert r.geometry["type"] == "MultiPolygon"
    assert r.bbox == pytest.approx((121.4, 24.1, 121.7, 24.2))


# --- sources ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fname"),
    [("static", "cat/catalog.json"), ("itemcollection", "items.json"), ("geoparquet", "i.parquet")],
)
def test_file_sources_resolved_against_recipe(tmp_path: Path, kind: str, fname: str) -> None:
    data = base()
    data["source"] = {"type": kind, "path": fname}
    text = _to_toml(data)
    (tmp_path / "r.toml").write_text(text)
    r = load_recipe(tmp_path / "r.toml")
    assert r.source.path == (tmp_path / fname).resolve()
    assert r.source.url is None
    assert r.source.sign is None


def test_load_by_path_string(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(_to_toml(base()))
    r = load_recipe(str(tmp_path / "mine.toml"))
    assert r.name == "test-area"
    assert r.path == (tmp_path / "mine.toml").resolve()


# --- provenance -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hualien-2024", "jolster-2019", "synthetic"])
def test_to_dict_round_trip(name: str) -> None:
    r = load_recipe(name)
    d = r.to_dict()
    json.dumps(d)  # JSON-able
    again = parse_recipe(json.loads(json.dumps(d)))
    assert again.path is None
    assert again == replace(r, path=None)
    assert again.to_dict() == d
    assert hash(again) == hash(replace(r, path=None))


def test_to_dict_strips_secrets() -> None:
    data = base()
    data["source"]["url"] = "https://user:secret@example.com:8443/stac/v1?sig=abc123&se=2030#x"
    r = parse_recipe(data)
    assert r.source.url == data["source"]["url"]  # kept for the search itself
    d = r.to_dict()
    assert d["source"]["url"] == "https://example.com:8443/stac/v1"
    text = json.dumps(d)
    for secret in ("sig=", "secret", "abc123", "user"):
        assert secret not in text
    assert strip_url("https://a.b/c?x=1") == "https://a.b/c"
    assert d["event"] == {
        "date": "2024-04-03T00:00:00Z",
        "pre": ["2024-02-15T00:00:00Z", "2024-04-02T23:59:59.999999Z"],
        "post": ["2024-04-04T00:00:00Z", "2024-05-31T23:59:59.999999Z"],
    }
    assert d["area"]["crs"] == "EPSG:32651"


# --- every mistake ----------------------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value

    return mutate


def _del(path: str) -> Any:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        del d[last]

    return mutate


def _area(**area: Any) -> Any:
    """Replace the bbox by another way of giving the area."""

    def mutate(d: dict) -> None:
        del d["area"]["bbox"]
        d["area"].update(area)

    return mutate


BOWTIE = {
    "type": "Polygon",
    "coordinates": [[[121.5, 24.1], [121.6, 24.2], [121.6, 24.1], [121.5, 24.2], [121.5, 24.1]]],
}

MISTAKES = [
    # id, mutation, field in the message, another phrase the message must hold
    ("unknown-filter-key", _set("filters.max_clouds", 50), "filters.max_clouds",
     "did you mean 'max_cloud'"),
    ("unknown-area-key", _set("area.bbx", [1, 2, 3, 4]), "area.bbx", "did you mean 'bbox'"),
    ("unknown-top-key", _set("colections", {}), "colections", "did you mean 'collections'"),
    ("misplaced-key", _set("max_cloud", 50), "max_cloud", "[filters]"),
    ("unknown-key-no-match", _set("chunks.zzzzzz", 1), "chunks.zzzzzz", "x, y, time"),
    ("missing-name", _del("name"), "name", "missing"),
    ("missing-area", _del("area"), "area", "missing"),
    ("missing-event", _del("event"), "event", "missing"),
    ("missing-source", _del("source"), "source", "missing"),
    ("missing-bbox", _del("area.bbox"), "area.bbox", "missing"),
    ("missing-date", _del("event.date"), "event.date", "missing"),
    ("missing-pre", _del("event.pre"), "event.pre", "missing"),
    ("missing-post", _del("event.post"), "event.post", "missing"),
    ("missing-source-type", _del("source.type"), "source.type", "missing"),
    ("name-type", _set("name", 7), "name", "string"),
    ("name-chars", _set("name", "my area/1"), "name", "letters"),
    ("description-type", _set("description", ["a"]), "description", "string"),
    ("area-type", _set("area", "x"), "area", "table"),
    ("bbox-three", _set("area.bbox", [1.0, 2.0, 3.0]), "area.bbox", "4 numbers"),
    ("bbox-type", _set("area.bbox", "121,24,122,25"), "area.bbox", "4 numbers"),
    ("bbox-string-item", _set("area.bbox", [121, "24", 122, 25]), "area.bbox", "finite"),
    ("bbox-nan", _set("area.bbox", [121, math.nan, 122, 25]), "area.bbox", "finite"),
    ("bbox-west-east", _set("area.bbox", [121.65, 24.12, 121.45, 24.27]), "area.bbox", "swap"),
    ("bbox-south-north", _set("area.bbox", [121.45, 24.27, 121.65, 24.12]), "area.bbox", "swap"),
    ("bbox-lon", _set("area.bbox", [121.45, 24.12, 190.0, 24.27]), "area.bbox", "longitude"),
    ("bbox-lat", _set("area.bbox", [24.12, 121.45, 24.27, 121.65]), "area.bbox", "latitude"),
    ("bbox-and-geometry", _set("area.geometry", POLYGON), "area.geometry", "only one"),
    ("geometry-invalid", _area(geometry=BOWTIE), "area.geometry", "not a valid polygon"),
    ("geometry-point", _area(geometry={"type": "Point", "coordinates": [121.5, 24.2]}),
     "area.geometry", "Polygon or MultiPolygon"),
    ("geometry-malformed", _area(geometry={"type": "Polygon", "coordinates": [[1, 2]]}),
     "area.geometry", "malformed"),
    ("geometry-not-table", _area(geometry="POLYGON((1 2, 3 4))"), "area.geometry", "GeoJSON"),
    ("geometry-file-missing", _area(geometry_file="nowhere.geojson"), "area.geometry_file",
     "does not exist"),
    ("crs-unknown", _set("area.crs", "EPSG:999999"), "area.crs", "not a known CRS"),
    ("crs-garbage", _set("area.crs", "utm51"), "area.crs", "not a known CRS"),
    ("crs-type", _set("area.crs", 3.5), "area.crs", "EPSG"),
    ("crs-geographic", _set("area.crs", "EPSG:4326"), "area.crs", "metres"),
    ("crs-geographic-int", _set("area.crs", 4326), "area.crs", "metres"),
    ("crs-feet", _set("area.crs", "EPSG:2227"), "area.crs", "metres"),
    ("utm-polar", _set("area.bbox", [10.0, 85.0, 11.0, 86.0]), "area.crs", "EPSG:3413"),
    ("resolution-zero", _set("area.resolution", 0), "area.resolution", "positive"),
    ("resolution-negative", _set("area.resolution", -10.0), "area.resolution", "positive"),
    ("resolution-string", _set("area.resolution", "10"), "area.resolution", "positive"),
    ("date-type", _set("event.date", 20240403), "event.date", "date or datetime"),
    ("date-string", _set("event.date", "April 3rd"), "event.date", "ISO date"),
    ("date-time-of-day", _set("event.date", time(12, 0)), "event.date", "date or datetime"),
    ("window-shape", _set("event.pre", [date(2024, 2, 15)]), "event.pre", "[start, end]"),
    ("window-reversed", _set("event.post", [date(2024, 5, 31), date(2024, 4, 4)]), "event.post",
     "swap"),
    ("pre-after-event", _set("event.pre", [date(2024, 2, 15), date(2024, 4, 3)]), "event.pre",
     "before the event"),
    ("post-before-event", _set("event.post", [date(2024, 4, 2), date(2024, 5, 31)]),
     "event.post", "on or after"),
    ("window-too-long", _set("event.pre", [date(2021, 1, 1), date(2024, 4, 2)]), "event.pre",
     "2 years"),
    ("source-type", _set("source.type", "stac"), "source.type", "not a known source type"),
    ("source-type-typo", _set("source.type", "ap"), "source.type", "did you mean 'api'"),
    ("api-no-url", _del("source.url"), "source.url", "missing"),
    ("api-bad-url", _set("source.url", "planetarycomputer.microsoft.com"), "source.url",
     "http"),
    ("api-url-type", _set("source.url", 5), "source.url", "string"),
    ("static-no-path", lambda d: d.update(source={"type": "static"}), "source.path", "missing"),
    ("geoparquet-no-path", lambda d: d.update(source={"type": "geoparquet"}), "source.path",
     "missing"),
    ("static-with-url", _set("source.type", "static"), "source.url", "does not apply"),
    ("sign-unknown", _set("source.sign", "aws"), "source.sign", "planetary-computer"),
    ("synthetic-seed", lambda d: d.update(source={"type": "synthetic", "seed": -1}),
     "source.seed", "whole number"),
    ("synthetic-size", lambda d: d.update(source={"type": "synthetic", "size": [32, 512]}),
     "source.size", "64..8192"),
    ("collections-key", _set("collections.s3", "x"), "collections.s3", "unknown key"),
    ("collections-value", _set("collections.s2", ""), "collections.s2", "collection id"),
    ("max-cloud-high", _set("filters.max_cloud", 101), "filters.max_cloud", "0..100"),
    ("max-cloud-low", _set("filters.max_cloud", -1), "filters.max_cloud", "0..100"),
    ("max-cloud-nan", _set("filters.max_cloud", math.nan), "filters.max_cloud", "0..100"),
    ("chunk-small", _set("chunks.x", 32), "chunks.x", "64..8192"),
    ("chunk-large", _set("chunks.y", 10000), "chunks.y", "64..8192"),
    ("chunk-float", _set("chunks.y", 512.0), "chunks.y", "whole number"),
    ("chunk-time", _set("chunks.time", 0), "chunks.time", ">= 1"),
    ("filters-type", _set("filters", 60), "filters", "table"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "phrase"),
    [pytest.param(m, f, p, id=i) for i, m, f, p in MISTAKES],
)
def test_mistake_reported(mutate: Any, field: str, phrase: str, tmp_path: Path) -> None:
    data = base()
    mutate(data)
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, origin=ORIGIN, base_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{ORIGIN}: {field}: "), message
    assert phrase in message, message
    assert isinstance(info.value, InputError)
    assert len(message) > len(f"{ORIGIN}: {field}: ") + 20  # says what to do, not just where


def test_unknown_recipe_name_lists_available() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe("hualien-2025")
    message = str(info.value)
    assert message.startswith("hualien-2025: ")
    for name in ("hualien-2024", "jolster-2019", "synthetic"):
        assert name in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "nothing.toml")


def test_toml_syntax_error_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n\n[area]\nbbox = [121.45, 24.12, 121.65 24.27]\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 4, column ")
    assert "TOML syntax error" in message


def test_errors_name_the_file(tmp_path: Path) -> None:
    data = base()
    data["filters"]["max_cloud"] = 120
    path = tmp_path / "cloudy.toml"
    path.write_text(_to_toml(data))
    with pytest.raises(RecipeError, match=r"cloudy\.toml: filters\.max_cloud: "):
        load_recipe(path)


# --- fuzzing: only RecipeError ever escapes ----------------------------------------------------

_ALL_KEYS = sorted({k for keys in KNOWN_KEYS.values() for k in keys} | set(KNOWN_KEYS) - {""})

_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["utm", "EPSG:32651", "api", "static", "synthetic", "planetary-computer", "2024-04-03",
         "https://x.org/stac", "Polygon", "geoparquet", "x.json"]
    ),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=14))])),
    st.times(),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(_ALL_KEYS), st.text(max_size=8)), inner,
                        max_size=5),
    ),
    max_leaves=12,
)  # fmt: skip


def _check_only_recipe_errors(data: Any) -> None:
    try:
        result = parse_recipe(data, origin="fuzz.toml")
    except RecipeError as exc:
        message = str(exc)
    else:
        assert isinstance(result, Recipe)
        json.dumps(result.to_dict())
        return
    assert message.startswith("fuzz.toml: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_ALL_KEYS), _values, max_size=8))
def test_fuzz_random_dicts(data: dict) -> None:
    _check_only_recipe_errors(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["", *KNOWN_KEYS]),
            st.one_of(st.sampled_from(_ALL_KEYS), st.text(max_size=6)),
            st.one_of(st.none(), _values),  # None: delete the key
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_mutated_recipes(edits: list[tuple[str, str, Any]]) -> None:
    data = base()
    for section, key, value in edits:
        target = data if not section else data.get(section)
        if not isinstance(target, dict):
            continue
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    _check_only_recipe_errors(data)


# --- helpers ------------------------------------------------------------------------------------


def _to_toml(data: dict) -> str:
    """A minimal TOML writer for the recipes these tests build (tables of scalars/arrays)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, date | datetime):
            return v.isoformat()
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def test_an_unknown_key_with_odd_characters_is_named_as_toml_would_quote_it(tmp_path):
    import tomllib

    from sar2ndvi.recipe import RecipeError, parse_recipe

    text = 'name = "t"\n[area]\nbbox = [0, 0, 1, 1]\n"a: b" = 1\n'
    with pytest.raises(RecipeError, match=r': area\."a\\u003a\\u0020b": unknown key') as err:
        parse_recipe(tomllib.loads(text), origin=str(tmp_path / "r.toml"))
    assert "a: b" not in str(err.value).split(": unknown key")[0]
