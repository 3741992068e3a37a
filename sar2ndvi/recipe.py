"""Cube recipes: one TOML file per study area, parsed and validated with clear errors.

A recipe names an area (a lon/lat bbox or a GeoJSON polygon), an event with its pre- and
post-event windows, a STAC source and the Sentinel-1, Sentinel-2 and DEM collections to
read from it. It resolves to one projected pixel grid (UTM by default, 10 m) on which the
cube is built. See docs/recipes.md for the format, field by field.

Every mistake raises `RecipeError` with a message that starts with ``"<file>: <field>: "``
and ends with what to do about it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyproj
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from sar2ndvi.errors import InputError
from sar2ndvi.synth.grid import Grid

#: The folder of the recipes that ship with the repository.
CUBES_DIR = Path(__file__).resolve().parents[1] / "cubes"

SOURCE_TYPES = ("api", "static", "itemcollection", "geoparquet", "synthetic")
FILE_SOURCES = ("static", "itemcollection", "geoparquet")
SIGNERS = ("planetary-computer",)

DEFAULT_COLLECTIONS = {"s1": "sentinel-1-rtc", "s2": "sentinel-2-l2a", "dem": "cop-dem-glo-30"}
DEFAULT_CHUNKS = {"x": 1024, "y": 1024, "time": 1}
MIN_CHUNK = 64
MAX_CHUNK = 8192
MIN_SCENE = 64  # the simulator's size limits (see synth/config.py)
MAX_SCENE = 8192
MAX_WINDOW = timedelta(days=2 * 365 + 1)
MAX_GRID_SIDE = 1_000_000  # pixels; 10 000 km at 10 m, far beyond any sensible cube

#: The keys each table may hold; anything else is a typo or a misplaced key.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("name", "description", "area", "event", "source", "collections", "filters", "chunks"),
    "area": ("bbox", "geometry", "geometry_file", "crs", "resolution"),
    "event": ("date", "pre", "post"),
    "source": ("type", "url", "path", "sign", "seed", "size"),
    "collections": ("s1", "s2", "dem"),
    "filters": ("max_cloud",),
    "chunks": ("x", "y", "time"),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_END_OF_DAY = time(23, 59, 59, 999999)


class RecipeError(InputError):
    """A recipe is wrong; the message names the file and field and says how to fix it."""


@dataclass(frozen=True)
class Window:
    """An acquisition window, both ends inclusive, as naive UTC datetimes."""

    start: datetime
    end: datetime

    def interval(self) -> str:
        """The window as a STAC datetime interval, to the second, e.g.
        ``"2024-02-15T00:00:00Z/2024-04-02T23:59:59Z"``."""
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return f"{self.start.strftime(fmt)}/{self.end.strftime(fmt)}"

    @property
    def days(self) -> float:
        """Length of the window in days."""
        return (self.end - self.start).total_seconds() / 86400.0


@dataclass(frozen=True)
class Source:
    """Where the STAC items come from.

    Attributes:
        type: "api", "static", "itemcollection", "geoparquet" or "synthetic".
        url: the STAC API root (type "api").
        path: the catalog.json, ItemCollection .json or .parquet file (file types),
            resolved against the recipe's folder.
        sign: URL signing of asset hrefs; only "planetary-computer" is known.
        seed: the simulator's seed (type "synthetic").
        size: the simulated scene's (rows, cols) (type "synthetic").
    """

    type: str
    url: str | None = None
    path: Path | None = None
    sign: str | None = None
    seed: int = 0
    size: tuple[int, int] = (512, 512)


@dataclass(frozen=True)
class Recipe:
    """A validated cube recipe. Build one with `load_recipe` or `parse_recipe`.

    `geometry` is a GeoJSON Polygon/MultiPolygon in lon/lat (or None, then `bbox` is the
    area); `bbox` is always its lon/lat bounds. `crs` is resolved ("utm" becomes the
    WGS 84 UTM zone of the area centre). `collections` and `chunks` are plain dicts (so a
    recipe pickles for Dask workers); treat them as read-only.
    """

    name: str
    description: str
    path: Path | None
    bbox: tuple[float, float, float, float]
    geometry: dict | None
    crs: pyproj.CRS
    resolution: float
    event: datetime
    pre: Window
    post: Window
    source: Source
    collections: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_COLLECTIONS))
    max_cloud: float = 100.0
    chunks: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CHUNKS))

    def __hash__(self) -> int:
        return hash((json.dumps(self.to_dict(), sort_keys=True), self.path))

    def grid(self) -> Grid:
        """The cube's pixel grid: the area's bounds in `crs`, snapped outward to whole
        multiples of `resolution` (so cubes of overlapping areas share pixel edges)."""
        return _grid(self.bbox, self.crs, self.resolution)

    def to_dict(self) -> dict:
        """A JSON-able canonical form for provenance; `parse_recipe` reads it back.

        Dates are ISO 8601 UTC; the source URL loses its query string, fragment and any
        user:password (signed or keyed URLs must not end up in a store's attributes).
        """
        area: dict[str, Any] = (
            {"geometry": self.geometry} if self.geometry is not None else {"bbox": list(self.bbox)}
        )
        area["crs"] = _crs_text(self.crs)
        area["resolution"] = self.resolution
        source: dict[str, Any] = {"type": self.source.type}
        if self.source.url is not None:
            source["url"] = strip_url(self.source.url)
        if self.source.path is not None:
            source["path"] = str(self.source.path)
        if self.source.sign is not None:
            source["sign"] = self.source.sign
        if self.source.type == "synthetic":
            source["seed"] = self.source.seed
            source["size"] = list(self.source.size)
        return {
            "name": self.name,
            "description": self.description,
            "area": area,
            "event": {
                "date": _iso(self.event),
                "pre": [_iso(self.pre.start), _iso(self.pre.end)],
                "post": [_iso(self.post.start), _iso(self.post.end)],
            },
            "source": source,
            "collections": dict(self.collections),
            "filters": {"max_cloud": self.max_cloud},
            "chunks": dict(self.chunks),
        }


# --- public entry points ------------------------------------------------------------------


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped in the repository's cubes/ folder, by name (file stem)."""
    if not CUBES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(CUBES_DIR.glob("*.toml"))}


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Read and validate a recipe from a TOML file, or a shipped recipe by name.

    `path_or_name` is an existing file, or a name such as "hualien-2024" for
    cubes/hualien-2024.toml.
    """
    path = Path(path_or_name)
    if not path.is_file():
        builtins = builtin_recipes()
        text = str(path_or_name)
        is_name = "/" not in text and "\\" not in text
        stem = text[:-5] if text.endswith(".toml") else text
        if is_name and stem in builtins:
            path = builtins[stem]
        elif path.exists():
            raise RecipeError(f"{text}: recipe: is not a file; give the path of a .toml recipe")
        else:
            names = ", ".join(builtins) or "(none found in cubes/)"
            what = (
                "no such recipe name"
                if is_name and not text.endswith(".toml")
                else ("no such file")
            )
            raise RecipeError(
                f"{text}: recipe: {what}; give the path of a .toml file or one of the "
                f"shipped recipe names: {names}"
            )
    origin = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RecipeError(f"{origin}: recipe: cannot be read ({exc}); check the path") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{origin}: recipe: is not UTF-8 text ({exc}); save it as UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(_toml_message(origin, exc)) from exc
    recipe = parse_recipe(data, origin=origin, base_dir=path.resolve().parent)
    return _replace_path(recipe, path.resolve())


def parse_recipe(data: Mapping, origin: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate a recipe given as a mapping (parsed TOML, or `Recipe.to_dict()`).

    `origin` names the file in error messages; relative paths in the recipe
    (`area.geometry_file`, `source.path`) are resolved against `base_dir` (default: the
    current directory).
    """
    p = _Parser(origin, Path(base_dir) if base_dir is not None else Path.cwd())
    try:
        return p.recipe(data)
    except RecipeError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:  # pragma: no cover
        # a check above should have caught it; still report in the recipe's terms
        raise RecipeError(
            f"{origin}: recipe: could not be read ({type(exc).__name__}: {exc}); "
            "compare it with docs/recipes.md"
        ) from exc


