"""What every HTTP route shares: the `Request` and `Response` values, `HTTPError`, JSON in and out.

No sockets and no h11 here (``http.server`` does the bytes); `api` re-exports these names, which are
its public surface.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshxmpp.jid import JID, InvalidJID

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

#: Characters XML 1.0 cannot carry (a lone surrogate from a JSON ``\\ud800`` escape included).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Request:
    method: str  #: "GET", "HEAD", ...
    path: str  #: the target's path, not decoded: "/api/explain"
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)  #: decoded, every value of a name
    headers: Mapping[str, str] = field(default_factory=dict)  #: lowercase names; repeats joined by ", "
    body: bytes = b""
    peer: str = ""  #: the client's IP address ("" when unknown)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


class HTTPError(Exception):
    """Raised by a route: answered as ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def json_response(obj: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    return Response(status, body, JSON, headers)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response({"error": message, "status": status}, status, headers)


# -- input ------------------------------------------------------------------------------------------


def param(request: Request, name: str) -> str | None:
    """The one value of query parameter ``name`` (None when absent); 400 when it is repeated."""
    values = request.query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"parameter {name!r} given {len(values)} times")
    return values[0]


def parse_jid(text: str, name: str, what: str = "parameter") -> JID:
    try:
        return JID.parse(text)
    except InvalidJID as exc:
        raise HTTPError(400, f"{what} {name!r} is not a valid JID: {exc}") from None


def json_body(request: Request, fields: Mapping[str, bool]) -> dict[str, Any]:
    """The request body as a JSON object whose keys are among ``fields`` (name -> required).

    415 unless ``Content-Type`` is ``application/json`` (or ``+json``) in UTF-8: browsers cannot send
    that cross-origin without a preflight, so a web page cannot drive a loopback-only admin API.
    400 for malformed JSON, a non-object, an unknown key or a missing required one."""
    content_type = request.headers.get("content-type", "")
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPError(415, f"the body must be JSON (Content-Type: {JSON}), not {content_type or 'untyped'}")
    for p in params.split(";"):
        key, _, value = p.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HTTPError(415, "JSON bodies must be UTF-8")
    try:
        data = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise HTTPError(400, f"malformed JSON: {reason}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HTTPError(400, f"unknown field {unknown[0]!r} (expected {', '.join(sorted(fields))})")
    missing = [name for name, required in fields.items() if required and name not in data]
    if missing:
        raise HTTPError(400, f"field {missing[0]!r} is required")
    return data


def text_field(data: Mapping[str, Any], name: str, *, xml: bool = False) -> str | None:
    """``data[name]`` as a string (None when absent or null); 400 when it is another type, or
    (``xml``) holds characters XML cannot carry."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"field {name!r} must be a string")
    if xml and _NOT_XML.search(value):
        raise HTTPError(400, f"field {name!r} holds a character XML cannot carry")
    return value
