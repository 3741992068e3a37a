"""Peak memory of the full feature build (build + store to Zarr) as the scene grows.

A lazy synthetic cube with the structure of `sar2ndvi.cube.build_cube`'s output (12
Sentinel-1 scenes, 8 Sentinel-2 scenes, a DEM; 512 px chunks) is turned into the feature
store of `sar2ndvi.features.build_features` and written with `sar2ndvi.store.write`, each
size in a fresh subprocess whose peak resident memory is read from the OS. Per-chunk
processing means memory stays flat: goal, peak(4096^2) / peak(2048^2) <= 1.3.

    .venv/bin/python benchmarks/features_memory.py [--sizes 2048 4096] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 512


def lazy_cube(size: int, chunk: int = CHUNK):
    """A seeded lazy cube of `size` x `size` pixels."""
    import dask.array as da
    import numpy as np
    import pandas as pd
    import xarray as xr

    res = 10.0
    coords = {"y": 3_800_000.0 - res * (np.arange(size) + 0.5),
              "x": 390_000.0 + res * (np.arange(size) + 0.5)}
    rng = da.random.default_rng(0)
    n1, n2 = 12, 8
    s1 = xr.Dataset(
        {p: (("time", "y", "x"), rng.gamma(4.4, 0.02, (n1, size, size),
                                           chunks=(1, chunk, chunk)).astype(np.float32))
         for p in ("vv", "vh")},
        coords={"time": pd.date_range("2024-03-01", periods=n1, freq="6D"), **coords},
    ).assign_coords(orbit_state=("time", ["ascending", "descending"] * (n1 // 2)),
                    relative_orbit=("time", [64, 71] * (n1 // 2)),
                    period=("time", ["pre"] * (n1 // 2) + ["post"] * (n1 // 2)))
    s2 = xr.Dataset(
        {"ndvi": (("time", "y", "x"), rng.uniform(0, 0.9, (n2, size, size),
                                                  chunks=(1, chunk, chunk)).astype(np.float32))},
        coords={"time": pd.date_range("2024-03-02", periods=n2, freq="9D"), **coords},
    ).assign_coords(period=("time", ["pre"] * (n2 // 2) + ["post"] * (n2 // 2)))
    yy = da.arange(size, chunks=chunk, dtype=np.float32)[:, None]
    xx = da.arange(size, chunks=chunk, dtype=np.float32)[None, :]
    elevation = 1000 + 300 * da.sin(xx / 40.0) * da.cos(yy / 55.0) + 0.05 * yy
    dem = xr.Dataset({"elevation": (("y", "x"), elevation.astype(np.float32))}, coords=coords)
    return xr.DataTree.from_dict({"/s1": s1, "/s2": s2, "/dem": dem})


def run_one(size: int, out: Path) -> dict:
    """Build and store the features of a `size` cube (called in a fresh subprocess)."""
    import dask
    from pyproj import CRS

    from sar2ndvi.features import FeatureSpec, write_features

    start = time.perf_counter()
    cube = lazy_cube(size)
    for group in ("/s1", "/s2", "/dem"):
        cube[group] = xr_georef(cube[group].to_dataset(), CRS.from_epsg(32611))
    with dask.config.set(scheduler="threads", num_workers=2):
        write_features(cube, str(out), FeatureSpec(window=29), progress=False)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"size": size, "seconds": time.perf_counter() - start, "peak_mib": peak_kib / 1024}


def xr_georef(ds, crs):
    from sar2ndvi.store import georeference

    return georeference(ds, crs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(2048, 4096))
    parser.add_argument("--quick", action="store_true", help="256 and 512 px")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:  # the child process
        print(json.dumps(run_one(args.one, args.out)))
        return 0
    sizes = (256, 512) if args.quick else tuple(args.sizes)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sar2ndvi-bench-"))
    results = []
    for size in sizes:
        out = workdir / f"features-{size}.zarr"
        child = subprocess.run([sys.executable, __file__, "--one", str(size), "--out", str(out)],
                               capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    small, large = results
    ratio = large["peak_mib"] / small["peak_mib"]
    print(f"{'scene':>12} {'peak MiB':>9} {'seconds':>8}")
    for r in results:
        print(f"{r['size']:>5} x {r['size']:<5} {r['peak_mib']:9.0f} {r['seconds']:8.1f}")
    met = ratio <= 1.3
    print(f"peak memory ratio {large['size']}^2 / {small['size']}^2: {ratio:.2f} "
          f"(pixels x{(large['size'] / small['size']) ** 2:.0f}); goal <= 1.3: "
          f"{'met' if met else 'NOT met'}")
    record = {"results": results, "ratio": ratio, "goal": 1.3, "met": met}
    (workdir / "features_memory.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