def utm_crs(lon: float, lat: float) -> pyproj.CRS:
    """The WGS 84 UTM zone CRS at (lon, lat): EPSG:326zz north of the equator, 327zz south.

    zone = floor((lon + 180) / 6) + 1, with lon = 180 in zone 60. The Norway (32V) and
    Svalbard (31X-37X) exceptions are deliberately ignored: the plain zone is always a
    valid projection, just slightly less conformal there.
    """
    zone = min(math.floor((lon + 180.0) / 6.0) + 1, 60)
    zone = max(zone, 1)
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def strip_url(url: str) -> str:
    """`url` without query string, fragment or user:password (for provenance)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --- internals -----------------------------------------------------------------------------


def _replace_path(recipe: Recipe, path: Path | None) -> Recipe:
    return replace(recipe, path=path)


def _toml_message(origin: str, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    where = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if where:
        line, col = where.groups()
        what = msg[: where.start()].strip()
        return (
            f"{origin}: line {line}, column {col}: TOML syntax error: {what}; check the "
            "quotes, commas, brackets and '=' on that line (dates are written bare, "
            "e.g. date = 2024-04-03)"
        )
    return f"{origin}: recipe: TOML syntax error: {msg}; check the file against docs/recipes.md"


def _iso(when: datetime) -> str:
    return when.isoformat() + "Z"


def _crs_text(crs: pyproj.CRS) -> str:
    auth = crs.to_authority()
    if auth is not None and pyproj.CRS.from_user_input(":".join(auth)) == crs:
        return ":".join(auth)
    return crs.to_wkt()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime):
        return "a datetime"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time of day"
    return type(value).__name__


class _Bare(str):
    """A string that shows without quotes (dates in messages)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _toml_key(key: str) -> str:
    """`key` as a TOML dotted-key part: bare when it can be, else a quoted string whose
    unusual characters are escaped, so a space or ':' in a key cannot blur the message."""
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key

    def escape(c: str) -> str:
        if c.isascii() and (c.isalnum() or c in "_-"):
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"

    return '"' + "".join(escape(c) for c in key) + '"'


