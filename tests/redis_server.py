"""The ``redis_server`` fixture: a real ``redis-server`` on 127.0.0.1 for the redis throttle tests.

Each test gets its own server (a free port, a temporary directory, no persistence):
``.url`` is its ``redis://`` URL, ``.port`` its port, ``.stop()``, ``.start()`` and
``.restart()`` (stop, then start again on the same port: the data is gone, as after a crash
of a redis that does not persist). ``redis_cluster`` is three such servers with
``cluster-enabled``, their 16,384 slots shared out by ``redis-cli --cluster create`` (no
replicas): ``.urls`` lists the three nodes. The tests are skipped, with the reason, when
redis-server (or redis-cli) is not installed, unless ``KUMOQ_REQUIRE_REDIS`` is set (CI sets
it): then they fail.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["RedisCluster", "RedisServer", "redis_cluster", "redis_server"]

START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port for a cluster node: at most 55535, its bus port (10,000 higher) free too."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a redis cluster node")


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process (started by the fixture)."""

    def __init__(self, binary: str, workdir: Path, port: int, extra: Sequence[str] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.extra = list(extra)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def start(self) -> RedisServer:
        assert self._proc is None, "already running"
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), *self.extra]  # fmt: skip
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


def _required_binary(name: str) -> str:
    found = _binary() if name == "redis-server" else shutil.which(name)
    if found is None:
        why = f"{name} is not installed (make redis-deps, or apt-get install redis-server)"
        if os.environ.get("KUMOQ_REQUIRE_REDIS"):
            pytest.fail(f"{why}; KUMOQ_REQUIRE_REDIS is set")
        pytest.skip(f"{why}; set KUMOQ_REQUIRE_REDIS=1 to fail instead")
    return found


class RedisCluster:
    """Three cluster-enabled redis-server processes sharing the slots (no replicas)."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def create(self, redis_cli: str) -> RedisCluster:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        done = subprocess.run(
            [redis_cli, "--cluster", "create", *addresses, "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + START_TIMEOUT * 3
        while not all(_cluster_ok(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the redis cluster never reported cluster_state:ok")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in s.recv(4096)
    except OSError:
        return False


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    binary = _required_binary("redis-server")
    redis_cli = _required_binary("redis-cli")
    nodes = []
    for _ in range(3):
        workdir = tmp_path_factory.mktemp("redis-cluster")
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
                 "--cluster-node-timeout", "5000"]  # fmt: skip
        nodes.append(RedisServer(binary, workdir, _free_cluster_port(), extra))
    cluster = RedisCluster(nodes)
    try:
        for node in nodes:
            node.start()
        yield cluster.create(redis_cli)
    finally:
        cluster.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = _required_binary("redis-server")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"), _free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
