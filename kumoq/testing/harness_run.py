"""``kumoq harness``: run the operator's policy, unmodified, against a smart sink, and report.

``run_harness(HarnessOptions(policy=Path("policy/init.lua"), messages=1000))``:

1. starts a smart sink (kumoq.testing.sink) on 127.0.0.1, a free port;
2. starts ``kumoq serve --policy FILE`` (kumoq.testing.harness) in a scratch directory, with
   ``KUMOQ_HARNESS_MX`` naming the sink: the daemon then binds its listeners on free loopback
   ports, keeps absolute paths under the scratch directory, answers DNS in process and sends
   every SMTP delivery to the sink (kumoq.harness_mode; docs/testing.md, "How the harness
   routes mail"). Relative spool, log and maildir paths land in the scratch directory;
3. sends ``messages`` messages with the traffic generator (kumoq.testing.traffic) over SMTP,
   or over ``/api/inject/v1`` when the policy has no ESMTP listener or ``http`` is set;
4. follows the harness's own log destination (every record) and samples ``/metrics.json``
   (``scheduled_count_total``, ``ready_count``) until every accepted message has reached a
   final disposition (``Delivery``, ``Bounce``, ``Expiration``, ``AdminBounce``, or the
   ``null`` queue) or ``timeout`` seconds have passed since the traffic started;
5. stops the daemon and the sink and returns a ``HarnessResult``: the traffic summary, the sink's
   counts, ``HarnessStats`` (kumoq.testing.harness_stats), the queue depth samples, the
   ``delayed_due_to_*`` metrics, the ``--expect`` results and the daemon's error lines.

``HarnessResult.exit_status``: 0 every message finished and every expectation held; 1 an
expectation failed; 4 the timeout passed first. ``HarnessError`` (the daemon did not start,
nothing could be sent) is for the CLI's status 3.

Imports the sibling harness, sink_thread, traffic and harness_stats modules.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from kumoq.logs.tail import iter_records
from kumoq.testing.harness import KumoqDaemon, KumoqStartError
from kumoq.testing.harness_stats import (
    FINAL_TYPES,
    NULL_QUEUE,
    Expectation,
    HarnessStats,
    analyse,
    check_expectations,
    expectation_values,
)
from kumoq.testing.sink import SinkOptions
from kumoq.testing.sink_thread import SinkThread
from kumoq.testing.traffic import TargetUnreachable, TrafficOptions, run_traffic
from kumoq.testing.traffic_message import MessageSpec

__all__ = ["HarnessError", "HarnessOptions", "HarnessResult", "run_harness"]

EXIT_OK: Final = 0
EXIT_EXPECTATION: Final = 1
EXIT_TIMEOUT: Final = 4
_WAIT_POLL: Final = 0.1
_PROGRESS_EVERY: Final = 5.0
_SHUTDOWN_ENV: Final = {
    "KUMOQ_SHUTDOWN_LISTENER_DRAIN": "2",
    "KUMOQ_SHUTDOWN_DELIVERY_DRAIN": "2",
    "KUMOQ_SHUTDOWN_FLUSH": "10",
}


class HarnessError(Exception):
    """The run could not happen: the daemon did not start, or nothing could be sent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HarnessOptions:
    """One run. ``timeout`` bounds the wait for every message's final disposition, counted
    from the start of the traffic; the sink options are ``SinkOptions``'; ``workdir`` None is a
    temporary directory, removed afterwards unless ``keep``."""

    policy: Path
    messages: int = 1000
    domains: tuple[tuple[str, int], ...] = (("example.com", 1),)
    concurrency: int = 20
    per_connection: int = 100
    size: int = 2000
    headers: tuple[tuple[str, str], ...] = ()
    campaign: str | None = None
    sender: str = "harness@example.com"
    local_part: str = "user"
    rate: float | None = None
    http: bool = False
    timeout: float = 120.0
    tempfail_percent: float = 0.0
    permfail_percent: float = 0.0
    sink_delay: float = 0.0
    sink_refuse_window: tuple[float, float] | None = None
    seed: int | None = None
    expectations: tuple[Expectation, ...] = ()
    workdir: Path | None = None
    keep: bool = False
    sample_every: float = 0.5
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.messages < 1 or self.concurrency < 1:
            raise ValueError("messages and concurrency must be at least 1")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if not self.policy.is_file():
            raise ValueError(f"policy {str(self.policy)!r} is not a file")


