"""The routes of meshxmpp.http.api: access to /api/*, and /api/explain's answers to bad input.

The routes are plain functions, so most cases call `api.handle` directly with a `Request`; the
token cases also go over a real socket to the node's own listener."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from meshxmpp import testing
from meshxmpp.http import api
from meshxmpp.http.api import Request

TOKEN = "s3cret-Token_0123456789+/="


def get(path: str, query: dict[str, list[str]] | None = None, *, peer: str = "127.0.0.1",
        headers: dict[str, str] | None = None, method: str = "GET") -> Request:
    return Request(method, path, query or {}, headers or {}, b"", peer)


def body(response: api.Response) -> Any:
    return json.loads(response.body)


async def http_get(address: tuple[str, int], target: str, headers: dict[str, str] | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
    """One GET with the standard library client, as `meshxmpp explain` does it."""
    import http.client

    def call() -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*address, timeout=10)
        try:
            conn.request("GET", target, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    return await trio.to_thread.run_sync(call)


# -- loopback-only access without a token -----------------------------------------------------------


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("fe80::1%eth0", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False),
    ("", False), ("localhost", False),
])
def test_is_loopback(address: str, loopback: bool) -> None:
    assert api.is_loopback(address) is loopback


async def test_without_token_api_answers_loopback_only() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        ok = await api.handle(n.ctx, get("/api/explain", {"to": ["bob@localhost"]}))
        assert ok.status == 200
        refused = await api.handle(n.ctx, get("/api/explain", {"to": ["bob@localhost"]}, peer="192.0.2.7"))
        assert refused.status == 403
        assert "loopback" in body(refused)["error"]
        # /api/* is checked before the route exists, so nothing about the API leaks.
        assert (await api.handle(n.ctx, get("/api/nothing", peer="192.0.2.7"))).status == 403
        assert (await api.handle(n.ctx, get("/api/nothing"))).status == 404
        # Health checks come from anywhere.
        assert (await api.handle(n.ctx, get("/healthz", peer="192.0.2.7"))).status == 200


# -- token -------------------------------------------------------------------------------------------


async def test_token_is_required_for_api_but_not_healthz() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        await n.add_user("bob")
        address = n.http_address
        status, headers, data = await http_get(address, "/api/explain?to=bob@localhost")
        assert status == 401
        assert headers["www-authenticate"] == 'Bearer realm="meshxmpp"'
        assert json.loads(data)["status"] == 401
        for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}",
                      "Bearer "):
            status, _, _ = await http_get(address, "/api/explain?to=bob@localhost", {"Authorization": wrong})
            assert status == 401, wrong
        for right in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "):
            status, _, data = await http_get(address, "/api/explain?to=bob@localhost", {"Authorization": right})
            assert status == 200, right
            assert json.loads(data)["to"] == "bob@localhost"
        status, _, data = await http_get(address, "/healthz")
        assert (status, data) == (200, b"ok")


async def test_with_a_token_any_address_may_use_the_api() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        request = get("/api/explain", {"to": ["bob@localhost"]}, peer="192.0.2.7",
                      headers={"authorization": f"Bearer {TOKEN}"})
        assert (await api.handle(n.ctx, request)).status == 200
        no_token = get("/api/explain", {"to": ["bob@localhost"]})  # loopback is not enough then
        assert (await api.handle(n.ctx, no_token)).status == 401


def test_repeated_authorization_headers_are_refused() -> None:
    from meshxmpp.config import load_config

    http = load_config(None, {"http": {"admin_token": TOKEN}}).http
    # The server joins repeated headers with ", ".
    with pytest.raises(api.HTTPError) as info:
        api.authorize(http, get("/api/x", headers={"authorization": f"Bearer {TOKEN}, Bearer {TOKEN}"}))
    assert info.value.status == 401


# -- /api/explain input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "message"), [
    ({}, "'to' is required"),
    ({"to": [""]}, "'to' is required"),
    ({"to": ["bob@@localhost"]}, "not a valid JID"),
    ({"to": ["localhost"]}, "an account of this node's domain"),
    ({"to": ["bob@example.org"]}, "an account of this node's domain (localhost)"),
    ({"to": ["bob@localhost"], "type": ["sms"]}, "'type' must be one of"),
    ({"to": ["bob@localhost", "carol@localhost"]}, "'to' given 2 times"),
    ({"to": ["bob@localhost"], "from": ["@x"]}, "'from' is not a valid JID"),
])
async def test_explain_bad_input_is_400(query: dict[str, list[str]], message: str) -> None:
    async with testing.node() as n:
        response = await api.handle(n.ctx, get("/api/explain", query))
    assert response.status == 400
    assert message in body(response)["error"]


async def test_explain_defaults_to_chat_and_no_sender() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        report = body(await api.handle(n.ctx, get("/api/explain", {"to": ["Bob@LocalHost"]})))
    assert report == {
        "to": "bob@localhost", "type": "chat", "from": None, "policy": "top-priority-all",
        "account_exists": True, "rule": "message/offline/store", "rule_ref": "RFC 6121 8.5.2.2.1; XEP-0160",
        "rule_summary": "no available resource: store offline", "via": None,
        "actions": [{"action": "store-offline"}], "sessions": [],
        "explain": "message/offline/store: store offline",
    }


async def test_explain_reports_a_missing_account() -> None:
    async with testing.node({"routing": {"unknown_user": "drop"}}) as n:
        report = body(await api.handle(n.ctx, get("/api/explain", {"to": ["ghost@localhost"]})))
    assert (report["account_exists"], report["rule"], report["actions"]) == (
        False, "no-such-user/message-drop", [{"action": "drop"}])
    assert "no such account" in api.explain_text(report)


async def test_explain_uses_the_per_sender_policy() -> None:
    overrides = {"routing": {"sender": [{"match": "servicex.localhost", "policy": "all-connected"}]}}
    async with testing.node(overrides) as n:
        await n.add_user("bob")
        query = {"to": ["bob@localhost"], "from": ["servicex.localhost"], "type": ["headline"]}
        report = body(await api.handle(n.ctx, get("/api/explain", query)))
        people = body(await api.handle(n.ctx, get("/api/explain", {"to": ["bob@localhost"],
                                                                     "from": ["alice@localhost"]})))
    assert (report["policy"], report["from"], report["type"]) == ("all-connected", "servicex.localhost", "headline")
    assert report["rule"] == "message/bare/headline-ignored"  # nobody is online
    assert people["policy"] == "top-priority-all"


async def test_head_and_405_through_handle() -> None:
    async with testing.node() as n:
        head = await api.handle(n.ctx, get("/healthz", method="HEAD"))
        put = await api.handle(n.ctx, get("/api/explain", method="PUT"))
    assert head.status == 200
    assert (put.status, dict(put.headers)) == (405, {"Allow": "GET, HEAD, POST"})


# -- /api/cluster ---------------------------------------------------------------------------------------

STATUS = {
    "node": "n1:5701", "epoch": 7, "incarnation": 2, "profile": "test",
    "members": [
        {"name": "n1:5701", "address": "127.0.0.1:5701", "state": "alive", "incarnation": 2, "sessions": 3},
        {"name": "n2:5702", "address": "127.0.0.1:5702", "state": "suspect", "incarnation": 0, "sessions": 1},
    ],
    "sessions": {"local": 3, "total": 4},
    "forward": {"in_flight": 1, "backlog": 0},
}


class StandInMesh:
    """What the HTTP layer needs of `ctx.mesh`: a `status()` that returns a JSON-ready dict."""

    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status
        self.calls = 0

    def status(self) -> dict[str, Any]:
        self.calls += 1
        return self._status


def stand_in_context(mesh: StandInMesh | None, **http: Any) -> Any:
    """The attributes of a NodeContext that /api/cluster reads: config (for access) and mesh."""
    from types import SimpleNamespace

    from meshxmpp.config import load_config

    return SimpleNamespace(config=load_config(None, {"http": http}), mesh=mesh)


@asynccontextmanager
async def http_server(ctx: Any) -> AsyncIterator[tuple[str, int]]:
    """The real HttpServer with the default routes (`api.handle`) on ``ctx``, on a free loopback port."""
    from meshxmpp.http import HttpServer

    server = HttpServer(ctx, bind="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        yield "127.0.0.1", port
        nursery.cancel_scope.cancel()


async def test_cluster_answers_the_mesh_status_over_a_socket() -> None:
    mesh = StandInMesh(STATUS)
    async with http_server(stand_in_context(mesh)) as address:
        status, headers, data = await http_get(address, "/api/cluster")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(data) == STATUS
    assert mesh.calls == 1


async def test_cluster_without_a_mesh_is_404_mesh_disabled() -> None:
    async with http_server(stand_in_context(None)) as address:
        status, _, data = await http_get(address, "/api/cluster")
    assert status == 404
    assert json.loads(data)["error"] == api.MESH_DISABLED == "mesh disabled"


async def test_cluster_on_a_node_without_a_mesh_secret_is_404() -> None:
    from types import SimpleNamespace

    # No `mesh` attribute at all (a context from before the mesh was composed in) reads as no mesh.
    bare = SimpleNamespace(config=stand_in_context(None).config)
    response = await api.handle(bare, get("/api/cluster"))  # type: ignore[arg-type]
    assert (response.status, body(response)["error"]) == (404, "mesh disabled")
    async with testing.node() as n:
        response = await api.handle(n.ctx, get("/api/cluster"))
    assert (response.status, body(response)["error"]) == (404, "mesh disabled")


async def test_cluster_follows_the_api_access_rules() -> None:
    mesh = StandInMesh(STATUS)
    open_ctx = stand_in_context(mesh)
    refused = await api.handle(open_ctx, get("/api/cluster", peer="192.0.2.7"))
    assert refused.status == 403
    disabled = await api.handle(stand_in_context(None), get("/api/cluster", peer="192.0.2.7"))
    assert disabled.status == 403  # whether the mesh runs is not told to strangers
    token_ctx = stand_in_context(mesh, admin_token=TOKEN)
    async with http_server(token_ctx) as address:
        status, _, _ = await http_get(address, "/api/cluster")
        assert status == 401
        status, _, data = await http_get(address, "/api/cluster", {"Authorization": f"Bearer {TOKEN}"})
        assert (status, json.loads(data)) == (200, STATUS)
    post = await api.handle(open_ctx, get("/api/cluster", method="POST"))
    assert (post.status, dict(post.headers)) == (405, {"Allow": "GET, HEAD"})
    assert mesh.calls == 1


async def test_cluster_accepts_an_async_status() -> None:
    class AsyncMesh:
        async def status(self) -> dict[str, Any]:
            await trio.lowlevel.checkpoint()
            return STATUS

    response = await api.handle(stand_in_context(AsyncMesh()), get("/api/cluster"))  # type: ignore[arg-type]
    assert (response.status, body(response)) == (200, STATUS)


def test_cluster_text_is_a_header_and_a_table() -> None:
    text = api.cluster_text(STATUS)
    lines = text.splitlines()
    assert lines[0] == "node n1:5701  epoch 7  incarnation 2  profile test"
    assert "sessions: 3 local, 4 in the cluster" in lines[1]
    assert "forwarding: 1 in flight, 0 waiting" in lines[1]
    table = lines[lines.index("") + 1:]
    assert table == [
        "NAME     ADDRESS         STATE    INCARNATION  SESSIONS",
        "n1:5701  127.0.0.1:5701  alive    2            3",
        "n2:5702  127.0.0.1:5702  suspect  0            1",
    ]
    # Only node, epoch and members are needed.
    minimal = {"node": "x", "epoch": 0, "members": []}
    assert api.cluster_text(minimal).splitlines() == ["node x  epoch 0", "", "NAME  ADDRESS  STATE  INCARNATION  SESSIONS"]
