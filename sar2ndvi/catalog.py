"""STAC search for Sentinel-1, Sentinel-2 and DEM scenes, from APIs and static sources.

Searches go through `pystac-client` against any STAC API, with retries and backoff on
429/5xx and timeouts. Static sources (a catalog.json, an ItemCollection, a
stac-geoparquet file) go through the same selection on the client. Property filters use
the STAC query-extension syntax (``{"eo:cloud_cover": {"lt": 20}}``); they are sent to an
API only when it declares the query conformance class (some servers, rustac's in-memory
one among them, answer an unknown `query` with no items at all), and are always applied
on the client as well, so every source gives the same selection.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pystac
import pystac_client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from requests.exceptions import ChunkedEncodingError
from requests.exceptions import ConnectionError as RequestsConnectionError
from shapely.geometry import box, shape
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from sar2ndvi.errors import InputError, Sar2ndviError
from sar2ndvi.items import check_terrain_corrected

if TYPE_CHECKING:
    from sar2ndvi.recipe import Recipe, Source

Query = Mapping[str, Mapping[str, Any]]


class SearchError(Sar2ndviError, RuntimeError):
    """A STAC search failed; the message names the endpoint."""


class EmptySearchError(SearchError):
    """A search found nothing; the message names the collection, window and area."""


# --- property conditions -----------------------------------------------------------------


def _contains(value: Any, wanted: Any) -> bool:
    items = wanted if isinstance(wanted, list | tuple) else [wanted]
    return isinstance(value, list | tuple) and all(w in value for w in items)


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "in": lambda v, w: v in w,
    "startsWith": lambda v, w: isinstance(v, str) and v.startswith(w),
    "endsWith": lambda v, w: isinstance(v, str) and v.endswith(w),
    "contains": _contains,
}


def check_query(query: Query | None) -> None:
    """Raise InputError for an operator the query extension does not define."""
    for prop, conditions in (query or {}).items():
        if not isinstance(conditions, Mapping):
            raise InputError(
                f"query: {prop!r} must map operators to values, e.g. {{'{prop}': {{'eq': ...}}}}"
            )
        for op in conditions:
            if op not in _OPERATORS:
                raise InputError(
                    f"query: unknown operator {op!r} for {prop!r}; use one of "
                    f"{', '.join(_OPERATORS)}"
                )


def matches(properties: Mapping[str, Any], query: Query | None) -> bool:
    """Whether an item's properties satisfy every condition of a query-extension query.

    A property the item does not have fails every condition except ``neq``.
    """
    for prop, conditions in (query or {}).items():
        for op, wanted in conditions.items():
            if prop not in properties:
                if op == "neq":
                    continue
                return False
            try:
                if not _OPERATORS[op](properties[prop], wanted):
                    return False
            except TypeError:
                return False
    return True


# --- time and space on the client ----------------------------------------------------------


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _parse_instant(text: str, end: bool) -> datetime | None:
    if text in ("", ".."):
        return None
    if len(text) == 10:  # a bare date: the whole day
        day = datetime.fromisoformat(text)
        return _utc(day + timedelta(days=1) - timedelta(microseconds=1) if end else day)
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """An RFC 3339 instant or interval ('a/b', '../b', 'a/..') as UTC datetimes."""
    if "/" in text:
        start, end = text.split("/", 1)
        return _parse_instant(start, False), _parse_instant(end, True)
    return _parse_instant(text, False), _parse_instant(text, True)


def item_time_range(item: pystac.Item) -> tuple[datetime, datetime]:
    """(start, end) of an item in UTC: start/end_datetime when given, else its datetime.

    Tolerates the space-separated timestamps some real items carry
    ('2024-04-19 04:59:16.653405+00:00').
    """
    p = item.properties

    def get(key: str) -> datetime | None:
        value = p.get(key)
        if not value:
            return None
        return _utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))

    start = get("start_datetime") or get("datetime")
    end = get("end_datetime") or get("datetime") or start
    if start is None or end is None:
        raise InputError(f"item {item.id} has no datetime nor start/end_datetime")
    return start, end


def filter_items(
    items: Iterable[pystac.Item],
    *,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    query: Query | None = None,
) -> list[pystac.Item]:
    """The items that a STAC API search with these parameters would return, found locally.

    Returns them ordered by (collection, datetime, id).
    """
    check_query(query)
    area = box(*bbox) if bbox is not None else None
    start, end = parse_interval(datetime) if datetime else (None, None)
    kept = []
    for item in items:
        if collections is not None and item.collection_id not in collections:
            continue
        if area is not None:
            footprint = shape(item.geometry) if item.geometry else box(*item.bbox)
            if not footprint.intersects(area):
                continue
        if start is not None or end is not None:
            first, last = item_time_range(item)
            if (start is not None and last < start) or (end is not None and first > end):
                continue
        if matches(item.properties, query):
            kept.append(item)
    return _ordered(kept)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ordered(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    def key(it: pystac.Item) -> tuple[str, datetime, str]:
        t = it.datetime or _EPOCH
        return (it.collection_id or "", _utc(t), it.id)

    return sorted(items, key=key)


# --- STAC APIs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a STAC API before giving up.

    Attributes:
        retries: attempts after the first, for connection errors, read timeouts and the
            statuses in `statuses`.
        backoff: seconds; the n-th retry waits backoff * 2**(n-1), or as long as a
            Retry-After header asks.
        timeout: (connect, read) seconds per request.
        statuses: HTTP statuses worth retrying.
        max_wait: seconds; the longest a Retry-After header may make one retry wait (a
            server asking for an hour must not hang a search for an hour).

    A response cut mid-way (or stalling mid-body) is retried too, with the same backoff:
    urllib3 retries only what fails before the body arrives.
    """

    retries: int = 4
    backoff: float = 0.5
    timeout: tuple[float, float] = (5.0, 60.0)
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)
    max_wait: float = 60.0

    def stac_io(self, headers: Mapping[str, str] | None = None) -> StacApiIO:
        retry = _Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            backoff_factor=self.backoff,
            status_forcelist=self.statuses,
            allowed_methods=None,  # POST searches are idempotent: retry them too
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.max_wait = self.max_wait
        return _RetryingIO(
            self, headers=dict(headers or {}), timeout=self.timeout, max_retries=retry
        )


