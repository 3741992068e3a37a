"""Static sources give the API's selection; APIs that fail are retried, then named."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import rasterio

from sar2ndvi.catalog import RetryPolicy, SearchError, search, select_scenes
from sar2ndvi.cube import build_cube
from sar2ndvi.items import ItemError
from sar2ndvi.recipe import parse_recipe
from sar2ndvi.synth.area import scene_recipe

FAST = RetryPolicy(retries=3, backoff=0.01, timeout=(2.0, 1.0))


def _ids(selection):
    return {k: [it.id for it in v] for k, v in selection.item_ids().items()}


def _recipe_with_source(scene, api_url, source):
    data = scene_recipe(scene, url=api_url, chunk=64).to_dict()
    data["source"] = source
    return parse_recipe(data, origin="test")


@pytest.fixture(scope="module")
def api_selection(scene, stac_api):
    return select_scenes(scene_recipe(scene, url=stac_api.url, chunk=64))


def _all_items(scene):
    items = []
    for path in scene.item_paths():
        item = json.loads(path.read_text())
        for asset in item["assets"].values():
            asset["href"] = (path.parent / asset["href"]).resolve().as_uri()
        item["links"] = []
        items.append(item)
    return items


def test_static_catalog_gives_the_api_selection(scene, stac_api, api_selection):
    recipe = _recipe_with_source(scene, stac_api.url,
                                 {"type": "static", "path": str(scene.catalog)})
    selection = select_scenes(recipe)
    assert selection.item_ids() == api_selection.item_ids()
    assert selection.s1_items()[0].assets["vv"].href.endswith("vv.tif")


def test_itemcollection_gives_the_api_selection(scene, stac_api, api_selection, tmp_path):
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": _all_items(scene)}))
    recipe = _recipe_with_source(scene, stac_api.url,
                                 {"type": "itemcollection", "path": str(path)})
    assert select_scenes(recipe).item_ids() == api_selection.item_ids()


def test_geoparquet_gives_the_api_selection(scene, stac_api, api_selection, tmp_path):
    import rustac

    path = tmp_path / "items.parquet"
    rustac.write_sync(str(path), _all_items(scene))
    recipe = _recipe_with_source(scene, stac_api.url,
                                 {"type": "geoparquet", "path": str(path)})
    selection = select_scenes(recipe)
    assert selection.item_ids() == api_selection.item_ids()
    cube = build_cube(recipe, selection)
    assert cube["/s1"].sizes["time"] == len(api_selection.s1_items())


def test_a_missing_static_source_is_named(scene, stac_api, tmp_path):
    recipe = _recipe_with_source(scene, stac_api.url,
                                 {"type": "static", "path": str(tmp_path / "nope.json")})
    with pytest.raises(Exception, match=r"nope\.json does not exist"):
        select_scenes(recipe)


def test_a_corrupt_cog_names_item_and_asset(scene, stac_api, api_selection, tmp_path):
    corrupt = tmp_path / "vh.tif"
    good = api_selection.s1_items()[0].assets["vh"].get_absolute_href()
    with rasterio.open(good) as ds:
        assert ds.count == 1  # the original is fine
    corrupt.write_bytes(b"II*\x00" + bytes(np.random.default_rng(0).integers(0, 255, 4000,
                                                                              np.uint8)))
    item = api_selection.s1_items()[0].clone()
    item.assets["vh"].href = corrupt.as_uri()
    broken = type(api_selection)(s1={("pre", "ascending"): [item]}, s2=api_selection.s2,
                                 dem=api_selection.dem)
    recipe = scene_recipe(scene, url=stac_api.url, chunk=64)
    with pytest.raises(ItemError, match=rf"item {item.id} asset vh: cannot read file://"):
        build_cube(recipe, broken)


# --- an API that misbehaves --------------------------------------------------------------

class FlakyProxy:
    """A loopback HTTP proxy in front of the real STAC API that first fails `failures`
    requests with `status` (or hangs for `hang` seconds), then forwards faithfully."""

    def __init__(self, upstream: str, *, failures: int = 0, status: int = 503,
                 retry_after: str | None = None, hang: float = 0.0):
        self.upstream, self.failures, self.status = upstream, failures, status
        self.retry_after, self.hang = retry_after, hang
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.hang:
                    time.sleep(proxy.hang)
                if proxy.requests <= proxy.failures:
                    self.send_response(proxy.status)
                    if proxy.retry_after is not None:
                        self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = urllib.request.Request(proxy.upstream + self.path,
                                                 data=body or None, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    payload = response.read().replace(proxy.upstream.encode(),
                                                      proxy.url.encode())
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.headers["Content-Type"])
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_POST = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0"), (503, None), (502, None)])
def test_transient_errors_are_retried(stac_api, scene, status, retry_after):
    expected = len(scene.item_paths("sentinel-1-rtc"))
    with FlakyProxy(stac_api.url, failures=2, status=status, retry_after=retry_after) as proxy:
        items = search(proxy.url, collections=["sentinel-1-rtc"], retry=FAST)
    assert len(items) == expected
    assert proxy.requests >= 3  # two failures, then success


def test_a_persistent_failure_names_the_endpoint(stac_api):
    with FlakyProxy(stac_api.url, failures=10**6, status=500) as proxy, \
            pytest.raises(SearchError, match=proxy.url.replace(".", r"\.")):
        search(proxy.url, collections=["sentinel-1-rtc"], retry=FAST)
    assert proxy.requests == FAST.retries + 1


def test_a_hanging_api_times_out_and_is_named(stac_api):
    policy = RetryPolicy(retries=1, backoff=0.01, timeout=(1.0, 0.3))
    start = time.monotonic()
    with FlakyProxy(stac_api.url, hang=1.0) as proxy, \
            pytest.raises(SearchError, match=proxy.url.replace(".", r"\.")):
        search(proxy.url, collections=["sentinel-1-rtc"], retry=policy)
    assert time.monotonic() - start < 10
