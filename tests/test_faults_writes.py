"""Writes that are interrupted for real: a build killed with SIGKILL half-way (a child
process, killed right after a region's chunks were written and before they were marked
done), a Dask worker process that dies in the middle of a feature build, a disk that fills
up (a per-file size limit, RLIMIT_FSIZE), and a checkpoint that carries code.

After each: a clear error (or the documented behaviour), nothing that looks complete when
it is not, earlier complete stores untouched, and a re-run that finishes the job with the
bytes an uninterrupted run writes.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from sar2ndvi import store
from sar2ndvi.checkpoint import load_checkpoint
from sar2ndvi.cli import main
from sar2ndvi.errors import InputError
from tests.faults_support import (
    FULL_DISK_WRITE,
    DieOnce,
    files,
    noisy_dataset,
    recipe_file,
    run_cli,
    tree_digest,
)
from tests.support import REPO

# --- SIGKILL half-way through a build ----------------------------------------------------------


def _done_chunk_files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every chunk file of the regions marked done, by relative path."""
    plan = json.loads((out / ".sar2ndvi" / "plan.json").read_text())
    found = {}
    for marker in (out / ".sar2ndvi" / "done").rglob("*"):
        if not marker.is_file():
            continue
        variable = marker.parent.relative_to(out / ".sar2ndvi" / "done").as_posix()
        step = plan["regions"][variable]
        region = [int(i) for i in marker.name.split(".")]
        ranges = [range(r * s, (r + 1) * s) for r, s in zip(region, step, strict=True)]
        for index in itertools.product(*ranges):
            chunk = out / variable / ".".join(map(str, index))
            if chunk.exists():  # the last region along a dim may be short
                stat = chunk.stat()
                found[chunk.relative_to(out).as_posix()] = (stat.st_ino, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory, scene, stac_api):
    """The test scene's cube, built by `sar2ndvi build` without interruption."""
    folder = tmp_path_factory.mktemp("cube")
    recipe = str(recipe_file(folder, scene, stac_api.url))
    result = CliRunner().invoke(main, ["build", recipe, "--out", str(folder / "cube.zarr")])
    assert result.exit_code == 0, result.output
    return folder / "cube.zarr"


