"""The example notebooks (examples/*.ipynb) run top to bottom on a small simulated scene.

Each notebook is executed with nbclient in a `python3` kernel of this interpreter, in a
temporary working folder, with the size knobs the notebooks read in their first code cell
(`SAR2NDVI_EXAMPLE_SIZE`, `SAR2NDVI_EXAMPLE_EPOCHS`, `SAR2NDVI_EXAMPLE_DIR`) set small.
Notebook 3 opens what notebook 1 writes, so the two run in one test on one folder;
notebook 2 runs on its own folder (and makes its own cube and model). A failing cell
fails the test with that cell's error (nbclient's `CellExecutionError`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from sar2ndvi import store
from tests.support import REPO

EXAMPLES = REPO / "examples"
NOTEBOOKS = ("01-quick-tour.ipynb", "02-dask-cluster.ipynb", "03-zarr-in-other-tools.ipynb")
#: The knobs the notebooks read, and the small values CI runs them with.
KNOBS = {"SAR2NDVI_EXAMPLE_SIZE": "192", "SAR2NDVI_EXAMPLE_EPOCHS": "2"}
#: Seconds one cell may take before nbclient gives up (a hung kernel must not hang CI).
CELL_TIMEOUT = 300
#: The terminal colour codes of IPython's tracebacks.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run `nb` top to bottom in a fresh `python3` kernel started in `cwd`; returns it with
    its outputs. Raises `CellExecutionError` (the cell's source and traceback, as plain
    text) on error."""
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        # the kernel colours its tracebacks; plain text reads better in a CI log
        raise CellExecutionError(ANSI.sub("", str(err)), err.ename, err.evalue) from None
    return nb


def run_example(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Execute examples/`name` on `workdir` with the CI knobs (the kernel inherits them)."""
    for key, value in KNOBS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SAR2NDVI_EXAMPLE_DIR", str(workdir))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    workdir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    execute(nb, workdir)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)  # every cell ran
    return nb


def text_output(nb: nbformat.NotebookNode) -> str:
    """Everything the cells printed (stdout) and returned as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def image_count(nb: nbformat.NotebookNode) -> int:
    """The number of PNG images the cells displayed."""
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type in ("execute_result", "display_data")
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_stored_clean_and_read_the_knobs(name):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    # no outputs stored: small diffs, and what the tests run is what is read
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    first = code[0].source
    for knob in ("SAR2NDVI_EXAMPLE_SIZE", "SAR2NDVI_EXAMPLE_EPOCHS", "SAR2NDVI_EXAMPLE_DIR"):
        assert f'os.environ.get("{knob}"' in first
    assert name in (EXAMPLES / "README.md").read_text()


def test_a_failing_cell_fails_with_its_error_in_this_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"),
            nbformat.v4.new_code_cell("raise ValueError('no such landslide inventory')"),
            nbformat.v4.new_code_cell("print('never reached')"),
        ]
    )
    with pytest.raises(CellExecutionError, match="ValueError: no such landslide inventory") as err:
        execute(nb, tmp_path)
    assert err.value.ename == "ValueError"
    assert "raise ValueError('no such landslide inventory')" in str(err.value)  # the cell
    assert "\x1b[" not in str(err.value)
    # the kernel is this interpreter (its packages), started in the working folder
    assert nb.cells[0].outputs[0].text.strip() == sys.executable
    assert nb.cells[2].execution_count is None


@pytest.mark.slow
def test_quick_tour_then_other_tools_on_its_outputs(tmp_path, monkeypatch):
    work = tmp_path / "work"
    tour = run_example("01-quick-tour.ipynb", work, monkeypatch)
    printed = text_output(tour)
    assert "scene 192 x 192 px" in printed
    assert "threshold on" in printed  # the scores table
    assert "MCC" in printed
    assert image_count(tour) >= 4  # features, report figure, prediction, landslide map
    for path in ("cube.zarr", "features.zarr", "ndvi-post.zarr", "landslides/landslides.zarr"):
        assert store.is_complete(work / path), path
    assert (work / "report" / "figure.png").stat().st_size > 10_000
    assert (work / "landslides" / "landslides.gpkg").exists()
    assert (work / "model" / "checkpoint.pt").exists()

    tools = run_example("03-zarr-in-other-tools.ipynb", work, monkeypatch)
    assert "ZARR:" in text_output(tools)
    assert image_count(tools) >= 1
    tif = work / "ndvi-post-clip.tif"
    import rasterio

    with rasterio.open(tif) as src:
        assert src.crs is not None
        assert 0 < src.width < 192


@pytest.mark.slow
def test_dask_cluster_notebook_on_its_own(tmp_path, monkeypatch):
    work = tmp_path / "work"
    nb = run_example("02-dask-cluster.ipynb", work, monkeypatch)
    printed = text_output(nb)
    assert "dask: threaded scheduler" in printed
    assert "dask.distributed: scheduler tcp://127.0.0.1:" in printed
    assert "dashboard http://" in printed
    assert "client closed" in printed
    # the notebook compared the stores; check one pair here too
    dask_dir = work / "dask"
    a = store.open(dask_dir / "ndvi-post-threads.zarr").to_dataset()["ndvi"].values
    b = store.open(dask_dir / "ndvi-post-cluster.zarr").to_dataset()["ndvi"].values
    assert np.isfinite(a).mean() > 0.9
    assert np.array_equal(a, b, equal_nan=True)
