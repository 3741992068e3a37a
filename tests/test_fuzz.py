"""Input fuzzing: recipes as TOML files with random values, and tiny rasters full of NaN, inf,
constants or nothing, through the public feature functions and the metrics.

The promise under test: never a crash other than a clear, typed error (a RecipeError naming
the field, an InputError naming the input), and never a NaN that passes for a result. (The
recipe parser's dict-level fuzzing, and the metrics' and local statistics' agreement with
reference implementations, are in test_recipe.py, test_metrics.py and test_localstats.py.)
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import warnings
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sar2ndvi import metrics
from sar2ndvi.errors import InputError
from sar2ndvi.features import impute_isolated, terrain_encodings
from sar2ndvi.localstats import local_mean_std
from sar2ndvi.recipe import CUBES_DIR, KNOWN_KEYS, Recipe, RecipeError, load_recipe

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- recipes: random TOML values ---------------------------------------------------------------

BASE = tomllib.loads((CUBES_DIR / "hualien-2024.toml").read_text())


def _toml_value(v: Any) -> str:
    """One TOML value (inline tables and arrays included)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        # DEL must be escaped in a TOML string, JSON leaves it raw
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, date | time):  # datetime is a date
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(data: dict) -> str:
    """A recipe mapping as TOML text: top-level values, then one [table] per dict."""
    lines = [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict)]  # fmt: skip
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{_toml_value(k)}]")
            lines.extend(f"{_toml_value(kk)} = {_toml_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["utm", "EPSG:32651", "api", "static", "planetary-computer", "2024-04-03",
                     "https://x.org/stac", "-1", "1e9", "", "nan"]),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-12))])),
    st.times(),
)  # fmt: skip
TOML_VALUES = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)

#: The TOML types each field of the base recipe accepts (anything else is a type mistake).
ACCEPTS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "description": (str,),
    "area.bbox": (list,),
    "area.crs": (str, int),
    "area.resolution": (int, float),
    "event.date": (date, datetime, str),
    "event.pre": (list,),
    "event.post": (list,),
    "source.type": (str,),
    "source.url": (str,),
    "source.sign": (str,),
    "collections.s1": (str,),
    "collections.s2": (str,),
    "collections.dem": (str,),
    "filters.max_cloud": (int, float),
    "chunks.x": (int,),
    "chunks.y": (int,),
    "chunks.time": (int,),
}
_FIELD = re.compile(r"^(?P<path>.+?): (?P<field>[^:\s]+): (?P<why>.+)$", re.DOTALL)


def _load(tmp_path: Path, data: dict) -> Recipe | RecipeError:
    """Write `data` as TOML, check that it reads back the same, and load it as a recipe."""
    text = to_toml(data)
    assert tomllib.loads(text).keys() == data.keys()  # the writer itself is right
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        return load_recipe(path)
    except RecipeError as err:
        return err


def _named_field(err: RecipeError, tmp_path: Path) -> str:
    """The field a recipe error names, checking the message's shape on the way."""
    match = _FIELD.match(str(err))
    assert match, str(err)
    assert match["path"] == str(tmp_path / "fuzz.toml"), str(err)
    assert len(match["why"]) > 10, str(err)  # says what is wrong, not only where
    return match["field"]


