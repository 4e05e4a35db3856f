"""Expansion of the maildir ``maildir_path`` template (reference §1.9).

KumoMTA renders ``maildir_path`` with MiniJinja; kumoq uses jinja2's ``SandboxedEnvironment`` with
``StrictUndefined`` (a name the template uses but the context lacks is an error, which the
deliverer turns into a transient failure). Values print as MiniJinja prints them: ``none``,
``true`` and ``false`` rather than Python's ``None``, ``True`` and ``False``.

The path rule (a kumoq deviation): what a ``{{ ... }}`` prints can never leave the directory
the template's literal text names. Each printed value is encoded as a piece of one path
component (``encode_path_value``): ``%`` becomes ``%25``, ``/`` ``%2F``, NUL ``%00``, and a
leading ``.`` ``%2E``. So a value is never ``.`` or ``..``, never holds a separator, and
never makes the path absolute, whatever the sender put in a header; two different values
never expand to the same directory. The template's literal text is the operator's and is
kept as written. A component that ends up too long for the filesystem fails the write
(a transient failure: the message is kept and retried, never written elsewhere).

Each distinct template source is compiled once and cached, and a source with no template syntax
at all skips jinja entirely (the common ``maildir_path = '/var/mail/sink'`` case costs nothing).

Pure: no IO, no asyncio. Imports only jinja2 and kumoq.message.
"""

from __future__ import annotations

from typing import Any, Final, final

from jinja2 import StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment

from kumoq.message import EnvelopeAddress, Message, parse_queue_name

__all__ = [
    "MaildirPathTemplates",
    "TemplateExpansionError",
    "encode_path_value",
    "message_context",
]

_PARENT: Final = ".."
# How many distinct template sources the cache keeps before it starts over.
_CACHE_LIMIT: Final = 1024


class TemplateExpansionError(Exception):
    """``maildir_path`` failed to compile or render; the text says why."""


_ESCAPES: Final = str.maketrans({"%": "%25", "/": "%2F", "\0": "%00"})


def encode_path_value(text: str) -> str:
    """``text`` made safe as (a piece of) one path component: ``%``, ``/`` and NUL
    percent-encoded, and a leading ``.`` too. Injective; O(len)."""
    text = text.translate(_ESCAPES)
    return "%2E" + text[1:] if text.startswith(".") else text


def _finalize(value: Any) -> str:
    """Print a value as MiniJinja does (None and booleans as ``none``, ``true``, ``false``),
    encoded by the path rule. jinja2 calls this for every ``{{ ... }}``, never for the
    template's literal text."""
    if value is None:
        text = "none"
    elif value is True:
        text = "true"
    elif value is False:
        text = "false"
    else:
        text = f"{value}"  # a plain str, even for Markup
    return encode_path_value(text)


def message_context(msg: Message) -> dict[str, Any]:
    """The per-message template variables: everything but the recipient's three.

    Raises ``kumoq.errors.QueueNameError`` when the message's queue name cannot be computed.
    """
    queue = msg.queue_name()
    parts = parse_queue_name(queue)
    sender = msg.sender
    return {
        "meta": msg.meta,
        "queue": queue,
        "campaign": parts.campaign,
        "tenant": parts.tenant,
        "domain": parts.domain,
        "routing_domain": parts.routing_domain,
        "sender_local_part": sender.local_part,
        "sender_domain_part": sender.domain,
        "sender_email": sender.email,
    }


@final
class MaildirPathTemplates:
    """Compiles and renders ``maildir_path`` templates, caching each compiled source.

    Not thread-safe by design: the deliverer renders on the event loop thread only.
    """

    __slots__ = ("_cache", "_env")

    def __init__(self) -> None:
        self._env = SandboxedEnvironment(
            undefined=StrictUndefined,
            autoescape=False,
            finalize=_finalize,
            keep_trailing_newline=True,
        )
        # source -> compiled template, or the error text if it does not compile.
        self._cache: dict[str, Template | str] = {}

    @staticmethod
    def is_literal(source: str) -> bool:
        """True when ``source`` has no template syntax, so it expands to itself. O(len)."""
        return "{" not in source

    def compile(self, source: str) -> Template:
        """The compiled template for ``source`` (cached); raises TemplateExpansionError."""
        compiled = self._cache.get(source)
        if compiled is None:
            try:
                compiled = self._env.from_string(source)
            except Exception as err:  # a TemplateSyntaxError, or anything jinja raises
                compiled = f"invalid maildir_path template {source!r}: {err}"
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[source] = compiled
        if isinstance(compiled, str):
            raise TemplateExpansionError(compiled)
        return compiled

    def expand(self, source: str, context: dict[str, Any], recipient: EnvelopeAddress) -> str:
        """Render ``source`` for one recipient; ``context`` comes from ``message_context``.

        Adds ``local_part``, ``domain_part`` and ``email`` to ``context`` (it is reused for the
        next recipient). Raises TemplateExpansionError on any compile or render error.
        """
        if "{" not in source:
            return source
        template = self.compile(source)
        context["local_part"] = recipient.local_part
        context["domain_part"] = recipient.domain
        context["email"] = recipient.email
        try:
            path = template.render(context)
        except Exception as err:  # UndefinedError, SecurityError, TypeError from a filter...
            msg = f"failed to expand maildir_path template {source!r}: {err}"
            raise TemplateExpansionError(msg) from err
        if _PARENT in path.split("/") and _PARENT not in source:
            # Only a filter block (``{% filter %}``) run over encoded values can get here.
            raise TemplateExpansionError(
                f"maildir_path template {source!r} expanded to {path!r}, which has a '..' "
                "component its template text does not have; not writing outside its root"
            )
        return path
