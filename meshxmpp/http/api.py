"""HTTP routes as plain functions ``(ctx, Request) -> Response``; no sockets, no h11 here.

``http.server`` turns bytes into a `Request` and a `Response` back into bytes; `handle` picks the
route, checks access to ``/api/*`` and turns `HTTPError` into a JSON error
``{"error": message, "status": code}``. Routes (docs/operations.md has them with examples):

- ``GET /healthz``: 200 ``ok`` while the node runs (liveness); never needs a token.
- ``GET /readyz``: 200 when storage answers within ``[http] ready_timeout`` and, with a mesh, the
  node has joined it; else 503 naming the failed check (`readyz`). Never needs a token.
- ``GET /metrics``: Prometheus text or OpenMetrics (`http.metrics`). Never needs a token.
- ``GET /api/explain?to=JID[&type=chat][&from=JID]`` or ``POST /api/explain`` with the same fields
  as a JSON object: what the routing policy would do with a message of that type to ``to`` right
  now, as JSON (`explain_report`); `explain_text` renders it for ``meshxmpp explain``.
- ``GET /api/cluster``: the mesh as this node sees it (``ctx.mesh.status()``: node, epoch, members,
  sessions, forwarding), as JSON; 404 ``{"error": "mesh disabled"}`` when the node runs without a
  mesh. `cluster_text` renders it for ``meshxmpp cluster status``.
- ``POST /api/send``, ``GET /api/sessions?jid=``, ``POST /api/users``, ``DELETE /api/users/JID``:
  `http.admin`.

Access to ``/api/*``: with ``[http] admin_token`` set, ``Authorization: Bearer TOKEN`` (401
otherwise); without it, only clients on a loopback address (403 otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.http import admin
from meshxmpp.http import metrics as metrics_module
from meshxmpp.http._base import (
    JSON,
    TEXT,
    HTTPError,
    Request,
    Response,
    error_response,
    json_body,
    json_response,
    param,
    parse_jid,
    text_field,
)
from meshxmpp.jid import JID
from meshxmpp.routing import policy
from meshxmpp.routing.facts import MESSAGE_TYPES, facts_from_element
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.config import HTTPConfig
    from meshxmpp.context import NodeContext

__all__ = [
    "JSON",
    "MESH_DISABLED",
    "PREFIX_ROUTES",
    "READY_PROBE",
    "ROUTES",
    "TEXT",
    "HTTPError",
    "Request",
    "Response",
    "authorize",
    "cluster",
    "cluster_text",
    "error_response",
    "explain",
    "explain_report",
    "explain_text",
    "handle",
    "healthz",
    "is_loopback",
    "json_response",
    "readyz",
]

log = logging.getLogger("meshxmpp.http")

#: The error of ``GET /api/cluster`` (404) on a node without a mesh; `meshxmpp cluster` matches it.
MESH_DISABLED = "mesh disabled"
#: The account `readyz` asks storage about: any answer (it need not exist) proves storage works.
READY_PROBE = "readyz-probe@meshxmpp.invalid"

Route = Callable[["NodeContext", Request], Awaitable[Response]]


# -- access ---------------------------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    """Is ``address`` (an IP, maybe with an IPv6 zone) a loopback address, IPv4-mapped included?"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _digest(text: str) -> bytes:
    # Compared as digests: equal lengths, so the comparison time says nothing about the token's length.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def authorize(http: HTTPConfig, request: Request) -> None:
    """Raise `HTTPError` (401 or 403) unless ``request`` may use ``/api/*``."""
    token = http.admin_token
    if token is None:
        if not is_loopback(request.peer):
            raise HTTPError(403, "the admin API answers only loopback clients unless [http] admin_token is set")
        return
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else ""
    # Always compare, also when the header is missing, so every refusal costs the same.
    if not hmac.compare_digest(_digest(given), _digest(token)):
        raise HTTPError(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                        (("WWW-Authenticate", 'Bearer realm="meshxmpp"'),))


# -- health -----------------------------------------------------------------------------------------


