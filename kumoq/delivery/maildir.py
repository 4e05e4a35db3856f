"""Maildir delivery (reference §1.9 "Maildir"): expand the path, write, fsync, rename into new/.

``MaildirDeliverer.deliver(msg, protocol)`` expands ``maildir_path`` per recipient on the event
loop (cheap, cached), then hands the writes to one worker thread. The worker takes every request
that is waiting as one batch: it writes each file into ``tmp/``, fsyncs the files of the batch
concurrently (a small fsync pool, so ext4 shares journal commits), renames them into ``new/``,
fsyncs each ``new/`` directory once per batch, and resolves the batch's futures with one
``call_soon_threadsafe`` per event loop. No blocking call ever runs on the event loop.

File names follow the maildir convention KumoMTA uses::

    tmp/<secs>.#<ctr hex>M<nanos>P<pid>.<host>
    new/<secs>.#<ctr hex>M<nanos>P<pid>V<dev>I<ino>.<host>,S=<size>     (the "id")

with ``/`` and ``:`` in the host name escaped as ``\\057`` and ``\\072`` (cr.yp.to/proto/maildir).

Modes: as in KumoMTA, an explicit ``dir_mode``/``file_mode`` is applied with chmod, ignoring the
umask, to the directories and files this module creates (intermediate directories included);
without one, the umask decides. Existing directories are never changed.

IO errors never raise: each recipient gets a ``MaildirDelivered`` or a ``MaildirFailed`` whose
``content`` is the log text (§1.9). A delivery whose ``deliver()`` call is cancelled may still be
written (the message then stays in the spool and may be delivered twice: at least once).

Imports kumoq.config, kumoq.message and kumoq.delivery.template; nothing from queue or daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import queue
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import time_ns
from typing import Final, final

from kumoq.config.queue import MaildirProtocol
from kumoq.delivery.template import MaildirPathTemplates, TemplateExpansionError, message_context
from kumoq.errors import QueueNameError
from kumoq.message import EnvelopeAddress, Message

__all__ = [
    "MaildirDelivered",
    "MaildirDeliverer",
    "MaildirFailed",
    "MaildirResult",
    "delivered_content",
    "escape_host",
    "failed_content",
]

_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Directories known to hold tmp/, new/ and cur/; cleared when it grows past this.
_KNOWN_DIRS_LIMIT: Final = 10_000
# Shared by every deliverer in the process, so names stay unique within one second.
_counter = itertools.count()


def delivered_content(recipient: EnvelopeAddress, file_id: str) -> str:
    """The per-recipient text of a ``Delivery`` record."""
    return f"{recipient}: wrote to maildir with id={file_id}"


def failed_content(recipient: EnvelopeAddress, error: str) -> str:
    """The per-recipient text of a ``TransientFailure`` record (code 400)."""
    return f"{recipient}: failed to write to maildir: {error}"


def escape_host(host: str) -> str:
    """Escape a host name for a maildir file name: ``/`` -> ``\\057``, ``:`` -> ``\\072``."""
    return host.replace("/", "\\057").replace(":", "\\072")


@final
@dataclass(frozen=True, slots=True)
class MaildirDelivered:
    """One recipient's message was written: ``maildir`` is the expanded path, ``file_id`` the id."""

    recipient: EnvelopeAddress
    maildir: str
    file_id: str

    @property
    def content(self) -> str:
        return delivered_content(self.recipient, self.file_id)


@final
@dataclass(frozen=True, slots=True)
class MaildirFailed:
    """One recipient's write failed (a transient failure); ``maildir`` is None if not expanded."""

    recipient: EnvelopeAddress
    maildir: str | None
    error: str

    @property
    def content(self) -> str:
        return failed_content(self.recipient, self.error)


@final
@dataclass(frozen=True, slots=True)
class MaildirResult:
    """The outcome of one ``deliver()``: one entry per recipient, in recipient order."""

    delivered: tuple[MaildirDelivered, ...]
    failed: tuple[MaildirFailed, ...]

    @property
    def ok(self) -> bool:
        """True when every recipient was written (remove the message from the spool)."""
        return not self.failed

    @property
    def delivery_content(self) -> str | None:
        """The ``Delivery`` record's content, or None when nothing was written."""
        return ", ".join(d.content for d in self.delivered) if self.delivered else None

    @property
    def failure_content(self) -> str | None:
        """The ``TransientFailure`` record's content, or None when nothing failed."""
        return ", ".join(f.content for f in self.failed) if self.failed else None

    @property
    def failed_recipients(self) -> list[EnvelopeAddress]:
        """The recipients to keep on the message before requeueing it."""
        return [f.recipient for f in self.failed]


