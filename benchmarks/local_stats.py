"""sar2ndvi.localstats against xarray's rolling window and against one scipy filter pass.

1. NaN-aware local mean + std (window 29) of a 1024 x 1024 float32 Dask array in 64 x 64
   chunks with 10 % NaN: ``local_mean_std`` against xarray's
   ``rolling(y=29, x=29, center=True, min_periods=1).mean()`` and ``.std()``, both computed
   together, each in a fresh subprocess (time and peak RSS); the values must agree.
2. Window independence: time(29) / time(11) on the same Dask array, interleaved repeats,
   medians.
3. The floor: mean + std of a NumPy array (2048 x 2048, 10 % NaN) against ONE plain
   ``scipy.ndimage.uniform_filter`` pass over it (no NaN handling), interleaved repeats.

    .venv/bin/python benchmarks/local_stats.py [--repeats 5] [--quick] [--out DIR]

Prints a table measure | value | goal | met? and writes ``local_stats.json`` into DIR
(default ``out/benchmarks``). The exit code is always 0: it is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_array(size: int, seed: int = 0, nan_fraction: float = 0.10) -> np.ndarray:
    """dB-like float32 data (VV around -15 dB, std 2) with seeded NaNs."""
    rng = np.random.default_rng(seed)
    a = rng.normal(-15.0, 2.0, (size, size)).astype(np.float32)
    a[rng.random(a.shape) < nan_fraction] = np.nan
    return a


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def run_case(case: str, size: int, chunk: int, window: int, result: Path, repeats: int) -> dict:
    """One case, meant to run in a fresh process: compute mean + std, report time and RSS.

    A small warm-up run of the same code first (imports, thread pool, the cached numba
    kernel), then ``repeats`` timed runs: the median time and the process's peak RSS.
    """
    import dask
    import xarray as xr

    from sar2ndvi.localstats import local_mean_std

    def stats(img):
        if case == "ours":
            return local_mean_std(img, window)
        roll = img.rolling(y=window, x=window, center=True, min_periods=1)
        return roll.mean(), roll.std()

    def compute(a):
        img = xr.DataArray(a, dims=("y", "x")).chunk({"y": chunk, "x": chunk})
        mean, std = stats(img)
        return dask.compute(mean.data, std.data)

    with dask.config.set(scheduler="threads"):
        compute(make_array(2 * chunk))
        a = make_array(size)
        baseline = _rss_mib()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            mean, std = compute(a)
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.savez(result, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    return {
        "seconds": statistics.median(times),
        "all_seconds": times,
        "peak_rss_mib": peak,
        "baseline_rss_mib": baseline,
    }


def _subprocess_case(
    case: str, size: int, chunk: int, window: int, workdir: Path, repeats: int
) -> dict:
    result = workdir / f"{case}.npz"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        case,
        "--size",
        str(size),
        "--chunk",
        str(chunk),
        "--window",
        str(window),
        "--result",
        str(result),
        "--case-repeats",
        str(repeats),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["result"] = str(result)
    return record


def _interleaved(funcs: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in funcs}
    for f in funcs.values():  # warm up
        f()
    for _ in range(repeats):
        for k, f in funcs.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="Dask array size (xarray case)")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--floor-size", type=int, default=2048, help="NumPy array size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--case-repeats", type=int, default=3, help="timed runs per fresh-process case"
    )
    parser.add_argument("--quick", action="store_true", help="small arrays, 2 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks")
    # internal: run one case in this (fresh) process
    parser.add_argument("--case", choices=["ours", "xarray"], help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=29, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(
            json.dumps(
                run_case(
                    args.case, args.size, args.chunk, args.window, args.result, args.case_repeats
                )
            )
        )
        return 0

    import dask
    import dask.array as da
    from scipy import ndimage

    from sar2ndvi import localstats
    from sar2ndvi.localstats import local_mean_std, local_mean_std_numpy

    size, chunk, floor_size, repeats = (
        (128, 32, 256, 2) if args.quick else (args.size, args.chunk, args.floor_size, args.repeats)
    )
    case_repeats = 1 if args.quick else args.case_repeats
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. against xarray's rolling window, each in a fresh process
    with tempfile.TemporaryDirectory(prefix="sar2ndvi-localstats-") as tmp:
        cases = {
            c: _subprocess_case(c, size, chunk, 29, Path(tmp), case_repeats)
            for c in ("ours", "xarray")
        }
        ours = np.load(cases["ours"]["result"])
        ref = np.load(cases["xarray"]["result"])
        diff = {}
        same_nans = True
        for k in ("mean", "std"):
            same_nans &= bool(np.array_equal(np.isnan(ours[k]), np.isnan(ref[k])))
            diff[k] = float(np.nanmax(np.abs(ours[k].astype(np.float64) - ref[k])))
    speedup = cases["xarray"]["seconds"] / cases["ours"]["seconds"]
    memory_ratio = cases["xarray"]["peak_rss_mib"] / cases["ours"]["peak_rss_mib"]
    growth = {k: v["peak_rss_mib"] - v["baseline_rss_mib"] for k, v in cases.items()}
    growth_ratio = growth["xarray"] / max(growth["ours"], 1.0)
    values_agree = same_nans and max(diff.values()) < 1e-4

    # 2. window independence on the same Dask array
    a = make_array(size)
    x = da.from_array(a, chunks=(chunk, chunk))

    def dask_run(w):
        return lambda: dask.compute(*local_mean_std(x, w), scheduler="threads")

    by_window = _interleaved({"11": dask_run(11), "29": dask_run(29)}, repeats)
    window_ratio = by_window["29"] / by_window["11"]
    b = make_array(floor_size, seed=1)
    by_window_np = _interleaved(
        {"11": lambda: local_mean_std_numpy(b, 11), "29": lambda: local_mean_std_numpy(b, 29)},
        repeats,
    )
    window_ratio_np = by_window_np["29"] / by_window_np["11"]

    # 3. against one plain uniform_filter pass (no NaN handling) over the same array
    floor = _interleaved(
        {
            "ours": lambda: local_mean_std_numpy(b, 29),
            "uniform_filter": lambda: ndimage.uniform_filter(b, 29),
        },
        repeats,
    )
    floor_ratio = floor["ours"] / floor["uniform_filter"]

    rows = [
        (
            "speed-up vs xarray rolling mean+std (w=29, dask)",
            f"{speedup:.1f}x",
            ">= 50x",
            speedup >= 50,
        ),
        ("peak RSS xarray / ours (fresh processes)", f"{memory_ratio:.1f}x", "report", None),
        (
            "RSS growth during compute xarray / ours",
            f"{growth['xarray']:.0f}/{growth['ours']:.0f} MiB = {growth_ratio:.1f}x",
            "report",
            None,
        ),
        (
            "max |diff| vs xarray: mean, std",
            f"{diff['mean']:.1e}, {diff['std']:.1e}",
            "float32 (<1e-4)",
            values_agree,
        ),
        ("time(29) / time(11), dask", f"{window_ratio:.2f}", "<= 1.3", window_ratio <= 1.3),
        ("time(29) / time(11), numpy", f"{window_ratio_np:.2f}", "<= 1.3", window_ratio_np <= 1.3),
        (
            f"mean+std / one uniform_filter pass ({floor_size}^2)",
            f"{floor_ratio:.2f}x",
            "<= 5x",
            floor_ratio <= 5,
        ),
    ]
    print(
        f"dask array {size} x {size} in {chunk} x {chunk} chunks, 10% NaN; "
        f"numpy {floor_size} x {floor_size}; numba: {localstats.HAVE_NUMBA}; "
        f"repeats {repeats}"
    )
    for name, rec in cases.items():
        print(
            f"  {name:7} {rec['seconds']:8.3f} s  peak RSS {rec['peak_rss_mib']:7.0f} MiB "
            f"(before compute {rec['baseline_rss_mib']:.0f} MiB)"
        )
    print(
        f"  dask w=11 {by_window['11']:.4f} s, w=29 {by_window['29']:.4f} s; "
        f"numpy w=11 {by_window_np['11']:.4f} s, w=29 {by_window_np['29']:.4f} s; "
        f"uniform_filter {floor['uniform_filter']:.4f} s"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':{width}} | {'value':>16} | {'goal':>15} | met? |")
    print(f"|{'-' * (width + 2)}|{'-' * 18}|{'-' * 17}|------|")
    for name, value, goal, met in rows:
        flag = "-" if met is None else ("yes" if met else "NO")
        print(f"| {name:{width}} | {value:>16} | {goal:>15} | {flag:4} |")

    record = {
        "quick": args.quick,
        "size": size,
        "chunk": chunk,
        "floor_size": floor_size,
        "repeats": repeats,
        "numba": localstats.HAVE_NUMBA,
        "cases": {k: {kk: vv for kk, vv in v.items() if kk != "result"} for k, v in cases.items()},
        "speedup_vs_xarray": speedup,
        "peak_rss_ratio_xarray_over_ours": memory_ratio,
        "rss_growth_mib": growth,
        "rss_growth_ratio_xarray_over_ours": growth_ratio,
        "case_repeats": case_repeats,
        "max_abs_diff": diff,
        "nan_positions_agree": same_nans,
        "values_agree": values_agree,
        "median_seconds_by_window_dask": by_window,
        "window_ratio_29_over_11": window_ratio,
        "median_seconds_by_window_numpy": by_window_np,
        "window_ratio_29_over_11_numpy": window_ratio_np,
        "median_seconds_floor": floor,
        "ratio_over_uniform_filter": floor_ratio,
        "goals_met": {name: met for name, _, _, met in rows if met is not None},
    }
    path = args.out / "local_stats.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
