"""The admin API's write side over real sockets: POST /api/send (to a client on this node, through a
2-node cluster, to an offline user, with a per-sender routing policy), GET /api/sessions,
POST /api/explain, POST and DELETE /api/users; and the refusals every /api/* route shares (bad token,
oversized body, malformed JSON, wrong content type, wrong method)."""

from __future__ import annotations

from typing import Any

import pytest

from meshxmpp import testing
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.http._support import TOKEN, request

SERVICE = "servicex.localhost"
WITH_SERVICE = {"components": {"port": 0, "service": [{"domain": SERVICE, "secret": "component-secret"}]}}


def is_message(el: Element) -> bool:
    return el.name == "message" and el.findtext("body", ns.CLIENT) is not None


# -- POST /api/send -----------------------------------------------------------------------------------


async def test_send_as_a_component_reaches_a_client() -> None:
    async with testing.node(WITH_SERVICE) as n:
        await n.add_user("bob")
        bob = await n.client("bob", resource="phone", presence=True)
        async with bob:
            answer = await request(n.http_address, "POST", "/api/send", json_body={
                "from": SERVICE, "to": "bob@localhost", "type": "headline", "body": "build #42 passed",
                "subject": "CI <ok> & done"})
            assert answer.status == 202, answer
            sent = answer.json()
            assert (sent["from"], sent["to"], sent["type"]) == (SERVICE, "bob@localhost", "headline")
            el = await bob.wait_for(is_message, what="the pushed headline")
    assert (el.get("from"), el.get("to"), el.get("type"), el.get("id")) == (
        SERVICE, "bob@localhost", "headline", sent["id"])
    assert el.findtext("body", ns.CLIENT) == "build #42 passed"
    assert el.findtext("subject", ns.CLIENT) == "CI <ok> & done"


async def test_send_as_a_user_or_the_server_defaults_to_normal() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        bob = await n.client("bob", presence=True)
        async with bob:
            for sender in ("alice@localhost/desk", "localhost"):
                answer = await request(n.http_address, "POST", "/api/send", json_body={
                    "from": sender, "to": "bob@localhost", "body": f"hello from {sender}", "id": "m1"})
                assert answer.status == 202, answer
                el = await bob.wait_for(is_message, what=f"the message from {sender}")
                assert (el.get("from"), el.get("type"), el.get("id")) == (sender, "normal", "m1")


async def test_send_applies_the_senders_routing_policy() -> None:
    # Per-sender rules come from the stanza's 'from' because /api/send routes with router.route(el, None).
    overrides = {**WITH_SERVICE, "routing": {"sender": [{"match": SERVICE, "policy": "all-connected"}]}}
    async with testing.node(overrides) as n:
        await n.add_user("bob")
        phone = await n.client("bob", resource="phone", presence=True)
        desk = await n.client("bob", resource="desk")  # no presence: only all-connected reaches it
        async with phone, desk:
            await n.session_count("bob@localhost", 2)
            for sender in (SERVICE, "alice@localhost"):
                answer = await request(n.http_address, "POST", "/api/send", json_body={
                    "from": sender, "to": "bob@localhost", "type": "chat", "body": f"from {sender}"})
                assert answer.status == 202, answer
            got_phone = [await phone.wait_for(is_message) for _ in range(2)]
            got_desk = await desk.wait_for(is_message)
            await phone.ping()
            await desk.ping()
            assert not [el for el in desk.pending() if is_message(el)]
    assert sorted(el.get("from") for el in got_phone) == ["alice@localhost", SERVICE]
    assert got_desk.get("from") == SERVICE


async def test_send_to_an_offline_user_is_stored() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        answer = await request(n.http_address, "POST", "/api/send", json_body={
            "from": "localhost", "to": "bob@localhost", "type": "chat", "body": "while you were out"})
        assert answer.status == 202, answer  # answered once it is in storage
        async with await n.client("bob", presence=True) as bob:
            el = await bob.wait_for(is_message, what="the stored message")
    assert el.findtext("body", ns.CLIENT) == "while you were out"
    assert el.find("delay", ns.DELAY) is not None


async def test_send_through_a_cluster_reaches_a_user_on_the_other_node() -> None:
    async with testing.cluster(2) as c:
        await c.add_user("bob")
        bob = await c.client(1, "bob", resource="laptop", presence=True)
        async with bob:
            await c.session_visible("bob@localhost/laptop")
            answer = await request(c[0].http_address, "POST", "/api/send", json_body={
                "from": "localhost", "to": "bob@localhost", "type": "chat", "body": "via node0"})
            assert answer.status == 202, answer
            el = await bob.wait_for(is_message, what="the message sent on node 0")
    assert (el.get("from"), el.findtext("body", ns.CLIENT)) == ("localhost", "via node0")


