"""The run report: one self-contained HTML page, its figures as PNG files beside it.

`write_run_report` gathers what the pipeline's stages left in a working folder (the NDVI
evaluation's ``metrics.json`` and Figure-2-style ``figure.png``, the training log
``metrics.csv``, the landslide comparison's ``landslide-metrics.json`` and map, the
detection's polygons) and lays it out with the recipe, the data used and the time each
stage took. It reads only small files (tables, logs, PNGs): nothing here touches a cube.

The page has no scripts and no external assets, so it opens from a laptop, a shared drive
or an object store's static website alike; figures are linked by relative path.
"""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sar2ndvi

__all__ = [
    "REPORT_FILE",
    "RunReport",
    "StageTime",
    "load_stage_times",
    "merge_stage_times",
    "plot_training_curves",
    "save_stage_times",
    "write_run_report",
]

REPORT_FILE = "index.html"
#: Where a working folder keeps the time each stage took (seconds), across runs.
TIMES_FILE = "stage-times.json"

_NDVI_KEYS = (("rmse", "RMSE", 4), ("mae", "MAE", 4), ("ssim", "SSIM", 4), ("psnr", "PSNR (dB)", 2))
_LANDSLIDE_KEYS = (
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1", "F1"),
    ("mcc", "MCC"),
    ("iou", "IoU"),
    ("hit_rate", "landslides hit"),
    ("matched_rate", "objects matched"),
    ("cut", "probability cut"),
)


@dataclass(frozen=True)
class StageTime:
    """How long a stage took in the run that did its work, and whether this run reused it.

    Attributes:
        name: the stage's name as the demo prints it.
        seconds: wall-clock seconds of the run that computed it.
        reused: True when the latest run found the stage's output complete and reused it.
    """

    name: str
    seconds: float
    reused: bool = False


def save_stage_times(folder: str | os.PathLike, times: Sequence[StageTime]) -> Path:
    """Record the stage times in ``<folder>/stage-times.json`` (atomically).

    A reused stage keeps the seconds of the run that computed it, so the report always
    tells what each stage costs, and says which ones the latest run reused.
    """
    folder = Path(folder)
    rows = [
        {"name": t.name, "seconds": t.seconds, "reused": t.reused}
        for t in merge_stage_times(folder, times)
    ]
    path = folder / TIMES_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, path)
    return path


def merge_stage_times(folder: str | os.PathLike, times: Sequence[StageTime]) -> list[StageTime]:
    """`times`, where a stage reused in this run takes the seconds recorded in `folder` by
    the run that computed it."""
    previous = {t.name: t for t in load_stage_times(folder)}
    return [
        StageTime(t.name, previous[t.name].seconds, True) if t.reused and t.name in previous else t
        for t in times
    ]


