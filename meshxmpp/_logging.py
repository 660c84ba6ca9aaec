"""Logging setup: one line per record on stderr.

Peers drop connections, time out and send garbage all day; those are facts about the network, not
bugs, so a record carrying such an exception gets a one-line summary of it instead of a traceback.
Anything else keeps its traceback, folded onto the same line (`` | `` between frames) so that a
log line is always one record, whatever a message contains (newlines in peer data are escaped).
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from typing import TextIO

__all__ = ["OneLineFormatter", "is_expected_network_error", "setup_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# errnos that mean "the peer or the network went away", not "we have a bug".
_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET",
        "ECONNABORTED",
        "ECONNREFUSED",
        "EPIPE",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "EHOSTDOWN",
        "ENOTCONN",
        "ESHUTDOWN",
    )
    if hasattr(errno, name)
)

_EXPECTED_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,  # reset, aborted, refused, broken pipe
    TimeoutError,
    EOFError,
)


def _trio_types() -> tuple[type[BaseException], ...]:
    # Looked up lazily: a process that never imported trio (check-config) has no trio errors,
    # and importing it here would slow every CLI command down.
    trio = sys.modules.get("trio")
    if trio is None:
        return ()
    return (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


def _ssl_types() -> tuple[type[BaseException], ...]:
    ssl = sys.modules.get("ssl")
    if ssl is None:
        return ()
    return (ssl.SSLError, ssl.CertificateError)  # SSLError covers SSLEOFError, handshake failures


def is_expected_network_error(exc: BaseException) -> bool:
    """True for errors a server sees in normal operation because of its peers."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_expected_network_error(e) for e in exc.exceptions)
    if isinstance(exc, _EXPECTED_TYPES + _trio_types() + _ssl_types()):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    # The peer broke the XMPP protocol: the stream error it got is the whole story.
    cls = type(exc)
    return cls.__module__.startswith("meshxmpp.") and cls.__name__ in (
        "StreamError",
        "LocalProtocolError",
        "RemoteProtocolError",
    )


def _escape(text: str) -> str:
    # Only line breaks: a peer's data can never start a forged log line.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _summary(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    summary = f"{name}: {text}" if text else name
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and isinstance(exc, _trio_types()):
        summary += f" (from {type(cause).__name__}: {cause})"
    return summary


class OneLineFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        exc_info = record.exc_info
        # Format the message without the exception; we append our own rendering of it.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            line = _escape(super().format(record))
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        if exc_info and exc_info[1] is not None:
            exc = exc_info[1]
            if is_expected_network_error(exc):
                line += f" ({_escape(_summary(exc))})"
            else:
                frames = traceback.format_exception(exc)
                folded = " | ".join(
                    part.strip() for chunk in frames for part in chunk.splitlines() if part.strip()
                )
                line += " | " + _escape(folded)
        return line


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure the root logger: ``level`` by name, one line per record, to ``stream`` (stderr).

    Calling it again replaces the handler it installed before and leaves other handlers alone.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(OneLineFormatter())
    handler._meshxmpp = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_meshxmpp", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
