"""Who is calling: trusted hosts, HTTP Basic auth through the policy, and ``AuthInfo``.

KumoMTA's rules (kumo-server-common ``http_server/auth.rs``):

- A request with an ``Authorization: Basic`` header is authenticated by the policy's
  ``http_server_validate_auth_basic(user, password)`` event, whatever the peer: ``true`` (or
  an AuthInfo table ``{identities = {...}, groups = {...}}``) accepts, ``false`` or nil
  answers 401. A handler that raises or returns something else answers 500 and is logged.
  The password is nil when the header holds no ``:``. Results are cached for 60 s per
  credential pair (as KumoMTA does), so the policy is not run for every request.
- Without that header, a peer in ``trusted_hosts`` is let in (group
  ``kumomta:http-listener-trusted-ip``); any other peer gets 401 on every route that is not
  public.
- Another scheme (``Bearer``) or a header that does not decode answers 400.

A worker's private listener (``kumoq serve --workers N``, kumoq.http.fanout) lets in only a
sibling worker: ``sibling_auth`` compares ``X-Kumoq-Worker-Token`` with the run's token in
constant time; no token or another one answers 401. Its AuthInfo says ``sibling``.

``AuthInfo`` is what KumoMTA passes to ``http_message_generated`` and summarises in the
``http_auth`` meta: the user name, else the first identity, else the peer address.

Imports kumoq.errors, kumoq.workers and kumoq.http.errors; must not import the other kumoq.http
modules.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kumoq.errors import PolicyError, PolicyWouldBlock
from kumoq.http.errors import INTERNAL_ERROR, ApiError
from kumoq.workers import WORKER_TOKEN_HEADER

__all__ = [
    "TRUSTED_GROUP",
    "AuthInfo",
    "Authenticator",
    "PolicyCalls",
    "parse_basic",
    "sibling_auth",
]

log = logging.getLogger("kumoq.http")

TRUSTED_GROUP: Final = "kumomta:http-listener-trusted-ip"
EVENT: Final = "http_server_validate_auth_basic"
#: How long a validated (or refused) credential pair is remembered, and how many are.
CACHE_TTL: Final = 60.0
CACHE_SIZE: Final = 128
#: How many DNS waits (``kumo.dns.lookup_mx`` in the handler) one validation may take.
POLICY_WAIT_RERUNS: Final = 4

_UNAUTHORIZED_HEADERS: Final = {"WWW-Authenticate": 'Basic realm="kumoq", charset="UTF-8"'}


class PolicyCalls(Protocol):
    """Firing a policy event by name (kumoq.lua.events.PolicyEvents implements it)."""

    def has_handler(self, name: str) -> bool: ...

    def call(self, name: str, *args: object) -> Any: ...


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """The caller: its address, authenticated ``(identity, context)`` pairs and groups;
    ``sibling``: another worker of this run, over the private listener (token checked)."""

    peer_address: str
    identities: tuple[tuple[str, str], ...] = ()
    groups: tuple[str, ...] = ()
    sibling: bool = False

    @property
    def http_auth(self) -> str:
        """KumoMTA's ``summarize_for_http_auth``: the value of the ``http_auth`` meta."""
        for identity, context in self.identities:
            if context == "HttpBasicAuth":
                return identity
        if self.identities:
            return self.identities[0][0]
        return self.peer_address

    def to_json(self) -> dict[str, Any]:
        """KumoMTA's serialized ``AuthInfo``, as the policy sees it."""
        return {
            "peer_address": self.peer_address,
            "identities": [{"identity": i, "context": c} for i, c in self.identities],
            "groups": list(self.groups),
        }


