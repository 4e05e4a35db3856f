"""``RecordLogger``: builds each log record once per configured log and hands it to its writer.

It implements the queue manager's ``RecordSink`` seam and reception's rejection logging. If the
policy configured no logs, nothing is built (as in KumoMTA: no logger, no records).

Every record also counts in KumoMTA's counters (kumoq.metrics), whether or not logs are
configured: ``Reception`` in ``total_messages_received`` by listener kind
(``esmtp_listener``, ``http_listener``); ``Delivery``, ``TransientFailure`` and ``Bounce``
from a deliverer in ``total_messages_delivered``, ``_transfail`` and ``_fail``, once for the
protocol (``smtp_client``, ``maildir``, ``lua``) and once for ``<protocol>:<ready queue>``.
One or two dict updates per record. A final record (``Delivery``, ``Bounce``, ``Expiration``,
``AdminBounce``) is also observed in ``kumoq_disposition_latency_seconds``: the seconds since
the message was received (``msg.created``), on a series bound once per disposition. A
``Rejection`` counts in KumoMTA's ``smtp_server_rejections``, as ``total`` and as the listener's
address (``received_via``).

With a bounce classifier (``kumo.configure_bounce_classifier``, kumoq.logs.classify), the
classifiable records (``Bounce``, ``TransientFailure``, ``Expiration``, ``AdminBounce``,
``Rejection``...) get its class in ``bounce_classification``, once per record for all logs;
without one, the field stays ``Uncategorized`` and the only cost is one ``is None`` test.

With log hooks (``kumo.configure_log_hook``, kumoq.logs.hooks), each message record is also
built once per hook, with the hook's selection, and offered to it; a record about a hook's own
message (``reception_protocol`` ``LogRecord``) is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kumoq.clock import Clock
from kumoq.config.logs import LocalLogsConfig
from kumoq.logs.classify import CLASSIFIABLE, UNCATEGORIZED, BounceClassifier
from kumoq.logs.hooks import LOG_RECORD_PROTOCOL, LogHooks
from kumoq.logs.records import FieldSelection, RecordType, Response, build_record
from kumoq.logs.writer import LocalLogWriter
from kumoq.message import Message
from kumoq.metrics import (
    DISPOSITION_LATENCY,
    SMTP_SERVER_REJECTIONS,
    TOTAL_MESSAGES_DELIVERED,
    TOTAL_MESSAGES_FAIL,
    TOTAL_MESSAGES_RECEIVED,
    TOTAL_MESSAGES_TRANSFAIL,
    ExactCounter,
    HistogramChild,
)

__all__ = ["RecordLogger", "count_record"]

_DISPOSITION_COUNTERS: dict[RecordType, ExactCounter] = {
    RecordType.Delivery: TOTAL_MESSAGES_DELIVERED,
    RecordType.TransientFailure: TOTAL_MESSAGES_TRANSFAIL,
    RecordType.Bounce: TOTAL_MESSAGES_FAIL,
}
#: The final dispositions, each with its series of the reception-to-disposition histogram.
_DISPOSITION_LATENCY: dict[RecordType, HistogramChild] = {
    t: DISPOSITION_LATENCY.child(t.value)
    for t in (RecordType.Delivery, RecordType.Bounce, RecordType.Expiration, RecordType.AdminBounce)
}
#: ``delivery_protocol`` → KumoMTA's metrics protocol name
_DELIVERY_SERVICES = {"ESMTP": "smtp_client", "Maildir": "maildir", "Lua": "lua"}


def count_record(type: RecordType, fields: dict[str, Any]) -> None:
    """Count one record in KumoMTA's message counters (see the module docstring)."""
    if type is RecordType.Reception:
        protocol = fields.get("reception_protocol") or ""
        if protocol.startswith("ESMTP"):  # ESMTPS, ESMTPSA too
            TOTAL_MESSAGES_RECEIVED.inc("esmtp_listener")
        elif protocol == "HTTP":
            TOTAL_MESSAGES_RECEIVED.inc("http_listener")
        return
    counter = _DISPOSITION_COUNTERS.get(type)
    if counter is None:
        return
    service = _DELIVERY_SERVICES.get(fields.get("delivery_protocol") or "")
    if service is None:  # not from a deliverer (an insert failure at reception, say)
        return
    counter.inc(service)
    site = fields.get("site")
    if site:
        counter.inc(f"{service}:{site}")


class RecordLogger:
    """Fans records out to every ``configure_local_logs`` destination."""

    def __init__(
        self,
        logs: list[tuple[LocalLogWriter, LocalLogsConfig]],
        nodeid: str,
        clock: Clock,
        classifier: BounceClassifier | None = None,
        hooks: LogHooks | None = None,
    ) -> None:
        self._logs = [
            (writer, config, FieldSelection(meta=config.meta, headers=config.headers))
            for writer, config in logs
        ]
        self._nodeid = nodeid
        self._clock = clock
        #: ``kumo.configure_bounce_classifier``'s rules, if the policy configured them
        self.classifier = classifier
        #: ``kumo.configure_log_hook``'s hooks (empty unless the policy configured some)
        self.hooks = hooks if hooks is not None else LogHooks((), clock)
        #: called with every message record's type, message and response text (campaign
        #: progress); the list is empty unless the daemon adds one
        self.observers: list[Callable[[RecordType, Message, str], None]] = []

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        count_record(type, fields)
        for observe in self.observers:
            observe(type, msg, response.content)
        now = self._clock.now()
        latency = _DISPOSITION_LATENCY.get(type)
        if latency is not None:
            latency.observe(max(0.0, now - msg.created))
        hooks = self.hooks
        if not self._logs and not hooks:
            return
        classifier = self.classifier
        if classifier is not None and type in CLASSIFIABLE:
            fields["bounce_classification"] = classifier.classify(response)
        if hooks:
            self._offer(type, msg, now, response, fields)
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

    def _offer(
        self, type: RecordType, msg: Message, now: float, response: Response, fields: Any
    ) -> None:
        """Offer the record to each hook that wants its type, unless it is about a hook's
        own message."""
        protocol = fields.get("reception_protocol") or msg.meta.get("reception_protocol")
        if protocol == LOG_RECORD_PROTOCOL:
            return
        hooks = self.hooks
        for hook in hooks.hooks:
            if hook.wants(type):
                line = build_record(
                    type,
                    msg,
                    now=now,
                    response=response,
                    nodeid=self._nodeid,
                    selection=hook.selection,
                    **fields,
                )
                hooks.offer(hook, line)

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        """A ``Rejection`` record for a 4xx/5xx reply kumoq sent to an SMTP command."""
        SMTP_SERVER_REJECTIONS.inc("total")
        listener = conn_meta.get("received_via")
        if listener:
            SMTP_SERVER_REJECTIONS.inc(str(listener))
        if not self._logs:
            return
        now = self._clock.now()
        peer = {
            "name": str(conn_meta.get("ehlo_domain", "")),
            "addr": str(conn_meta.get("received_from", "")),
        }
        classifier = self.classifier
        classification = UNCATEGORIZED if classifier is None else classifier.classify(response)
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
                    bounce_classification=classification,
                )
            )