@final
class _Job:
    """One file to write (``data``: its pieces, in order); the worker fills in ``file_id`` or
    ``error``."""

    __slots__ = ("data", "dir_mode", "error", "file_id", "file_mode", "maildir", "recipient")

    def __init__(
        self,
        recipient: EnvelopeAddress,
        maildir: str,
        data: tuple[bytes, ...],
        dir_mode: int | None,
        file_mode: int | None,
    ) -> None:
        self.recipient = recipient
        self.maildir = maildir
        self.data = data
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self.file_id: str | None = None
        self.error: str | None = None


@final
class _Request:
    """The jobs of one ``deliver()`` call and the future that call awaits."""

    __slots__ = ("future", "jobs", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], jobs: list[_Job]
    ) -> None:
        self.loop = loop
        self.future = future
        self.jobs = jobs


def _all_failed(recipients: Sequence[EnvelopeAddress], error: str) -> MaildirResult:
    return MaildirResult((), tuple(MaildirFailed(r, None, error) for r in recipients))


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


@final
class MaildirDeliverer:
    """Writes messages into maildirs from one batching worker thread (started on first use).

    ``batches`` counts the batches written and ``files_written`` the files renamed into new/;
    both are for tests and metrics. ``fsync_threads`` sizes the pool that fsyncs the files of a
    batch concurrently (0: fsync them one after another in the worker). ``max_batch`` caps the
    files per batch.
    """

    def __init__(
        self, *, hostname: str | None = None, fsync_threads: int = 4, max_batch: int = 256
    ) -> None:
        self._host = escape_host(hostname if hostname is not None else socket.gethostname())
        self._pid = os.getpid()
        self._fsync_threads = fsync_threads
        self._max_batch = max(1, max_batch)
        self._templates = MaildirPathTemplates()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._known_dirs: set[str] = set()
        self._closed = False
        self.batches = 0
        self.files_written = 0

    # ---- event loop side -------------------------------------------------------------------

    async def deliver(self, msg: Message, protocol: MaildirProtocol) -> MaildirResult:
        """Write ``msg`` into the maildir of each recipient; never raises for IO errors."""
        recipients = msg.recipients
        data = msg.data_parts()  # a shared body is written as it is, never joined
        if self._closed:
            return _all_failed(recipients, "maildir deliverer is closed")
        if data is None:
            return _all_failed(recipients, "message data is not loaded")
        source = protocol.maildir_path
        dir_mode = protocol.dir_mode
        file_mode = protocol.file_mode
        # One entry per recipient, in order: a job to write, or an expansion failure.
        outcomes: list[_Job | MaildirFailed]
        if self._templates.is_literal(source):
            outcomes = [_Job(r, source, data, dir_mode, file_mode) for r in recipients]
        else:
            try:
                context = message_context(msg)
            except QueueNameError as err:
                return _all_failed(recipients, str(err))
            outcomes = []
            for rcpt in recipients:
                try:
                    path = self._templates.expand(source, context, rcpt)
                except TemplateExpansionError as err:
                    outcomes.append(MaildirFailed(rcpt, None, str(err)))
                else:
                    outcomes.append(_Job(rcpt, path, data, dir_mode, file_mode))
        jobs = [o for o in outcomes if isinstance(o, _Job)]
        if jobs:
            await self._submit(jobs)
        delivered: list[MaildirDelivered] = []
        failed: list[MaildirFailed] = []
        for o in outcomes:
            if isinstance(o, MaildirFailed):
                failed.append(o)
            elif o.file_id is not None:
                delivered.append(MaildirDelivered(o.recipient, o.maildir, o.file_id))
            else:
                failed.append(MaildirFailed(o.recipient, o.maildir, o.error or "not written"))
        return MaildirResult(tuple(delivered), tuple(failed))

    async def _submit(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kumoq-maildir", daemon=True)
            self._thread.start()
        self._queue.put(_Request(loop, future, jobs))
        await future

    async def close(self) -> None:
        """Stop the worker after it has written every request already submitted.

        Later ``deliver()`` calls fail with "maildir deliverer is closed". The join runs in a
        thread, so the event loop is never blocked.
        """
        self._closed = True
        if self._thread is not None:
            await asyncio.to_thread(self.close_blocking)

    def close_blocking(self) -> None:
        """``close()`` for code outside the event loop (it joins the worker thread)."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
            self._thread = None

    # ---- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        max_batch = self._max_batch
        stop = False
        try:
            while not stop:
                first = get()
                if first is None:
                    break
                requests = [first]
                count = len(first.jobs)
                while count < max_batch:
                    try:
                        request = get_nowait()
                    except queue.Empty:
                        break
                    if request is None:
                        stop = True
                        break
                    requests.append(request)
                    count += len(request.jobs)
                try:
                    self._write_batch([job for r in requests for job in r.jobs])
                except Exception as err:  # a bug: fail the batch, keep serving the others
                    for r in requests:
                        for job in r.jobs:
                            if job.file_id is None and job.error is None:
                                job.error = f"internal error: {err!r}"
                self.batches += 1
                self._wake(requests)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    @staticmethod
    def _wake(requests: list[_Request]) -> None:
        """Resolve the batch's futures: one call_soon_threadsafe per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for r in requests:
            by_loop.setdefault(r.loop, []).append(r.future)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(_resolve, futures)

    def _write_batch(self, jobs: Sequence[_Job]) -> None:
        """Write, fsync, rename and directory-fsync every job of one batch."""
        staged: list[tuple[_Job, int, str, str, str]] = []  # job, fd, tmp path, new dir, id
        for job in jobs:
            entry = self._stage(job)
            if entry is not None:
                staged.append(entry)
        if not staged:
            return
        fds = [fd for _, fd, _, _, _ in staged]
        if len(fds) > 1 and self._fsync_threads > 0:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._fsync_threads, thread_name_prefix="kumoq-maildir-fsync"
                )
            errors = list(self._pool.map(_fsync, fds))
        else:
            errors = [_fsync(fd) for fd in fds]
        new_dirs: dict[str, list[_Job]] = {}
        for (job, fd, tmp_path, new_dir, file_id), error in zip(staged, errors, strict=True):
            os.close(fd)
            if error is None:
                try:
                    os.rename(tmp_path, os.path.join(new_dir, file_id))
                except OSError as err:
                    error = err
            if error is not None:
                _unlink_quietly(tmp_path)
                self._known_dirs.discard(job.maildir)
                job.error = f"failed to store message to maildir {job.maildir}: {error}"
                continue
            job.file_id = file_id
            new_dirs.setdefault(new_dir, []).append(job)
        for new_dir, dir_jobs in new_dirs.items():
            try:
                dir_fd = os.open(new_dir, _DIR_FLAGS)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as err:
                # The files are in new/ but may not survive a crash: report a failure, so the
                # message is retried (at least once) rather than possibly lost.
                for job in dir_jobs:
                    job.file_id = None
                    job.error = f"failed to sync maildir directory {new_dir}: {err}"
                continue
            self.files_written += len(dir_jobs)

    def _stage(self, job: _Job) -> tuple[_Job, int, str, str, str] | None:
        """Create the maildir if needed and write ``job`` into tmp/ (not yet synced).

        On failure sets ``job.error`` and returns None.
        """
        maildir = job.maildir
        if not maildir:
            job.error = "maildir_path expanded to an empty string"
            return None
        if maildir not in self._known_dirs:
            try:
                self._create_maildir(maildir, job.dir_mode)
            except (OSError, ValueError) as err:  # ValueError: a NUL in the path
                job.error = f"failed to create maildir {maildir}: {err}"
                return None
        try:
            return self._write_tmp(job, maildir)
        except (OSError, ValueError) as err:
            self._known_dirs.discard(maildir)
            job.error = f"failed to store message to maildir {maildir}: {err}"
            return None

    def _write_tmp(self, job: _Job, maildir: str) -> tuple[_Job, int, str, str, str]:
        tmp_dir = os.path.join(maildir, "tmp")
        file_mode = job.file_mode
        recreated = False
        while True:
            ns = time_ns()
            secs, nanos = divmod(ns, 1_000_000_000)
            unique = f"{secs}.#{next(_counter):x}M{nanos}P{self._pid}"
            tmp_path = f"{tmp_dir}/{unique}.{self._host}"
            try:
                fd = os.open(tmp_path, _OPEN_FLAGS, 0o666 if file_mode is None else file_mode)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if recreated:
                    raise
                recreated = True  # removed behind our back (the cache was stale): create it again
                self._known_dirs.discard(maildir)
                self._create_maildir(maildir, job.dir_mode)
                continue
            break
        try:
            if file_mode is not None:
                os.fchmod(fd, file_mode)
            for piece in job.data:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            _unlink_quietly(tmp_path)
            raise
        file_id = f"{unique}V{st.st_dev}I{st.st_ino}.{self._host},S={st.st_size}"
        return job, fd, tmp_path, os.path.join(maildir, "new"), file_id

    def _create_maildir(self, maildir: str, dir_mode: int | None) -> None:
        for sub in ("cur", "new", "tmp"):
            _make_dirs(os.path.join(maildir, sub), dir_mode)
        if len(self._known_dirs) >= _KNOWN_DIRS_LIMIT:
            self._known_dirs.clear()
        self._known_dirs.add(maildir)


def _fsync(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as err:
        return err
    return None


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _make_dirs(path: str, mode: int | None) -> None:
    """``mkdir -p`` that chmods each directory it creates to ``mode`` (if given)."""
    try:
        os.mkdir(path, 0o777 if mode is None else mode & 0o777)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(
                errno.ENOTDIR, "already exists as a non-directory", path
            ) from None
        return
    except FileNotFoundError:
        parent = os.path.dirname(path.rstrip("/"))
        if not parent or parent == path:
            raise
        _make_dirs(parent, mode)
        _make_dirs(path, mode)
        return
    if mode is not None:
        os.chmod(path, mode)
