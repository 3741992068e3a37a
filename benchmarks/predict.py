"""Chunk-wise blended prediction: its overhead over the bare model, and its flat memory.

1. Overhead: `sar2ndvi.predict.predict` over a feature store (reading Zarr, halos,
   normalisation, blending, cropping) against the bare forward pass of the same model over
   the same number of patches (random tensors, batches of the same size). Goal: <= 1.15.
   The share of patches repeated across chunk borders is reported beside it.
2. Flat memory: peak RSS of writing the prediction of a scene 4x larger in area
   (`sar2ndvi.publish.write_prediction`), goal <= 1.3x the smaller one's, each size in a
   fresh process; and the same for the usual approach, the whole scene's features and
   blending accumulators in memory (what pytorch-toolbelt's TileMerger or Raster Vision
   do), whose memory grows with the scene.

    .venv/bin/python benchmarks/predict.py [--size 1024] [--quick] [--workdir DIR]

Prints a table and writes ``predict.json`` into the work folder. Exit code 0: a report.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PATCH, OVERLAP, BATCH = 128, 64, 16
QUICK_PATCH, QUICK_OVERLAP = 32, 16


def make_inputs(workdir: Path, size: int, width: int) -> tuple[str, str]:
    """A feature store of `size` x `size` (9 bands) and a checkpoint of a U-net of `width`."""
    import numpy as np
    import torch
    import xarray as xr

    from sar2ndvi import store
    from sar2ndvi.checkpoint import Checkpoint, save_checkpoint
    from sar2ndvi.features import PAPER_CHANNELS
    from sar2ndvi.model import UNet, UNetConfig

    features = workdir / f"features-{size}.zarr"
    model = workdir / f"model-w{width}" / "checkpoint.pt"
    bands = list(PAPER_CHANNELS)
    if not store.is_complete(features):
        import dask.array as da

        rng = da.random.default_rng(0)
        coords = {
            "y": 3_800_000.0 - 10.0 * (np.arange(size) + 0.5),
            "x": 390_000.0 + 10.0 * (np.arange(size) + 0.5),
        }
        feats = rng.normal(0, 1, (len(bands), size, size), chunks=(1, 512, 512)).astype("f4")
        ds = xr.Dataset({"features": (("band", "y", "x"), feats)}, coords={**coords, "band": bands})
        norm = xr.Dataset(
            {"center": ("band", np.zeros(9, "f4")), "scale": ("band", np.ones(9, "f4"))},
            coords={"band": bands},
        )
        tree = xr.DataTree.from_dict(
            {"/pre": store.georeference(ds, "EPSG:32611"), "/normalisation": norm}
        )
        store.write(tree, features, progress=False, overwrite=True)
    if not model.exists():
        torch.manual_seed(0)
        meta = {
            "normalisation": {"band": bands, "center": [0.0] * 9, "scale": [1.0] * 9},
            "patch": {"size": PATCH, "overlap": OVERLAP},
        }
        save_checkpoint(Checkpoint.from_model(UNet(UNetConfig(width=width)), meta), model)
    return str(features), str(model)


def overhead(workdir: Path, size: int, width: int, chunk: int) -> dict:
    """Tiled prediction time against bare forward passes over as many patches."""
    import dask
    import torch

    from sar2ndvi.checkpoint import load_checkpoint
    from sar2ndvi.patches import PatchSpec
    from sar2ndvi.predict import predict
    from sar2ndvi.tiling import lattice, patch_count

    features, model = make_inputs(workdir, size, width)
    spec = PatchSpec(PATCH, OVERLAP)
    chunks = (tuple([chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])),) * 2
    n_patches = patch_count((size, size), chunks, spec)
    n_single = len(lattice(size, spec)) ** 2
    net = load_checkpoint(model).model()
    x = torch.randn(BATCH, 9, PATCH, PATCH)
    with torch.inference_mode():
        net(x)  # warm-up

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n_patches, BATCH):
                net(x[: min(BATCH, n_patches - i)])
        return time.perf_counter() - start

    def tiled() -> float:
        start = time.perf_counter()
        # one task at a time: torch uses every core for each batch, as in `bare`
        with dask.config.set(scheduler="threads", num_workers=1):
            predict(model, features, chunks=chunk).compute()
        return time.perf_counter() - start

    tiled()  # warm-up (model cache, zarr metadata)
    runs = [(bare(), tiled()) for _ in range(2)]
    t_bare = min(r[0] for r in runs)
    t_tiled = min(r[1] for r in runs)
    return {
        "size": size,
        "chunk": chunk,
        "patches": n_patches,
        "patches_one_pass": n_single,
        "repeated_share": n_patches / n_single - 1,
        "bare_s": t_bare,
        "tiled_s": t_tiled,
        "ratio": t_tiled / t_bare,
    }


def run_memory_case(kind: str, workdir: Path, size: int, width: int, chunk: int) -> dict:
    """One memory case (in a fresh process): write the prediction, report peak RSS."""
    import numpy as np

    features, model = make_inputs(workdir, size, width)
    start = time.perf_counter()
    if kind == "chunked":
        from sar2ndvi.publish import write_prediction

        write_prediction(
            model,
            features,
            workdir / f"ndvi-{size}.zarr",
            overwrite=True,
            progress=False,
            item=False,
            period="pre",
            chunks=chunk,
        )
    else:
        import zarr

        from sar2ndvi import store
        from sar2ndvi.patches import PatchSpec
        from sar2ndvi.predict import ModelRunner
        from sar2ndvi.tiling import predict_image

        # the whole scene in memory, patches blended into scene-sized accumulators
        image = store.open(features)["/pre"]["features"].values
        runner = ModelRunner.from_checkpoint(model)
        ndvi = predict_image(image, PatchSpec(PATCH, OVERLAP), runner, batch_size=BATCH)[0]
        out = zarr.open_array(
            workdir / f"ndvi-whole-{size}.zarr",
            mode="w",
            shape=ndvi.shape,
            chunks=(chunk, chunk),
            dtype=np.float32,
        )
        out[:] = ndvi
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "size": size, "peak_mib": peak, "seconds": time.perf_counter() - start}


def memory(workdir: Path, sizes: tuple[int, int], width: int, chunk: int) -> dict:
    out = {}
    for kind in ("chunked", "whole-scene"):
        rows = []
        for size in sizes:
            make_inputs(workdir, size, width)
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    kind,
                    "--size",
                    str(size),
                    "--width",
                    str(width),
                    "--chunk",
                    str(chunk),
                    "--workdir",
                    str(workdir),
                    *(["--quick"] if PATCH == QUICK_PATCH else []),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        out[kind] = {"runs": rows, "ratio": rows[1]["peak_mib"] / rows[0]["peak_mib"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="smaller scene side, px")
    parser.add_argument("--width", type=int, default=32, help="U-net width (overhead)")
    parser.add_argument(
        "--memory-size",
        type=int,
        default=2048,
        help="smaller scene side of the memory comparison, px",
    )
    parser.add_argument(
        "--memory-width",
        type=int,
        default=8,
        help="U-net width of the memory comparison: a small network, so that "
        "the scene's data, not the forward pass, decides the peak",
    )
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="256 / 512 px, a tiny U-net")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sar2ndvi-bench-predict-"))
    workdir.mkdir(parents=True, exist_ok=True)
    global PATCH, OVERLAP
    if args.quick:  # a smoke run: small scenes, patches and model
        PATCH, OVERLAP = QUICK_PATCH, QUICK_OVERLAP
    if args.case is not None:  # a child process
        print(json.dumps(run_memory_case(args.case, workdir, args.size, args.width, args.chunk)))
        return 0
    size, width, chunk = (128, 4, 64) if args.quick else (args.size, args.width, args.chunk)
    mem_size, mem_width = (size, width) if args.quick else (args.memory_size, args.memory_width)
    over = overhead(workdir, 2 * size, width, chunk)
    # memory: chunks small enough that even the smaller scene keeps both threads busy
    # (two forward passes at once), so that the comparison is of scene size alone
    mem_chunk = min(chunk, mem_size // 2)
    mem = memory(workdir, (mem_size, 2 * mem_size), mem_width, mem_chunk)
    print(f"{'measure':<58} {'value':>8} {'goal':>7}  met")
    print(
        f"{'time, tiled + blended / bare forward (same patches)':<58} "
        f"{over['ratio']:8.2f} {'<= 1.15':>7}  {'yes' if over['ratio'] <= 1.15 else 'NO'}"
    )
    print(
        f"{'  patches repeated across ' + str(chunk) + ' px chunk borders':<58} "
        f"{over['repeated_share']:8.0%} {'':>7}"
    )
    for kind in ("chunked", "whole-scene"):
        r = mem[kind]
        small, large = (run["peak_mib"] for run in r["runs"])
        goal = "<= 1.3" if kind == "chunked" else ""
        met = ("yes" if r["ratio"] <= 1.3 else "NO") if kind == "chunked" else ""
        label = (
            f"peak memory {2 * mem_size}^2 / {mem_size}^2, {kind} ({small:.0f} -> {large:.0f} MiB)"
        )
        if kind == "chunked":
            label = label.replace("chunked", f"chunks of {mem_chunk}")
        print(f"{label:<58} {r['ratio']:8.2f} {goal:>7}  {met}")
    record = {
        "overhead": over,
        "memory": {**mem, "chunk": mem_chunk, "size": mem_size, "width": mem_width},
    }
    (workdir / "predict.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
