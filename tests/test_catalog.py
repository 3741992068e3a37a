"""Search with client-side property filters, against the served scene."""

from __future__ import annotations

import json
import operator
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sar2ndvi.catalog import RetryPolicy, SearchError, find_scenes, matches, search
from sar2ndvi.errors import InputError
from sar2ndvi.synth.server import free_port

NUMBERS = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False))
REFERENCE = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


@given(value=NUMBERS, threshold=NUMBERS, op=st.sampled_from(sorted(REFERENCE)))
def test_numeric_conditions_agree_with_python(value, threshold, op):
    assert matches({"p": value}, {"p": {op: threshold}}) == REFERENCE[op](value, threshold)


@given(
    values=st.lists(st.sampled_from(["VV", "VH", "HH", "HV"]), max_size=4),
    wanted=st.lists(st.sampled_from(["VV", "VH", "HH", "HV"]), min_size=1, max_size=2),
)
def test_contains_means_every_wanted_value_is_present(values, wanted):
    expected = all(w in values for w in wanted)
    assert (
        matches({"sar:polarizations": values}, {"sar:polarizations": {"contains": wanted}})
        == expected
    )


def test_missing_property_fails_all_but_neq():
    assert not matches({}, {"eo:cloud_cover": {"lt": 10}})
    assert matches({}, {"eo:cloud_cover": {"neq": 10}})
    assert not matches({"eo:cloud_cover": "cloudy"}, {"eo:cloud_cover": {"lt": 10}})


def test_unknown_operator_is_refused():
    with pytest.raises(InputError, match="unknown operator 'like'"):
        search("http://127.0.0.1:1", collections=["x"], query={"p": {"like": 1}})


def test_property_filters_are_applied_on_the_client(stac_api, scene):
    # rustac's in-memory API ignores `query`, so the orbit filter must work client-side.
    found = search(
        stac_api.url, collections=["sentinel-1-rtc"], query={"sat:orbit_state": {"eq": "ascending"}}
    )
    expected = set()
    for path in scene.item_paths("sentinel-1-rtc"):
        item = json.loads(path.read_text())
        if item["properties"]["sat:orbit_state"] == "ascending":
            expected.add(item["id"])
    assert {it.id for it in found} == expected
    assert 0 < len(expected) < len(scene.item_paths("sentinel-1-rtc"))
    assert [it.datetime for it in found] == sorted(it.datetime for it in found)


def test_cloud_filter(stac_api, scene):
    found = search(
        stac_api.url, collections=["sentinel-2-l2a"], query={"eo:cloud_cover": {"lte": 20}}
    )
    clouds = {}
    for path in scene.item_paths("sentinel-2-l2a"):
        item = json.loads(path.read_text())
        clouds[item["id"]] = item["properties"]["eo:cloud_cover"]
    assert {it.id for it in found} == {k for k, v in clouds.items() if v <= 20}


def test_scenes_by_role(stac_api, scene, scene_config):
    selection = find_scenes(
        stac_api.url,
        scene.bbox,
        scene_config.event_datetime,
        pre_days=scene_config.pre_days,
        post_days=scene_config.post_days,
    )
    event = scene_config.event_datetime
    for (period, orbit), items in selection.s1.items():
        assert items, (period, orbit)
        for it in items:
            assert it.properties["sat:orbit_state"] == orbit
            assert (it.datetime.replace(tzinfo=None) < event) == (period == "pre")
    assert sum(len(v) for v in selection.s1.values()) == len(scene.item_paths("sentinel-1-rtc"))
    assert sum(len(v) for v in selection.s2.values()) == len(scene.item_paths("sentinel-2-l2a"))
    assert len(selection.dem) == len(scene.item_paths("cop-dem-glo-30"))
    roles = [role for role, _ in selection.rows()]
    assert roles[0].startswith("S1 ")
    assert roles[-1] == "DEM"
    assert isinstance(event, datetime)


def test_unreachable_api_names_the_endpoint():
    url = f"http://127.0.0.1:{free_port()}"
    fast = RetryPolicy(retries=2, backoff=0.01)
    with pytest.raises(SearchError, match=url.replace(".", r"\.")):
        search(url, collections=["sentinel-1-rtc"], retry=fast)
