"""The ``redis_server`` fixture: a real ``redis-server`` on 127.0.0.1 for the redis throttle tests.

Each test gets its own server (a free port, a temporary directory, no persistence):
``.url`` is its ``redis://`` URL, ``.port`` its port, ``.stop()``, ``.start()`` and
``.restart()`` (stop, then start again on the same port: the data is gone, as after a crash
of a redis that does not persist). The tests are skipped, with the reason, when redis-server is
not installed, unless ``KUMOQ_REQUIRE_REDIS`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server"]

START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process (started by the fixture)."""

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def start(self) -> RedisServer:
        assert self._proc is None, "already running"
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip
        with (self.workdir / "redis.log").open("ab") as out:
            self._proc = subprocess.Popen(args, cwd=self.workdir, stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT
        while not _pong(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _binary() -> str | None:
    found = shutil.which("redis-server")
    if found is None and os.path.exists("/usr/bin/redis-server"):
        found = "/usr/bin/redis-server"
    return found


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = _binary()
    if binary is None:
        why = "redis-server is not installed (make redis-deps, or apt-get install redis-server)"
        if os.environ.get("KUMOQ_REQUIRE_REDIS"):
            pytest.fail(f"{why}; KUMOQ_REQUIRE_REDIS is set")
        pytest.skip(f"{why}; set KUMOQ_REQUIRE_REDIS=1 to fail instead")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"), _free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