@pytest.mark.parametrize(("payload", "status", "words"), [
    ({"from": "evil.example", "to": "bob@localhost", "body": "x"}, 400, "'from' must be of this node's domain"),
    ({"from": "conference.localhost", "to": "bob@localhost", "body": "x"}, 400, "servicex.localhost"),
    ({"from": "@bad", "to": "bob@localhost", "body": "x"}, 400, "'from' is not a valid JID"),
    ({"from": "localhost", "to": "bob@@localhost", "body": "x"}, 400, "'to' is not a valid JID"),
    ({"from": "localhost", "to": "bob@localhost", "body": "x", "type": "groupchat"}, 400, "chat, normal, headline"),
    ({"from": "localhost", "to": "bob@localhost"}, 400, "'body'"),
    ({"from": "localhost", "to": "bob@localhost", "body": ""}, 400, "'body'"),
    ({"from": "localhost", "to": "bob@localhost", "body": 3}, 400, "'body' must be a string"),
    ({"from": "localhost", "to": "bob@localhost", "body": "a\x00b"}, 400, "XML cannot carry"),
    ({"from": "localhost", "to": "bob@localhost", "body": "\ud800"}, 400, "XML cannot carry"),
    ({"to": "bob@localhost", "body": "x"}, 400, "'from' is required"),
    ({"from": "localhost", "to": "bob@localhost", "body": "x", "bcc": "eve"}, 400, "unknown field 'bcc'"),
])
async def test_send_refuses_bad_fields(payload: dict[str, Any], status: int, words: str) -> None:
    async with testing.node(WITH_SERVICE) as n:
        answer = await request(n.http_address, "POST", "/api/send", json_body=payload)
    assert answer.status == status, answer
    assert answer.json()["status"] == status
    assert words in answer.json()["error"]


