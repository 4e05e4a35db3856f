"""pytest plugin: the ``kumoq`` fixture starts daemons under a policy and stops them afterwards;
``smart_sink`` runs a smart sink (kumoq.testing.sink) and ``traffic`` sends generated mail
(kumoq.testing.traffic).

Usage::

    def test_delivers(kumoq):
        daemon = kumoq(POLICY_TEXT)          # started, ports discovered
        daemon.send("a@example.com", ["b@example.com"])
        daemon.wait_for_maildir_count(1)

    def test_relays(kumoq, smart_sink, traffic):
        daemon = kumoq(relay_policy(smart_sink.port))
        summary = traffic(daemon.smtp_address, count=100)
        assert summary.accepted == 100
        smart_sink.wait_for(accepted=100)

``smart_sink`` takes options by indirect parametrization::

    @pytest.mark.parametrize("smart_sink", [{"tempfail_percent": 10, "seed": 1}], indirect=True)

``harness`` runs a policy file unmodified against a smart sink (kumoq.testing.harness_run) and
fails the test, with the report, when an expectation fails or the timeout passes::

    def test_relay_policy(harness):
        result = harness("policy/init.lua", messages=200, expect=["delivered=200"])
        assert result.stats.by_scheduled_queue["example.com"]["Delivery"] == 200
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kumoq.testing.harness import KumoqDaemon

if TYPE_CHECKING:  # imported by the fixtures that use them: pytest starts faster without
    from kumoq.testing.harness_run import HarnessResult
    from kumoq.testing.sink_thread import SinkThread
    from kumoq.testing.traffic import TrafficOptions, TrafficSummary

__all__ = ["harness", "kumoq", "smart_sink", "traffic", "traffic_options"]


@pytest.fixture
def kumoq(tmp_path: Path) -> Iterator[Callable[..., KumoqDaemon]]:
    """A factory: ``kumoq(policy_text, **options) -> KumoqDaemon`` (already started).

    Each call gets its own directory under ``tmp_path``; every daemon is stopped at teardown.
    Pass ``start=False`` to get a daemon that is not started yet.
    """
    daemons: list[KumoqDaemon] = []

    def make(
        policy: str, *, start: bool = True, name: str | None = None, **options: Any
    ) -> KumoqDaemon:
        workdir = tmp_path / (name or f"kumoq{len(daemons)}")
        daemon = KumoqDaemon(workdir, policy, **options)
        daemons.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def smart_sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SinkThread]:
    """A smart sink on 127.0.0.1 (a free port) storing into ``tmp_path/sink-maildir``:
    ``.port``, ``.address``, ``.target``, ``.counts``, ``.messages()``, ``.wait_for(n)``.

    Indirect parametrization passes ``SinkOptions`` fields (``maildir=None`` only counts)."""
    from kumoq.testing.sink import SinkOptions
    from kumoq.testing.sink_thread import SinkThread

    options: dict[str, Any] = {"listen": "127.0.0.1:0", "maildir": tmp_path / "sink-maildir"}
    options.update(getattr(request, "param", None) or {})
    sink = SinkThread(SinkOptions(**options)).start()
    yield sink
    sink.stop()


def traffic_options(target: Any = None, **options: Any) -> TrafficOptions:
    """``TrafficOptions`` from friendly values: ``target`` is ``"host:port"``, a
    ``(host, port)`` pair or anything with a ``.target`` (a sink); ``size`` may be ``"2KB"``;
    ``domains`` are ``"gmail.com:67"`` strings or pairs; ``headers`` a mapping or
    ``"Name:value"`` strings; the other ``MessageSpec`` fields (``sender``, ``campaign``,
    ``local_part``) and ``TrafficOptions`` fields are passed as they are."""
    import humanfriendly

    from kumoq.testing.traffic import TrafficOptions
    from kumoq.testing.traffic_message import MessageSpec, parse_header, parse_weighted

    if target is not None and not isinstance(target, str):
        target = target.target if hasattr(target, "target") else f"{target[0]}:{target[1]}"
    spec: dict[str, Any] = {}
    size = options.pop("size", None)
    if size is not None:
        spec["size"] = int(humanfriendly.parse_size(size)) if isinstance(size, str) else size
    domains: Iterable[Any] | None = options.pop("domains", None)
    if domains is not None:
        spec["domains"] = tuple(parse_weighted(d) if isinstance(d, str) else d for d in domains)
    headers: Mapping[str, str] | Iterable[str] | None = options.pop("headers", None)
    if headers is not None:
        pairs = headers.items() if isinstance(headers, Mapping) else map(parse_header, headers)
        spec["headers"] = tuple(pairs)
    for name in ("sender", "campaign", "local_part"):
        if name in options:
            spec[name] = options.pop(name)
    return TrafficOptions(target=target, message=MessageSpec(**spec), **options)


@pytest.fixture
def traffic() -> Callable[..., TrafficSummary]:
    """``traffic(target, count=100, concurrency=10, ...) -> TrafficSummary``: run the traffic
    generator (``traffic_options`` explains the arguments; ``http="http://host:port"`` instead
    of a target uses the injection API). Raises ``TargetUnreachable`` when nothing could be
    sent."""

    from kumoq.testing.traffic import run_traffic

    def run(target: Any = None, **options: Any) -> TrafficSummary:
        return run_traffic(traffic_options(target, **options))

    return run


@pytest.fixture
def harness(tmp_path: Path) -> Callable[..., HarnessResult]:
    """``harness(policy, messages=100, expect=[...], check=True, **options) -> HarnessResult``.

    ``policy`` is a policy file (a path) run as it is, or policy text (anything with a
    newline), written to a file first. ``expect`` takes ``--expect`` strings
    (``"delivered=200"``); ``domains``, ``headers`` and ``size`` are taken as ``traffic``
    takes them; the other ``HarnessOptions`` fields (``timeout``, ``tempfail_percent``,
    ``concurrency``, ``env``, ...) as they are. Each run gets a directory under ``tmp_path``.
    With ``check`` (the default) the test fails, with the text report, unless every message
    reached a final disposition and every expectation held."""
    import humanfriendly

    from kumoq.testing.harness_report import format_text
    from kumoq.testing.harness_run import HarnessOptions, run_harness
    from kumoq.testing.harness_stats import Expectation
    from kumoq.testing.traffic_message import parse_header, parse_weighted

    runs = 0

    def run(
        policy: str | Path,
        *,
        messages: int = 100,
        expect: Iterable[str] = (),
        check: bool = True,
        **options: Any,
    ) -> HarnessResult:
        nonlocal runs
        runs += 1
        workdir = tmp_path / f"harness{runs}"
        if isinstance(policy, str) and "\n" in policy:
            workdir.mkdir(parents=True)
            (workdir / "policy.lua").write_text(policy)
            policy = workdir / "policy.lua"
        if isinstance(options.get("size"), str):
            options["size"] = int(humanfriendly.parse_size(options["size"]))
        if "domains" in options:
            options["domains"] = tuple(
                parse_weighted(d) if isinstance(d, str) else d for d in options["domains"]
            )
        headers = options.get("headers")
        if headers is not None:
            pairs = headers.items() if isinstance(headers, Mapping) else map(parse_header, headers)
            options["headers"] = tuple(pairs)
        result = run_harness(
            HarnessOptions(
                policy=Path(policy), messages=messages, workdir=workdir,
                expectations=tuple(Expectation.parse(e) for e in expect), **options,
            )
        )  # fmt: skip
        if check and result.exit_status != 0:
            pytest.fail(f"kumoq harness: exit status {result.exit_status}\n{format_text(result)}")
        return result

    return run
