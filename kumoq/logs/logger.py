"""``RecordLogger``: builds each log record once per configured log and hands it to its writer.

It implements the queue manager's ``RecordSink`` seam and reception's rejection logging. If the
policy configured no logs, nothing is built (as in KumoMTA: no logger, no records).
"""

from __future__ import annotations

from typing import Any

from kumoq.clock import Clock
from kumoq.config.logs import LocalLogsConfig
from kumoq.logs.records import FieldSelection, RecordType, Response, build_record
from kumoq.logs.writer import LocalLogWriter
from kumoq.message import Message

__all__ = ["RecordLogger"]


class RecordLogger:
    """Fans records out to every ``configure_local_logs`` destination."""

    def __init__(
        self, logs: list[tuple[LocalLogWriter, LocalLogsConfig]], nodeid: str, clock: Clock
    ) -> None:
        self._logs = [
            (writer, config, FieldSelection(meta=config.meta, headers=config.headers))
            for writer, config in logs
        ]
        self._nodeid = nodeid
        self._clock = clock

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        if not self._logs:
            return
        now = self._clock.now()
        for writer, config, selection in self._logs:
            if config.per_record and not config.record_enabled(type.value):
                continue
            writer.write(
                build_record(
                    type,
                    msg,
                    now=now,
                    response=response,
                    nodeid=self._nodeid,
                    selection=selection,
                    **fields,
                )
            )

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        """A ``Rejection`` record for a 4xx/5xx reply kumoq sent to an SMTP command."""
        if not self._logs:
            return
        now = self._clock.now()
        peer = {
            "name": str(conn_meta.get("ehlo_domain", "")),
            "addr": str(conn_meta.get("received_from", "")),
        }
        for writer, config, selection in self._logs:
            if config.per_record and not config.record_enabled(RecordType.Rejection.value):
                continue
            writer.write(
                build_record(
                    RecordType.Rejection,
                    None,
                    now=now,
                    response=response,
                    nodeid=self._nodeid,
                    selection=selection,
                    sender="",
                    recipient="",
                    meta=conn_meta,
                    peer_address=peer,
                    reception_protocol="ESMTP",
                    session_id=conn_meta.get("session_id"),
                )
            )
