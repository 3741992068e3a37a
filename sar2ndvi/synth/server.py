"""A real STAC API on loopback over a scene folder, served by `rustac serve`.

rustac's in-memory backend implements STAC API core, features and item search (GET and
POST, paginated with `next` links), but not the query or filter extensions, so property
filters must be applied on the client (see `sar2ndvi.catalog`).
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from sar2ndvi.errors import ServerError
from sar2ndvi.synth.scene import Scene


def rustac_executable() -> str:
    """The `rustac` command of the `rustac` package: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "rustac"
    if beside.is_file():
        return str(beside)
    found = shutil.which("rustac")
    if found is None:
        raise ServerError(
            "the `rustac` command was not found beside this Python or on PATH; install the "
            "rustac package (pip install rustac), which provides the STAC API server"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (host, port) or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class StacServer:
    """`rustac serve` as a managed subprocess: started on a free (or given) port, stopped cleanly.

    Use it as a context manager::

        with StacServer([collection_json, items_json]) as server:
            client = pystac_client.Client.open(server.url)

    Args:
        hrefs: collection, item and item-collection JSON files to load at start-up.
        host: the address to bind; loopback by default.
        port: the port; None picks a free one.
        startup_timeout: seconds to wait for the API to answer.
        cleanup: extra paths (folders) to delete when the server stops.
    """

    def __init__(
        self,
        hrefs: list[Path],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        cleanup: list[Path] | None = None,
    ) -> None:
        self.hrefs = [Path(h) for h in hrefs]
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._cleanup = list(cleanup or [])
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        """The API's landing page URL, e.g. http://127.0.0.1:40123."""
        if self.port is None:
            raise ServerError("the STAC server is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> StacServer:
        """Start the server and wait until its landing page answers."""
        if self.running:
            return self
        if self.requested_port is not None and port_in_use(self.host, self.requested_port):
            raise ServerError(
                f"port {self.requested_port} on {self.host} is already in use; choose another "
                "with --port, or leave --port out to take a free one"
            )
        attempts = 1 if self.requested_port is not None else 3
        for attempt in range(attempts):
            port = self.requested_port or free_port(self.host)
            try:
                self._launch(port)
                return self
            except ServerError:
                # A free port can be taken between choosing and binding it: try another.
                if attempt == attempts - 1:
                    raise
        return self  # pragma: no cover

    def _launch(self, port: int) -> None:
        log_dir = Path(tempfile.mkdtemp(prefix="sar2ndvi-stac-log-"))
        self._cleanup.append(log_dir)
        self._log = log_dir / "server.log"
        cmd = [
            rustac_executable(),
            "serve",
            "--addr",
            f"{self.host}:{port}",
            *[str(h) for h in self.hrefs],
        ]
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.port = port
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.port = None
                raise ServerError(
                    f"the STAC server (rustac serve) exited with code {self._process.returncode} "
                    f"while starting on {self.host}:{port}: {self._log_tail()}"
                )
            if self._answers(f"http://{self.host}:{port}/"):
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(
            f"the STAC server did not answer on {self.host}:{port} within "
            f"{self.startup_timeout:.0f} s: {self._log_tail()}"
        )

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _log_tail(self, n: int = 800) -> str:
        if self._log is None or not self._log.exists():
            return "(no log)"
        text = self._log.read_text(errors="replace").strip()
        return text[-n:] or "(empty log)"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its temporary files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)
        self._cleanup.clear()
        self.port = None
        atexit.unregister(self.stop)

    def __enter__(self) -> StacServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def api_documents(scene: Scene, into: Path) -> list[Path]:
    """Write what the API loads: per collection, the collection and an ItemCollection whose
    asset hrefs are absolute paths (the scene's own hrefs are relative to each item file).

    Returns the paths to hand to `rustac serve`.
    """
    hrefs = []
    for collection_id in scene.manifest["collections"]:
        coll_dir = scene.collection_dir(collection_id)
        collection = json.loads((coll_dir / "collection.json").read_text())
        collection["links"] = []
        features = []
        for item_path in scene.item_paths(collection_id):
            item = json.loads(item_path.read_text())
            item["links"] = []
            for asset in item["assets"].values():
                asset["href"] = (item_path.parent / asset["href"]).resolve().as_uri()
            features.append(item)
        coll_file = into / f"{collection_id}.collection.json"
        items_file = into / f"{collection_id}.items.json"
        coll_file.write_text(json.dumps(collection))
        items_file.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        hrefs += [coll_file, items_file]
    return hrefs


def serve_scene(
    scene: Scene | str | Path, *, host: str = "127.0.0.1", port: int | None = None
) -> StacServer:
    """A (not yet started) STAC API server over a simulated scene; use it with `with`."""
    if not isinstance(scene, Scene):
        scene = Scene.open(scene)
    workdir = Path(tempfile.mkdtemp(prefix="sar2ndvi-stac-"))
    try:
        hrefs = api_documents(scene, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return StacServer(hrefs, host=host, port=port, cleanup=[workdir])
