"""The FiftyOne App server on loopback, for the browser test and the panel benchmark.

The server runs in its own process on a free 127.0.0.1 port, on this process's
database: FiftyOne's mongod is started here first, and the child is pointed at it
(`FIFTYONE_DATABASE_URI`), so both see the same datasets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def app_server(log_path: Path, timeout_s: float) -> Iterator[tuple[subprocess.Popen, str]]:
    """(server process, its URL) once the App answers; stopped on exit. Raises
    RuntimeError with the end of its log when it exits or does not answer in time."""
    import fiftyone.core.odm.database as fod

    fod.get_db_conn()  # FiftyOne's mongod is up and its port is in the environment
    env = dict(os.environ)
    env["FIFTYONE_DATABASE_URI"] = (
        f"mongodb://127.0.0.1:{env.pop('FIFTYONE_PRIVATE_DATABASE_PORT')}"
    )
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1"]
            + ["--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not http_ok(f"{url}/fiftyone"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the App server did not answer on {url}: {log_path.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield server, url
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
