"""The policy's say when a message goes back into a scheduled queue: ``requeue_message``.

KumoMTA fires ``requeue_message(msg, smtp_response, insert_context, increment_attempts,
delay)`` before every requeue that follows a transient failure or a throttle
(``QueueManager::requeue_message``, reference §1.6). The handler may:

- change the message's queue (its ``queue``, ``tenant``, ``campaign`` or ``routing_domain``
  meta): the message moves to that queue, its ``num_attempts`` goes up by one and it is due at
  once (its ``set_scheduling`` window still applies);
- call ``kumo.reject(code, text)``: a ``Bounce`` with that code and text (whatever the code),
  and the message leaves the spool;
- call ``msg:increment_num_attempts()``: the backoff that follows is computed from the higher
  count (the event fires before the count goes up for this failure).

Any other error in the handler is logged and the message goes on in its queue as if there
were no handler (kumoq also undoes the handler's meta changes then, so that a half-done rebind
cannot strand the message).

``RequeuePolicy`` is the seam, owned here and implemented by kumoq.declarations over the Lua
events; ``ask_policy`` turns what the handler did into a ``Requeued``.

L0 (pure): imports kumoq.errors, kumoq.message, kumoq.logs.records and
kumoq.scheduler.context; no asyncio, clocks or Lua.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from kumoq.errors import KumoqError, QueueNameError, RejectError
from kumoq.logs.records import Response
from kumoq.message import Message
from kumoq.scheduler.context import InsertContext

__all__ = ["KEPT", "RequeuePolicy", "Requeued", "ask_policy"]


class RequeuePolicy(Protocol):
    """The policy's ``requeue_message`` event (kumoq.declarations.PolicyRequeue)."""

    def requeue_message(
        self,
        msg: Message,
        response: str,
        context: Sequence[str],
        increment_attempts: bool,
        delay: float | None,
    ) -> None:
        """Fire the event; changes land in ``msg``. Raises RejectError for ``kumo.reject``
        and another KumoqError for any other failure. Returns at once without a handler."""
        ...

    def has_handler(self) -> bool:
        """Whether the policy has a ``requeue_message`` handler now (it may be reloaded)."""
        ...


@dataclass(frozen=True, slots=True)
class Requeued:
    """What the handler made of one requeue: nothing (``KEPT``), a new queue, a bounce, or an
    error (the message goes on in its queue; the caller logs ``error``)."""

    moved_to: str | None = None
    bounce: Response | None = None
    error: str | None = None


KEPT: Final = Requeued()


def ask_policy(
    policy: RequeuePolicy,
    msg: Message,
    queue_name: str,
    response: Response,
    context: InsertContext,
    *,
    increment_attempts: bool,
    delay: float | None,
) -> Requeued:
    """Fire ``requeue_message`` for ``msg``, waiting in ``queue_name``, and compare its queue
    name afterwards. O(1) besides the handler."""
    if not policy.has_handler():
        return KEPT
    saved = dict(msg.meta)
    try:
        policy.requeue_message(
            msg, response.one_line(), [str(r) for r in context], increment_attempts, delay
        )
        name = msg.queue_name()
    except RejectError as exc:
        return Requeued(bounce=Response(exc.code, None, exc.reply_text, None))
    except QueueNameError as exc:
        error = f"requeue_message left the message without a queue name ({exc})"
    except KumoqError as exc:
        error = f"requeue_message failed: {exc}"
    else:
        return KEPT if name == queue_name else Requeued(moved_to=name)
    msg.meta.clear()  # what the failed handler changed must not move the message
    msg.meta.update(saved)
    return Requeued(error=f"{error}; the message stays in queue {queue_name}")
