"""A what-if scenario: the campaign to send and how each destination answers, from TOML.

``load_scenario(path)`` reads a scenario file (format and example in docs/testing.md, "What-if
simulator"); ``Scenario.from_mapping`` checks the table the way kumoq's config tables do:
unknown keys are an error that names the allowed ones, and every value is parsed (durations
such as ``"3 days"``, rates such as ``"20000/h"``, sizes such as ``"2 KB"``).

- ``Campaign``: how many messages, when and how fast they arrive, their recipient domains
  (weighted), and the meta, headers and size that decide their scheduled queue.
- ``Destination``: one receiving site (one or more domains answered by the same MX hosts):
  its ``Behaviour`` (latency, tempfail and permfail shares, connection and per-connection
  message limits, 421 refusal, unreachable) and the ``Window`` s that change it for a while.

``load_scenario`` reads the file; the rest is pure (no IO, no clock, nothing runs).
"""

from __future__ import annotations

import dataclasses
import datetime
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kumoq.config.values import ThrottleSpec, parse_duration, parse_size
from kumoq.errors import AddressError, ConfigError
from kumoq.message import EnvelopeAddress

__all__ = [
    "Behaviour",
    "Campaign",
    "Destination",
    "Scenario",
    "Window",
    "load_scenario",
]

DEFAULT_START_TIME: Final = 1_767_225_600.0
"""2026-01-01T00:00:00Z: when a simulation starts unless its scenario says ``start_time``."""
DEFAULT_TEMPFAIL_REPLY: Final = "451 4.7.1 simulated temporary failure, try again later"
DEFAULT_PERMFAIL_REPLY: Final = "550 5.1.1 simulated permanent failure: no such user"


