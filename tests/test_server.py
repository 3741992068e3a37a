"""The scene served by a real STAC API (rustac) and searched over HTTP with pystac-client."""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import datetime, timedelta

import pystac_client
import pytest

from sar2ndvi.errors import InputError, ServerError
from sar2ndvi.synth.server import StacServer, serve_scene


def _expected(scene, collection, predicate=lambda item: True):
    out = set()
    for path in scene.item_paths(collection):
        item = json.loads(path.read_text())
        if predicate(item):
            out.add(item["id"])
    return out


def test_landing_page_and_conformance(stac_api):
    with urllib.request.urlopen(stac_api.url + "/conformance") as response:
        conformance = json.load(response)["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search" in conformance
    assert stac_api.url.startswith("http://127.0.0.1:")


def test_collections_are_served(stac_api, scene):
    client = pystac_client.Client.open(stac_api.url)
    assert {c.id for c in client.get_collections()} == set(scene.manifest["collections"])


@pytest.mark.parametrize("collection", ["sentinel-1-rtc", "sentinel-2-l2a", "cop-dem-glo-30"])
def test_search_by_collection_returns_exactly_the_scene_items(stac_api, scene, collection):
    client = pystac_client.Client.open(stac_api.url)
    # a small page size forces several pages through the API's `next` links
    found = {it.id for it in client.search(collections=[collection], limit=3).items()}
    assert found == _expected(scene, collection)


def test_search_by_datetime_window(stac_api, scene):
    event = datetime.fromisoformat(scene.manifest["event"]["date"])
    start, end = event - timedelta(days=20), event
    window = f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}"
    client = pystac_client.Client.open(stac_api.url)
    found = {it.id for it in client.search(collections=["sentinel-1-rtc"], datetime=window).items()}

    def inside(item):
        t = datetime.fromisoformat(item["properties"]["datetime"].rstrip("Z"))
        return start <= t <= end

    expected = _expected(scene, "sentinel-1-rtc", inside)
    assert found == expected
    assert 0 < len(found) < len(_expected(scene, "sentinel-1-rtc"))


def test_search_by_bbox(stac_api, scene):
    west, south, _, _ = scene.bbox
    client = pystac_client.Client.open(stac_api.url)
    inside = [west + 0.001, south + 0.001, west + 0.002, south + 0.002]
    far_away = [10.0, 10.0, 10.1, 10.1]
    assert {
        it.id for it in client.search(collections=["sentinel-2-l2a"], bbox=inside).items()
    } == _expected(scene, "sentinel-2-l2a")
    assert not list(client.search(collections=["sentinel-2-l2a"], bbox=far_away).items())


def test_served_asset_hrefs_are_absolute_paths_to_the_rasters(stac_api, scene):
    client = pystac_client.Client.open(stac_api.url)
    item = next(iter(client.search(collections=["sentinel-1-rtc"], max_items=1).items()))
    href = item.assets["vv"].href
    # file:// URIs: a bare absolute path would be resolved against the API's http URL
    assert href.startswith(scene.path.resolve().as_uri())
    assert href.endswith("vv.tif")


def test_port_in_use_is_a_clear_error(scene):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} .* in use"):
            serve_scene(scene, port=port).start()


def test_stop_ends_the_process_and_nothing_listens_any_more(scene):
    server = serve_scene(scene).start()
    port = server.port
    assert server.running
    server.stop()
    assert not server.running
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def test_server_that_cannot_start_says_why(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ServerError, match="rustac serve"):
        StacServer([broken], startup_timeout=20).start()


def test_serving_a_folder_that_is_no_scene(tmp_path):
    with pytest.raises(InputError, match="not a simulated scene"):
        serve_scene(tmp_path)
