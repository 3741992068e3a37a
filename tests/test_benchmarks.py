"""The benchmark scripts run, and the graph-size property they check holds (no timing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cube_engines_quick_run_is_linear_in_scenes(tmp_path):
    bench = _load("cube_engines")
    assert bench.main(["--quick", "--workdir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "cube_engines.json").read_text())
    assert record["linear"] is True
    tasks = [record["tasks"][k] for k in sorted(record["tasks"], key=int)]
    assert tasks == sorted(tasks)
    assert set(record["ratio_odc_over_stackstac"]) == {"build", "compute"}


def test_features_memory_quick_run_reports(tmp_path):
    bench = _load("features_memory")
    assert bench.main(["--quick", "--workdir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "features_memory.json").read_text())
    assert [r["size"] for r in record["results"]] == [256, 512]
    assert record["ratio"] > 0
    # the feature store it wrote is complete and has the paper's nine channels
    from sar2ndvi import store

    tree = store.open(tmp_path / "features-512.zarr")
    assert tree["/pre"]["features"].sizes["band"] == 9


def test_predict_quick_run_reports_overhead_and_memory(tmp_path):
    bench = _load("predict")
    assert bench.main(["--quick", "--workdir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "predict.json").read_text())
    over = record["overhead"]
    # the patch count it compares with is what the chunked prediction runs
    assert over["patches"] >= over["patches_one_pass"] > 0
    assert over["ratio"] > 0
    assert {"chunked", "whole-scene"} <= set(record["memory"])
    # both approaches wrote the same prediction
    import zarr

    chunked = zarr.open_group(tmp_path / "ndvi-128.zarr", mode="r")["ndvi"][:]
    whole = zarr.open_array(tmp_path / "ndvi-whole-128.zarr", mode="r")[:]
    import numpy as np

    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_patch_loader_quick_run_reports_rates(tmp_path):
    bench = _load("patch_loader")
    assert bench.main(["--quick", "--out", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "patch_loader.json").read_text())
    rates = record["median_rates"]
    assert all(v > 0 for v in rates.values())
    assert record["ratio_vs_xbatcher"] > 0
    assert record["ratio_vs_training"] > 0