# -- what every JSON route refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(("body", "headers", "status", "words"), [
    (b'{"from": "localhost",', {"Content-Type": "application/json"}, 400, "malformed JSON"),
    (b"\xff\xfe", {"Content-Type": "application/json"}, 400, "malformed JSON"),
    pytest.param(b"[" * 30000 + b"]" * 30000, {"Content-Type": "application/json"}, 400, "malformed JSON",
                 id="nested-too-deep"),
    (b'["a list"]', {"Content-Type": "application/json"}, 400, "a JSON object"),
    (b"", {"Content-Type": "application/json"}, 400, "malformed JSON"),
    (b'{"from": "localhost"}', {"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
    (b'{"from": "localhost"}', {}, 415, "application/json"),
    (b'{"from": "localhost"}', {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
    (b'{"from": "localhost"}', {"Content-Type": "application/json; charset=latin-1"}, 415, "UTF-8"),
])
async def test_json_routes_refuse_bad_bodies(body: bytes, headers: dict[str, str], status: int, words: str) -> None:
    async with testing.node() as n:
        for target in ("/api/send", "/api/users", "/api/explain"):
            answer = await request(n.http_address, "POST", target, body=body, headers=headers)
            assert answer.status == status, (target, answer)
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {"error": answer.json()["error"], "status": status}
            assert words in answer.json()["error"], (target, answer)


async def test_json_content_type_with_parameters_and_suffix_is_accepted() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"):
            answer = await request(n.http_address, "POST", "/api/explain", body=b'{"to": "bob@localhost"}',
                                   headers={"Content-Type": content_type})
            assert answer.status == 200, (content_type, answer)


async def test_oversized_body_is_413() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        big = {"from": "localhost", "to": "bob@localhost", "body": "x" * (64 * 1024)}
        answer = await request(n.http_address, "POST", "/api/send", json_body=big, token=TOKEN)
        assert answer.status == 413, answer
        assert answer.json()["status"] == 413
        # Just under the limit is read and answered by the route.
        fits = {"from": "localhost", "to": "bob@localhost", "body": "x" * (60 * 1024)}
        answer = await request(n.http_address, "POST", "/api/send", json_body=fits, token=TOKEN)
        assert answer.status == 202, answer


async def test_every_admin_route_needs_the_token() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        await n.add_user("bob")
        calls: list[tuple[str, str, Any]] = [
            ("POST", "/api/send", {"from": "localhost", "to": "bob@localhost", "body": "x"}),
            ("GET", "/api/sessions?jid=bob@localhost", None),
            ("POST", "/api/explain", {"to": "bob@localhost"}),
            ("POST", "/api/users", {"user": "carol@localhost", "password": "pw-carol"}),
            ("DELETE", "/api/users/bob@localhost", None),
        ]
        for method, target, payload in calls:
            for token in (None, "wrong-token-0123456789", TOKEN[:-1]):
                answer = await request(n.http_address, method, target, json_body=payload, token=token)
                assert answer.status == 401, (method, target, token, answer)
                assert answer.json()["status"] == 401
                assert answer.headers["www-authenticate"] == 'Bearer realm="meshxmpp"'
        assert await n.ctx.storage.accounts.exists("bob@localhost")  # nothing was done
        assert not await n.ctx.storage.accounts.exists("carol@localhost")
        for method, target, payload in calls:
            answer = await request(n.http_address, method, target, json_body=payload, token=TOKEN)
            assert answer.status in (200, 201, 202, 204), (method, target, answer)


async def test_without_a_token_strangers_get_403() -> None:
    from meshxmpp.http import api
    from meshxmpp.http.api import Request

    async with testing.node() as n:
        for method, path in (("POST", "/api/send"), ("GET", "/api/sessions"), ("POST", "/api/users"),
                             ("DELETE", "/api/users/bob@localhost"), ("POST", "/api/explain")):
            response = await api.handle(n.ctx, Request(method, path, {}, {}, b"{}", "198.51.100.9"))
            assert response.status == 403, (method, path)


@pytest.mark.parametrize(("method", "target", "allow"), [
    ("GET", "/api/send", "POST"),
    ("PUT", "/api/users", "POST"),
    ("GET", "/api/users/bob@localhost", "DELETE"),
    ("DELETE", "/api/sessions?jid=bob@localhost", "GET, HEAD"),
    ("POST", "/readyz", "GET, HEAD"),
])
async def test_wrong_method_is_405_with_allow(method: str, target: str, allow: str) -> None:
    async with testing.node() as n:
        answer = await request(n.http_address, method, target)
    assert (answer.status, answer.headers["allow"]) == (405, allow)
    assert answer.json()["status"] == 405


async def test_unknown_paths_are_404() -> None:
    async with testing.node() as n:
        for target in ("/api/users/", "/api/nothing", "/nothing", "/api/send/x"):
            answer = await request(n.http_address, "GET", target)
            assert (answer.status, answer.json()["status"]) == (404, 404), target


# -- GET /api/sessions ---------------------------------------------------------------------------------


async def test_sessions_on_one_node() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        phone = await n.client("bob", resource="phone")
        async with phone:
            await phone.send(Element("presence", ns.CLIENT, children=[
                Element("show", ns.CLIENT, children=["away"]), Element("priority", ns.CLIENT, children=["5"])]))
            await phone.ping()
            answer = await request(n.http_address, "GET", "/api/sessions?jid=Bob@LocalHost")
            assert answer.status == 200, answer
            assert answer.json() == {"jid": "bob@localhost", "node": "local", "sessions": [
                {"jid": "bob@localhost/phone", "node": "local", "available": True, "priority": 5, "show": "away"}]}
            nobody = await request(n.http_address, "GET", "/api/sessions?jid=carol@localhost")
            assert nobody.json()["sessions"] == []


async def test_sessions_in_the_whole_mesh() -> None:
    async with testing.cluster(2) as c:
        await c.add_user("bob")
        a = await c.client(0, "bob", resource="a", presence=True)
        b = await c.client(1, "bob", resource="b")
        async with a, b:
            await c.session_visible("bob@localhost/a")
            await c.session_visible("bob@localhost/b")
            answer = await request(c[0].http_address, "GET", "/api/sessions?jid=bob@localhost")
            assert answer.status == 200, answer
            got = answer.json()
            assert got["node"] == "node0"
            assert sorted((s["jid"], s["node"], s["available"]) for s in got["sessions"]) == [
                ("bob@localhost/a", "node0", True), ("bob@localhost/b", "node1", False)]
            one = await request(c[1].http_address, "GET", "/api/sessions?jid=bob@localhost/a")
            assert [(s["jid"], s["node"]) for s in one.json()["sessions"]] == [("bob@localhost/a", "node0")]


@pytest.mark.parametrize(("target", "words"), [
    ("/api/sessions", "'jid' is required"),
    ("/api/sessions?jid=", "'jid' is required"),
    ("/api/sessions?jid=a@localhost&jid=b@localhost", "given 2 times"),
    ("/api/sessions?jid=bob@example.org", "this node's domain"),
    ("/api/sessions?jid=localhost", "this node's domain"),
    ("/api/sessions?jid=bob@@localhost", "not a valid JID"),
])
async def test_sessions_bad_input(target: str, words: str) -> None:
    async with testing.node() as n:
        answer = await request(n.http_address, "GET", target)
    assert answer.status == 400, answer
    assert words in answer.json()["error"]


# -- POST /api/explain ---------------------------------------------------------------------------------


async def test_explain_post_answers_as_the_get() -> None:
    async with testing.node() as n:
        await n.add_user("bob")
        get = await request(n.http_address, "GET", "/api/explain?to=bob@localhost&type=normal&from=alice@localhost")
        post = await request(n.http_address, "POST", "/api/explain", json_body={
            "to": "bob@localhost", "type": "normal", "from": "alice@localhost"})
        assert (get.status, post.status) == (200, 200)
        assert post.json() == get.json()
        default = await request(n.http_address, "POST", "/api/explain", json_body={"to": "bob@localhost"})
        assert (default.json()["type"], default.json()["from"]) == ("chat", None)
        for payload, words in (({}, "'to' is required"), ({"to": "bob@localhost", "type": "sms"}, "'type'"),
                               ({"to": "bob@example.org"}, "this node's domain"), ({"to": 5}, "string")):
            bad = await request(n.http_address, "POST", "/api/explain", json_body=payload)
            assert bad.status == 400, (payload, bad)
            assert words in bad.json()["error"]


# -- POST /api/users, DELETE /api/users/JID -----------------------------------------------------------


async def test_create_log_in_delete() -> None:
    async with testing.node() as n:
        created = await request(n.http_address, "POST", "/api/users",
                                json_body={"user": "Carol@LocalHost", "password": "pässword 1"})
        assert created.status == 201, created
        assert created.json() == {"user": "carol@localhost"}
        assert created.headers["location"] == "/api/users/carol@localhost"
        async with await n.client("carol", "pässword 1") as carol:
            assert str(carol.jid).startswith("carol@localhost/")
        again = await request(n.http_address, "POST", "/api/users",
                              json_body={"user": "carol@localhost", "password": "other"})
        assert (again.status, again.json()["status"]) == (409, 409)
        deleted = await request(n.http_address, "DELETE", "/api/users/carol%40localhost")
        assert (deleted.status, deleted.body) == (204, b"")
        assert "content-length" not in deleted.headers
        assert not await n.ctx.storage.accounts.exists("carol@localhost")
        gone = await request(n.http_address, "DELETE", "/api/users/carol@localhost")
        assert (gone.status, gone.json()["error"]) == (404, "no such user: carol@localhost")


@pytest.mark.parametrize(("payload", "words"), [
    ({"user": "carol@example.org", "password": "pw"}, "this node's domain"),
    ({"user": "localhost", "password": "pw"}, "this node's domain"),
    ({"user": "carol@localhost/res", "password": "pw"}, "USER@DOMAIN"),
    ({"user": "carol@@localhost", "password": "pw"}, "not a valid JID"),
    ({"user": "carol@localhost", "password": ""}, "password refused"),
    ({"user": "carol@localhost", "password": "a\u0007b"}, "password refused"),
    ({"user": "carol@localhost", "password": None}, "'password' must be a string"),
    ({"user": "carol@localhost", "password": 12345}, "'password' must be a string"),
    ({"user": "carol@localhost"}, "'password' is required"),
])
async def test_create_user_bad_input(payload: dict[str, Any], words: str) -> None:
    async with testing.node() as n:
        answer = await request(n.http_address, "POST", "/api/users", json_body=payload)
        assert answer.status == 400, answer
        assert words in answer.json()["error"]
        assert await n.ctx.storage.accounts.list() == []


@pytest.mark.parametrize(("target", "status"), [
    ("/api/users/carol@example.org", 400),
    ("/api/users/carol%FF@localhost", 400),
    ("/api/users/carol@localhost/res", 400),
    ("/api/users/nobody@localhost", 404),
])
async def test_delete_user_bad_input(target: str, status: int) -> None:
    async with testing.node() as n:
        answer = await request(n.http_address, "DELETE", target)
    assert answer.status == status, answer
    assert answer.json()["status"] == status