async def healthz(ctx: NodeContext, request: Request) -> Response:
    return Response(200, b"ok", TEXT)


async def _storage_check(ctx: NodeContext) -> str | None:
    """None when storage answered a read within ``[http] ready_timeout``; else why not (no exception
    text: the answer goes to unauthenticated clients, the log gets the detail)."""
    timeout = ctx.config.http.ready_timeout
    try:
        with trio.move_on_after(timeout):
            await ctx.storage.accounts.exists(READY_PROBE)
            return None
    except Exception as exc:
        log.warning("readyz: storage check failed: %r", exc)
        return f"storage failed: {type(exc).__name__}"
    log.warning("readyz: storage did not answer within %.1f s", timeout)
    return f"storage did not answer within {timeout:g} s"


async def readyz(ctx: NodeContext, request: Request) -> Response:
    """``GET /readyz``: 200 when storage answers within ``[http] ready_timeout`` and, with a mesh,
    the node has joined it (a seed answered with the cluster's directory); else 503 with
    ``{"error": ..., "status": 503, "checks": {name: {"ok": bool, "error"?: str}}}``."""
    checks: dict[str, dict[str, Any]] = {}
    storage_error = await _storage_check(ctx)
    checks["storage"] = {"ok": True} if storage_error is None else {"ok": False, "error": storage_error}
    mesh = getattr(ctx, "mesh", None)
    if mesh is not None:
        joined = mesh.joined.is_set()
        checks["mesh"] = {"ok": True} if joined else {"ok": False, "error": "not joined to the mesh yet"}
    if getattr(ctx, "stopping", False):
        checks["shutdown"] = {"ok": False, "error": "shutting down"}
    failed = [name for name, check in checks.items() if not check["ok"]]
    if not failed:
        return json_response({"status": 200, "ready": True, "checks": checks})
    reasons = "; ".join(checks[name]["error"] for name in failed)
    return json_response({"error": f"not ready: {reasons}", "status": 503, "ready": False, "failed": failed,
                          "checks": checks}, 503)


# -- explain and cluster ----------------------------------------------------------------------------


async def _explain(ctx: NodeContext, to_text: str | None, type_: str | None, from_text: str | None,
                   what: str) -> Response:
    if not to_text:
        raise HTTPError(400, f"{what} 'to' is required (a JID of this node's domain)")
    type_ = type_ or "chat"
    if type_ not in MESSAGE_TYPES:
        raise HTTPError(400, f"{what} 'type' must be one of {', '.join(sorted(MESSAGE_TYPES))}")
    to = parse_jid(to_text, "to", what)
    if to.local is None or to.domain != ctx.domain:
        raise HTTPError(400, f"{what} 'to' must be an account of this node's domain ({ctx.domain})")
    sender = parse_jid(from_text, "from", what) if from_text else None
    exists = await ctx.storage.accounts.exists(str(to.bare))
    # Read after the await, as the router does: the sessions as they are now.
    sessions = ctx.router.sessions_of(to.bare)
    return json_response(explain_report(to, type_, sender, sessions, ctx.router.policy_config,
                                        account_exists=exists))


async def explain(ctx: NodeContext, request: Request) -> Response:
    """``GET /api/explain?to=JID&type=chat&from=JID``: the policy decision for such a message now."""
    return await _explain(ctx, param(request, "to"), param(request, "type"), param(request, "from"),
                          "parameter")


async def explain_post(ctx: NodeContext, request: Request) -> Response:
    """``POST /api/explain`` with ``{"to": JID, "type": "chat", "from": JID}``: as the GET."""
    data = json_body(request, {"to": True, "type": False, "from": False})
    return await _explain(ctx, text_field(data, "to"), text_field(data, "type"), text_field(data, "from"),
                          "field")


async def cluster(ctx: NodeContext, request: Request) -> Response:
    """``GET /api/cluster``: ``ctx.mesh.status()`` as JSON; 404 when the node runs without a mesh."""
    mesh = getattr(ctx, "mesh", None)
    if mesh is None:
        raise HTTPError(404, MESH_DISABLED)
    status = mesh.status()
    if inspect.isawaitable(status):
        status = await status
    return json_response(status)


