"""Campaign progress: per ``(campaign, tenant)``, how many messages were received, delivered,
failed transiently, bounced, expired, and how many are pending (a kumoq extension; KumoMTA
has per-service counters only).

``CampaignProgress.observe`` sees every log record (``RecordLogger`` calls its observers),
so it costs one dict lookup and two additions per record. ``pending`` = received + found in
the spool at start + requeued dead letters - delivered - bounced - expired. Counts start at
zero when kumoq starts (messages found in the spool count as pending, not as received).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kumoq.logs.records import RecordType
from kumoq.message import Message

__all__ = ["CampaignProgress", "Progress"]


@dataclass(slots=True)
class Progress:
    received: int = 0
    delivered: int = 0
    transient_failures: int = 0
    bounced: int = 0
    expired: int = 0
    pending: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "received": self.received,
            "delivered": self.delivered,
            "transient_failures": self.transient_failures,
            "bounced": self.bounced,
            "expired": self.expired,
            "pending": self.pending,
        }


def _key(msg: Message) -> tuple[str | None, str | None]:
    meta = msg.meta
    campaign, tenant = meta.get("campaign"), meta.get("tenant")
    return (
        campaign if isinstance(campaign, str) else None,
        tenant if isinstance(tenant, str) else None,
    )


class CampaignProgress:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str | None, str | None], Progress] = {}

    def _progress(self, msg: Message) -> Progress:
        key = _key(msg)
        progress = self._by_key.get(key)
        if progress is None:
            progress = self._by_key[key] = Progress()
        return progress

    def observe(self, type: RecordType, msg: Message, response_content: str) -> None:
        """One log record about ``msg``."""
        if type is RecordType.Reception:
            p = self._progress(msg)
            p.received += 1
            p.pending += 1
        elif type is RecordType.Delivery:
            p = self._progress(msg)
            p.delivered += 1
            p.pending -= 1
        elif type is RecordType.TransientFailure:
            self._progress(msg).transient_failures += 1
        elif type is RecordType.Bounce or type is RecordType.AdminBounce:
            p = self._progress(msg)
            p.bounced += 1
            p.pending -= 1
        elif type is RecordType.Expiration:
            p = self._progress(msg)
            p.expired += 1
            p.pending -= 1
        elif type is RecordType.DeadLetter and response_content.startswith("requeued"):
            self._progress(msg).pending += 1

    def note_enumerated(self, msg: Message) -> None:
        """A message found in the spool at start (not a dead letter)."""
        self._progress(msg).pending += 1

    def report(self, campaign: str | None, tenant: str | None) -> list[dict[str, Any]]:
        """One row per ``(campaign, tenant)``, filtered by the ones given, sorted."""
        rows = [
            {"campaign": c, "tenant": t, **p.to_json()}
            for (c, t), p in self._by_key.items()
            if (campaign is None or c == campaign) and (tenant is None or t == tenant)
        ]
        rows.sort(key=lambda row: (row["campaign"] or "", row["tenant"] or ""))
        return rows
