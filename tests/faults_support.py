"""Loopback servers and helpers that inject faults, for the fault tests (tests/test_faults_*.py).

- `FaultyProxy`: an HTTP proxy in front of a real STAC API (the `stac_api` fixture) that
  answers each request according to a script of faults (a status with headers, a hang, a
  response cut mid-way, a body that is not JSON), then forwards faithfully.
- `FileServer`: serves a folder over HTTP with byte ranges (as GDAL's /vsicurl/ reads
  COGs), answering 404 for chosen paths.
- `files`, `tree_digest`: the bytes of a folder, to compare stores byte for byte.

Everything binds 127.0.0.1 on a free port; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

# --- faults ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Answer with this HTTP status (and headers, body) instead of forwarding."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Hang:
    """Say nothing for `seconds`, then close the connection without an answer."""

    seconds: float


@dataclass(frozen=True)
class Cut:
    """Forward the upstream answer, but send only `fraction` of its body (with the full
    Content-Length), then close the connection: a response cut mid-way."""

    fraction: float = 0.5


@dataclass(frozen=True)
class Garbage:
    """A 200 answer whose body is not JSON (a captive portal, a proxy error page)."""

    body: bytes = b"<html><body>502 Bad Gateway</body></html>"


Fault = Status | Hang | Cut | Garbage | None  # None: forward faithfully


@dataclass
class Request:
    """One request the proxy received: when (monotonic seconds), method and path."""

    at: float
    method: str
    path: str


class _Loopback:
    """A ThreadingHTTPServer on a free loopback port, run in a thread (context manager)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FaultyProxy(_Loopback):
    """A proxy in front of `upstream` (a STAC API root URL) that answers the n-th request
    whose path starts with `on` with ``faults[n]`` (with `after` once the script is used
    up; None forwards) and forwards every other request faithfully.

    Upstream URLs in forwarded bodies are rewritten to the proxy's, so that a client
    follows pagination links back through the proxy. `requests` records every request.
    """

    def __init__(
        self, upstream: str, faults: Iterable[Fault] = (), *, after: Fault = None, on: str = "/"
    ):
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults)
        self.after = after
        self.on = on
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_QuietHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    n = proxy.count(proxy.on)
                    proxy.requests.append(Request(time.monotonic(), self.command, self.path))
                fault: Fault = None
                if self.path.startswith(proxy.on):
                    fault = proxy.faults[n] if n < len(proxy.faults) else proxy.after
                if isinstance(fault, Status):
                    self._send(fault.code, fault.body, fault.headers)
                elif isinstance(fault, Hang):
                    time.sleep(fault.seconds)
                    self.close_connection = True
                elif isinstance(fault, Garbage):
                    self._send(200, fault.body, {"Content-Type": "application/json"})
                else:
                    self._forward(body, fault)

            def _forward(self, body: bytes, fault: Cut | None) -> None:
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body or None,
                    method=self.command,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    payload = response.read().replace(proxy.upstream.encode(), proxy.url.encode())
                    status, kind = response.status, response.headers["Content-Type"]
                if fault is None:
                    self._send(status, payload, {"Content-Type": kind})
                    return
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: int(len(payload) * fault.fraction)])
                self.wfile.flush()
                self.close_connection = True

            do_GET = do_POST = _handle  # noqa: N815

        super().__init__(Handler)

    def __enter__(self) -> FaultyProxy:
        return super().__enter__()

    def count(self, prefix: str = "/") -> int:
        """How many requests had a path starting with `prefix`."""
        return sum(r.path.startswith(prefix) for r in self.requests)

    def times(self, prefix: str = "/") -> list[float]:
        """When (monotonic seconds) the requests with a path starting with `prefix` came."""
        return [r.at for r in self.requests if r.path.startswith(prefix)]


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _file_handler(root: Path, missing: set[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(_QuietHandler):
        def _file(self) -> Path | None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            path = (root / rel).resolve()
            if rel in missing or not path.is_file() or root not in path.parents:
                return None
            return path

        def do_HEAD(self) -> None:
            path = self._file()
            if path is None:
                self._send(404, b"")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            path = self._file()
            if path is None:
                self._send(404, b"not found")
                return
            data = path.read_bytes()
            match = _RANGE.match(self.headers.get("Range", ""))
            if match is None:
                self._send(200, data, {"Accept-Ranges": "bytes"})
                return
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            self._send(
                206,
                data[start : end + 1],
                {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"},
            )

    return Handler


class FileServer:
    """Serves the files under `root` at ``<url>/<relative path>``, with byte ranges, and
    answers 404 for the relative paths in `missing` (and for anything outside `root`).

    It runs in a child process: GDAL holds the GIL while it reads a URL, so a server thread
    in the reading process would never answer.
    """

    def __init__(self, root: Path, *, missing: Iterable[str] = ()):
        self.root = Path(root).resolve()
        self.missing = sorted(missing)
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> FileServer:
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(self.root), *self.missing],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self._process.kill()
            raise RuntimeError(f"the file server did not start (said {self.url!r})")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        self._process.wait(timeout=10)

    def url_of(self, path: Path) -> str:
        """The URL this server gives the file `path` (under `root`)."""
        return f"{self.url}/{Path(path).resolve().relative_to(self.root).as_posix()}"


# --- recipes --------------------------------------------------------------------------------


def recipe_file(folder: Path, scene: Any, api_url: str, *, name: str = "faults") -> Path:
    """The test scene's recipe as a TOML file (64 px chunks), searching `api_url`."""
    from sar2ndvi.synth.area import scene_recipe

    r = scene_recipe(scene, url=api_url, chunk=64, name=name)
    w, s, e, n = r.bbox
    text = f"""name = "{name}"
[area]
bbox = [{w!r}, {s!r}, {e!r}, {n!r}]
crs = "{r.crs.to_string()}"
[event]
date = {r.event.date().isoformat()}
pre = [{r.pre.start.date().isoformat()}, {r.pre.end.date().isoformat()}]
post = [{r.post.start.date().isoformat()}, {r.post.end.date().isoformat()}]
[source]
type = "api"
url = "{api_url}"
[chunks]
x = 64
y = 64
"""
    path = Path(folder) / f"{name}.toml"
    path.write_text(text)
    return path


# --- processes killed at a chosen moment ---------------------------------------------------

#: Runs the `sar2ndvi` command (argv[3:]) and stalls it at a chosen moment, for the test to
#: SIGKILL it there: argv[2] = n (an int) wraps `store._write_region` so that after the n-th
#: region's chunks are written, and before its done marker is, it touches the file argv[1]
#: and sleeps (0 runs to the end); argv[2] = "module:function" does the same just before
#: that function is called (e.g. "sar2ndvi.publish:write_item").
KILLABLE_CLI = """
import importlib, sys, time
from pathlib import Path
from sar2ndvi import store
from sar2ndvi.cli import main

ready, when = Path(sys.argv[1]), sys.argv[2]

def stall(what):
    ready.write_text(what)
    time.sleep(600)

if ":" in when:
    module, name = when.split(":")
    module = importlib.import_module(module)
    real = getattr(module, name)

    def before(*args, **kwargs):
        stall(when)
        return real(*args, **kwargs)

    setattr(module, name, before)
else:
    after, real, calls = int(when), store._write_region, 0

    def write_region(sources, targets, region):
        global calls
        real(sources, targets, region)
        calls += 1
        if calls == after:
            stall(str(calls))

    store._write_region = write_region
sys.argv = ["sar2ndvi", *sys.argv[3:]]
main()
"""


def run_cli(
    args: list[str],
    *,
    cwd: Path,
    kill_after: int = 0,
    kill_before: str | None = None,
    timeout: float = 300,
) -> str:
    """Run `sar2ndvi ARGS` in a child process; with `kill_after` n > 0, SIGKILL it once the
    n-th region is written and not yet marked done; with `kill_before` "module:function",
    SIGKILL it just before that function is called. Returns its output; raises
    AssertionError when it fails (or, when it is to be killed, when it ends by itself)."""
    stem = Path(cwd) / f".child-{os.getpid()}-{time.monotonic_ns()}"
    ready, log = stem.with_suffix(".ready"), stem.with_suffix(".log")
    when = kill_before or str(kill_after)
    killing = bool(kill_before or kill_after)
    command = [sys.executable, "-c", KILLABLE_CLI, str(ready), when, *args]
    # the child imports this checkout's package, as the tests do (pythonpath = ".")
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    try:
        with (
            log.open("w") as out,
            subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            ) as child,
        ):
            deadline = time.monotonic() + timeout
            while not (killing and ready.exists()) and child.poll() is None:
                if time.monotonic() > deadline:
                    child.kill()
                    raise AssertionError(f"{args} still running after {timeout} s")
                time.sleep(0.02)
            if killing and ready.exists():
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        output = log.read_text()
        if killing:
            assert child.returncode == -signal.SIGKILL, (child.returncode, output)
        else:
            assert child.returncode == 0, output
        return output
    finally:
        ready.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


class DieOnce(WorkerPlugin):
    """A dask.distributed worker plugin: the first worker to start its `n`-th task (of those
    whose name starts with `prefix`, e.g. "store-map" for the tasks that write chunks) kills
    its own process (os._exit, as a crash or the OOM killer would), once per `flag` file."""

    name = "sar2ndvi-die-once"

    def __init__(self, flag: str, n: int, prefix: str = ""):
        self.flag, self.n, self.prefix, self.started = flag, n, prefix, 0

    def setup(self, worker: Any) -> None:
        self.started = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing":
            return
        if self.prefix:
            from dask.utils import key_split

            if not key_split(key).startswith(self.prefix):
                return
        self.started += 1
        if self.started != self.n:
            return
        try:  # O_EXCL: exactly one worker of the cluster dies, exactly once
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


# --- a full disk ------------------------------------------------------------------------------


def noisy_dataset(seed: int = 0, shape: tuple[int, int] = (256, 384), chunk: int = 128) -> Any:
    """A georeferenced (y, x) float64 Dataset of white noise in `chunk`-px Dask chunks: its
    chunk files (128 KiB) do not compress, its metadata files stay under 8 KiB."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    from sar2ndvi.store import georeference

    ny, nx = shape
    data = np.random.default_rng(seed).normal(size=shape)
    ds = xr.Dataset(
        {"noise": (("y", "x"), da.from_array(data, chunks=chunk))},
        coords={"y": 3_800_000.0 - 10.0 * np.arange(ny) - 5.0,
                "x": 500_000.0 + 10.0 * np.arange(nx) + 5.0},
    )  # fmt: skip
    return georeference(ds, "EPSG:32611")


#: Writes `noisy_dataset()` to argv[1] with every file limited to argv[2] bytes
#: (RLIMIT_FSIZE; SIGXFSZ ignored so that a write past it fails with EFBIG, as a full disk
#: fails with ENOSPC); prints the error and exits 2, as the command line does.
FULL_DISK_WRITE = """
import resource, signal, sys
sys.path.insert(0, sys.argv[3])
from tests.faults_support import noisy_dataset
from sar2ndvi import store
from sar2ndvi.errors import Sar2ndviError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    store.write(noisy_dataset(), sys.argv[1], progress=False)
except Sar2ndviError as err:
    print(f"error: {err}")
    sys.exit(2)
"""


# --- folders, byte for byte -----------------------------------------------------------------


def files(root: Path, *, skip: Iterable[str] = ()) -> dict[str, bytes]:
    """Every file under `root` (relative POSIX path -> bytes), leaving out the names in
    `skip` wherever they are."""
    root = Path(root)
    skipped = set(skip)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skipped
    }


def tree_digest(root: Path) -> str:
    """A SHA-256 over the relative paths, sizes and bytes of every file under `root`."""
    h = hashlib.sha256()
    for name, data in files(root).items():
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


if __name__ == "__main__":  # the FileServer's child process: ROOT [MISSING...]
    _root = Path(sys.argv[1]).resolve()
    _server = ThreadingHTTPServer(("127.0.0.1", 0), _file_handler(_root, set(sys.argv[2:])))
    _server.daemon_threads = True
    print(f"http://127.0.0.1:{_server.server_port}", flush=True)
    _server.serve_forever()