@dataclass(slots=True, kw_only=True)
class HarnessResult:
    """What ``run_harness`` found; ``to_json()`` is ``kumoq harness --json``."""

    policy: str
    messages: int
    started: float
    finished_in: float
    timed_out: bool
    traffic: dict[str, Any]
    sink: dict[str, Any]
    stats: HarnessStats
    depth: list[list[float]] = field(default_factory=list)
    delayed_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    expectations: list[dict[str, Any]] = field(default_factory=list)
    daemon_errors: list[str] = field(default_factory=list)
    workdir: str | None = None

    @property
    def failed_expectations(self) -> list[dict[str, Any]]:
        return [e for e in self.expectations if not e["ok"]]

    @property
    def exit_status(self) -> int:
        if self.failed_expectations:
            return EXIT_EXPECTATION
        return EXIT_TIMEOUT if self.timed_out else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["stats"] = self.stats.to_json()
        out["exit_status"] = self.exit_status
        return out


class _RecordFollower:
    """Follows a log directory from a thread and keeps every record, and which messages were
    received and which are done."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self._received: set[str] = set()
        self._done: set[str] = set()
        self._stopping = 0
        self._thread = threading.Thread(target=self._run, name="kumoq-harness-logs", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _sleep(self, seconds: float) -> None:
        if self._stopping:  # one whole pass after stop(): everything flushed is read
            self._stopping += 1
            if self._stopping > 2:
                raise _Stopped
        time.sleep(seconds)

    def _run(self) -> None:
        try:
            for record in iter_records(self._log_dir, follow=True, poll=0.1, sleep=self._sleep):
                kind, msg_id = record.get("type"), str(record.get("id", ""))
                with self._lock:
                    self.records.append(record)
                    if kind == "Reception":
                        self._received.add(msg_id)
                        if record.get("queue") == NULL_QUEUE:
                            self._done.add(msg_id)
                    elif kind in FINAL_TYPES:
                        self._done.add(msg_id)
        except _Stopped:
            pass
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def progress(self) -> tuple[int, int]:
        """``(messages received, of them done)``."""
        with self._lock:
            return len(self._received), len(self._received & self._done)

    def stop(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        self._stopping = 1
        self._thread.join(timeout)
        if self.error is not None:
            raise HarnessError(f"reading the log records failed: {self.error!r}")
        with self._lock:
            return list(self.records)


class _Stopped(Exception):
    pass


class _MetricsSampler:
    """Samples the queue depth from ``/metrics.json`` every ``every`` seconds, in a thread."""

    def __init__(self, base: str, started: float, every: float) -> None:
        self._base = base
        self._started = started
        self._every = every
        self._stop = threading.Event()
        self.samples: list[list[float]] = []
        self._thread = threading.Thread(target=self._run, name="kumoq-harness-metrics", daemon=True)

    def fetch(self, prefix: str) -> dict[str, Any]:
        url = f"{self._base}/metrics.json?prefix={prefix}"
        with urllib.request.urlopen(url, timeout=5) as response:  # the daemon, on loopback
            data: dict[str, Any] = json.load(response)
        return data

    def sample(self) -> None:
        try:
            scheduled = self.fetch("scheduled_count_total")
            ready = self.fetch("ready_count")
        except (OSError, ValueError):
            return  # a gap in the plot; the daemon may be busy or stopping
        total = scheduled.get("scheduled_count_total", {}).get("value") or 0
        services = (ready.get("ready_count", {}).get("value") or {}).get("service", {})
        in_ready = sum(v for k, v in services.items() if ":" not in k)  # per-protocol totals
        self.samples.append([round(time.time() - self._started, 3), total, in_ready])

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()

    def delayed_metrics(self) -> dict[str, dict[str, float]]:
        """KumoMTA's ``delayed_due_to_*`` counters per scheduled queue."""
        try:
            data = self.fetch("delayed_due_to")
        except (OSError, ValueError):
            return {}
        return {
            name: dict((entry.get("value") or {}).get("queue", {}))
            for name, entry in sorted(data.items())
            if isinstance(entry.get("value"), dict)
        }


def _say(progress: TextIO | None, text: str) -> None:
    if progress is not None:
        with contextlib.suppress(OSError, ValueError):
            progress.write(f"harness: {text}\n")
            progress.flush()


