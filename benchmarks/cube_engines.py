"""stackstac vs odc-stac on the simulated scene, and graph size against scene count.

1. Build (graph construction) and compute the same cube with both engines, interleaved
   over several repeats, and report the median time ratio odc / stackstac.
2. Count the Dask tasks of the cube for 2, 4, ..., N Sentinel-1 and Sentinel-2 scenes: the
   count must grow linearly (constant tasks per added scene).

    .venv/bin/python benchmarks/cube_engines.py [--size 512] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np

from sar2ndvi.catalog import SceneSelection, select_scenes
from sar2ndvi.cube import build_cube
from sar2ndvi.synth.area import scene_recipe
from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.scene import simulate
from sar2ndvi.synth.server import serve_scene


def _timed(recipe, selection, engine: str) -> tuple[float, float]:
    start = time.perf_counter()
    cube = build_cube(recipe, selection, engine=engine)
    built = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        for group in ("/s1", "/s2", "/dem"):
            cube[group].to_dataset().compute()
    return built - start, time.perf_counter() - built


def _tasks(recipe, selection: SceneSelection, n: int) -> int:
    s1 = selection.s1_items()[:n]
    s2 = selection.s2_items()[:n]
    subset = SceneSelection(s1={("pre", "ascending"): s1}, s2={"pre": s2}, dem=selection.dem)
    cube = build_cube(recipe, subset)
    graphs = [cube[g].to_dataset().__dask_graph__() for g in ("/s1", "/s2")]
    return sum(len(dict(g)) for g in graphs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="scene size in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a 128 px scene, 1 repeat")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    size, repeats = (128, 1) if args.quick else (args.size, args.repeats)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sar2ndvi-bench-"))
    scene = simulate(SceneConfig(seed=0, size=(size, size)), workdir / f"scene-{size}",
                     progress=False)
    with serve_scene(scene) as server:
        recipe = scene_recipe(scene, url=server.url, chunk=min(256, size))
        selection = select_scenes(recipe)

    times: dict[str, list[tuple[float, float]]] = {"stackstac": [], "odc": []}
    _timed(recipe, selection, "stackstac")  # warm GDAL's caches for both
    for _ in range(repeats):
        for engine in ("stackstac", "odc"):  # interleaved: both see the same machine state
            times[engine].append(_timed(recipe, selection, engine))
    median = {e: (statistics.median(b for b, _ in t), statistics.median(c for _, c in t))
              for e, t in times.items()}
    ratio_build = median["odc"][0] / median["stackstac"][0]
    ratio_compute = median["odc"][1] / median["stackstac"][1]

    counts = list(range(2, len(selection.s1_items()) + 1, 2))
    tasks = [_tasks(recipe, selection, n) for n in counts]
    per_scene = np.diff(tasks) / np.diff(counts)
    linear = bool(np.allclose(per_scene, per_scene[0], rtol=0.05))

    print(f"scene {size} x {size} px, grid {recipe.grid().shape}, "
          f"{len(selection.s1_items())} S1 + {len(selection.s2_items())} S2 items")
    print(f"{'engine':10} {'build s':>9} {'compute s':>10}")
    for engine, (b, c) in median.items():
        print(f"{engine:10} {b:9.3f} {c:10.3f}")
    print(f"ratio odc/stackstac: build {ratio_build:.2f}, compute {ratio_compute:.2f}")
    print("scenes  tasks")
    for n, t in zip(counts, tasks, strict=True):
        print(f"{n:6d}  {t:5d}")
    print(f"tasks per added scene: {per_scene.tolist()} -> linear: {linear}")
    record = {"size": size, "repeats": repeats, "median_seconds": median,
              "ratio_odc_over_stackstac": {"build": ratio_build, "compute": ratio_compute},
              "tasks": dict(zip(counts, tasks, strict=True)), "linear": linear}
    (workdir / "cube_engines.json").write_text(json.dumps(record, indent=1))
    return 0 if linear else 1


if __name__ == "__main__":
    sys.exit(main())
