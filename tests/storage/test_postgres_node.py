"""A real node on PostgreSQL serving clients end to end (issue #7): login with credentials stored
there, a live message, an offline message kept in PostgreSQL and delivered at the next login, and
a second node on the same database seeing the same accounts."""

from __future__ import annotations

from meshxmpp import testing
from meshxmpp.storage import PostgresStorage
from meshxmpp.testing._postgres import PostgresServer
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

ALICE = "alice@example.org"


async def test_node_serves_clients_on_postgres(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    storage = {"backend": "postgres", "dsn": dsn, "pool_size": 4}
    async with testing.node({"storage": storage}, domain="example.org") as n:
        assert isinstance(n.ctx.storage, PostgresStorage)
        await n.add_user("alice")
        await n.add_user("bob")
        bob = await n.client("bob", resource="desk", presence=True)
        alice = await n.client("alice", resource="laptop", presence=True)
        await alice.send_message("bob@example.org", "live, through a node on PostgreSQL")
        await bob.wait_message("live, through a node on PostgreSQL")
        await alice.aclose()
        await n.session_count(ALICE, 0)

        msg = Element("message", ns.CLIENT, {"to": ALICE, "type": "chat"})
        msg.add("body", ns.CLIENT, text="while you were out")
        await bob.send(msg)
        await bob.ping()
        assert await n.ctx.storage.offline.count(ALICE) == 1
        await bob.aclose()

    # another node on the same database: same accounts, and the stored message
    async with testing.node({"storage": storage}, domain="example.org") as n2:
        alice = await n2.client("alice", resource="phone")
        await alice.send(Element("presence", ns.CLIENT))
        got = await alice.wait_for(lambda el: el.name == "message", what="offline message")
        assert got.find("body", ns.CLIENT).text == "while you were out"  # type: ignore[union-attr]
        assert got.find("delay", ns.DELAY) is not None
        await alice.ping()
        assert await n2.ctx.storage.offline.count(ALICE) == 0
        await alice.aclose()
