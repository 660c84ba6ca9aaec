"""The admin API's write side and session lookup: routes ``(ctx, Request) -> Response`` under ``/api/``.

- ``POST /api/send`` ``{"from", "to", "type"?, "body"?, "subject"?, "id"?}``: a ``<message/>`` routed
  with ``router.route(el, None)``, as a stanza from a component or another node is, so the routing
  policy for the sender (``[[routing.sender]]``) applies. ``from`` must be of this node's domain or a
  ``[[components.service]]`` domain. 202 ``{"id", "from", "to", "type"}`` once the router took it.
- ``GET /api/sessions?jid=BARE-OR-FULL``: the sessions of that account in the whole mesh.
- ``POST /api/users`` ``{"user": "alice@domain", "password": "..."}``: 201, or 409 when it exists.
- ``DELETE /api/users/alice@domain`` (the JID may be percent-encoded): 204, or 404.

Access (token or loopback) is checked by `api.handle` before any of these runs.
"""

from __future__ import annotations

import inspect
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio

from meshxmpp.http._base import (
    HTTPError,
    Request,
    Response,
    json_body,
    json_response,
    param,
    parse_jid,
    text_field,
)
from meshxmpp.jid import JID, InvalidJID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext

__all__ = ["SEND_TYPES", "create_user", "delete_user", "send", "sessions"]

#: Message types ``/api/send`` accepts (groupchat goes through a room, error only as a reply).
SEND_TYPES = ("chat", "normal", "headline")
_SEND_FIELDS = {"from": True, "to": True, "type": False, "body": False, "subject": False, "id": False}
_USER_FIELDS = {"user": True, "password": True}


def _sender_domains(ctx: NodeContext) -> set[str]:
    return {ctx.domain, *(s.domain for s in ctx.config.components.service)}


async def send(ctx: NodeContext, request: Request) -> Response:
    """``POST /api/send``: build a message and hand it to the router as from ``from``."""
    data = json_body(request, _SEND_FIELDS)
    sender = parse_jid(text_field(data, "from") or "", "from", "field")
    allowed = _sender_domains(ctx)
    if sender.domain not in allowed:
        raise HTTPError(400, f"field 'from' must be of this node's domain or a component's "
                             f"({', '.join(sorted(allowed))}), not {sender.domain}")
    to = parse_jid(text_field(data, "to") or "", "to", "field")
    type_ = text_field(data, "type") or "normal"
    if type_ not in SEND_TYPES:
        raise HTTPError(400, f"field 'type' must be one of {', '.join(SEND_TYPES)}")
    body = text_field(data, "body", xml=True)
    subject = text_field(data, "subject", xml=True)
    if not body and not subject:
        raise HTTPError(400, "field 'body' (or 'subject') is required and must not be empty")
    id_ = text_field(data, "id", xml=True) or f"api-{secrets.token_hex(8)}"
    el = Element("message", ns.CLIENT, {"from": str(sender), "to": str(to), "type": type_, "id": id_})
    if subject:
        el.add("subject", ns.CLIENT, text=subject)
    if body:
        el.add("body", ns.CLIENT, text=body)
    pending = ctx.router.route(el, None)
    if inspect.isawaitable(pending):
        await pending  # storage work (the recipient is offline): done before we answer
    return json_response({"id": id_, "from": str(sender), "to": str(to), "type": type_}, 202)


def _session(s: Any) -> dict[str, Any]:
    return {"jid": str(s.jid), "node": str(s.node), "available": bool(s.available), "priority": s.priority,
            "show": s.show}


async def sessions(ctx: NodeContext, request: Request) -> Response:
    """``GET /api/sessions?jid=``: every session of the account (bare JID) or the one bound to a full
    JID, on this node and the others, as ``{"jid", "node", "sessions": [...]}``."""
    text = param(request, "jid")
    if not text:
        raise HTTPError(400, "parameter 'jid' is required (an account of this node's domain, bare or full)")
    jid = _account(ctx, text, "parameter 'jid'", full_ok=True)
    found = ctx.router.sessions_of(jid.bare)
    if jid.resource is not None:
        found = [s for s in found if s.jid == jid]
    return json_response({"jid": str(jid), "node": str(ctx.node_name), "sessions": [_session(s) for s in found]})


def _account(ctx: NodeContext, text: str, label: str, *, full_ok: bool = False) -> JID:
    """``text`` as an account of this node's domain (400 naming ``label`` otherwise)."""
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise HTTPError(400, f"{label} is not a valid JID: {exc}") from None
    if jid.local is None or jid.domain != ctx.domain or (jid.resource is not None and not full_ok):
        shape = "USER@DOMAIN[/RESOURCE]" if full_ok else "USER@DOMAIN"
        raise HTTPError(400, f"{label} must be an account of this node's domain ({shape} with domain "
                             f"{ctx.domain}), not {text!r}")
    return jid


async def create_user(ctx: NodeContext, request: Request) -> Response:
    """``POST /api/users``: create an account as ``meshxmpp adduser`` does."""
    from meshxmpp.c2s.sasl import derive_credentials

    data = json_body(request, _USER_FIELDS)
    user = str(_account(ctx, text_field(data, "user") or "", "field 'user'").bare)
    password = text_field(data, "password")
    if password is None:
        raise HTTPError(400, "field 'password' must be a string")
    accounts = ctx.storage.accounts
    if await accounts.exists(user):  # before the key derivation: a conflict costs no CPU
        raise HTTPError(409, f"user {user} exists")
    try:
        # PBKDF2 for two hashes: a few milliseconds of CPU, off the event loop.
        creds = await trio.to_thread.run_sync(derive_credentials, password)
    except ValueError as exc:
        raise HTTPError(400, f"password refused: {exc}") from None
    if not await accounts.create(user, creds):
        raise HTTPError(409, f"user {user} exists")
    return json_response({"user": user}, 201, (("Location", f"/api/users/{user}"),))


async def delete_user(ctx: NodeContext, request: Request) -> Response:
    """``DELETE /api/users/JID``: remove the account with its roster and offline messages."""
    raw = request.path[len("/api/users/"):]
    try:
        text = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HTTPError(400, "the JID in the path is not UTF-8") from None
    user = str(_account(ctx, text, "the JID in the path").bare)
    if not await ctx.storage.accounts.delete(user):
        raise HTTPError(404, f"no such user: {user}")
    return Response(204)