def _keys(where: str, table: Mapping[str, Any], allowed: set[str] | frozenset[str]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return value


def _share(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{key}: expected a share from 0 to 1 (0.05 is 5%), got {value!r}")
    return float(value)


def _count(key: str, value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected a whole number >= 1, got {value!r}")
    return value


def _reply(expected: str) -> Callable[[str, Any], str]:
    """A reply such as ``"421 4.7.0 text"`` whose code starts with ``expected``."""

    def parse(key: str, value: Any) -> str:
        text = value.strip() if isinstance(value, str) else ""
        code = text[:3]
        if not code.isdigit() or code[0] not in expected or text[3:4] not in ("", " "):
            raise ConfigError(
                f"{key}: expected a reply such as '{expected[0]}51 4.7.1 text' with a "
                f"{'/'.join(c + 'xx' for c in expected)} code, got {value!r}"
            )
        return text

    return parse


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    """How a destination answers (at one time).

    ``latency``: seconds before the reply to a message's final dot (the time it takes to
    take a message); ``command_latency``: seconds before every other reply (banner, EHLO,
    MAIL, RCPT, DATA, RSET, QUIT). Replies come in order, one after the other.
    ``tempfail`` and ``permfail``: the shares of messages answered with ``tempfail_reply`` and
    ``permfail_reply`` at the final dot; the rest are accepted (250).
    ``max_connections``: sessions it serves at once; one more gets a 421 banner and is closed.
    ``max_messages_per_connection``: after that many messages the server says 421 and closes
    (unasked, as a busy MX does). ``refuse``: every new session gets this reply as banner, and
    a session already open gets it to its next MAIL, then is closed. ``unreachable``: nothing
    answers (the connection is refused).
    """

    latency: float = 0.1
    command_latency: float = 0.0
    tempfail: float = 0.0
    permfail: float = 0.0
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    refuse: str | None = None
    unreachable: bool = False
    tempfail_reply: str = DEFAULT_TEMPFAIL_REPLY
    permfail_reply: str = DEFAULT_PERMFAIL_REPLY

    def apply(self, where: str, table: Mapping[str, Any]) -> Behaviour:
        """A copy with the behaviour keys of ``table`` parsed and applied (others ignored)."""
        changes = {
            key: _BEHAVIOUR_KEYS[key](f"{where}.{key}", value)
            for key, value in table.items()
            if key in _BEHAVIOUR_KEYS
        }
        changed = dataclasses.replace(self, **changes)
        if changed.tempfail + changed.permfail > 1:
            raise ConfigError(f"{where}: tempfail + permfail must not exceed 1")
        return changed


_BEHAVIOUR_KEYS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "latency": parse_duration,
    "command_latency": parse_duration,
    "tempfail": _share,
    "permfail": _share,
    "max_connections": _count,
    "max_messages_per_connection": _count,
    "refuse": _reply("45"),
    "unreachable": _flag,
    "tempfail_reply": _reply("4"),
    "permfail_reply": _reply("5"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """From ``start`` to ``end`` (seconds into the simulation) the destination behaves as
    ``behaviour`` (its own keys over the destination's)."""

    start: float
    end: float
    behaviour: Behaviour


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """One receiving site: ``domains`` (the first is its name) answered by ``mx`` hosts at
    ``addresses``; ``addresses`` empty means the simulator picks one."""

    name: str
    domains: tuple[str, ...]
    mx: tuple[str, ...]
    addresses: tuple[str, ...]
    behaviour: Behaviour
    windows: tuple[Window, ...] = ()

    def at(self, elapsed: float) -> Behaviour:
        """The behaviour ``elapsed`` seconds into the simulation. O(windows)."""
        for window in self.windows:
            if window.start <= elapsed < window.end:
                return window.behaviour
        return self.behaviour


_DESTINATION_KEYS: Final = frozenset({"also", "mx", "addresses", "window", *_BEHAVIOUR_KEYS})
_WINDOW_KEYS: Final = frozenset({"from", "until", *_BEHAVIOUR_KEYS})
_CAMPAIGN_KEYS: Final = frozenset(
    {"name", "tenant", "messages", "rate", "start", "size", "sender", "domains", "headers", "meta"}
)
_SCENARIO_KEYS: Final = frozenset(
    {"duration", "bucket", "seed", "start_time", "policy", "message_received", "campaign",
     "defaults", "domain"}
)  # fmt: skip


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a name or a list of names, got {value!r}")
    return tuple(v.lower().rstrip(".") for v in value)


def _destination(domain: str, table: Mapping[str, Any], defaults: Behaviour) -> Destination:
    where = f"domain.{domain!r}"
    _keys(where, table, _DESTINATION_KEYS)
    behaviour = defaults.apply(where, table)
    windows: list[Window] = []
    raw_windows = table.get("window", [])
    if not isinstance(raw_windows, list):
        raise ConfigError(f"{where}.window: expected [[domain.{domain!r}.window]] tables")
    for i, raw in enumerate(raw_windows):
        at = f"{where}.window[{i}]"
        window = _table(at, raw)
        _keys(at, window, _WINDOW_KEYS)
        if "from" not in window or "until" not in window:
            raise ConfigError(f"{at}: 'from' and 'until' are required")
        start = parse_duration(f"{at}.from", window["from"])
        end = parse_duration(f"{at}.until", window["until"])
        if end <= start:
            raise ConfigError(f"{at}: 'until' must come after 'from'")
        windows.append(Window(start=start, end=end, behaviour=behaviour.apply(at, window)))
    name = domain.lower().rstrip(".")
    also = _str_list(f"{where}.also", table.get("also", []))
    mx = _str_list(f"{where}.mx", table["mx"]) if "mx" in table else (f"mx.{name}",)
    addresses = _str_list(f"{where}.addresses", table.get("addresses", []))
    return Destination(
        name=name,
        domains=(name, *also),
        mx=mx,
        addresses=addresses,
        behaviour=behaviour,
        windows=tuple(sorted(windows, key=lambda w: w.start)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Campaign:
    """``messages`` messages from ``sender``, one recipient each, to ``domains`` (by weight),
    arriving from ``start`` at ``rate`` per second (None: all at once). ``name`` and
    ``tenant`` become the meta ``campaign`` and ``tenant``; ``meta`` and ``headers`` are added
    as given."""

    name: str | None
    tenant: str | None
    messages: int
    rate: float | None
    start: float
    size: int
    sender: str
    domains: tuple[tuple[str, int], ...]
    headers: tuple[tuple[str, str], ...] = ()
    meta: Mapping[str, str | int | float | bool] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, where: str, table: Mapping[str, Any]) -> Campaign:
        _keys(where, table, _CAMPAIGN_KEYS)
        if "messages" not in table or "domains" not in table:
            raise ConfigError(f"{where}: 'messages' and 'domains' are required")
        messages = _count(f"{where}.messages", table["messages"])
        assert messages is not None
        rate = None
        if "rate" in table:
            spec = ThrottleSpec.parse(f"{where}.rate", table["rate"])
            rate = spec.limit / spec.period
        domains = _table(f"{where}.domains", table["domains"])
        weights: list[tuple[str, int]] = []
        for domain, weight in domains.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ConfigError(f"{where}.domains.{domain}: expected a weight >= 0")
            weights.append((domain.lower().rstrip("."), weight))
        if not any(w for _, w in weights):
            raise ConfigError(f"{where}.domains: at least one domain needs a weight above 0")
        sender = table.get("sender", "campaign@sender.example")
        if not isinstance(sender, str):
            raise ConfigError(f"{where}.sender: expected an address, got {sender!r}")
        try:
            EnvelopeAddress.parse(sender)
        except AddressError as exc:
            raise ConfigError(f"{where}.sender: {exc}") from None
        headers = _table(f"{where}.headers", table.get("headers", {}))
        meta = _table(f"{where}.meta", table.get("meta", {}))
        for key, value in (*headers.items(), *meta.items()):
            if isinstance(value, dict | list):
                raise ConfigError(f"{where}: {key!r} must be a plain value, got {value!r}")
        texts = {"name": table.get("name"), "tenant": table.get("tenant")}
        for key, value in texts.items():
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}.{key}: expected a name, got {value!r}")
        return cls(
            name=texts["name"],
            tenant=texts["tenant"],
            messages=messages,
            rate=rate,
            start=parse_duration(f"{where}.start", table.get("start", 0)),
            size=parse_size(f"{where}.size", table.get("size", 2000)),
            sender=sender,
            domains=tuple(weights),
            headers=tuple((str(k), str(v)) for k, v in headers.items()),
            meta=dict(meta),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """Everything a simulation needs besides the policy.

    ``duration``: virtual seconds to simulate (it ends earlier once every message is done);
    ``bucket``: the report's time resolution; ``seed``: the random outcomes, jitter and
    domain draws; ``start_time``: the unix time the virtual clock starts at (fixed, so that a
    seed gives the same forecast whenever it runs; it matters to scheduling windows);
    ``message_received``: fire the policy's ``smtp_server_message_received`` for each message
    (as reception would); ``policy``: the policy file, if the scenario names one (relative to
    the scenario file).
    """

    duration: float
    bucket: float = 3600.0
    seed: int = 1
    start_time: float = DEFAULT_START_TIME
    message_received: bool = True
    policy: Path | None = None
    campaigns: tuple[Campaign, ...]
    destinations: tuple[Destination, ...]

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], base: Path | None = None) -> Scenario:
        """Check and parse a scenario table; ``base`` is the folder a relative ``policy`` is
        under."""
        _keys("scenario", table, _SCENARIO_KEYS)
        if "duration" not in table or "campaign" not in table:
            raise ConfigError("scenario: 'duration' and at least one [[campaign]] are required")
        raw_campaigns = table["campaign"]
        if not isinstance(raw_campaigns, list) or not raw_campaigns:
            raise ConfigError("scenario: 'campaign' must be one or more [[campaign]] tables")
        campaigns = tuple(
            Campaign.from_mapping(f"campaign[{i}]", _table(f"campaign[{i}]", raw))
            for i, raw in enumerate(raw_campaigns)
        )
        defaults_table = _table("defaults", table.get("defaults", {}))
        _keys("defaults", defaults_table, frozenset(_BEHAVIOUR_KEYS))
        defaults = Behaviour().apply("defaults", defaults_table)
        destinations: list[Destination] = []
        taken: dict[str, str] = {}
        for domain, raw in _table("domain", table.get("domain", {})).items():
            destination = _destination(domain, _table(f"domain.{domain!r}", raw), defaults)
            for name in destination.domains:
                if name in taken:
                    raise ConfigError(f"domain {name!r} is answered by both {taken[name]!r} "
                                      f"and {destination.name!r}")  # fmt: skip
                taken[name] = destination.name
            destinations.append(destination)
        for campaign in campaigns:  # a domain with no section of its own gets the defaults
            for domain, _ in campaign.domains:
                if domain not in taken:
                    taken[domain] = domain
                    destinations.append(_destination(domain, {}, defaults))
        policy = table.get("policy")
        if policy is not None and not isinstance(policy, str):
            raise ConfigError(f"scenario.policy: expected a file name, got {policy!r}")
        seed = table.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"scenario.seed: expected an integer, got {seed!r}")
        start_time = table.get("start_time", DEFAULT_START_TIME)
        if isinstance(start_time, datetime.datetime) and start_time.tzinfo is not None:
            start_time = start_time.timestamp()
        elif isinstance(start_time, bool) or not isinstance(start_time, int | float):
            raise ConfigError(
                "scenario.start_time: expected a date and time with its offset, such as "
                f"2026-03-02T09:00:00Z, got {start_time!r}"
            )
        scenario = cls(
            duration=parse_duration("scenario.duration", table["duration"]),
            start_time=float(start_time),
            bucket=parse_duration("scenario.bucket", table.get("bucket", "1 hour")),
            seed=seed,
            message_received=_flag(
                "scenario.message_received", table.get("message_received", True)
            ),
            policy=None if policy is None else (base or Path()) / policy,
            campaigns=campaigns,
            destinations=tuple(destinations),
        )
        if scenario.duration <= 0 or scenario.bucket <= 0:
            raise ConfigError("scenario: 'duration' and 'bucket' must be above zero")
        return scenario

    @property
    def messages(self) -> int:
        """How many messages all campaigns send."""
        return sum(c.messages for c in self.campaigns)


def load_scenario(path: Path) -> Scenario:
    """Read and check the scenario file at ``path``; ConfigError names what is wrong."""
    try:
        table = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the scenario {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario {path}: {exc}") from None
    try:
        return Scenario.from_mapping(table, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"scenario {path}: {exc}") from None
