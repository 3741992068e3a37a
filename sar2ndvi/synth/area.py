"""A cube recipe for any simulated scene: its area, event, windows and source."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from pyproj import Transformer

from sar2ndvi.recipe import Recipe, parse_recipe
from sar2ndvi.synth.scene import Scene

#: The recipe's lon/lat box is the scene shrunk by this much (m) on every side: the box's
#: UTM envelope, snapped outward to 10 m, must stay inside the simulated grid.
INSET_M = 250.0


def scene_recipe(
    scene: Scene, *, url: str | None = None, chunk: int = 256, name: str | None = None
) -> Recipe:
    """The recipe of a simulated scene.

    Args:
        scene: the scene.
        url: a STAC API serving it; None gives a "synthetic" source (simulated and served
            on demand from the scene's seed and size).
        chunk: x and y chunk size in pixels.
        name: the recipe name (default: the scene id).
    """
    left, bottom, right, top = scene.grid.bounds
    to_lonlat = Transformer.from_crs(scene.grid.crs, "EPSG:4326", always_xy=True)
    west, south = to_lonlat.transform(left + INSET_M, bottom + INSET_M)
    east, north = to_lonlat.transform(right - INSET_M, top - INSET_M)
    config = scene.manifest["config"]
    event = scene.manifest["event"]["date"]
    day = date.fromisoformat(event)
    source: dict[str, Any] = (
        {"type": "api", "url": url}
        if url is not None
        else {"type": "synthetic", "seed": config["seed"], "size": list(config["size"])}
    )
    data = {
        "name": name or scene.manifest["id"],
        "description": f"simulated scene {scene.manifest['id']}",
        "area": {
            "bbox": [west, south, east, north],
            "crs": scene.manifest["grid"]["crs"],
            "resolution": 10.0,
        },
        "event": {
            "date": day,
            "pre": [day - timedelta(days=config["pre_days"]), day - timedelta(days=1)],
            "post": [day, day + timedelta(days=config["post_days"])],
        },
        "source": source,
        "chunks": {"x": chunk, "y": chunk, "time": 1},
    }
    return parse_recipe(data, origin=str(scene.path / "scene.json"))
