"""Maildir delivery: template variables, file names, modes, failures, batching (reference §1.9)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from kumoq.config.queue import MaildirProtocol
from kumoq.delivery import maildir as maildir_module
from kumoq.delivery.maildir import (
    MaildirDeliverer,
    MaildirResult,
    delivered_content,
    escape_host,
    failed_content,
)
from kumoq.delivery.template import (
    MaildirPathTemplates,
    TemplateExpansionError,
    message_context,
)
from kumoq.message import EnvelopeAddress, Message, new_spool_id

NOW = 1_700_000_000.0
ID_RE = re.compile(
    r"^(?P<secs>\d+)\.#(?P<ctr>[0-9a-f]+)M(?P<nanos>\d+)P(?P<pid>\d+)"
    r"V(?P<dev>\d+)I(?P<ino>\d+)\.(?P<host>[^,]+),S=(?P<size>\d+)$"
)


def make_msg(
    *rcpts: str,
    sender: str = "from@sender.example",
    meta: Mapping[str, object] | None = None,
    data: bytes | None = b"Subject: hi\r\n\r\nbody\r\n",
) -> Message:
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse(sender),
        recipients=[EnvelopeAddress.parse(r) for r in rcpts or ("to@example.com",)],
        meta=dict(meta or {}),
        data=data,
    )


@pytest.fixture
def deliverer() -> Iterator[MaildirDeliverer]:
    d = MaildirDeliverer(hostname="testhost")
    yield d
    d.close_blocking()


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def proto(path: Path | str, **kw: int | None) -> MaildirProtocol:
    return MaildirProtocol(maildir_path=str(path), **kw)


def new_files(maildir: Path) -> list[str]:
    return sorted(os.listdir(maildir / "new"))


# ---- template expansion -------------------------------------------------------------------

META = {"tenant": "t1", "campaign": "c1", "routing_domain": "rd.example", "x": "y"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ meta.x }}", "y"),
        ("{{ meta['tenant'] }}", "t1"),
        ("{{ queue }}", "c1:t1@example.com!rd.example"),
        ("{{ campaign }}", "c1"),
        ("{{ tenant }}", "t1"),
        ("{{ domain }}", "example.com"),
        ("{{ routing_domain }}", "rd.example"),
        ("{{ local_part }}", "To.User"),
        ("{{ domain_part }}", "Example.com"),
        ("{{ email }}", "To.User@Example.com"),
        ("{{ sender_local_part }}", "from"),
        ("{{ sender_domain_part }}", "sender.example"),
        ("{{ sender_email }}", "from@sender.example"),
        ("/m/{{ domain_part | lower }}/{{ local_part | lower }}", "/m/example.com/to.user"),
    ],
)
def test_each_template_variable(template: str, expected: str) -> None:
    msg = make_msg("To.User@Example.com", meta=META)
    templates = MaildirPathTemplates()
    assert templates.expand(template, message_context(msg), msg.recipient) == expected


def test_absent_parts_print_as_minijinja_none() -> None:
    msg = make_msg(meta={"flag": True})
    templates = MaildirPathTemplates()
    ctx = message_context(msg)
    assert templates.expand("{{ tenant }}/{{ campaign }}", ctx, msg.recipient) == "none/none"
    assert templates.expand("{{ meta.flag }}", ctx, msg.recipient) == "true"


def test_templates_are_compiled_once() -> None:
    templates = MaildirPathTemplates()
    assert templates.compile("/a/{{ email }}") is templates.compile("/a/{{ email }}")
    assert templates.is_literal("/var/mail/sink")
    assert not templates.is_literal("/var/{{ tenant }}")


def test_sandbox_refuses_unsafe_attributes() -> None:
    msg = make_msg()
    templates = MaildirPathTemplates()
    with pytest.raises(TemplateExpansionError, match=r"unsafe|not safely callable|access"):
        templates.expand(
            "{{ meta.__class__.__subclasses__() }}", message_context(msg), msg.recipient
        )


async def test_template_places_each_recipient(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    msg = make_msg("a@one.example", "b@two.example", meta=META)
    result = await deliverer.deliver(msg, proto(f"{tmp_path}/{{{{ tenant }}}}/{{{{ email }}}}"))
    assert result.ok
    assert [d.maildir for d in result.delivered] == [
        f"{tmp_path}/t1/a@one.example",
        f"{tmp_path}/t1/b@two.example",
    ]
    for d in result.delivered:
        assert new_files(Path(d.maildir)) == [d.file_id]
        assert (Path(d.maildir) / "new" / d.file_id).read_bytes() == msg.data


async def test_undefined_variable_is_a_failure(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    msg = make_msg("rcpt@example.com")
    result = await deliverer.deliver(msg, proto(f"{tmp_path}/{{{{ meta.missing }}}}"))
    assert not result.ok
    assert result.delivered == ()
    (failure,) = result.failed
    assert failure.maildir is None
    assert "missing" in failure.error
    assert (
        result.failure_content == f"rcpt@example.com: failed to write to maildir: {failure.error}"
    )
    assert result.failed_recipients == [msg.recipient]
    assert os.listdir(tmp_path) == []
    assert deliverer.batches == 0  # nothing reached the worker


async def test_syntax_error_is_a_failure(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    result = await deliverer.deliver(make_msg(), proto(f"{tmp_path}/{{{{ oops"))
    (failure,) = result.failed
    assert "invalid maildir_path template" in failure.error


async def test_bad_queue_name_is_a_failure(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    msg = make_msg(meta={"queue": 42})
    result = await deliverer.deliver(msg, proto(f"{tmp_path}/{{{{ queue }}}}"))
    assert "queue" in result.failed[0].error


# ---- writing ------------------------------------------------------------------------------


async def test_delivers_and_leaves_tmp_empty(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    md = tmp_path / "md"
    msg = make_msg("rcpt@example.com")
    result = await deliverer.deliver(msg, proto(md))
    assert isinstance(result, MaildirResult)
    assert result.ok
    (d,) = result.delivered
    assert result.delivery_content == f"rcpt@example.com: wrote to maildir with id={d.file_id}"
    assert result.failure_content is None
    assert sorted(os.listdir(md)) == ["cur", "new", "tmp"]
    assert os.listdir(md / "tmp") == []
    assert os.listdir(md / "cur") == []
    assert new_files(md) == [d.file_id]
    assert (md / "new" / d.file_id).read_bytes() == msg.data
    assert deliverer.files_written == 1


async def test_file_id_follows_the_maildir_convention(
    deliverer: MaildirDeliverer, tmp_path: Path
) -> None:
    before = int(time.time())
    result = await deliverer.deliver(make_msg(data=b"x" * 2048), proto(tmp_path))
    (d,) = result.delivered
    m = ID_RE.match(d.file_id)
    assert m is not None, d.file_id
    st = os.stat(tmp_path / "new" / d.file_id)
    assert before <= int(m["secs"]) <= int(time.time())
    assert int(m["nanos"]) < 1_000_000_000
    assert int(m["pid"]) == os.getpid()
    assert (int(m["dev"]), int(m["ino"]), int(m["size"])) == (st.st_dev, st.st_ino, 2048)
    assert m["host"] == "testhost"


def test_host_escaping() -> None:
    assert escape_host("a/b:c") == "a\\057b\\072c"
    d = MaildirDeliverer(hostname="mx:1/2")
    assert d._host == "mx\\0721\\0572"
    d.close_blocking()


async def test_many_deliveries_in_one_nanosecond_get_unique_names(
    deliverer: MaildirDeliverer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frozen clock: only the counter can tell the names apart.
    monkeypatch.setattr(maildir_module, "time_ns", lambda: 1_700_000_000_123_456_789)
    results = await asyncio.gather(
        *(deliverer.deliver(make_msg(), proto(tmp_path)) for _ in range(300))
    )
    ids = [d.file_id for r in results for d in r.delivered]
    assert len(set(ids)) == 300
    assert len(set(new_files(tmp_path))) == 300
    assert {i.split("#")[0] for i in ids} == {"1700000000."}
    assert all("M123456789P" in i for i in ids)


async def test_content_helpers() -> None:
    rcpt = EnvelopeAddress.parse("u@d.example")
    assert delivered_content(rcpt, "ID") == "u@d.example: wrote to maildir with id=ID"
    assert failed_content(rcpt, "boom") == "u@d.example: failed to write to maildir: boom"


# ---- modes --------------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.usefixtures("umask_077")
async def test_explicit_modes_ignore_the_umask(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    md = tmp_path / "a" / "b" / "md"
    result = await deliverer.deliver(make_msg(), proto(md, dir_mode=0o750, file_mode=0o640))
    (d,) = result.delivered
    for path in (tmp_path / "a", tmp_path / "a" / "b", md, md / "tmp", md / "new", md / "cur"):
        assert mode_of(path) == 0o750, path
    assert mode_of(md / "new" / d.file_id) == 0o640
    assert mode_of(tmp_path) != 0o750  # existing directories are left alone


@pytest.mark.usefixtures("umask_077")
async def test_default_modes_follow_the_umask(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    md = tmp_path / "x" / "md"
    (d,) = (await deliverer.deliver(make_msg(), proto(md))).delivered
    for path in (tmp_path / "x", md, md / "new"):
        assert mode_of(path) == 0o700
    assert mode_of(md / "new" / d.file_id) == 0o600


# ---- failures -----------------------------------------------------------------------------


async def test_file_in_place_of_the_maildir_fails(
    deliverer: MaildirDeliverer, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    msg = make_msg("rcpt@example.com")
    result = await deliverer.deliver(msg, proto(blocker / "maildir"))
    assert not result.ok
    (failure,) = result.failed
    assert failure.maildir == str(blocker / "maildir")
    assert "failed to create maildir" in failure.error
    assert "Not a directory" in failure.error
    assert result.failure_content == failure.content
    assert failure.content.startswith("rcpt@example.com: failed to write to maildir: ")
    assert deliverer.files_written == 0


async def test_file_in_place_of_new_fails(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").write_text("oops")
    result = await deliverer.deliver(make_msg(), proto(tmp_path))
    assert "already exists as a non-directory" in result.failed[0].error


async def test_rename_failure_cleans_tmp(deliverer: MaildirDeliverer, tmp_path: Path) -> None:
    assert (await deliverer.deliver(make_msg(), proto(tmp_path))).ok
    # new/ vanishes and is replaced by a file after the maildir was cached as created.
    shutil.rmtree(tmp_path / "new")
    (tmp_path / "new").write_text("oops")
    result = await deliverer.deliver(make_msg(), proto(tmp_path))
    assert "failed to store message to maildir" in result.failed[0].error
    assert os.listdir(tmp_path / "tmp") == []


async def test_partial_failure_keeps_the_failed_recipients(
    deliverer: MaildirDeliverer, tmp_path: Path
) -> None:
    (tmp_path / "bad").write_text("blocker")
    msg = make_msg("ok@x.example", "bad@x.example", "ok2@x.example")
    result = await deliverer.deliver(msg, proto(f"{tmp_path}/{{{{ local_part }}}}/md"))
    assert [str(d.recipient) for d in result.delivered] == ["ok@x.example", "ok2@x.example"]
    assert result.failed_recipients == [msg.recipients[1]]
    assert result.delivery_content is not None
    assert result.delivery_content.count("wrote to maildir with id=") == 2


async def test_nul_in_the_path_fails_and_the_worker_survives(
    deliverer: MaildirDeliverer, tmp_path: Path
) -> None:
    result = await deliverer.deliver(make_msg(), proto(f"{tmp_path}/a\0b"))
    assert "null byte" in result.failed[0].error
    assert (await deliverer.deliver(make_msg(), proto(tmp_path))).ok


async def test_removed_maildir_is_created_again(
    deliverer: MaildirDeliverer, tmp_path: Path
) -> None:
    md = tmp_path / "md"
    assert (await deliverer.deliver(make_msg(), proto(md))).ok
    shutil.rmtree(md)
    result = await deliverer.deliver(make_msg(), proto(md))
    assert result.ok
    assert new_files(md) == [result.delivered[0].file_id]


async def test_missing_data_and_closed_deliverer_fail(tmp_path: Path) -> None:
    d = MaildirDeliverer(hostname="h")
    result = await d.deliver(make_msg(data=None), proto(tmp_path))
    assert result.failed[0].error == "message data is not loaded"
    assert (await d.deliver(make_msg(), proto(tmp_path))).ok
    await d.close()
    result = await d.deliver(make_msg(), proto(tmp_path))
    assert result.failed[0].error == "maildir deliverer is closed"
    assert len(new_files(tmp_path)) == 1


# ---- batching and the event loop ----------------------------------------------------------


@pytest.mark.parametrize("fsync_threads", [0, 4])
async def test_concurrent_deliveries_are_batched(tmp_path: Path, fsync_threads: int) -> None:
    d = MaildirDeliverer(hostname="h", fsync_threads=fsync_threads)
    entered = threading.Event()
    release = threading.Event()
    real_write_batch = d._write_batch

    def gated(jobs):
        entered.set()
        assert release.wait(10)
        real_write_batch(jobs)

    d._write_batch = gated  # type: ignore[method-assign]
    try:
        first = asyncio.ensure_future(d.deliver(make_msg(), proto(tmp_path)))
        assert await asyncio.to_thread(entered.wait, 10)
        # While the worker holds the first batch, 49 more deliveries queue up behind it.
        rest = [asyncio.ensure_future(d.deliver(make_msg(), proto(tmp_path))) for _ in range(49)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(first, *rest)
    finally:
        release.set()
        await d.close()
    assert all(r.ok for r in results)
    assert d.batches == 2
    assert d.files_written == 50
    assert len(new_files(tmp_path)) == 50


async def test_no_blocking_call_on_the_event_loop(tmp_path: Path) -> None:
    msgs = [make_msg(f"r{i}@example.com", meta=META) for i in range(20)]
    protocol = proto(f"{tmp_path}/{{{{ tenant }}}}/md", dir_mode=0o755, file_mode=0o644)
    (tmp_path / "blocked").write_text("a file")
    with blockbuster_ctx():
        d = MaildirDeliverer(hostname="h")
        results = await asyncio.gather(*(d.deliver(m, protocol) for m in msgs))
        results.append(await d.deliver(make_msg(), proto(tmp_path / "blocked" / "md")))
        await d.close()
    assert all(r.ok for r in results[:-1])
    assert not results[-1].ok
    assert len(new_files(tmp_path / "t1" / "md")) == 20


async def test_cancelled_caller_does_not_break_the_worker(
    deliverer: MaildirDeliverer, tmp_path: Path
) -> None:
    task = asyncio.ensure_future(deliverer.deliver(make_msg(), proto(tmp_path)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await deliverer.deliver(make_msg(), proto(tmp_path))).ok


@pytest.mark.bench
async def test_bench_twenty_concurrent_writers(tmp_path: Path) -> None:
    """20 tasks, each delivering 2 KB messages one after another; prints deliveries/s."""
    d = MaildirDeliverer()
    msg = make_msg(data=b"x" * 2048)
    protocol = proto(tmp_path / "md")
    per_task = 250

    async def writer() -> None:
        for _ in range(per_task):
            assert (await d.deliver(msg, protocol)).ok

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(20)))
    elapsed = time.perf_counter() - start
    await d.close()
    n = 20 * per_task
    print(f"\n{n} deliveries in {elapsed:.2f}s: {n / elapsed:.0f}/s, {d.batches} batches")