@pytest.mark.slow
def test_a_build_killed_half_way_resumes_to_the_same_bytes(tmp_path, scene, stac_api, cube_path):
    recipe = str(recipe_file(tmp_path, scene, stac_api.url))
    out = tmp_path / "cube.zarr"
    runner = CliRunner()

    # SIGKILL after region 5's chunks are on disk and before its done marker is
    run_cli(["build", recipe, "--out", str(out)], cwd=tmp_path, kill_after=5)
    markers = [p for p in (out / ".sar2ndvi" / "done").rglob("*") if p.is_file()]
    assert 4 <= len(markers) < 30  # regions 1-4 marked done (siblings share a region)
    kept = _done_chunk_files(out)
    assert kept

    # a reader never takes it for complete
    assert not store.is_complete(out)
    assert json.loads((out / ".zattrs").read_text())[store.COMPLETE_ATTR] is False
    zmeta = json.loads((out / ".zmetadata").read_text())
    assert zmeta["metadata"][".zattrs"][store.COMPLETE_ATTR] is False
    with pytest.raises(store.IncompleteStoreError, match="incomplete"):
        store.open(out)
    assert xr.open_datatree(out, engine="zarr").attrs[store.COMPLETE_ATTR] is False
    refused = runner.invoke(main, ["features", str(out), "--out", str(tmp_path / "f.zarr")])
    assert refused.exit_code == 2
    assert f"{out} is incomplete" in refused.output
    assert not (tmp_path / "f.zarr").exists()

    # the same command again finishes it, without rewriting what was marked done
    result = runner.invoke(main, ["build", recipe, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert store.is_complete(out)
    assert not (out / ".sar2ndvi").exists()
    after = {name: (s.st_ino, s.st_mtime_ns) for name in kept for s in [(out / name).stat()]}
    assert after == kept
    assert files(out) == files(cube_path)  # byte for byte, as the uninterrupted build


# --- SIGKILL between a prediction store and its STAC item -----------------------------------


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory):
    """A small feature store and an untrained tiny U-net checkpoint for it."""
    from tests.support import write_learnable_store, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("predict")
    # one chunk: `detect` below labels objects across chunks, slow for many small ones
    features = write_learnable_store(root / "features.zarr", shape=(96, 112), chunk=112)
    model = write_tiny_checkpoint(root / "model" / "checkpoint.pt", features, seed=4)
    return str(model), str(features)


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _comparable(item: dict) -> dict:
    """A STAC item without what differs between two runs: the processing time, and the
    id and href that name the output folder."""
    item = json.loads(json.dumps(item))
    item["properties"].pop("datetime")
    item.pop("id")
    item["assets"]["ndvi"].pop("href")
    return item


@pytest.mark.slow
def test_a_predict_killed_before_its_stac_item_writes_it_on_the_rerun(predict_inputs, tmp_path):
    from sar2ndvi.publish import ITEM_FILE, write_prediction

    model, features = predict_inputs
    out = tmp_path / "ndvi.zarr"
    args = ["predict", model, features, "--out", str(out), "--period", "pre", "--chunks", "48"]

    # SIGKILL once the store is complete, just before its item.json is written
    run_cli(args, cwd=tmp_path, kill_before="sar2ndvi.publish:write_item")
    assert store.is_complete(out)
    assert not (out / ITEM_FILE).exists()
    assert not list(out.glob(f"{ITEM_FILE}*"))  # no half-written item either
    store_bytes, stats = files(out), _stats(out)

    # the re-run writes the missing item from the stored cube, and recomputes nothing
    runner = CliRunner()
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "reused" in again.output
    assert "wrote its missing STAC item" in again.output
    assert files(out, skip=(ITEM_FILE,)) == store_bytes
    assert {k: v for k, v in _stats(out).items() if k != ITEM_FILE} == stats
    item = json.loads((out / ITEM_FILE).read_text())
    assert item["assets"]["ndvi"]["href"] == str(out)
    assert not list(out.glob(f"{ITEM_FILE}.tmp*"))

    # the item is the one an uninterrupted run writes (not the NDVI bytes: torch's float32
    # rounding depends on its thread count, which differs between processes)
    whole = write_prediction(
        model, features, tmp_path / "whole" / "ndvi.zarr", progress=False, period="pre", chunks=48
    )
    expected = json.loads((Path(whole) / ITEM_FILE).read_text())
    assert _comparable(item) == _comparable(expected)

    # with the item there, a third run touches nothing
    written = (out / ITEM_FILE).read_bytes()
    third = runner.invoke(main, args)
    assert third.exit_code == 0, third.output
    assert "missing STAC item" not in third.output
    assert (out / ITEM_FILE).read_bytes() == written


def test_a_failed_item_write_leaves_no_item(predict_inputs, tmp_path, monkeypatch):
    from sar2ndvi import publish

    model, features = predict_inputs
    out = publish.write_prediction(
        model, features, tmp_path / "ndvi.zarr", progress=False, item=False, period="pre"
    )
    assert not publish.has_item(out)

    def fail(src, dst):
        raise OSError(f"cannot rename {src} to {dst}")

    monkeypatch.setattr(publish.os, "replace", fail)
    with pytest.raises(OSError, match="cannot rename"):
        publish.ensure_item(out)
    # the item appears whole or not at all: no item.json, no temporary file
    assert sorted(p.name for p in Path(out).glob("item.json*")) == []
    monkeypatch.undo()
    assert publish.ensure_item(out) == f"{out}/item.json"
    assert publish.has_item(out)
    assert publish.ensure_item(out) is None


# --- SIGKILL half-way through `sar2ndvi detect` -----------------------------------------------


@pytest.mark.slow
def test_a_detect_killed_half_way_resumes_to_the_same_bytes(predict_inputs, tmp_path):
    import geopandas as gpd

    from sar2ndvi.publish import write_prediction

    model, features = predict_inputs
    ndvi = write_prediction(model, features, tmp_path / "ndvi.zarr", progress=False, item=False)
    args = ["detect", features, "--prediction", ndvi, "--min-slope", "0", "--min-area", "0"]
    out = tmp_path / "killed"
    target = out / "landslides.zarr"

    # SIGKILL after the mask/score/label chunks are on disk, before they are marked done
    run_cli([*args, "--out", str(out)], cwd=tmp_path, kill_after=1)
    assert not store.is_complete(target)
    with pytest.raises(store.IncompleteStoreError, match="incomplete"):
        store.open(target)
    assert not list(out.glob("landslides.*json"))
    assert not (out / "landslides.gpkg").exists()

    runner = CliRunner()
    again = runner.invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert store.is_complete(target)
    assert sorted(p.name for p in out.iterdir()) == [
        "landslides.geojson",
        "landslides.gpkg",
        "landslides.zarr",
    ]  # the scratch store of the killed run is gone too
    whole = runner.invoke(main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert files(target) == files(tmp_path / "whole" / "landslides.zarr")
    polygons = [gpd.read_file(d / "landslides.gpkg") for d in (out, tmp_path / "whole")]
    assert len(polygons[0]) > 0
    assert polygons[0].equals(polygons[1])


# --- a worker lost in the middle of a feature build --------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_during_a_feature_build(cube_path, tmp_path):
    distributed = pytest.importorskip("distributed")
    from sar2ndvi.features import build_features

    cube = store.open(cube_path)
    with dask.config.set(scheduler="threads"):
        expected = build_features(cube).compute()
    flag = tmp_path / "a-worker-died"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        before = set(client.scheduler_info()["workers"])
        # the first worker to start its 10th task exits on the spot (os._exit)
        client.register_plugin(DieOnce(str(flag), 10))
        got = build_features(cube).compute()
        after = set(client.scheduler_info()["workers"])
    assert flag.exists()  # a worker process did die mid-build
    assert before != after  # and its nanny started a new one
    xr.testing.assert_identical(got, expected)


# --- a full disk -------------------------------------------------------------------------------


def test_a_full_disk_stops_the_write_clearly_and_spares_complete_stores(tmp_path):
    earlier = store.write(noisy_dataset(), tmp_path / "earlier.zarr", progress=False)
    digest = tree_digest(Path(earlier))
    out = tmp_path / "new.zarr"

    limit = 64 * 1024  # metadata files fit, a 128 KiB chunk does not
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITE, str(out), str(limit), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 2, child.stdout + child.stderr
    said = child.stdout
    assert f"error: {out}: writing /noise stopped at region" in said
    assert "File too large" in said
    assert "the disk (or quota) is full: free some space" in said
    assert "re-run the same write to finish it" in said
    assert "Traceback" not in child.stderr

    assert tree_digest(Path(earlier)) == digest  # the earlier complete store is untouched
    assert store.is_complete(earlier)
    assert not store.is_complete(out)
    with pytest.raises(store.IncompleteStoreError):
        store.open(out)
    assert max(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= limit
    assert not list(out.rglob("*.tmp*"))  # no half-written chunk file left behind

    # space freed: the same write finishes, with the bytes of the earlier one
    store.write(noisy_dataset(), out, progress=False)
    assert files(out) == files(Path(earlier))


def test_no_space_left_mid_write_is_named(tmp_path, monkeypatch):
    real, calls = store._write_region, []

    def fill_up(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_write_region", fill_up)
    out = tmp_path / "full.zarr"
    with pytest.raises(store.StoreError, match=r"No space left on device.*disk \(or quota\) is "
                       "full: free some space; the store is incomplete: re-run"):  # fmt: skip
        store.write(noisy_dataset(), out, progress=False, region_bytes=1)
    assert not store.is_complete(out)
    monkeypatch.setattr(store, "_write_region", real)
    store.write(noisy_dataset(), out, progress=False, region_bytes=1)
    expected = noisy_dataset()["noise"].values
    np.testing.assert_array_equal(store.open(out)["noise"].values, expected)


# --- a checkpoint that carries code ------------------------------------------------------------


class _Payload:
    """Unpickling this writes a file: the proof that a load ran code from the checkpoint."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (Path.write_text, (self.proof, "code from the checkpoint ran"))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    proof = tmp_path / "ran.txt"
    path = tmp_path / "model" / "best.pt"
    path.parent.mkdir()
    torch.save({"format": "sar2ndvi-checkpoint", "format_version": 1, "x": _Payload(proof)}, path)

    with pytest.raises(InputError, match=rf"{path} holds a pickled Python object .* refuses"):
        load_checkpoint(path)
    assert not proof.exists()

    # the control: an unsafe load of the same file does run it
    torch.load(path, weights_only=False)
    assert proof.exists()


def test_a_pickle_that_is_not_a_torch_file_is_refused_without_running_it(tmp_path):
    proof = tmp_path / "ran.txt"
    path = tmp_path / "best.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(proof)}, protocol=2))
    with pytest.raises(InputError, match=rf"{path} holds a pickled Python object"):
        load_checkpoint(path)
    assert not proof.exists()