class _Retry(Retry):
    """urllib3's Retry, with Retry-After waits capped at `max_wait` seconds."""

    max_wait: float = 60.0

    def new(self, **kw: Any) -> _Retry:
        out = super().new(**kw)
        out.max_wait = self.max_wait
        return out

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, self.max_wait)


def _broken_body(err: APIError) -> bool:
    """Whether a request failed while its body was arriving (cut mid-way, or stalled)."""
    cause = err.__context__
    if isinstance(cause, ChunkedEncodingError):
        return True
    return isinstance(cause, RequestsConnectionError) and any(
        isinstance(a, ReadTimeoutError) for a in cause.args
    )


class _RetryingIO(StacApiIO):
    """StacApiIO that also retries a response broken off mid-body, with backoff."""

    def __init__(self, policy: RetryPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    def request(self, href: str, *args: Any, **kwargs: Any) -> str:
        for attempt in range(self.policy.retries + 1):
            try:
                return super().request(href, *args, **kwargs)
            except APIError as err:
                if attempt == self.policy.retries or not _broken_body(err):
                    raise
                time.sleep(self.policy.backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def _signer(sign: str | None) -> Callable[[Any], None] | None:
    if sign is None:
        return None
    if sign != "planetary-computer":
        raise InputError(
            f"unknown URL signing {sign!r}; the only one known is 'planetary-computer'"
        )
    try:
        import planetary_computer
    except ImportError:
        raise InputError(
            "signing Planetary Computer URLs needs the planetary-computer package: "
            "pip install 'sar2ndvi[pc]'"
        ) from None
    return planetary_computer.sign_inplace  # type: ignore[no-any-return]


def open_client(
    api_url: str, *, sign: str | None = None, retry: RetryPolicy | None = None
) -> pystac_client.Client:
    """A pystac-client Client with retries; SearchError names the endpoint on failure."""
    retry = retry or RetryPolicy()
    try:
        # Client.open resets the StacApiIO's timeout to its own argument: pass it twice.
        return pystac_client.Client.open(
            api_url, stac_io=retry.stac_io(), timeout=retry.timeout, modifier=_signer(sign)
        )
    except InputError:
        raise
    except Exception as err:  # requests' ConnectionError, APIError, bad JSON, ...
        raise SearchError(f"cannot open the STAC API at {api_url}: {_why(err, retry)}") from err


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[:limit] + "..."


def _why(err: BaseException, policy: RetryPolicy | None) -> str:
    """What went wrong with a STAC API request, from the root of an exception chain
    (pystac wraps a failed request in "does not resolve to a STAC object")."""
    tries = f" (after {policy.retries} retries)" if policy and policy.retries else ""
    seen: BaseException | None = err
    while seen is not None:
        status = getattr(seen, "status_code", None)
        if isinstance(seen, APIError) and status:
            retried = tries if policy and status in policy.statuses else ""
            return f"HTTP {status}{retried}: {str(seen)[:200] or 'no message'}"
        if isinstance(seen, ReadTimeoutError):
            return f"no answer within the read timeout{tries}: {_short(seen)}"
        if isinstance(seen, ChunkedEncodingError):
            return f"the response was cut off mid-way{tries}: {_short(seen)}"
        if isinstance(seen, ValueError) and "Expecting value" in str(seen):
            return f"the answer is not JSON ({_short(seen)}); is this a STAC API?"
        seen = seen.__cause__ or seen.__context__
    return f"{_short(err)}{tries}"


def search(
    api_url: str,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    query: Query | None = None,
    max_items: int | None = None,
    page_size: int = 100,
    sign: str | None = None,
    retry: RetryPolicy | None = None,
    client: pystac_client.Client | None = None,
) -> list[pystac.Item]:
    """Search a STAC API and apply `query` (and the area and window) on the client too.

    Args:
        api_url: the API's landing page.
        collections: collection ids to search.
        bbox: (west, south, east, north) in degrees.
        datetime: an RFC 3339 instant or interval ("2024-03-01/2024-04-02").
        query: property conditions in query-extension syntax.
        max_items: stop after this many items (before client-side filtering).
        page_size: items per page requested from the API.
        sign: "planetary-computer" to sign asset URLs.
        retry: retry policy (default: 4 retries with exponential backoff).
        client: an already opened client for `api_url` (saves the landing-page request).

    Returns:
        The matching items, ordered by (collection, datetime, id).
    """
    check_query(query)
    retry = retry or RetryPolicy()
    client = client or open_client(api_url, sign=sign, retry=retry)
    send_query = query if query and client.conforms_to(ConformanceClasses.QUERY) else None
    try:
        found = client.search(
            collections=list(collections),
            bbox=bbox,
            datetime=datetime,
            query=dict(send_query) if send_query else None,
            max_items=max_items,
            limit=page_size,
        )
        items = list(found.items())
    except Exception as err:
        # nothing is returned (nor stored) from a search that did not finish
        raise SearchError(
            f"searching the STAC API at {api_url} failed: {_why(err, retry)}"
        ) from err
    return filter_items(items, collections=collections, bbox=bbox, datetime=datetime, query=query)


# --- static sources ------------------------------------------------------------------------


def read_static_items(kind: str, path: str | Path) -> list[pystac.Item]:
    """Every item of a static source, with absolute asset hrefs.

    Args:
        kind: "static" (a catalog or collection JSON, walked recursively),
            "itemcollection" (a GeoJSON FeatureCollection of items, or a JSON list of
            items) or "geoparquet" (a stac-geoparquet file).
        path: the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"source: {path} does not exist or is not a file")
    try:
        if kind == "static":
            root = pystac.read_file(str(path))
            if not isinstance(root, pystac.Catalog):
                raise InputError(
                    f"source: {path} is a {type(root).__name__}, not a catalog "
                    "or collection; use type = 'itemcollection' for items"
                )
            items = list(root.get_items(recursive=True))
            for it in items:
                it.make_asset_hrefs_absolute()
            return items
        if kind == "itemcollection":
            import json

            data = json.loads(path.read_text())
            features = data if isinstance(data, list) else data.get("features", [])
            items = [pystac.Item.from_dict(f) for f in features]
            return [_absolute_assets(it, path.parent) for it in items]
        if kind == "geoparquet":
            import rustac

            data = rustac.read_sync(str(path))
            return [
                _absolute_assets(pystac.Item.from_dict(f), path.parent)
                for f in data.get("features", [])
            ]
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"source: cannot read {kind} {path}: {_short(err)}") from err
    raise InputError(f"source: unknown static source type {kind!r}")


def _absolute_assets(item: pystac.Item, base: Path) -> pystac.Item:
    for asset in item.assets.values():
        href = asset.href
        if "://" not in href and not Path(href).is_absolute():
            asset.href = str((base / href).resolve())
    return item


# --- scenes by role ------------------------------------------------------------------------


def interval(start: datetime | date, end: datetime | date) -> str:
    """An RFC 3339 datetime interval string for STAC searches (UTC)."""

    def fmt(t: datetime | date) -> str:
        if not isinstance(t, datetime):
            t = datetime(t.year, t.month, t.day)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    return f"{fmt(start)}/{fmt(end)}"


@dataclass
class SceneSelection:
    """The scenes of a study area, by role.

    Attributes:
        s1: Sentinel-1 items keyed by (period, orbit_state), e.g. ("pre", "ascending").
        s2: Sentinel-2 items keyed by period ("pre" or "post").
        dem: DEM tiles.
    """

    s1: dict[tuple[str, str], list[pystac.Item]] = field(default_factory=dict)
    s2: dict[str, list[pystac.Item]] = field(default_factory=dict)
    dem: list[pystac.Item] = field(default_factory=list)

    def rows(self) -> list[tuple[str, pystac.Item]]:
        """(role, item) pairs in display order."""
        out: list[tuple[str, pystac.Item]] = []
        for period in ("pre", "post"):
            for orbit in ("ascending", "descending"):
                out += [(f"S1 {period} {orbit}", it) for it in self.s1.get((period, orbit), [])]
        for period in ("pre", "post"):
            out += [(f"S2 {period}", it) for it in self.s2.get(period, [])]
        out += [("DEM", it) for it in self.dem]
        return out

    def s1_items(self) -> list[pystac.Item]:
        """All Sentinel-1 items, time-ordered."""
        return _ordered(it for items in self.s1.values() for it in items)

    def s2_items(self) -> list[pystac.Item]:
        """All Sentinel-2 items, time-ordered."""
        return _ordered(it for items in self.s2.values() for it in items)

    def item_ids(self) -> dict[str, list[str]]:
        """Item ids per sensor, for provenance."""
        return {
            "s1": [it.id for it in self.s1_items()],
            "s2": [it.id for it in self.s2_items()],
            "dem": [it.id for it in self.dem],
        }


S1_REQUIRED: Query = {
    "sar:instrument_mode": {"eq": "IW"},
    "sar:polarizations": {"contains": ["VV", "VH"]},
}

Finder = Callable[[str, str | None, Query | None], list[pystac.Item]]


def _select(
    find: Finder,
    where: str,
    bbox: Sequence[float],
    windows: Mapping[str, str],
    collections: Mapping[str, str],
    max_cloud: float,
    require: Sequence[str],
) -> SceneSelection:
    selection = SceneSelection()
    for period, when in windows.items():
        for orbit in ("ascending", "descending"):
            q = {**S1_REQUIRED, "sat:orbit_state": {"eq": orbit}}
            selection.s1[(period, orbit)] = find(collections["s1"], when, q)
        selection.s2[period] = find(collections["s2"], when, {"eo:cloud_cover": {"lte": max_cloud}})
    selection.dem = find(collections["dem"], None, None)
    for it in selection.s1_items():
        check_terrain_corrected(it)
    found = {
        **{
            f"s1-{p}": selection.s1[(p, "ascending")] + selection.s1[(p, "descending")]
            for p in windows
        },
        **{f"s2-{p}": selection.s2[p] for p in windows},
        "dem": selection.dem,
    }
    for role in require:
        if not found.get(role):
            sensor, _, period = role.partition("-")
            collection = collections[sensor]
            window = f" in the {period}-event window {windows[period]}" if period else ""
            extra = (
                f" with eo:cloud_cover <= {max_cloud}"
                if sensor == "s2"
                else " in IW mode with VV and VH"
                if sensor == "s1"
                else ""
            )
            raise EmptySearchError(
                f"no {collection!r} items{extra}{window} over bbox "
                f"{[round(v, 5) for v in bbox]} at {where}; widen the window or the area, or "
                "check the collection id"
            )
    return selection


DEFAULT_REQUIRED = ("s1-pre", "s1-post", "s2-pre", "dem")


def find_scenes(
    api_url: str,
    bbox: Sequence[float],
    event: datetime | date,
    *,
    pre_days: int,
    post_days: int,
    max_cloud: float = 100.0,
    collections: Mapping[str, str] | None = None,
    require: Sequence[str] = (),
    sign: str | None = None,
    retry: RetryPolicy | None = None,
) -> SceneSelection:
    """Sentinel-1 (per orbit direction), Sentinel-2 and DEM scenes around an event, from an API.

    Args:
        api_url: the STAC API.
        bbox: the area, (west, south, east, north) degrees.
        event: the event time; pre-event scenes are in [event - pre_days, event),
            post-event ones in [event, event + post_days].
        max_cloud: the largest `eo:cloud_cover` (percent) of a Sentinel-2 scene to keep.
        collections: collection ids for the roles "s1", "s2" and "dem"; Planetary
            Computer's by default.
        require: roles that must not be empty ("s1-pre", "s1-post", "s2-pre", "s2-post",
            "dem"); EmptySearchError otherwise.
    """
    ids = {
        "s1": "sentinel-1-rtc",
        "s2": "sentinel-2-l2a",
        "dem": "cop-dem-glo-30",
        **(collections or {}),
    }
    if not isinstance(event, datetime):
        event = datetime(event.year, event.month, event.day)
    windows = {
        "pre": interval(event - timedelta(days=pre_days), event - timedelta(seconds=1)),
        "post": interval(event, event + timedelta(days=post_days)),
    }
    client = open_client(api_url, sign=sign, retry=retry)

    def find(collection: str, when: str | None, query: Query | None) -> list[pystac.Item]:
        return search(
            api_url, collections=[collection], bbox=bbox, datetime=when, query=query, client=client
        )

    return _select(find, api_url, bbox, windows, ids, max_cloud, require)


def select_scenes(
    recipe: Recipe,
    *,
    api_url: str | None = None,
    require: Sequence[str] = DEFAULT_REQUIRED,
    retry: RetryPolicy | None = None,
) -> SceneSelection:
    """The scenes a recipe asks for, from its source (or from `api_url`, which wins).

    A "synthetic" source has no address of its own: serve the simulated scene and pass
    its `api_url` (`sar2ndvi.cube.open_source` does both).
    """
    source: Source = recipe.source
    windows = {"pre": recipe.pre.interval(), "post": recipe.post.interval()}
    url = api_url or (source.url if source.type == "api" else None)
    if url is not None:
        client = open_client(url, sign=source.sign, retry=retry)

        def find(collection: str, when: str | None, query: Query | None) -> list[pystac.Item]:
            return search(
                url,
                collections=[collection],
                bbox=recipe.bbox,
                datetime=when,
                query=query,
                client=client,
            )

        where = url
    elif source.type in ("static", "itemcollection", "geoparquet"):
        assert source.path is not None
        everything = read_static_items(source.type, source.path)
        signer = _signer(source.sign)
        if signer is not None:
            for it in everything:
                signer(it)

        def find(collection: str, when: str | None, query: Query | None) -> list[pystac.Item]:
            return filter_items(
                everything, collections=[collection], bbox=recipe.bbox, datetime=when, query=query
            )

        where = str(source.path)
    else:
        raise InputError(
            f"{recipe.path or recipe.name}: source.type: a {source.type!r} source "
            "must be served first; use sar2ndvi.cube.open_source(recipe)"
        )
    return _select(find, where, recipe.bbox, windows, recipe.collections, recipe.max_cloud, require)


def describe(item: pystac.Item) -> dict[str, Any]:
    """The few properties a person wants to see in a search table."""
    p = item.properties
    return {
        "id": item.id,
        "collection": item.collection_id,
        "datetime": p.get("datetime") or p.get("start_datetime"),
        "orbit": p.get("sat:orbit_state", ""),
        "cloud": p.get("eo:cloud_cover", ""),
        "baseline": p.get("s2:processing_baseline", ""),
    }