def _set(data: dict, field: str, value: Any) -> dict:
    """A copy of `data` (a recipe mapping) with `field` ("table.key" or "key") set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    *table, key = field.split(".")
    (out[table[0]] if table else out)[key] = value
    return out


@FUZZ
@given(field=st.sampled_from(sorted(ACCEPTS)), value=TOML_VALUES)
def test_a_wrongly_typed_value_is_named_by_its_field(tmp_path, field, value):
    assume(type(value) not in ACCEPTS[field])
    result = _load(tmp_path, _set(BASE, field, value))
    assert isinstance(result, RecipeError), f"{field} = {value!r} was accepted"
    assert _named_field(result, tmp_path) == field


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(sorted({*ACCEPTS, "area.geometry", "area.geometry_file",
                                          "source.path", "source.seed", "source.size",
                                          "area", "event", "filters", "chunks", "extra"})),
                  TOML_VALUES),
        min_size=1, max_size=3,
    )
)  # fmt: skip
def test_any_values_load_or_name_a_field(tmp_path, edits):
    data = _set(BASE, "name", BASE["name"])
    for field, value in edits:
        *table, key = field.split(".")
        if table and not isinstance(data.get(table[0]), dict):
            continue
        (data[table[0]] if table else data)[key] = value
    result = _load(tmp_path, data)
    if isinstance(result, Recipe):
        json.dumps(result.to_dict())
        return
    field = _named_field(result, tmp_path)
    assert field.split(".")[0] in {*KNOWN_KEYS[""], "recipe", "extra"}, str(result)


SECTIONS = [k for k in BASE if isinstance(BASE[k], dict)]
FIELDS = [*BASE, *(f"{s}.{k}" for s in SECTIONS for k in BASE[s])]


@pytest.mark.parametrize("field", FIELDS)
def test_a_missing_table_or_key_is_named_or_defaulted(tmp_path, field):
    data = _set(BASE, "name", BASE["name"])
    *table, key = field.split(".")
    del (data[table[0]] if table else data)[key]
    result = _load(tmp_path, data)
    optional = {"description", "collections", "filters", "chunks", "area.crs",
                "area.resolution", "source.sign", "collections.s1", "collections.s2",
                "collections.dem", "filters.max_cloud", "chunks.x", "chunks.y",
                "chunks.time"}  # fmt: skip
    if field in optional:
        assert isinstance(result, Recipe), str(result)
    else:
        assert isinstance(result, RecipeError)
        assert _named_field(result, tmp_path) == field
        assert "missing" in str(result)


# --- small rasters through the feature functions -----------------------------------------------

SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0])


def rasters(elements=None, max_side: int = 7) -> st.SearchStrategy[np.ndarray]:
    """Float32 (y, x) rasters of 0..7 pixels a side: finite values (any float32 by default)
    mixed with NaN, inf and constants, or all one value (constant, all NaN, all inf)."""
    finite = (
        elements
        if elements is not None
        else st.floats(width=32, allow_nan=False, allow_infinity=False)
    )
    mixed = st.one_of(finite, SPECIAL)
    shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=max_side)
    return st.one_of(
        hnp.arrays(np.float32, shapes, elements=mixed),
        st.tuples(shapes, st.one_of(finite, SPECIAL)).map(
            lambda sv: np.full(sv[0], sv[1], dtype=np.float32)
        ),
    )


def _image(a: np.ndarray) -> xr.DataArray:
    ny, nx = a.shape
    coords = {"y": 3_800_000.0 - 10.0 * np.arange(ny) - 5.0, "x": 10.0 * np.arange(nx) + 5.0}
    return xr.DataArray(a, dims=("y", "x"), coords=coords)


def _neighbourhoods(a: np.ndarray, r: int, edge: str) -> np.ndarray:
    """(y, x, (2r+1)**2) windows of `a`: NaN beyond the edge, or the edge replicated."""
    pad = np.pad(a.astype(np.float64), r, mode="edge" if edge == "replicate" else "constant",
                 **({} if edge == "replicate" else {"constant_values": np.nan}))  # fmt: skip
    w = 2 * r + 1
    windows = np.lib.stride_tricks.sliding_window_view(pad, (w, w))
    return windows.reshape(a.shape[0], a.shape[1], w * w)


@FUZZ
@given(a=rasters())
def test_imputation_fills_only_from_finite_neighbours(a):
    if a.size == 0:
        with pytest.raises(InputError, match=r"impute_isolated needs a \(y, x\) image"):
            impute_isolated(_image(a))
        return
    out = impute_isolated(_image(a)).values
    finite = np.isfinite(a)
    np.testing.assert_array_equal(out[finite], a[finite])  # measurements are kept
    assert not np.isinf(out).any()  # +-inf is no data: filled, or NaN
    hood = _neighbourhoods(a, 1, "nan")
    centre = hood.shape[-1] // 2
    neighbours = np.delete(hood, centre, axis=-1)
    count = np.isfinite(neighbours).sum(axis=-1)
    filled = ~finite & np.isfinite(out)
    np.testing.assert_array_equal(filled, ~finite & (count >= 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows of unfilled pixels
        lo = np.nanmin(np.where(np.isfinite(neighbours), neighbours, np.nan), axis=-1)
        hi = np.nanmax(np.where(np.isfinite(neighbours), neighbours, np.nan), axis=-1)
    assert (out[filled] >= lo[filled]).all() and (out[filled] <= hi[filled]).all()  # noqa: PT018


@FUZZ
@given(a=rasters(), window=st.sampled_from([1, 3, 5]), lazy=st.booleans())
def test_local_statistics_are_finite_where_the_window_has_data(a, window, lazy):
    image = _image(a).chunk({"y": 3, "x": 4}) if lazy and a.size else _image(a)
    if a.size == 0:
        with pytest.raises(InputError, match="needs an image with pixels"):
            local_mean_std(image, window)
        return
    mean, std = (v.values for v in local_mean_std(image, window))
    hood = _neighbourhoods(a, window // 2, "nan")
    valid = np.isfinite(hood)
    has_data = valid.any(axis=-1)
    np.testing.assert_array_equal(np.isfinite(mean), has_data)  # NaN iff no data, never inf
    np.testing.assert_array_equal(np.isfinite(std), has_data)
    values = np.where(valid, hood, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(values, axis=-1), np.nanmax(values, axis=-1)
    span = np.maximum(np.abs(lo), np.abs(hi)) * 1e-6
    d = has_data
    assert (mean[d] >= lo[d] - span[d]).all() and (mean[d] <= hi[d] + span[d]).all()  # noqa: PT018
    assert (std[d] >= 0).all()
    constant = d & (lo == hi)
    assert (std[constant] == 0).all()  # a constant window has no spread, exactly


@FUZZ
@given(a=rasters(st.floats(-9000, 9000, width=32)))
def test_terrain_encodings_are_bounded_and_finite_over_finite_ground(a):
    if a.shape[0] == 0 or a.shape[1] < 2:
        with pytest.raises(InputError, match=r"slope_aspect needs|at least 2 pixels along x"):
            terrain_encodings(_image(a)).compute()
        return
    enc = terrain_encodings(_image(a)).compute()
    finite_ground = np.isfinite(_neighbourhoods(a, 1, "replicate")).all(axis=-1)
    for name in ("sin_aspect", "cos_aspect", "sin_slope"):
        v = enc[name].values
        assert (np.abs(v[np.isfinite(v)]) <= 1).all()
        assert np.isfinite(v[finite_ground]).all(), name
    s, c = enc["sin_aspect"].values, enc["cos_aspect"].values
    both = np.isfinite(s) & np.isfinite(c)
    np.testing.assert_allclose(s[both] ** 2 + c[both] ** 2, 1, atol=1e-5)


# --- small rasters through the metrics ---------------------------------------------------------

NDVI = st.floats(-1, 1, width=32)


@st.composite
def image_pairs(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=14))
    element = st.one_of(NDVI, SPECIAL, st.floats(-1e6, 1e6, width=32))
    pred = draw(hnp.arrays(np.float32, shape, elements=element))
    truth = draw(st.one_of(
        hnp.arrays(np.float32, shape, elements=element),
        st.just(pred.copy()),
        st.floats(-1, 1).map(lambda v: np.full(shape, v, np.float32)),
    ))  # fmt: skip
    mask = draw(st.none() | hnp.arrays(np.bool_, shape))
    return pred, truth, mask


@FUZZ
@given(pair=image_pairs())
def test_metrics_are_finite_or_say_there_was_nothing_to_score(pair):
    pred, truth, mask = pair
    valid = np.isfinite(pred) & np.isfinite(truth) & (True if mask is None else mask)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = metrics.score(pred, truth, mask)
    assert got["n_pixels"] == int(valid.sum())
    silent = [w for w in said if not issubclass(w.category, metrics.NoValidPixelsWarning)]
    assert not silent, [str(w.message) for w in silent]  # no overflow, no 0/0
    named = {str(w.message).split(":")[0] for w in said}
    for key in ("rmse", "mae", "psnr"):
        if got["n_pixels"]:
            assert not math.isnan(got[key]), key
        else:
            assert math.isnan(got[key])
            assert key.upper() in named  # a NaN is always announced
    if got["n_pixels"]:
        assert 0 <= got["mae"] <= got["rmse"] * (1 + 1e-12)
        expected = math.inf if got["rmse"] == 0 else 20 * math.log10(2 / got["rmse"])
        assert got["psnr"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    if math.isnan(got["ssim"]):
        assert "SSIM" in named
    else:
        assert -1 - 1e-9 <= got["ssim"] <= 1 + 1e-9


@FUZZ
@given(pair=image_pairs(), big=st.floats(2e6, float(np.finfo(np.float32).max), width=32))
def test_values_no_metric_can_score_are_refused(pair, big):
    pred, truth, mask = pair
    valid = np.isfinite(pred) & np.isfinite(truth) & (True if mask is None else mask)
    assume(valid.any())
    pred = pred.copy()
    pred[np.argwhere(valid)[0][0], np.argwhere(valid)[0][1]] = big
    for metric in (metrics.rmse, metrics.mae, metrics.psnr, metrics.ssim, metrics.score):
        with pytest.raises(InputError, match=r"pred holds .* at a scored pixel"):
            metric(pred, truth, mask)
