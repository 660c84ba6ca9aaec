"""Stream and stanza errors (RFC 6120 §4.9 and §8.3)."""

from __future__ import annotations

#: RFC 6120 §4.9.3: every defined stream error condition.
STREAM_CONDITIONS: frozenset[str] = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

#: RFC 6120 §8.3.3: every defined stanza error condition -> the error type the RFC gives it.
STANZA_CONDITIONS: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}

#: RFC 6120 §8.3.2: the values of the error element's ``type`` attribute.
STANZA_ERROR_TYPES: frozenset[str] = frozenset({"auth", "cancel", "continue", "modify", "wait"})


class StreamError(Exception):
    """The peer broke the protocol: send ``to_bytes()`` and the stream footer, then close."""

    condition: str
    text: str | None

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"unknown stream error condition {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text

    def to_bytes(self) -> bytes:
        """The ``<stream:error/>`` element (without the stream footer)."""
        from .serialize import stream_error  # serialize imports this module

        return stream_error(self.condition, self.text)

    def __repr__(self) -> str:
        return f"StreamError({self.condition!r}, {self.text!r})"


class StanzaError(Exception):
    """A stanza can't be handled; the handler replies with ``stanza.error_reply(...)``.

    Accepts either ``StanzaError(condition, text=None, *, error_type=None)`` (the type defaults to the
    one RFC 6120 gives the condition) or ``StanzaError(error_type, condition, text=None)`` (the same
    order as ``Element.error_reply``); the two can't be confused because no condition is also a type.
    """

    error_type: str
    condition: str
    text: str | None

    def __init__(
        self,
        *args: str | None,
        error_type: str | None = None,
        condition: str | None = None,
        text: str | None = None,
    ) -> None:
        positional = [a for a in args]
        if positional and positional[0] in STANZA_ERROR_TYPES and error_type is None:
            error_type = positional.pop(0)
        if positional and condition is None:
            condition = positional.pop(0)
        if positional and text is None:
            text = positional.pop(0)
        if positional:
            raise TypeError("StanzaError takes at most three positional arguments")
        if condition not in STANZA_CONDITIONS:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        if error_type is None:
            error_type = STANZA_CONDITIONS[condition]
        elif error_type not in STANZA_ERROR_TYPES:
            raise ValueError(f"unknown stanza error type {error_type!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.error_type = error_type
        self.condition = condition
        self.text = text

    def __repr__(self) -> str:
        return f"StanzaError({self.error_type!r}, {self.condition!r}, {self.text!r})"
