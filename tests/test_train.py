"""Training: a step learns, runs are reproducible and resumable, outputs are complete;
evaluation scores every model on the same test pixels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sar2ndvi import metrics
from sar2ndvi.checkpoint import BEST, LAST, load_checkpoint
from sar2ndvi.cli import main
from sar2ndvi.errors import InputError
from sar2ndvi.evaluate import evaluate, held_out_areas, write_report
from sar2ndvi.loss import CompositeLoss
from sar2ndvi.model import UNet, UNetConfig
from sar2ndvi.patches import PatchDataset, PatchSpec
from sar2ndvi.split import load_split
from sar2ndvi.train import TrainConfig, train
from tests.support import write_learnable_store

SPEC = PatchSpec(32, 16)


def small_config(**overrides) -> TrainConfig:
    base = dict(
        patch=SPEC,
        model=UNetConfig(width=4, depth=2, dropout=0.0),
        epochs=2,
        batch_size=8,
        num_workers=0,
        seed=3,
        block=64,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return str(write_learnable_store(tmp_path_factory.mktemp("train") / "features.zarr"))


@pytest.fixture(scope="module")
def trained(store_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    return train(store_path, out, small_config(), progress=False)


def test_one_step_reduces_the_loss_on_a_fixed_batch(store_path):
    torch.manual_seed(0)
    data = PatchDataset(store_path, np.array([[0, 0], [32, 64], [64, 96]]), SPEC)
    batch = [data[i] for i in range(len(data))]
    x = torch.stack([b["x"] for b in batch])
    y = torch.stack([b["y"] for b in batch])
    mask = torch.stack([b["mask"] for b in batch])
    net = UNet(UNetConfig(width=4, depth=2, dropout=0.0))
    loss_fn = CompositeLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net.train()
    with torch.no_grad():
        before = float(loss_fn(net(x), y, mask))
    opt.zero_grad()
    loss_fn(net(x), y, mask).backward()
    opt.step()
    with torch.no_grad():
        after = float(loss_fn(net(x), y, mask))
    assert after < before


def test_a_run_writes_checkpoints_split_metrics_and_config(trained, store_path):
    out = trained.out
    for name in (BEST, LAST, "split.json", "metrics.csv", "config.json"):
        assert (out / name).exists(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    best = load_checkpoint(out)
    meta = best.metadata
    assert meta["patch"] == {"size": 32, "overlap": 16}
    assert meta["normalisation"]["band"][0] == "vv"
    assert meta["feature_store"] == store_path
    assert best.config.in_channels == 9
    assert meta["epoch"] == trained.best_epoch
    assert load_checkpoint(out / LAST).training is not None
    split = load_split(out / "split.json")
    assert meta["split"]["test"] == len(split.patches("test")) > 0


def test_training_is_reproducible_from_the_seed(trained, store_path, tmp_path):
    again = train(store_path, tmp_path / "again", small_config(), progress=False)
    a, b = load_checkpoint(trained.out / LAST), load_checkpoint(again.out / LAST)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert (trained.out / "split.json").read_text() == (again.out / "split.json").read_text()


def test_resuming_continues_exactly_where_the_run_stopped(trained, store_path, tmp_path):
    out = tmp_path / "resumed"
    train(store_path, out, small_config(epochs=1), progress=False)
    train(store_path, out, small_config(epochs=2), resume=True, progress=False)
    a, b = load_checkpoint(trained.out / LAST), load_checkpoint(out / LAST)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    history = json.loads(b.training["history"])
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_finished_run_is_not_overwritten_silently(trained, store_path):
    with pytest.raises(InputError, match="already holds a training run"):
        train(store_path, trained.out, small_config(), progress=False)
    with pytest.raises(InputError, match="another configuration"):
        train(store_path, trained.out, small_config(seed=4), resume=True, progress=False)


def test_evaluation_scores_every_model_on_the_same_test_pixels(trained, store_path, tmp_path):
    ev = evaluate(trained.out, store_path, baseline_pixels=5000)
    assert set(ev.table) == {"U-net", "linear", "random forest"}
    counts = {row["n_pixels"] for row in ev.table.values()}
    assert len(counts) == 1
    assert counts.pop() > 0
    # the table's U-net scores are the metrics of the shown arrays where only one area
    split = load_split(trained.out / "split.json")
    if len(held_out_areas(split)) == 1:
        mask = np.isfinite(ev.truth.values)
        expected = metrics.score(ev.prediction.values, ev.truth.values, mask)
        assert ev.table["U-net"]["rmse"] == pytest.approx(expected["rmse"])
    # the linear baseline nearly recovers this store's smooth relationship
    assert ev.table["linear"]["rmse"] < 0.2
    report = write_report(ev, tmp_path / "report", crs="EPSG:32611")
    assert (report / "figure.png").stat().st_size > 10_000
    assert json.loads((report / "metrics.json").read_text())["metrics"]["U-net"]["n_pixels"] > 0


def test_test_areas_cover_exactly_the_test_patches(trained):
    split = load_split(trained.out / "split.json")
    covered = np.zeros(split.shape, bool)
    for area in held_out_areas(split):
        covered[area.rows, area.cols] |= area.covered
    expected = np.zeros(split.shape, bool)
    for r, c in split.patches("test"):
        expected[r : r + SPEC.size, c : c + SPEC.size] = True
    np.testing.assert_array_equal(covered, expected)


def test_cli_train_and_evaluate(store_path, tmp_path):
    out = tmp_path / "cli-model"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "train",
            store_path,
            "--out",
            str(out),
            "--epochs",
            "1",
            "--patch-size",
            "32",
            "--overlap",
            "16",
            "--width",
            "4",
            "--depth",
            "2",
            "--workers",
            "0",
            "--block",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / BEST).exists()
    result = runner.invoke(main, ["evaluate", str(out), store_path, "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "random forest" in result.output
    assert (tmp_path / "rep" / "figure.png").exists()
    result = runner.invoke(main, ["train", store_path, "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 2
    assert "already holds a training run" in result.output