def parse_basic(header: str) -> tuple[str, str | None]:
    """``(user, password)`` from an ``Authorization`` value; password None without a ``:``.
    Raises ApiError 400 for another scheme or a value that does not decode."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(
            400, "Malformed or unsupported Authorization header: only Basic is supported"
        )
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "Malformed Authorization header: not base64 of UTF-8 text") from None
    user, colon, password = decoded.partition(":")
    return user, (password if colon else None)


def sibling_auth(peer_ip: str, token_header: str | None, token: str) -> AuthInfo:
    """A sibling worker's AuthInfo when ``token_header`` is the run's ``token``; raises
    ApiError 401 otherwise (also when the run has no token)."""
    given = (token_header or "").encode("utf-8", "replace")
    if not token or not hmac.compare_digest(given, token.encode("utf-8")):
        raise ApiError(401, f"this listener answers only the other workers ({WORKER_TOKEN_HEADER})")
    return AuthInfo(peer_ip, (("worker", "KumoqWorkerToken"),), (), sibling=True)


_Verdict = tuple[tuple[tuple[str, str], ...], tuple[str, ...]] | None  # None: refused


class Authenticator:
    """Decides each request's ``AuthInfo`` (see the module docstring). ``now`` is a monotonic
    clock for the cache."""

    def __init__(self, policy: PolicyCalls, now: Callable[[], float]) -> None:
        self._policy = policy
        self._now = now
        self._cache: dict[tuple[str, str | None], tuple[float, _Verdict]] = {}

    async def authenticate(
        self, peer_ip: str, authorization: str | None, *, trusted: bool, public: bool
    ) -> AuthInfo:
        """The caller's AuthInfo; raises ApiError 400, 401 or 500."""
        groups = (TRUSTED_GROUP,) if trusted else ()
        if authorization is None:
            if trusted or public:
                return AuthInfo(peer_ip, (), groups)
            raise ApiError(
                401,
                "authentication required: this peer is not in trusted_hosts; "
                "use HTTP Basic authentication",
                headers=_UNAUTHORIZED_HEADERS,
            )
        user, password = parse_basic(authorization)
        verdict = await self._verdict(user, password)
        if verdict is None:
            raise ApiError(
                401,
                f"HttpBasicAuth Authentication Failed for {user}",
                headers=_UNAUTHORIZED_HEADERS,
            )
        identities, extra_groups = verdict
        return AuthInfo(peer_ip, identities, groups + extra_groups)

    async def _verdict(self, user: str, password: str | None) -> _Verdict:
        key = (user, password)
        now = self._now()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        verdict = await self._ask_policy(user, password)
        if len(self._cache) >= CACHE_SIZE:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
        self._cache[key] = (now + CACHE_TTL, verdict)
        return verdict

    async def _ask_policy(self, user: str, password: str | None) -> _Verdict:
        if not self._policy.has_handler(EVENT):
            log.warning("HTTP Basic credentials for %r refused: %s is not defined", user, EVENT)
            return None
        result: Any = None
        try:
            for _ in range(POLICY_WAIT_RERUNS):
                try:
                    result = self._policy.call(EVENT, user, password)
                    break
                except PolicyWouldBlock as wait:
                    await wait.wait()
            else:
                raise PolicyError(f"{EVENT}: still waiting for DNS")
        except PolicyError as exc:
            log.error("%s failed for user %r: %s", EVENT, user, exc)
            raise ApiError(500, INTERNAL_ERROR) from None
        return _interpret(user, result)


def _interpret(user: str, result: Any) -> _Verdict:
    basic = ((user, "HttpBasicAuth"),)
    if result is True:
        return basic, ()
    if result is False or result is None:
        return None
    if isinstance(result, dict):
        try:
            identities = tuple(
                (str(i["identity"]), str(i.get("context", "HttpBasicAuth")))
                for i in _list(result.get("identities"))
            )
            groups = tuple(str(g) for g in _list(result.get("groups")))
        except (TypeError, KeyError, AttributeError):
            pass
        else:
            return identities or basic, groups
    log.error("%s must return true, false or an AuthInfo table; got %r", EVENT, result)
    raise ApiError(500, INTERNAL_ERROR)


def _list(value: Any) -> list[Any]:
    if value is None or value == {}:
        return []
    if isinstance(value, list):
        return value
    raise TypeError(value)