def run_harness(options: HarnessOptions, progress: TextIO | None = None) -> HarnessResult:
    """Run the harness (see the module docstring). Raises ``HarnessError``."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="kumoq-harness-"))
    workdir = workdir.absolute()
    keep = options.keep or options.workdir is not None
    try:
        result = _run(options, workdir, progress)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result.workdir = str(workdir) if keep else None
    return result


def _run(options: HarnessOptions, workdir: Path, progress: TextIO | None) -> HarnessResult:
    own = workdir / "_harness"
    log_dir = own / "log"
    sink = SinkThread(
        SinkOptions(
            listen="127.0.0.1:0", maildir=own / "sink-maildir",
            tempfail_percent=options.tempfail_percent, permfail_percent=options.permfail_percent,
            delay=options.sink_delay, seed=options.seed, hostname="sink.kumoq-harness",
            refuse_window=options.sink_refuse_window,
        )
    ).start()  # fmt: skip
    follower = _RecordFollower(log_dir)
    follower.start()
    env = {
        **_SHUTDOWN_ENV, **options.env,
        "KUMOQ_HARNESS_MX": sink.target, "KUMOQ_HARNESS_ROOT": str(own / "root"),
        "KUMOQ_HARNESS_LOG_DIR": str(log_dir),
        "KUMOQ_SMTP_LISTEN": "127.0.0.1:0", "KUMOQ_HTTP_LISTEN": "127.0.0.1:0",
    }  # fmt: skip
    daemon = KumoqDaemon(workdir, options.policy, env=env)
    started = time.time()
    sampler: _MetricsSampler | None = None
    try:
        try:
            daemon.start()
        except KumoqStartError as exc:
            raise HarnessError(str(exc)) from None
        _say(progress, f"kumoq serve --policy {options.policy} started in {workdir}; "
                       f"the sink listens on {sink.target}")  # fmt: skip
        started = time.time()
        http_host, http_port = daemon.listeners["http"]
        sampler = _MetricsSampler(f"http://{http_host}:{http_port}", started, options.sample_every)
        sampler.start()
        traffic = _send(options, daemon, progress)
        timed_out = _wait(follower, traffic["accepted"], started + options.timeout, progress)
        delayed = sampler.delayed_metrics()
        sampler.stop()
    finally:
        daemon.stop()
        records = follower.stop()
        sink_counts = sink.stop()
    assert sampler is not None  # reached only when the run went through
    stats = analyse(records, started=started)
    values = expectation_values(stats, traffic)
    return HarnessResult(
        policy=str(options.policy),
        messages=options.messages,
        started=started,
        finished_in=round(time.time() - started, 3),
        timed_out=timed_out,
        traffic=traffic,
        sink=sink_counts,
        stats=stats,
        depth=sampler.samples,
        delayed_metrics=delayed,
        expectations=check_expectations(options.expectations, values),
        daemon_errors=[
            line for line in daemon.stderr_lines if " ERROR " in line or " CRITICAL " in line
        ][:20],
    )


def _send(options: HarnessOptions, daemon: KumoqDaemon, progress: TextIO | None) -> dict[str, Any]:
    spec = MessageSpec(
        sender=options.sender, domains=options.domains, local_part=options.local_part,
        size=options.size, headers=options.headers, campaign=options.campaign,
    )  # fmt: skip
    target = http = None
    if options.http or "smtp" not in daemon.listeners:
        host, port = daemon.listeners["http"]
        http = f"http://{host}:{port}"
    else:
        host, port = daemon.smtp_address
        target = f"{host}:{port}"
    traffic = TrafficOptions(
        target=target, http=http, count=options.messages, concurrency=options.concurrency,
        per_connection=options.per_connection, rate=options.rate, message=spec,
    )  # fmt: skip
    try:
        summary = run_traffic(traffic, progress=progress)
    except TargetUnreachable as exc:
        raise HarnessError(f"nothing could be sent: {exc}") from None
    return summary.to_json()


def _wait(
    follower: _RecordFollower, accepted: int, deadline: float, progress: TextIO | None
) -> bool:
    """Wait until every accepted message is done; True when the deadline passed first."""
    said = time.monotonic()
    while True:
        received, done = follower.progress()
        if received >= accepted and done >= received:
            _say(progress, f"all {received} messages reached a final disposition")
            return False
        if time.time() > deadline:
            _say(progress, f"timed out: {received - done} of {received} messages not finished")
            return True
        if time.monotonic() - said >= _PROGRESS_EVERY:
            said = time.monotonic()
            _say(progress, f"{done} of {accepted} messages finished")
        time.sleep(_WAIT_POLL)
