"""Free-space floors refuse new mail and recover by themselves (issue 10, defect 5).

``min_free_space`` and ``min_free_inodes`` (``define_spool``, and ``configure_local_logs`` when
set) were documented as enforced but never checked. Now a ``FreeSpaceMonitor`` checks them
every few seconds on its own thread; while one is crossed, MAIL FROM gets
``452 4.3.1 Insufficient system storage``, mail already spooled is still delivered, and once
space is freed MAIL gets 250 again.

The filesystems are real: a small tmpfs mounted under tmp_path (root can do that here and in
CI; without it these tests fail, they are never skipped). The SMTP side is real too: a real
listener, Reception, spool, queue manager and maildir writer in this process, talked to with
smtplib. The last test runs the same story through ``kumoq serve``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import SystemClock
from kumoq.config.listener import EsmtpListenerConfig
from kumoq.config.listener_domain import ListenerDomain
from kumoq.config.logs import LocalLogsConfig
from kumoq.config.queue import MaildirProtocol, QueueConfig
from kumoq.config.spool import SpoolDefinition
from kumoq.delivery.maildir import MaildirDeliverer
from kumoq.egress.maildir_dispatch import MaildirDispatch
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts
from kumoq.reception import Reception
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.manager import QueueManager
from kumoq.smtp.server import EsmtpListener, start_esmtp_listener
from kumoq.spool import open_spool
from kumoq.spool.base import Spool
from kumoq.spool.health import FreeSpaceFloor, FreeSpaceMonitor
from kumoq.testing.harness import KumoqDaemon

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
MESSAGE = b"From: <s@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size='4m', **options) -> Path``: a fresh tmpfs mounted under tmp_path,
    unmounted at teardown (after the fixtures requested later, such as ``kumoq``)."""
    mounted: list[Path] = []

    def mount(size: str = "4m", **options: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        opts = ",".join([f"size={size}", *(f"{k}={v}" for k, v in options.items())])
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            why = done.stderr.strip() or f"exit status {done.returncode}"
            pytest.fail(
                f"cannot mount a tmpfs on {where} ({opts}): {why}. These tests need root "
                "(or CAP_SYS_ADMIN) to mount a small filesystem they can fill."
            )
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)
            pytest.fail(f"{where} was still busy at teardown (lazily unmounted)")


def fill(where: Path, size: int) -> Path:
    """Write ``size`` bytes into a file on ``where``'s filesystem."""
    path = where / "filler"
    with open(path, "wb") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    return path


