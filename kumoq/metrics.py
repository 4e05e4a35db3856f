"""Every Prometheus metric kumoq exports, defined in one place with its help text.

Names follow KumoMTA's where the concept matches, so its dashboards carry over; kumoq's own
metrics say so in their help text. Metrics live in ``REGISTRY``, which the HTTP listener
serves at ``/metrics``. Any layer may count: this module imports nothing from kumoq.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter

__all__ = [
    "ACCEPT_FAILURES",
    "LOG_RECORDS_DROPPED",
    "REGISTRY",
    "SPOOL_QUARANTINED",
    "SUPERVISED_TASK_RESTARTS",
]

REGISTRY: Final = CollectorRegistry(auto_describe=True)

SUPERVISED_TASK_RESTARTS: Final = Counter(
    "supervised_task_restarts",
    "How often a long-running task (a queue maintainer, a retry loop) ended with an "
    "unexpected exception and was restarted (kumoq).",
    ["task"],
    registry=REGISTRY,
)

SPOOL_QUARANTINED: Final = Counter(
    "spool_quarantined",
    "Spool records that could not be read at enumeration and were moved to the spool's "
    "quarantine instead of being loaded (kumoq).",
    ["spool", "reason"],
    registry=REGISTRY,
)

LOG_RECORDS_DROPPED: Final = Counter(
    "log_records_dropped",
    "Log records that could not be written (for example on a full disk); no partial record is "
    "ever left in a segment (kumoq).",
    ["logger"],
    registry=REGISTRY,
)

ACCEPT_FAILURES: Final = Counter(
    "accept_failures",
    "Connections an ESMTP listener could not accept: accept() failed, most often for want of "
    "file descriptors (EMFILE, ENFILE); the listener then pauses accepting briefly (kumoq).",
    ["listener"],
    registry=REGISTRY,
)
