"""dask.distributed: a LocalCluster of worker processes writes the same bytes as threads.

The build (cube store), the feature store (through the CLI's ``--scheduler``), the
prediction store and the landslide input store are written once with Dask's threaded
scheduler and once on a two-process LocalCluster, and compared file by file.
`tests/test_publish.py` already checks the lazy `predict` array on a cluster; here it is
the whole prediction store. Last, a worker process dies in the middle of a feature store
write, and the store is still the threaded one, byte for byte.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import dask
import pytest
import torch
from click.testing import CliRunner

from sar2ndvi import store
from sar2ndvi.catalog import select_scenes
from sar2ndvi.cli import main
from sar2ndvi.compute import SCHEDULER_ENV, SchedulerError, active_client, compute_context
from sar2ndvi.cube import build_cube
from sar2ndvi.features import FeatureSpec, write_features
from sar2ndvi.landslides import landslide_inputs, rasterize_inventory, write_inputs
from sar2ndvi.publish import ITEM_FILE, write_prediction
from sar2ndvi.synth.area import scene_recipe
from tests.faults_support import DieOnce
from tests.support import write_learnable_store, write_tiny_checkpoint

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store (chunks, metadata, attributes), by relative path."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def assert_same_files(a: Path, b: Path, skip: tuple[str, ...] = ()) -> None:
    fa = {k: v for k, v in store_files(a).items() if k not in skip}
    fb = {k: v for k, v in store_files(b).items() if k not in skip}
    assert sorted(fa) == sorted(fb)
    assert len(fa) > 20  # chunks, not just metadata
    different = [k for k in fa if fa[k] != fb[k]]
    assert different == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes; no memory limit (no spilling, no pausing)."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit=0,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def threaded(scene, stac_api, tmp_path_factory):
    """The cube and feature stores written with the threaded scheduler."""
    root = tmp_path_factory.mktemp("threaded")
    recipe = scene_recipe(scene, url=stac_api.url, chunk=128)
    selection = select_scenes(recipe)
    cube = root / "cube.zarr"
    store.write(build_cube(recipe, selection), cube, progress=False)
    features = root / "features.zarr"
    write_features(store.open(cube), str(features), FeatureSpec(), progress=False)
    return recipe, selection, cube, features


def test_build_on_a_cluster_writes_the_threaded_bytes(threaded, cluster, tmp_path):
    recipe, selection, cube, _ = threaded
    out = tmp_path / "cube.zarr"
    with distributed.Client(cluster) as client:
        assert dask.base.get_scheduler() == client.get
        store.write(build_cube(recipe, selection), out, progress=False)
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    # the rasters were read and the chunks stored by the workers, not by this process
    assert {"fetch_raster_window", "store-map"} <= set(ran)
    assert_same_files(cube, out)


def test_cli_features_on_a_scheduler_write_the_threaded_bytes(threaded, cluster, tmp_path):
    _, _, cube, features = threaded
    out = tmp_path / "features.zarr"
    result = CliRunner().invoke(
        main,
        ["features", str(cube), "--out", str(out), "--scheduler", cluster.scheduler_address],
    )
    assert result.exit_code == 0, result.output
    assert f"dask.distributed: scheduler {cluster.scheduler_address}, 2 workers" in result.output
    assert "dashboard http://" in result.output
    # the per-store progress bars count every region on a cluster too
    bars = re.findall(r"writing \S*features\.zarr: +(\d+)%\|.*?\| (\d+)/(\d+)", result.output)
    assert bars
    assert bars[-1][0] == "100"
    assert bars[-1][1] == bars[-1][2]
    assert active_client() is None  # the command's client is closed, the cluster runs on
    assert cluster.scheduler.status.name == "running"
    assert_same_files(features, out)


def test_prediction_on_a_cluster_writes_the_threaded_bytes(cluster, tmp_path):
    features = str(write_learnable_store(tmp_path / "features.zarr", shape=(100, 140), chunk=48))
    model = write_tiny_checkpoint(
        tmp_path / "model" / "checkpoint.pt", features, seed=2, dropout=0.0
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on a worker (distributed sets OMP_NUM_THREADS=1)
    try:
        a = write_prediction(str(model), features, tmp_path / "a" / "ndvi.zarr", progress=False)
    finally:
        torch.set_num_threads(threads)
    with distributed.Client(cluster):
        b = write_prediction(str(model), features, tmp_path / "b" / "ndvi.zarr", progress=False)
    assert_same_files(Path(a), Path(b), skip=(ITEM_FILE,))
    item_a, item_b = (json.loads((Path(p) / ITEM_FILE).read_text()) for p in (a, b))
    for item in (item_a, item_b):  # the processing time, the one thing that differs
        item["properties"].pop("datetime")
        item["assets"]["ndvi"].pop("href")
    assert item_a == item_b


def test_an_active_client_is_used_and_left_open(cluster):
    with distributed.Client(cluster) as client:
        # an active client wins over an address, which is then never dialled
        with compute_context("tcp://127.0.0.1:9") as info:
            assert info.client is client
            assert info.kind == "distributed"
            assert info.workers == 2
            assert info.threads == 2
        assert client.status == "running"
        assert active_client() is client


def test_threads_without_client_or_address(monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    lines = []
    with compute_context(echo=lines.append) as info:
        assert info.kind == "threads"
        assert info.client is None
        assert info.threads >= 1
        assert active_client() is None
    assert lines == [info.describe()]
    assert lines[0].startswith("dask: threaded scheduler")
    with dask.config.set(scheduler="synchronous"), compute_context() as info:
        assert info.kind == "synchronous"


def test_an_unreachable_scheduler_is_named(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with (
            pytest.raises(SchedulerError, match=f"scheduler at {address} within 1 s"),
            compute_context(address),
        ):
            pass
        # the CLI takes the address from the environment, and fails in one line
        result = CliRunner(env={SCHEDULER_ENV: address}).invoke(
            main, ["features", str(tmp_path / "cube.zarr"), "--out", str(tmp_path / "f.zarr")]
        )
    assert result.exit_code == 2
    assert f"cannot reach the Dask scheduler at {address}" in result.output
    assert active_client() is None


def test_landslide_layers_on_a_cluster_write_the_threaded_bytes(threaded, cluster, scene, tmp_path):
    _, _, cube, features = threaded
    layers = ["dndvi", "pre_vv", "post_vv", "post_vh", "slope", "post_B04", "post_B08"]

    def write(out: Path) -> Path:
        inputs = landslide_inputs(store.open(features), layers, cube=store.open(cube))
        labels = rasterize_inventory(scene.truth("landslides.geojson"), inputs)
        return Path(write_inputs(inputs, out, labels=labels))

    a = write(tmp_path / "threads" / "inputs.zarr")
    with distributed.Client(cluster) as client:
        b = write(tmp_path / "cluster" / "inputs.zarr")
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    # the inventory was burnt, the statistics made and the chunks stored by the workers
    assert {"rasterize_block", "band_moments", "store-map"} <= set(ran)
    assert_same_files(a, b)
    stored = store.open(b)["/inputs"].to_dataset()
    assert [str(v) for v in stored["band"].values] == layers
    assert 0 < int(stored["target"].sum()) < stored["target"].size  # landslides were burnt


def test_a_worker_lost_while_writing_features_changes_no_byte(threaded, cluster, tmp_path):
    _, _, cube, features = threaded
    out = tmp_path / "features.zarr"
    flag = tmp_path / "a-worker-died"
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    scheduler_log = logging.getLogger("distributed.scheduler")
    scheduler_log.addHandler(handler)
    try:
        with distributed.Client(cluster) as client:
            before = set(client.scheduler_info()["workers"])
            # the first worker to start its 3rd chunk write exits on the spot (os._exit)
            client.register_plugin(DieOnce(str(flag), 3, prefix="store-map"))
            try:
                write_features(store.open(cube), str(out), FeatureSpec(), progress=False)
            finally:
                client.unregister_worker_plugin(DieOnce.name)
            client.wait_for_workers(2, timeout=60)  # the nanny's new one (for later tests)
            after = set(client.scheduler_info()["workers"])
    finally:
        scheduler_log.removeHandler(handler)
    assert flag.exists()  # a worker process did die while writing the store
    assert before != after  # and its nanny started a new one
    assert store.is_complete(out)
    assert_same_files(features, out)
    # the feature graph names its tasks the same way every time (no random keys), and no
    # task reached the scheduler twice under one name with other dependencies
    assert [w for w in warnings if "run_spec" in w] == []