def _show(value: Any) -> str:
    """A short rendering of a recipe value, dates in ISO form as in TOML."""

    def plain(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, date | time):
            return _Bare(v.isoformat())
        return v

    text = repr(plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _grid(bbox: tuple[float, float, float, float], crs: pyproj.CRS, resolution: float) -> Grid:
    transformer = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    left, bottom, right, top = transformer.transform_bounds(*bbox, densify_pts=21)
    west = math.floor(left / resolution) * resolution
    south = math.floor(bottom / resolution) * resolution
    east = math.ceil(right / resolution) * resolution
    north = math.ceil(top / resolution) * resolution
    width = max(round((east - west) / resolution), 1)
    height = max(round((north - south) / resolution), 1)
    return Grid.from_origin(crs, west, north, resolution, width, height)


class _Parser:
    """One validation pass over a recipe mapping; `fail` raises with the file name."""

    def __init__(self, origin: str, base_dir: Path) -> None:
        self.origin = origin
        self.base_dir = base_dir

    def fail(self, where: str, message: str) -> RecipeError:
        return RecipeError(f"{self.origin}: {where}: {message}")

    # --- structure

    def table(self, data: Mapping, key: str, required: bool) -> Mapping:
        if key not in data:
            if required:
                raise self.fail(key, f"missing; add the [{key}] table (see docs/recipes.md)")
            return {}
        value = data[key]
        if not isinstance(value, Mapping):
            raise self.fail(
                key,
                f"must be a table, not {_type_name(value)}; write it as [{key}] with "
                "key = value lines under it",
            )
        self.check_keys(value, key)
        return value

    def check_keys(self, data: Mapping, section: str) -> None:
        known = KNOWN_KEYS[section]
        for raw in data:
            key = str(raw)
            if key in known:
                continue
            shown_key = _toml_key(key)
            where = f"{section}.{shown_key}" if section else shown_key
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean '{close[0]}'?"
            else:
                # the key may belong to another table, e.g. max_cloud at the top level
                home = [s for s, keys in KNOWN_KEYS.items() if s and s != section and key in keys]
                if home:
                    hint = f"it belongs in the [{home[0]}] table; move it there"
                else:
                    shown = ", ".join(known)
                    place = f"in [{section}]" if section else "at the top level"
                    hint = f"remove it; the keys allowed {place} are: {shown}"
            raise self.fail(where, f"unknown key; {hint}")

    # --- the recipe

    def recipe(self, data: Any) -> Recipe:
        if not isinstance(data, Mapping):
            raise self.fail("recipe", f"must be a table of keys, not {_type_name(data)}")
        self.check_keys(data, "")
        name = self.name(data)
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.fail(
                "description", f"must be a string, not {_type_name(description)}; quote it"
            )
        area = self.table(data, "area", required=True)
        bbox, geometry = self.area(area)
        crs = self.crs(area, bbox)
        resolution = self.resolution(area)
        self.check_grid(bbox, crs, resolution)
        event_t = self.table(data, "event", required=True)
        event, pre, post = self.event(event_t)
        source = self.source(self.table(data, "source", required=True))
        collections = self.collections(self.table(data, "collections", required=False))
        max_cloud = self.max_cloud(self.table(data, "filters", required=False))
        chunks = self.chunks(self.table(data, "chunks", required=False))
        return Recipe(
            name=name,
            description=description,
            path=None,
            bbox=bbox,
            geometry=geometry,
            crs=crs,
            resolution=resolution,
            event=event,
            pre=pre,
            post=post,
            source=source,
            collections=collections,
            max_cloud=max_cloud,
            chunks=chunks,
        )

    def name(self, data: Mapping) -> str:
        if "name" not in data:
            raise self.fail("name", 'missing; add e.g. name = "my-area-2024" at the top')
        name = data["name"]
        if not isinstance(name, str):
            raise self.fail("name", f"must be a string, not {_type_name(name)}; quote it")
        if not _NAME.match(name):
            raise self.fail(
                "name",
                f"{_show(name)} is not a usable name; use letters, digits, '.', '_' and '-' "
                'only, e.g. "hualien-2024"',
            )
        return name

    # --- area

    def area(self, area: Mapping) -> tuple[tuple[float, float, float, float], dict | None]:
        given = [k for k in ("bbox", "geometry", "geometry_file") if k in area]
        if not given:
            raise self.fail(
                "area.bbox",
                "missing; give the area as bbox = [west, south, east, north] in lon/lat "
                'degrees, or as geometry = {...} or geometry_file = "area.geojson"',
            )
        if len(given) > 1:
            raise self.fail(
                f"area.{given[1]}",
                f"the area is given twice ({' and '.join(given)}); keep only one of them",
            )
        if "bbox" in area:
            return self.bbox(area["bbox"]), None
        if "geometry" in area:
            geometry = self.geometry(area["geometry"], "area.geometry")
        else:
            geometry = self.geometry_file(area["geometry_file"])
        return self.bbox(list(shape(geometry).bounds), "area.geometry"), geometry

    def bbox(self, value: Any, where: str = "area.bbox") -> tuple[float, float, float, float]:
        example = "e.g. bbox = [121.45, 24.12, 121.65, 24.27]"
        if not isinstance(value, list | tuple) or len(value) != 4:
            raise self.fail(
                where,
                f"{_show(value)} is not 4 numbers; write [west, south, east, north] in "
                f"lon/lat degrees, {example}",
            )
        if not all(_is_number(v) and math.isfinite(v) for v in value):
            raise self.fail(
                where, f"{_show(value)} must hold 4 finite numbers (degrees); {example}"
            )
        west, south, east, north = (float(v) for v in value)
        for name, v, lim in (("west", west, 180), ("east", east, 180)):
            if not -lim <= v <= lim:
                raise self.fail(
                    where,
                    f"{name} = {v} is not a longitude in [-180, 180]; the order is [west, "
                    "south, east, north] in degrees (not metres, not lat/lon)",
                )
        for name, v in (("south", south), ("north", north)):
            if not -90 <= v <= 90:
                raise self.fail(
                    where,
                    f"{name} = {v} is not a latitude in [-90, 90]; the order is [west, "
                    "south, east, north] in degrees (not lat/lon)",
                )
        if west >= east:
            raise self.fail(
                where,
                f"west ({west}) must be less than east ({east}); swap them (areas across "
                "the antimeridian are not supported: split the area)",
            )
        if south >= north:
            raise self.fail(where, f"south ({south}) must be less than north ({north}); swap them")
        return (west, south, east, north)

    def geometry(self, value: Any, where: str) -> dict:
        fix = (
            'use a GeoJSON Polygon or MultiPolygon in lon/lat, e.g. { type = "Polygon", '
            "coordinates = [[[121.45, 24.12], [121.65, 24.12], [121.65, 24.27], "
            "[121.45, 24.12]]] }"
        )
        if not isinstance(value, Mapping):
            raise self.fail(
                where, f"must be a GeoJSON geometry table, not {_type_name(value)}; {fix}"
            )
        kind = value.get("type")
        if kind not in ("Polygon", "MultiPolygon"):
            raise self.fail(where, f"type {_show(kind)} is not Polygon or MultiPolygon; {fix}")
        extra = sorted(str(k) for k in value if k not in ("type", "coordinates", "bbox"))
        if extra:
            raise self.fail(f"{where}.{_toml_key(extra[0])}", f"unknown key in a geometry; {fix}")
        if "coordinates" not in value:
            raise self.fail(f"{where}.coordinates", f"missing; {fix}")
        try:
            geom = shape({"type": kind, "coordinates": _plain(value["coordinates"])})
            valid = geom.is_valid and not geom.is_empty
            bounds = geom.bounds
        except Exception as exc:  # shapely raises many types on malformed coordinates
            raise self.fail(where, f"coordinates are malformed ({exc}); {fix}") from exc
        if not valid:
            from shapely.validation import explain_validity

            try:
                why = explain_validity(geom)
            except Exception:  # pragma: no cover
                why = "invalid"
            raise self.fail(
                where,
                f"is not a valid polygon ({why}); close every ring (last point = first), "
                "avoid self-intersections, or use bbox instead",
            )
        self.bbox(list(bounds), where)
        return json.loads(json.dumps(mapping(geom)))

    def geometry_file(self, value: Any) -> dict:
        where = "area.geometry_file"
        if not isinstance(value, str) or not value:
            raise self.fail(
                where,
                f'must be a file name string, e.g. geometry_file = "area.geojson", '
                f"not {_show(value)}",
            )
        path = self.base_dir / value
        if not path.is_file():
            raise self.fail(
                where,
                f"{path} does not exist; the path is relative to the recipe's folder "
                f"({self.base_dir}); fix the name or give bbox instead",
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise self.fail(
                where, f"{path} is not a readable GeoJSON file ({exc}); fix it"
            ) from exc
        if not isinstance(doc, Mapping):
            raise self.fail(where, f"{path} does not hold a GeoJSON object; fix it")
        if doc.get("type") == "FeatureCollection":
            features = doc.get("features")
            if not isinstance(features, list) or not features:
                raise self.fail(where, f"{path} is a FeatureCollection without features")
            geoms = [
                self.geometry(f.get("geometry") if isinstance(f, Mapping) else None, where)
                for f in features
            ]
            if len(geoms) == 1:
                return geoms[0]
            merged = unary_union([shape(g) for g in geoms])
            return self.geometry(json.loads(json.dumps(mapping(merged))), where)
        if doc.get("type") == "Feature":
            return self.geometry(doc.get("geometry"), where)
        return self.geometry(doc, where)

    def crs(self, area: Mapping, bbox: tuple[float, float, float, float]) -> pyproj.CRS:
        value = area.get("crs", "utm")
        where = "area.crs"
        if isinstance(value, str) and value.strip().lower() == "utm":
            lon = (bbox[0] + bbox[2]) / 2
            lat = (bbox[1] + bbox[3]) / 2
            if not -80.0 <= lat <= 84.0:
                raise self.fail(
                    where,
                    f"UTM is not defined at latitude {lat:.2f} (only 80 S to 84 N); give a "
                    'polar projection, e.g. crs = "EPSG:3413" (Arctic) or "EPSG:3031" '
                    "(Antarctic)",
                )
            return utm_crs(lon, lat)
        if not (isinstance(value, str) and value.strip()) and not _is_int(value):
            raise self.fail(
                where,
                f'must be "utm", "EPSG:nnnn" or an EPSG code, not {_type_name(value)}; e.g. '
                'crs = "utm" or crs = "EPSG:32651"',
            )
        try:
            crs = pyproj.CRS.from_user_input(value)
        except Exception as exc:  # CRSError, but also OverflowError etc. for odd codes
            raise self.fail(
                where,
                f'{_show(value)} is not a known CRS ({type(exc).__name__}); use "utm" or '
                'an EPSG code such as "EPSG:32651"',
            ) from exc
        if crs.is_geographic or not crs.is_projected:
            raise self.fail(
                where,
                f"{_show(value)} is not a projected CRS (its units are not metres); the "
                'grid needs metres: use "utm" or a projected EPSG code',
            )
        units = {(a.unit_name or "").lower() for a in crs.axis_info}
        if not units or not units <= {"metre", "meter"}:
            raise self.fail(
                where,
                f"{_show(value)} has units {', '.join(sorted(units)) or 'unknown'}; the "
                'grid needs metres: use "utm" or a projected EPSG code in metres',
            )
        return crs

    def resolution(self, area: Mapping) -> float:
        value = area.get("resolution", 10.0)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise self.fail(
                "area.resolution",
                f"{_show(value)} is not a positive number of metres; use e.g. "
                "resolution = 10.0 (Sentinel-2's 10 m bands)",
            )
        return float(value)

    def check_grid(
        self, bbox: tuple[float, float, float, float], crs: pyproj.CRS, resolution: float
    ) -> None:
        try:
            grid = _grid(bbox, crs, resolution)
            ok = all(math.isfinite(v) for v in grid.bounds)
        except Exception:  # pyproj: ProjError / inf for areas outside the projection
            ok = False
        if not ok:
            raise self.fail(
                "area.bbox",
                f"the area {bbox} cannot be projected to {_crs_text(crs)[:40]}; use a "
                'smaller area or crs = "utm"',
            )
        if max(grid.width, grid.height) > MAX_GRID_SIDE:
            raise self.fail(
                "area.bbox",
                f"the area is {grid.width} x {grid.height} pixels at {resolution} m; split "
                "it into smaller areas or use a coarser resolution",
            )

    # --- event and windows

    def when(self, value: Any, where: str, end_of_day: bool) -> datetime:
        """A TOML date/datetime (or ISO string) as naive UTC; a date ends at 23:59:59.999999."""
        example = "e.g. 2024-04-03 or 2024-04-03T06:00:00Z (no quotes needed)"
        if isinstance(value, str):
            text = value.strip()
            try:
                if len(text) == 10:
                    value = date.fromisoformat(text)
                else:
                    value = datetime.fromisoformat(text)
            except ValueError as exc:
                raise self.fail(where, f"{_show(value)} is not an ISO date; {example}") from exc
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                try:
                    value = value.astimezone(UTC).replace(tzinfo=None)
                except (OverflowError, ValueError) as exc:
                    raise self.fail(where, f"{value} is out of range; {example}") from exc
            return value
        if isinstance(value, date):
            return datetime.combine(value, _END_OF_DAY if end_of_day else time(0, 0))
        raise self.fail(where, f"must be a date or datetime, not {_type_name(value)}; {example}")

    def window(self, value: Any, where: str) -> Window:
        example = "e.g. [2024-02-15, 2024-04-02]"
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise self.fail(where, f"{_show(value)} is not [start, end]; write {example}")
        start = self.when(value[0], where, end_of_day=False)
        end = self.when(value[1], where, end_of_day=True)
        if start > end:
            raise self.fail(where, f"starts ({start}) after it ends ({end}); swap the two dates")
        if end - start > MAX_WINDOW:
            raise self.fail(
                where,
                f"is {(end - start).days} days long, more than 2 years; shorten it (a few "
                "weeks to months either side of the event is usual)",
            )
        return Window(start, end)

    def event(self, table: Mapping) -> tuple[datetime, Window, Window]:
        if "date" not in table:
            raise self.fail("event.date", "missing; add e.g. date = 2024-04-03 under [event]")
        event = self.when(table["date"], "event.date", end_of_day=False)
        windows = {}
        for key in ("pre", "post"):
            if key not in table:
                raise self.fail(
                    f"event.{key}",
                    f"missing; add the {key}-event window, e.g. {key} = "
                    + ("[2024-02-15, 2024-04-02]" if key == "pre" else "[2024-04-04, 2024-05-31]"),
                )
            windows[key] = self.window(table[key], f"event.{key}")
        pre, post = windows["pre"], windows["post"]
        if not pre.end < event:
            raise self.fail(
                "event.pre",
                f"ends at {_iso(pre.end)}, not before the event ({_iso(event)}); end it on "
                "the day before the event (a date end means the end of that day)",
            )
        if not post.start >= event:
            raise self.fail(
                "event.post",
                f"starts at {_iso(post.start)}, before the event ({_iso(event)}); start it "
                "on or after the event date",
            )
        return event, pre, post

    # --- source

    def source(self, table: Mapping) -> Source:
        kind = table.get("type")
        if "type" not in table:
            raise self.fail(
                "source.type", f"missing; add type = one of {', '.join(map(repr, SOURCE_TYPES))}"
            )
        if kind not in SOURCE_TYPES:
            close = (
                difflib.get_close_matches(kind, SOURCE_TYPES, n=1) if isinstance(kind, str) else []
            )
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else (f"use one of {', '.join(map(repr, SOURCE_TYPES))}")
            )
            raise self.fail("source.type", f"{_show(kind)} is not a known source type; {hint}")
        allowed = {"type", "sign"}
        allowed |= {"api": {"url"}, "synthetic": {"seed", "size"}}.get(kind, set())
        if kind in FILE_SOURCES:
            allowed.add("path")
        for key in table:
            if key not in allowed:
                needs = "url" if kind == "api" else "path" if kind in FILE_SOURCES else "seed/size"
                raise self.fail(
                    f"source.{key}",
                    f"does not apply to a {kind!r} source; remove it (a {kind!r} source takes "
                    f"{needs})",
                )
        url = path = None
        if kind == "api":
            url = self.url(table)
        elif kind in FILE_SOURCES:
            path = self.path(table, kind)
        sign = table.get("sign")
        if sign is not None and sign not in SIGNERS:
            raise self.fail(
                "source.sign",
                f'{_show(sign)} is not a known signer; use sign = "planetary-computer" or '
                "remove the line",
            )
        seed, size = 0, (512, 512)
        if kind == "synthetic":
            seed = table.get("seed", 0)
            if not _is_int(seed) or not 0 <= seed < 2**32:
                raise self.fail(
                    "source.seed",
                    f"{_show(seed)} is not a whole number in 0..2^32-1; e.g. seed = 0",
                )
            size = self.size(table.get("size", [512, 512]))
        return Source(type=kind, url=url, path=path, sign=sign, seed=seed, size=size)

    def url(self, table: Mapping) -> str:
        example = 'e.g. url = "https://planetarycomputer.microsoft.com/api/stac/v1"'
        if "url" not in table:
            raise self.fail(
                "source.url", f"missing: an 'api' source needs the STAC API root, {example}"
            )
        url = table["url"]
        if not isinstance(url, str):
            raise self.fail("source.url", f"must be a string, not {_type_name(url)}; {example}")
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise self.fail("source.url", f"{_show(url)} is not an http(s) URL; {example}")
        return url

    def path(self, table: Mapping, kind: str) -> Path:
        example = {
            "static": 'e.g. path = "catalog/catalog.json"',
            "itemcollection": 'e.g. path = "items.json"',
            "geoparquet": 'e.g. path = "items.parquet"',
        }[kind]
        if "path" not in table:
            raise self.fail(
                "source.path",
                f"missing: a {kind!r} source needs a file, relative to the "
                f"recipe's folder; {example}",
            )
        value = table["path"]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                "source.path", f"must be a file name string, not {_show(value)}; {example}"
            )
        try:
            return (self.base_dir / value).resolve()
        except (OSError, ValueError) as exc:
            raise self.fail(
                "source.path", f"{_show(value)} is not a usable path; {example}"
            ) from exc

    def size(self, value: Any) -> tuple[int, int]:
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(_is_int(v) and MIN_SCENE <= v <= MAX_SCENE for v in value)
        ):
            raise self.fail(
                "source.size",
                f"{_show(value)} is not [rows, cols] with each in {MIN_SCENE}..{MAX_SCENE}; "
                "e.g. size = [512, 512]",
            )
        return (int(value[0]), int(value[1]))

    # --- collections, filters, chunks

    def collections(self, table: Mapping) -> dict[str, str]:
        out = dict(DEFAULT_COLLECTIONS)
        for key, value in table.items():
            if not isinstance(value, str) or not value.strip():
                raise self.fail(
                    f"collections.{key}",
                    f"must be a STAC collection id string, not {_show(value)}; e.g. "
                    f'{key} = "{DEFAULT_COLLECTIONS[key]}"',
                )
            out[key] = value
        return out

    def max_cloud(self, table: Mapping) -> float:
        value = table.get("max_cloud", 100.0)
        if not _is_number(value) or not 0 <= value <= 100:
            raise self.fail(
                "filters.max_cloud",
                f"{_show(value)} is not a percentage in 0..100 (eo:cloud_cover); e.g. "
                "max_cloud = 60",
            )
        return float(value)

    def chunks(self, table: Mapping) -> dict[str, int]:
        out = dict(DEFAULT_CHUNKS)
        for key, value in table.items():
            if key == "time":
                if not _is_int(value) or value < 1:
                    raise self.fail(
                        "chunks.time", f"{_show(value)} is not a whole number >= 1; e.g. time = 1"
                    )
            elif not _is_int(value) or not MIN_CHUNK <= value <= MAX_CHUNK:
                raise self.fail(
                    f"chunks.{key}",
                    f"{_show(value)} is not a whole number of pixels in {MIN_CHUNK}..{MAX_CHUNK}; "
                    f"e.g. {key} = 1024",
                )
            out[key] = int(value)
        return out


def _plain(value: Any) -> Any:
    """Nested lists/tuples of numbers as lists of floats (rejecting anything else)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if _is_number(value) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{_show(value)} is not a finite number")