def mail(port: int, rcpt: str = "r@example.com") -> tuple[int, str]:
    """One transaction: the code and text of the first refusal, or of the final 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        try:
            client.sendmail("s@example.com", [rcpt], MESSAGE)
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        return 250, "OK"


# -- in this process -----------------------------------------------------------------------


@dataclass
class Gate:
    """A deliverer that waits until ``opened`` before it writes the maildir."""

    inner: MaildirDispatch
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: list[str] = field(default_factory=list)

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        await self.opened.wait()
        attempt = await self.inner.deliver(msg, config)
        if attempt.disposition is RecordType.Delivery:
            self.delivered.append(msg.id)
        return attempt


class Events:
    async def smtp_server_ehlo(
        self, domain: str, conn_meta: dict[str, Any], extensions: list[str]
    ) -> list[str] | None:
        return None

    async def smtp_server_mail_from(
        self, sender: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        return None

    async def smtp_server_rcpt_to(
        self, recipient: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        return None

    async def get_listener_domain(
        self, domain: str, listener: str, conn_meta: dict[str, Any]
    ) -> ListenerDomain | None:
        return None

    async def smtp_server_data(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        return None

    async def smtp_server_message_received(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        return None


@dataclass
class Records:
    rejections: list[int] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        pass

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        self.rejections.append(response.code)


@dataclass
class Stack:
    low: Path
    port: int
    monitor: FreeSpaceMonitor
    gate: Gate
    spool: Spool
    records: Records


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, tmpfs: Callable[..., Path]
) -> AsyncIterator[Stack]:
    """Spool or log directory (``request.param``) on a 4 MiB tmpfs with a 50% floor."""
    low = tmpfs("4m")
    on_tmpfs = request.param
    spool_root = low / "spool" if on_tmpfs == "spool" else tmp_path / "spool"
    floor = "50%" if on_tmpfs == "spool" else "0%"
    data, meta = (
        SpoolDefinition.from_mapping(
            {"name": n, "path": str(spool_root / n), "min_free_space": floor, "flush": False}
        )
        for n in ("data", "meta")
    )
    logs = LocalLogsConfig.from_mapping(
        {"log_dir": str(low / "log" if on_tmpfs == "logs" else tmp_path / "log")}
        | ({"min_free_space": "50%"} if on_tmpfs == "logs" else {})
    )
    monitor = FreeSpaceMonitor.for_config([data, meta], [logs], interval=0.1)
    spool = open_spool(data, meta)
    await spool.start()
    records = Records()
    gate = Gate(MaildirDispatch(MaildirDeliverer(hostname="mx.test")))
    maildir = MaildirProtocol(maildir_path=str(tmp_path / "maildir"))

    class Configs:
        def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
            return QueueConfig(protocol=maildir)

    clock = SystemClock()
    queues = QueueManager(
        configs=Configs(), deliverers={MaildirProtocol: gate}, spool=spool,
        records=records, clock=clock,
    )  # fmt: skip
    reception = Reception(
        events=Events(), spool=spool, queues=queues, records=records, clock=clock,
        hostname="mx.test", free_space=monitor,
    )  # fmt: skip
    reception.set_ready()
    listener: EsmtpListener = await start_esmtp_listener(
        EsmtpListenerConfig.from_mapping({"listen": "127.0.0.1:0", "hostname": "mx.test"}),
        reception,
    )
    await asyncio.to_thread(monitor.start)
    try:
        yield Stack(low, listener.address[1], monitor, gate, spool, records)
    finally:
        gate.opened.set()
        monitor.stop()
        await listener.close(drain_seconds=1)
        await queues.close(drain_seconds=5)
        await spool.close()


async def until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stack", ["spool", "logs"], indirect=True)
async def test_below_the_floor_mail_gets_452_delivery_goes_on_and_reception_recovers(
    stack: Stack,
) -> None:
    assert await asyncio.to_thread(mail, stack.port) == (250, "OK")  # spooled, delivery held
    filler = await asyncio.to_thread(fill, stack.low, 3 * MiB)
    await until(lambda: stack.monitor.low)
    assert stack.monitor.problem is not None
    assert "min_free_space=50%" in stack.monitor.problem
    code, text = await asyncio.to_thread(mail, stack.port)
    assert (code, text) == (452, "4.3.1 Insufficient system storage")
    assert stack.records.rejections == [452]

    stack.gate.opened.set()  # the message spooled before goes out while storage is low
    await until(lambda: stack.gate.delivered)
    assert stack.monitor.low
    assert (await asyncio.to_thread(mail, stack.port))[0] == 452

    filler.unlink()
    await until(lambda: not stack.monitor.low)
    assert await asyncio.to_thread(mail, stack.port) == (250, "OK")
    await until(lambda: len(stack.gate.delivered) == 2)


def test_the_inode_floor(tmpfs: Callable[..., Path]) -> None:
    low = tmpfs("4m", nr_inodes="100")
    meta = SpoolDefinition.from_mapping(
        {"name": "meta", "path": str(low / "meta"), "min_free_inodes": 50}
    )
    no_floor = FreeSpaceFloor("spool 'data'", str(low / "spool"), None, None)
    monitor = FreeSpaceMonitor([no_floor, FreeSpaceFloor.for_spool(meta)])
    assert monitor.check() is None
    for i in range(60):
        (low / f"f{i}").touch()
    problem = monitor.check()
    assert problem is not None
    assert "min_free_inodes=50" in problem, problem
    for i in range(60):
        (low / f"f{i}").unlink()
    assert monitor.check() is None
    assert monitor.checks == 3


def test_the_monitor_logs_once_when_entering_and_once_when_leaving(
    tmpfs: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kumoq.spool.health")
    low = tmpfs("4m")
    floor = FreeSpaceFloor.for_spool(
        SpoolDefinition.from_mapping({"name": "data", "path": str(low), "min_free_space": "1 MiB"})
    )
    monitor = FreeSpaceMonitor([floor])
    filler = fill(low, 3 * MiB + 512 * 1024)
    for _ in range(3):
        monitor.check()
    filler.unlink()
    for _ in range(3):
        monitor.check()
    messages = [r.getMessage() for r in caplog.records if r.name == "kumoq.spool.health"]
    assert len(messages) == 2, messages
    assert "storage is too full: spool 'data'" in messages[0]
    assert "452 4.3.1" in messages[0]
    assert "accepting new mail" in messages[1]


# -- through kumoq serve -------------------------------------------------------------------

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
  kumo.define_spool { name = 'data', path = '@LOW@/spool/data', min_free_space = '50%' }
  kumo.define_spool { name = 'meta', path = '@LOW@/spool/meta', min_free_space = '50%' }
  kumo.configure_local_logs { log_dir = './var/log' }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local path = './var/maildir'
  if domain == 'held.example' then path = './var/blocked/maildir' end
  return kumo.make_queue_config {
    retry_interval = '1 second',
    protocol = { maildir_path = path },
  }
end)
"""


def test_kumoq_serve_refuses_mail_below_the_floor_and_recovers(
    tmpfs: Callable[..., Path], kumoq: Callable[..., KumoqDaemon]
) -> None:
    low = tmpfs("4m")
    daemon = kumoq(POLICY.replace("@LOW@", str(low)), start=False)
    (daemon.workdir / "var").mkdir(parents=True)
    blocked = daemon.workdir / "var" / "blocked"
    blocked.write_text("a file where the maildir's parent should be: delivery fails")
    daemon.start()
    port = daemon.smtp_address[1]
    assert mail(port, "r@held.example") == (250, "OK")
    daemon.wait_for_records("TransientFailure", 1)
    filler = fill(low, 3 * MiB)
    daemon.wait_for(lambda: mail(port)[0] == 452, timeout=6, what="452 at MAIL")
    assert mail(port) == (452, "4.3.1 Insufficient system storage")

    blocked.unlink()  # the held message can be delivered now, while storage is still low
    daemon.wait_for_records("Delivery", 1)
    assert mail(port)[0] == 452

    filler.unlink()
    daemon.wait_for(lambda: mail(port)[0] == 250, timeout=10, what="250 at MAIL")
    daemon.wait_for_records("Delivery", 2)
