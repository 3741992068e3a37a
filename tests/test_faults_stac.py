"""Faults of a STAC API, injected by a real loopback proxy in front of the served scene.

Each search either returns every item (after retries with backoff) or raises a SearchError
that names the endpoint and what went wrong; a search that fails half-way returns nothing,
and a `sar2ndvi build` whose search fails leaves nothing on disk. (Retries of 429/502/503,
a hanging API and an unreachable one are in test_catalog_sources.py and test_catalog.py.)
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from sar2ndvi.catalog import RetryPolicy, SearchError, search
from sar2ndvi.cli import main
from tests.faults_support import Cut, FaultyProxy, Garbage, Hang, Status, recipe_file

FAST = RetryPolicy(retries=2, backoff=0.01, timeout=(2.0, 0.5))
S1 = "sentinel-1-rtc"


@pytest.fixture(scope="module")
def s1_ids(stac_api):
    ids = [it.id for it in search(stac_api.url, collections=[S1], retry=FAST)]
    assert len(ids) > 4  # enough for several pages of 2
    return ids


def _url(proxy: FaultyProxy) -> str:
    return re.escape(proxy.url)


# --- transient faults: retried, then the full result ----------------------------------------


def test_a_response_cut_mid_way_is_retried(stac_api, s1_ids):
    with FaultyProxy(stac_api.url, [Cut(0.5)], on="/search") as proxy:
        found = search(proxy.url, collections=[S1], retry=FAST)
    assert [it.id for it in found] == s1_ids
    assert proxy.count("/search") == 2  # the cut answer, then the whole one


def test_a_cut_on_a_later_page_is_retried_and_loses_no_item(stac_api, s1_ids):
    with FaultyProxy(stac_api.url, [None, Cut(0.3), None], on="/search") as proxy:
        found = search(proxy.url, collections=[S1], retry=FAST, page_size=2)
    assert [it.id for it in found] == s1_ids  # no page lost, none twice
    assert proxy.count("/search") == len(s1_ids) // 2 + (len(s1_ids) % 2 > 0) + 1


def test_retry_after_is_obeyed(stac_api, s1_ids):
    throttle = Status(429, {"Retry-After": "1"}, b'{"code": "TooManyRequests"}')
    with FaultyProxy(stac_api.url, [throttle], on="/search") as proxy:
        found = search(proxy.url, collections=[S1], retry=FAST)
    assert [it.id for it in found] == s1_ids
    first, second = proxy.times("/search")[:2]
    assert second - first >= 0.9  # the retry waited as asked (backoff alone is 0.01 s)


def test_a_huge_retry_after_is_capped(stac_api, s1_ids):
    throttle = Status(429, {"Retry-After": "3600"})
    policy = RetryPolicy(retries=2, backoff=0.01, timeout=(2.0, 5.0), max_wait=0.2)
    with FaultyProxy(stac_api.url, [throttle], on="/search") as proxy:
        found = search(proxy.url, collections=[S1], retry=policy)
    assert [it.id for it in found] == s1_ids
    first, second = proxy.times("/search")[:2]
    assert 0.15 <= second - first < 600  # waited max_wait, not the hour asked for


# --- persistent faults: a clear error naming the endpoint -----------------------------------


@pytest.mark.parametrize(
    ("fault", "said", "attempts"),
    [
        pytest.param(Status(500, body=b'{"code": "boom"}'), r"HTTP 500 \(after 2 retries\)",
                     3, id="500"),
        pytest.param(Status(429, {"Retry-After": "0"}), r"HTTP 429 \(after 2 retries\)", 3,
                     id="429"),
        pytest.param(Hang(1.0), r"no answer within the read timeout \(after 2 retries\)", 3,
                     id="hang"),
        pytest.param(Cut(0.5), r"the response was cut off mid-way \(after 2 retries\)", 3,
                     id="cut"),
        # not transient: no retry
        pytest.param(Garbage(), "the answer is not JSON", 1, id="not-json"),
    ],
)  # fmt: skip
def test_a_persistent_fault_names_the_endpoint_and_the_fault(stac_api, fault, said, attempts):
    with FaultyProxy(stac_api.url, after=fault, on="/search") as proxy:
        with pytest.raises(SearchError, match=f"STAC API at {_url(proxy)} failed: {said}"):
            search(proxy.url, collections=[S1], retry=FAST)
        assert proxy.count("/search") == attempts


def test_a_failure_on_a_later_page_returns_nothing(stac_api):
    with FaultyProxy(stac_api.url, [None], after=Status(503), on="/search") as proxy:
        with pytest.raises(SearchError, match=rf"{_url(proxy)} failed: HTTP 503"):
            search(proxy.url, collections=[S1], retry=FAST, page_size=2)
        assert proxy.count("/search") == 1 + FAST.retries + 1  # page 1, then page 2 thrice


def test_a_landing_page_that_fails_names_the_endpoint(stac_api):
    with FaultyProxy(stac_api.url, after=Status(502)) as proxy:
        with pytest.raises(SearchError, match=rf"cannot open the STAC API at {_url(proxy)}: "
                           r"HTTP 502 \(after 2 retries\)"):  # fmt: skip
            search(proxy.url, collections=[S1], retry=FAST)
        assert proxy.count("/") == FAST.retries + 1


# --- the command line: nothing half-built on disk -------------------------------------------


def test_a_build_whose_search_fails_half_way_leaves_nothing(tmp_path, scene, stac_api):
    # The third search of the recipe's roles is refused (400 is not retried): two role
    # searches had succeeded, in memory only.
    refused = Status(400, body=b'{"code": "BadRequest", "description": "no"}')
    with FaultyProxy(stac_api.url, [None, None], after=refused, on="/search") as proxy:
        recipe = recipe_file(tmp_path, scene, proxy.url)
        out = tmp_path / "cube.zarr"
        result = CliRunner().invoke(
            main, ["build", str(recipe), "--out", str(out), "--workdir", str(tmp_path / "w")]
        )
        assert proxy.count("/search") == 3
    assert result.exit_code == 2, result.output
    assert f"searching the STAC API at {proxy.url} failed: HTTP 400: " in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [recipe.name]  # no store, no folder