def load_stage_times(folder: str | os.PathLike) -> list[StageTime]:
    """The stage times recorded in `folder` (empty when none or unreadable)."""
    path = Path(folder) / TIMES_FILE
    try:
        rows = json.loads(path.read_text())
        return [StageTime(r["name"], float(r["seconds"]), bool(r["reused"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def plot_training_curves(
    metrics_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    title: str = "training",
    metric: str | None = None,
) -> Path:
    """Training and validation loss per epoch (and a validation metric on a second axis).

    Args:
        metrics_csv: a training log with ``epoch``, ``train_loss``, ``val_loss`` columns
            (``sar2ndvi.train`` and ``sar2ndvi.segment`` write one).
        out_png: the figure to write.
        title: the figure's title.
        metric: a validation column to draw on the right axis (default: ``val_rmse`` or
            ``val_mcc``, whichever the log has).
    """
    # a bare Figure, not pyplot: no global backend switch, nothing left open in a notebook
    from matplotlib.figure import Figure

    with Path(metrics_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{metrics_csv}: no epochs logged")
    if metric is None:
        metric = next((m for m in ("val_rmse", "val_mcc") if m in rows[0]), None)

    def column(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in rows]

    epochs = column("epoch")
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.subplots()
    ax.plot(epochs, column("train_loss"), label="train loss", color="tab:blue")
    ax.plot(epochs, column("val_loss"), label="validation loss", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if metric is not None:
        right = ax.twinx()
        right.plot(
            epochs, column(metric), label=metric.replace("_", " "), color="tab:green", ls="--"
        )
        right.set_ylabel(metric.replace("_", " "))
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png


@dataclass
class RunReport:
    """What the report shows; every part is optional, a missing part is left out.

    Attributes:
        title: the page title.
        recipe: the recipe or scene settings, as a flat mapping (shown as a table).
        items: the data used: one mapping per STAC item (id, collection, datetime, ...).
        ndvi_metrics: the NDVI evaluation's ``metrics.json`` (``{"metrics": {model: {...}}}``).
        landslide_metrics: the landslide comparison's ``landslide-metrics.json``.
        detection: a summary of the scene-wide landslide map (counts, areas, paths).
        figures: (caption, PNG path) pairs, copied next to the page.
        stage_times: how long each stage took.
        notes: free paragraphs (plain text) shown at the top.
    """

    title: str = "sar2ndvi run"
    recipe: Mapping[str, Any] = field(default_factory=dict)
    items: Sequence[Mapping[str, Any]] = ()
    ndvi_metrics: Mapping[str, Any] | None = None
    landslide_metrics: Mapping[str, Any] | None = None
    detection: Mapping[str, Any] | None = None
    figures: Sequence[tuple[str, str | os.PathLike]] = ()
    stage_times: Sequence[StageTime] = ()
    notes: Sequence[str] = ()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="num">{_e(v)}</td>' if i >= numeric_from else f"<td>{_e(v)}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number(value: Any, digits: int) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    return "n/a" if number != number else f"{number:.{digits}f}"


def _ndvi_section(metrics: Mapping[str, Any]) -> str:
    models = metrics.get("metrics", {})
    rows = [
        [name]
        + [_number(scores.get(k), d) for k, _, d in _NDVI_KEYS]
        + [scores.get("n_pixels", "")]
        for name, scores in models.items()
    ]
    head = ["model"] + [label for _, label, _ in _NDVI_KEYS] + ["pixels"]
    ssim = metrics.get("ssim", {})
    note = (
        f"On the held-out test block(s) only, the same pixels for every model; NDVI data range "
        f"{metrics.get('data_range', 2.0)}, SSIM with a {ssim.get('window', 11)} px Gaussian "
        f"window (sigma {ssim.get('sigma', 1.5)})."
    )
    return f"<h2>NDVI: U-net against pixel-wise baselines</h2><p>{_e(note)}</p>" + _table(
        head, rows
    )


def _landslide_section(metrics: Mapping[str, Any]) -> str:
    rows = metrics.get("rows", [])
    thresholds = metrics.get("thresholds", {})
    table_rows = [
        [f"{r.get('setting')}: {r.get('inputs', '')}", r.get("method", "")]
        + [_number(r.get(k), 3) for k, _ in _LANDSLIDE_KEYS]
        for r in rows
    ]
    head = ["setting", "method"] + [label for _, label in _LANDSLIDE_KEYS]
    note = (
        "Pixel scores of the landslide class and object scores on the test blocks, the same "
        "pixels for every method. Setting 5 uses no post-event optical image: its dNDVI comes "
        "from the radar-derived NDVI. The U-net and CART cut their probabilities at their "
        "own operating point, the cut of highest MCC on the validation blocks."
    )
    if thresholds:
        shown = ", ".join(f"setting {k}: {float(v):.3f}" for k, v in sorted(thresholds.items()))
        note += f" dNDVI thresholds (Otsu unless given): {shown}."
    return f"<h2>Landslides: input settings x methods</h2><p>{_e(note)}</p>" + _table(
        head, table_rows, numeric_from=2
    )


def _mapping_section(title: str, values: Mapping[str, Any]) -> str:
    rows = [[k, v] for k, v in values.items()]
    return f"<h2>{_e(title)}</h2>" + _table(["", ""], rows, numeric_from=2)


def _items_section(items: Sequence[Mapping[str, Any]]) -> str:
    head = list(items[0])
    rows = [[item.get(k, "") for k in head] for item in items]
    return f"<h2>Data used ({len(items)} scenes)</h2>" + _table(head, rows, numeric_from=len(head))


def _times_section(times: Sequence[StageTime]) -> str:
    total = sum(t.seconds for t in times)
    rows = [[t.name, f"{t.seconds:.1f}", "reused" if t.reused else "computed"] for t in times]
    rows.append(["total", f"{total:.1f}", ""])
    return "<h2>Time per stage</h2>" + _table(["stage", "seconds", "latest run"], rows)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #555; }
"""


def write_run_report(report: RunReport, out: str | os.PathLike) -> Path:
    """Write ``<out>/index.html`` with the figures copied beside it; returns the page's path.

    The page is written to a temporary name and renamed, so a reader never opens half a
    report. Figures that do not exist are skipped (the stage that draws them did not run).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>{_e(report.title)}</h1>",
        f"<p>sar2ndvi {_e(sar2ndvi.__version__)}, written {_e(stamp)}.</p>",
    ]
    parts += [f"<p>{_e(note)}</p>" for note in report.notes]
    if report.recipe:
        parts.append(_mapping_section("Recipe", report.recipe))
    if report.items:
        parts.append(_items_section(report.items))
    if report.ndvi_metrics:
        parts.append(_ndvi_section(report.ndvi_metrics))
    if report.landslide_metrics:
        parts.append(_landslide_section(report.landslide_metrics))
    if report.detection:
        parts.append(_mapping_section("Landslide map of the whole scene", report.detection))
    figures = []
    for caption, source in report.figures:
        source = Path(source)
        if not source.is_file():
            continue
        target = out / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        figures.append(
            f'<figure><img src="{_e(target.name)}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    if figures:
        parts.append("<h2>Figures</h2>" + "".join(figures))
    if report.stage_times:
        parts.append(_times_section(report.stage_times))
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(report.title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    path = out / REPORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