ROUTES: Mapping[str, Mapping[str, Route]] = {
    "/healthz": {"GET": healthz},
    "/readyz": {"GET": readyz},
    "/metrics": {"GET": metrics_module.metrics},
    "/api/explain": {"GET": explain, "POST": explain_post},
    "/api/cluster": {"GET": cluster},
    "/api/send": {"POST": admin.send},
    "/api/sessions": {"GET": admin.sessions},
    "/api/users": {"POST": admin.create_user},
}
#: Routes for every path under a prefix (the rest of the path is the route's to read).
PREFIX_ROUTES: Mapping[str, Mapping[str, Route]] = {
    "/api/users/": {"DELETE": admin.delete_user},
}


def _methods(path: str) -> Mapping[str, Route] | None:
    methods = ROUTES.get(path)
    if methods is None:
        for prefix, routes in PREFIX_ROUTES.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                return routes
    return methods


async def handle(ctx: NodeContext, request: Request) -> Response:
    """Answer one request: access check for ``/api/*``, then the route (404, 405 when none)."""
    path = request.path
    try:
        if path == "/api" or path.startswith("/api/"):
            authorize(ctx.config.http, request)
        methods = _methods(path)
        if methods is None:
            raise HTTPError(404, f"no such resource: {path}")
        route = methods.get("GET" if request.method == "HEAD" else request.method)
        if route is None:
            allowed = sorted([*methods, *(["HEAD"] if "GET" in methods else [])])
            raise HTTPError(405, f"method {request.method} is not allowed on {path}",
                            (("Allow", ", ".join(allowed)),))
        return await route(ctx, request)
    except HTTPError as exc:
        return error_response(exc.status, exc.message, exc.headers)


# -- explain: the report (pure) and its text -------------------------------------------------------


def _action(action: policy.Action) -> dict[str, Any]:
    match action:
        case policy.Deliver(jid=jid):
            return {"action": "deliver", "jid": str(jid)}
        case policy.DeliverCarbon(jid=jid, direction=direction):
            return {"action": "carbon", "jid": str(jid), "direction": direction}
        case policy.StoreOffline():
            return {"action": "store-offline"}
        case policy.Bounce(condition=condition, error_type=error_type):
            return {"action": "bounce", "condition": condition, "error_type": error_type}
        case policy.Drop():
            return {"action": "drop"}
    raise AssertionError(f"unknown action {action!r}")


def explain_report(to: JID, type_: str, sender: JID | None, sessions: Sequence[policy.SessionLike],
                   cfg: policy.PolicyConfig, *, account_exists: bool) -> dict[str, Any]:
    """What the router would do with a ``type_`` message with a body from ``sender`` to ``to``:
    the same `facts_from_element` and `policy.decide` calls, and `policy.explain`'s text (the
    router's debug log line)."""
    el = Element("message", ns.CLIENT, {"to": str(to), "type": type_, "id": "explain"})
    if sender is not None:
        el.set("from", str(sender))
    el.add("body", ns.CLIENT, text="(explain)")
    decision = policy.decide(facts_from_element(el, to, sender), sessions, cfg,
                             account_exists=account_exists)
    rule = policy.RULES_BY_NAME[decision.rule]
    return {
        "to": str(to),
        "type": type_,
        "from": None if sender is None else str(sender),
        "policy": cfg.policy_for(sender),
        "account_exists": account_exists,
        "rule": decision.rule,
        "rule_ref": rule.ref,
        "rule_summary": rule.summary,
        "via": decision.via,
        "actions": [_action(a) for a in decision.actions],
        "sessions": [
            {"jid": str(s.jid), "available": s.available, "priority": s.priority, "show": s.show,
             "carbons": s.carbons}
            for s in sessions
        ],
        "explain": policy.explain(decision),
    }


