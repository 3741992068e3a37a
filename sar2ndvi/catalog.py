"""STAC search for Sentinel-1, Sentinel-2 and DEM scenes.

Searches go through `pystac-client` against any STAC API. Property filters use the STAC
query-extension syntax (``{"eo:cloud_cover": {"lt": 20}}``); they are sent to the API
only when it declares the query conformance class (some servers, rustac's in-memory one
among them, answer an unknown `query` with no items at all), and are always applied on
the client as well, so every source gives the same selection.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pystac
import pystac_client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError

from sar2ndvi.errors import InputError, Sar2ndviError

Query = Mapping[str, Mapping[str, Any]]


class SearchError(Sar2ndviError, RuntimeError):
    """A STAC search failed; the message names the endpoint."""


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


def search(
    api_url: str,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    query: Query | None = None,
    max_items: int | None = None,
    page_size: int = 100,
) -> list[pystac.Item]:
    """Search a STAC API and apply `query` on the client too.

    Args:
        api_url: the API's landing page.
        collections: collection ids to search.
        bbox: (west, south, east, north) in degrees.
        datetime: an RFC 3339 instant or interval ("2024-03-01/2024-04-02").
        query: property conditions in query-extension syntax.
        max_items: stop after this many items (before client-side filtering).
        page_size: items per page requested from the API.

    Returns:
        The matching items, ordered by (collection, datetime, id).
    """
    check_query(query)
    try:
        client = pystac_client.Client.open(api_url)
    except (APIError, OSError, pystac.STACError) as err:
        raise SearchError(f"cannot open the STAC API at {api_url}: {err}") from err
    except Exception as err:  # requests' ConnectionError and friends
        raise SearchError(f"cannot reach the STAC API at {api_url}: {err}") from err
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
    except APIError as err:
        raise SearchError(f"the STAC API at {api_url} refused the search: {err}") from err
    except Exception as err:
        raise SearchError(f"searching the STAC API at {api_url} failed: {err}") from err
    kept = [it for it in items if matches(it.properties, query)]
    return sorted(kept, key=lambda it: (it.collection_id or "", it.datetime or _EPOCH, it.id))


_EPOCH = datetime(1970, 1, 1)


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


S1_REQUIRED: Query = {
    "sar:instrument_mode": {"eq": "IW"},
    "sar:polarizations": {"contains": ["VV", "VH"]},
}


def find_scenes(
    api_url: str,
    bbox: Sequence[float],
    event: datetime | date,
    *,
    pre_days: int,
    post_days: int,
    max_cloud: float = 100.0,
    collections: Mapping[str, str] | None = None,
) -> SceneSelection:
    """Sentinel-1 (per orbit direction), Sentinel-2 and DEM scenes around an event.

    Args:
        api_url: the STAC API.
        bbox: the area, (west, south, east, north) degrees.
        event: the event time; pre-event scenes are in [event - pre_days, event),
            post-event ones in [event, event + post_days].
        max_cloud: the largest `eo:cloud_cover` (percent) of a Sentinel-2 scene to keep.
        collections: collection ids for the roles "s1", "s2" and "dem"; Planetary
            Computer's by default.
    """
    ids = {
        "s1": "sentinel-1-rtc",
        "s2": "sentinel-2-l2a",
        "dem": "cop-dem-glo-30",
        **(collections or {}),
    }
    if not isinstance(event, datetime):
        event = datetime(event.year, event.month, event.day)
    periods = {
        "pre": interval(event - timedelta(days=pre_days), event - timedelta(seconds=1)),
        "post": interval(event, event + timedelta(days=post_days)),
    }
    selection = SceneSelection()
    for period, when in periods.items():
        for orbit in ("ascending", "descending"):
            q = {**S1_REQUIRED, "sat:orbit_state": {"eq": orbit}}
            selection.s1[(period, orbit)] = search(
                api_url, collections=[ids["s1"]], bbox=bbox, datetime=when, query=q
            )
        selection.s2[period] = search(
            api_url,
            collections=[ids["s2"]],
            bbox=bbox,
            datetime=when,
            query={"eo:cloud_cover": {"lte": max_cloud}},
        )
    selection.dem = search(api_url, collections=[ids["dem"]], bbox=bbox)
    return selection


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


def unique(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """Items with duplicate ids removed, first kept."""
    seen: set[str] = set()
    out = []
    for it in items:
        if it.id not in seen:
            seen.add(it.id)
            out.append(it)
    return out
