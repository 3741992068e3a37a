"""The run report: tables from the stages' files, figures beside the page, stage times."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pytest

from sar2ndvi.report import (
    REPORT_FILE,
    RunReport,
    StageTime,
    load_stage_times,
    merge_stage_times,
    plot_training_curves,
    save_stage_times,
    write_run_report,
)


class _Page(HTMLParser):
    """Collects the text of every table cell, the image sources and open/close balance."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []
        self.depth: dict[str, int] = {}
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.depth[tag] = self.depth.get(tag, 0) + 1
        if tag in ("td", "th"):
            self._cell = []
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self.depth[tag] = self.depth.get(tag, 0) - 1
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _training_log(path, epochs=5):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_rmse"])
        for e in range(1, epochs + 1):
            writer.writerow([e, 1.0 / e, 1.2 / e, 0.1 / e])
    return path


def test_report_shows_every_table_value_and_copies_figures(tmp_path):
    log = _training_log(tmp_path / "metrics.csv")
    curves = plot_training_curves(log, tmp_path / "work" / "curves.png", title="t")
    image = mpimg.imread(curves)
    assert image.shape[0] > 200
    assert image.shape[1] > 300
    ndvi = {
        "metrics": {
            "U-net": {"rmse": 0.05312, "mae": 0.04, "ssim": 0.885, "psnr": 31.53, "n_pixels": 9},
            "random forest": {
                "rmse": 0.0595,
                "mae": 0.044,
                "ssim": 0.85,
                "psnr": 30.5,
                "n_pixels": 9,
            },
        },
        "data_range": 2.0,
        "ssim": {"window": 11, "sigma": 1.5},
    }
    landslides = {
        "rows": [
            {
                "setting": "5",
                "inputs": "radar dNDVI",
                "method": "U-net",
                "precision": 0.9,
                "recall": 0.8,
                "f1": 0.847,
                "mcc": 0.926,
                "iou": 0.7,
                "hit_rate": 0.95,
                "matched_rate": float("nan"),
            },
        ],
        "thresholds": {"5": -0.123},
    }
    report = RunReport(
        title="a <b>run</b>",
        recipe={"scene": "seed 0 & more"},
        items=[{"id": "S1A_<x>", "collection": "sentinel-1-rtc"}],
        ndvi_metrics=ndvi,
        landslide_metrics=landslides,
        figures=[("curves", curves), ("missing", tmp_path / "nope.png")],
        stage_times=[StageTime("cube", 12.25), StageTime("train", 100.0, reused=True)],
    )
    out = tmp_path / "report"
    path = write_run_report(report, out)
    assert path == out / REPORT_FILE
    page = _parse(path)
    assert all(depth == 0 for tag, depth in page.depth.items() if tag not in ("meta", "img"))
    for value in ("0.0531", "0.0595", "31.53", "0.926", "0.950", "n/a", "S1A_<x>", "seed 0 & more"):
        assert value in page.cells, value
    assert "112.2" in page.cells  # the total of the stage times (12.25 + 100.0)
    assert page.images == ["curves.png"]  # the missing figure is left out
    assert (out / "curves.png").read_bytes() == curves.read_bytes()
    text = path.read_text(encoding="utf-8")
    assert "<b>run</b>" not in text  # escaped, never markup
    assert "-0.123" in text


def test_reused_stages_keep_the_time_of_the_run_that_computed_them(tmp_path):
    save_stage_times(tmp_path, [StageTime("cube", 40.0), StageTime("train", 300.0)])
    rerun = [StageTime("cube", 0.1, reused=True), StageTime("train", 250.0)]
    merged = merge_stage_times(tmp_path, rerun)
    assert merged == [StageTime("cube", 40.0, True), StageTime("train", 250.0, False)]
    save_stage_times(tmp_path, rerun)
    assert load_stage_times(tmp_path) == merged
    # a reused stage with no earlier record keeps what it measured
    assert merge_stage_times(tmp_path / "new", rerun)[0] == StageTime("cube", 0.1, True)


def test_unreadable_stage_times_are_ignored(tmp_path):
    (tmp_path / "stage-times.json").write_text("{not json")
    assert load_stage_times(tmp_path) == []


def test_training_curves_need_a_logged_epoch(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,train_loss,val_loss\n")
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves(log, tmp_path / "c.png")


def test_report_without_parts_is_still_a_page(tmp_path):
    path = write_run_report(RunReport(title="empty"), tmp_path)
    page = _parse(path)
    assert page.cells == []
    assert json.dumps(path.read_text()).count("<h1>") == 1