def _session_state(s: Mapping[str, Any]) -> str:
    state = "available" if s["available"] else "no presence"
    show = s.get("show") or "-"
    carbons = "on" if s.get("carbons") else "off"
    return f"{state}, priority {s['priority']}, show {show}, carbons {carbons}"


def _outcome(action: Mapping[str, Any]) -> str:
    kind = action["action"]
    if kind == "deliver":
        return f"deliver to {action['jid']}"
    if kind == "carbon":
        return f"carbon copy ({action['direction']}) to {action['jid']}"
    if kind == "store-offline":
        return "store offline (delivered when the user comes back)"
    if kind == "bounce":
        return f"bounce to the sender: {action['condition']} ({action['error_type']})"
    if kind == "drop":
        return "drop silently"
    return str(kind)


def explain_text(report: Mapping[str, Any]) -> str:
    """``meshxmpp explain``'s output for an `explain_report` (as decoded from JSON)."""
    bare = str(report["to"]).split("/", 1)[0]
    sender = report.get("from")
    lines = [f"{report['type']} message to {report['to']}" + (f" from {sender}" if sender else ""),
             f"policy: {report['policy']}"]
    per_jid: dict[str, list[str]] = {}
    for action in report["actions"]:
        if "jid" in action:
            receives = "deliver" if action["action"] == "deliver" else f"carbon ({action['direction']})"
            per_jid.setdefault(action["jid"], []).append(receives)
    sessions = report["sessions"]
    if not report.get("account_exists", True):
        lines.append(f"sessions of {bare}: none (no such account)")
    elif not sessions:
        lines.append(f"sessions of {bare}: none bound")
    else:
        lines.append(f"sessions of {bare}:")
        jid_width = max(len(s["jid"]) for s in sessions)
        states = [_session_state(s) for s in sessions]
        state_width = max(len(st) for st in states)
        for s, state in zip(sessions, states, strict=True):
            gets = ", ".join(per_jid.get(s["jid"], [])) or "nothing"
            lines.append(f"  {s['jid']:<{jid_width}}  {state:<{state_width}}  -> {gets}")
    lines.append("outcome:")
    lines += [f"  {_outcome(a)}" for a in report["actions"]] or ["  nothing"]
    rule = str(report["rule"])
    if report.get("via"):
        rule = f"{report['via']}, then {rule}"
    lines.append(f"rule: {rule} ({report.get('rule_ref', '')})")
    if report.get("rule_summary"):
        lines.append(f"      {report['rule_summary']}")
    lines.append(f"debug log line: {report['explain']}")
    return "\n".join(lines)


# -- cluster: the text of `meshxmpp cluster status` -------------------------------------------------


CLUSTER_COLUMNS = ("NAME", "ADDRESS", "STATE", "INCARNATION", "SESSIONS")


def cluster_text(status: Mapping[str, Any]) -> str:
    """``meshxmpp cluster status``'s output for a ``/api/cluster`` answer (as decoded from JSON): a
    header line with this node's name and epoch, then one row per member in the node's order."""
    head = f"node {status['node']}  epoch {status['epoch']}"
    if status.get("incarnation") is not None:
        head += f"  incarnation {status['incarnation']}"
    if status.get("profile"):
        head += f"  profile {status['profile']}"
    lines = [head]
    sessions = status.get("sessions")
    forward = status.get("forward")
    extra = []
    if isinstance(sessions, Mapping):
        extra.append(f"sessions: {sessions.get('local', '?')} local, {sessions.get('total', '?')} in the cluster")
    if isinstance(forward, Mapping):
        extra.append(f"forwarding: {forward.get('in_flight', '?')} in flight, {forward.get('backlog', '?')} waiting")
    if extra:
        lines.append("; ".join(extra))
    rows = [CLUSTER_COLUMNS] + [
        (str(m["name"]), str(m["address"]), str(m["state"]), str(m["incarnation"]), str(m["sessions"]))
        for m in status["members"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(CLUSTER_COLUMNS))]
    lines.append("")
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
