"""GET /readyz over real sockets: ready when storage answers and the mesh is joined; 503 naming the
failed check when storage raises, hangs or is closed, or a mesh node has not joined."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from meshxmpp import testing
from meshxmpp.http import api
from meshxmpp.http.api import Request
from tests.http._support import TOKEN, request


class RaisingAccounts:
    """Stands in for ``storage.accounts`` when the database is unreachable."""

    async def exists(self, user: str) -> bool:
        raise OSError("database is unreachable")


class HangingAccounts:
    async def exists(self, user: str) -> bool:
        await trio.sleep_forever()
        raise AssertionError


async def test_ready_node_answers_200() -> None:
    async with testing.node() as n:
        answer = await request(n.http_address, "GET", "/readyz")
        head = await request(n.http_address, "HEAD", "/readyz")
    assert answer.status == 200, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"status": 200, "ready": True, "checks": {"storage": {"ok": True}}}
    assert (head.status, head.body) == (200, b"")


@pytest.mark.parametrize("stand_in", [RaisingAccounts, HangingAccounts])
async def test_readiness_flips_when_storage_is_unreachable(stand_in: type, monkeypatch: pytest.MonkeyPatch) -> None:
    async with testing.node({"http": {"ready_timeout": 0.3}}) as n:
        assert (await request(n.http_address, "GET", "/readyz")).status == 200
        real = n.ctx.storage.accounts
        monkeypatch.setattr(n.ctx.storage, "accounts", stand_in())
        answer = await request(n.http_address, "GET", "/readyz")
        assert answer.status == 503, answer
        body = answer.json()
        assert (body["status"], body["ready"], body["failed"]) == (503, False, ["storage"])
        assert body["checks"]["storage"]["ok"] is False
        words = "OSError" if stand_in is RaisingAccounts else "did not answer within 0.3 s"
        assert words in body["error"] and words in body["checks"]["storage"]["error"]
        assert "unreachable" not in body["error"]  # exception text goes to the log, not to strangers
        # Liveness is not readiness: the process is fine.
        assert (await request(n.http_address, "GET", "/healthz")).status == 200
        monkeypatch.setattr(n.ctx.storage, "accounts", real)
        assert (await request(n.http_address, "GET", "/readyz")).status == 200


async def test_closed_storage_is_not_ready() -> None:
    async with testing.node() as n:
        await n.ctx.storage.close()
        answer = await request(n.http_address, "GET", "/readyz")
    assert answer.status == 503, answer
    assert answer.json()["failed"] == ["storage"]


async def test_readyz_needs_no_token_and_answers_anyone() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        answer = await request(n.http_address, "GET", "/readyz")
        assert answer.status == 200
        response = await api.handle(n.ctx, Request("GET", "/readyz", {}, {}, b"", "203.0.113.5"))
        assert response.status == 200


async def test_mesh_nodes_are_ready_once_joined() -> None:
    async with testing.cluster(2) as c:
        for i in range(2):
            answer = await request(c[i].http_address, "GET", "/readyz")
            assert answer.status == 200, answer
            assert answer.json()["checks"] == {"storage": {"ok": True}, "mesh": {"ok": True}}


async def test_a_node_whose_seeds_never_answer_is_not_ready() -> None:
    with socket.socket() as s:  # a port that refuses: bound, never listening
        s.bind(("127.0.0.1", 0))
        dead_seed = f"127.0.0.1:{s.getsockname()[1]}"
        mesh: dict[str, Any] = {"secret": "readyz-test-secret-0123456789", "bind": "127.0.0.1", "port": 0,
                                "peers": [dead_seed], "join_timeout": 0.2, "profile": "test",
                                "node_name": "lonely"}
        async with testing.node({"mesh": mesh}) as n:
            answer = await request(n.http_address, "GET", "/readyz")
    assert answer.status == 503, answer
    body = answer.json()
    assert body["failed"] == ["mesh"]
    assert body["checks"]["storage"] == {"ok": True}
    assert "not joined" in body["error"]


async def test_a_draining_node_is_not_ready() -> None:
    """Node.stop() sets ctx.stopping first; from then on /readyz answers 503 so a load balancer stops
    sending clients while the node drains (its HTTP listener is still up during the shutdown)."""
    async with testing.node() as n:
        assert (await request(n.http_address, "GET", "/readyz")).status == 200
        n.ctx.stopping = True  # as Node.stop() does before anything else
        answer = await request(n.http_address, "GET", "/readyz")
        assert answer.status == 503, answer
        assert answer.json()["failed"] == ["shutdown"]
        assert (await request(n.http_address, "GET", "/healthz")).status == 200
        n.ctx.stopping = False
        n.node.stop()
        assert n.ctx.stopping is True
