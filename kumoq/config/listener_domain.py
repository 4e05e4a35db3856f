"""``kumo.make_listener_domain``: what a domain may do at a listener, and the relay decision.

``get_listener_domain(domain, listener, conn_meta)`` answers with a ``ListenerDomain`` (or nil)
for the sender's domain and for each recipient's domain. ``relay_disposition`` combines those
answers with whether the peer is trusted (in ``relay_hosts``; in kumoq also after AUTH) the way
KumoMTA's ``check_relaying`` does (``crates/kumod/src/smtp_server.rs``):

- relaying is allowed when the peer is trusted, or the peer is in the *sender* domain's
  ``relay_from``, or the *recipient* domain says ``relay_to = true``;
- ``log_oob`` and ``log_arf`` come from the recipient domain; a RCPT TO is accepted when
  relaying is allowed or either of them asks for reports to be logged
  (``RelayDisposition.accept_rcpt_to``).

KumoMTA parses OOB (RFC 3464) and ARF (RFC 5965) reports at DATA; kumoq keeps the settings but
does not parse reports yet (docs/deviations.md), so a message is relayed exactly when
``relay`` is true.

L0 (pure): imports kumoq.config.values and kumoq.errors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from kumoq.config.values import Cidr, build, ip_in, parse_bool, parse_cidr_list, parse_duration
from kumoq.errors import ConfigError

__all__ = [
    "ListenerDomain",
    "LogReportDisposition",
    "RelayDisposition",
    "relay_disposition",
]


class LogReportDisposition(StrEnum):
    """How incoming OOB or ARF reports are handled (``log_oob``, ``log_arf``)."""

    Ignore = "Ignore"  # not parsed: an ordinary message
    LogThenDrop = "LogThenDrop"  # logged, then dropped
    LogThenRelay = "LogThenRelay"  # logged, then relayed as an ordinary message

    @property
    def should_log(self) -> bool:
        return self is not LogReportDisposition.Ignore

    @property
    def should_relay(self) -> bool:
        return self is LogReportDisposition.LogThenRelay


def _parse_report(key: str, value: Any) -> LogReportDisposition:
    """A boolean (``true`` is ``LogThenRelay``, ``false`` is ``Ignore``, KumoMTA's legacy form)
    or one of the three names."""
    if isinstance(value, bool):
        return LogReportDisposition.LogThenRelay if value else LogReportDisposition.Ignore
    try:
        return LogReportDisposition(value)
    except ValueError:
        raise ConfigError(
            f"{key}: invalid value {value!r}; expected a boolean or one of 'Ignore', "
            "'LogThenDrop', 'LogThenRelay'"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerDomain:
    """One ``kumo.make_listener_domain{...}``. Unknown keys are an error, as in KumoMTA."""

    #: anyone may relay mail addressed to this domain
    relay_to: bool = False
    #: peers in these networks may relay mail whose sender is in this domain
    relay_from: tuple[Cidr, ...] = ()
    log_oob: LogReportDisposition = LogReportDisposition.Ignore
    log_arf: LogReportDisposition = LogReportDisposition.Ignore
    #: deprecated in KumoMTA and unused there too; accepted so that old policies load
    ttl: float = 60.0

    @classmethod
    def from_mapping(cls, mapping: Any) -> ListenerDomain:
        return build(
            cls,
            "make_listener_domain",
            mapping,
            {
                "relay_to": parse_bool,
                "relay_from": parse_cidr_list,
                "log_oob": _parse_report,
                "log_arf": _parse_report,
                "ttl": parse_duration,
            },
        )


@dataclass(frozen=True, slots=True)
class RelayDisposition:
    """What ``check_relaying`` decided for one (sender, recipient) pair."""

    relay: bool
    log_arf: LogReportDisposition = LogReportDisposition.Ignore
    log_oob: LogReportDisposition = LogReportDisposition.Ignore

    @property
    def accept_rcpt_to(self) -> bool:
        """RCPT TO is accepted: relaying is allowed, or reports are to be logged."""
        return self.relay or self.log_arf.should_log or self.log_oob.should_log


RELAY: Final = RelayDisposition(True)
NO_RELAY: Final = RelayDisposition(False)


def relay_disposition(
    trusted: bool,
    peer_ip: str,
    sender_domain: ListenerDomain | None,
    recipient_domain: ListenerDomain | None,
) -> RelayDisposition:
    """KumoMTA's ``check_relaying`` once both listener domains are known. O(len(relay_from))."""
    relay = trusted
    if not relay and sender_domain is not None and sender_domain.relay_from:
        relay = ip_in(peer_ip, sender_domain.relay_from)
    if recipient_domain is None:
        return RELAY if relay else NO_RELAY
    relay = relay or recipient_domain.relay_to
    return RelayDisposition(relay, recipient_domain.log_arf, recipient_domain.log_oob)
