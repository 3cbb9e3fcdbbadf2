"""Errors a user can act on, with a reference into the log: what failed, never the exception's
own text (which may hold paths, configuration or what the user wrote)."""

from __future__ import annotations

import logging
import uuid

from chatcore.events import ErrorCode, Message, ReplyError

log = logging.getLogger("chatcore.engine")


def logged_failure(
    message: Message, code: ErrorCode, summary: str, cause: object = None
) -> ReplyError:
    """A ``ReplyError`` that tells the user what failed and a reference to find it in the log,
    never the exception's own text. Without a ``cause``, call it while handling the exception:
    its traceback is logged."""
    reference = uuid.uuid4().hex[:8]
    if cause is None:
        log.exception("%s (ref %s, message %s)", summary, reference, message.id)
    else:
        log.error("%s (ref %s, message %s): %s", summary, reference, message.id, cause)
    return ReplyError(message.id, code, f"{summary} (ref {reference}); it was logged.")
