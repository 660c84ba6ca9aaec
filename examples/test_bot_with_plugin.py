"""Testing a tiny XMPP bot with the meshxmpp pytest plugin: a real server per test, no Docker.

The bot answers "ping" with "pong" and echoes anything else in upper case. The plugin (installed with
meshxmpp through its pytest11 entry point; ``-p meshxmpp.testing.pytest_plugin`` otherwise) provides the
``meshxmpp_node`` and ``meshxmpp_cluster`` fixtures; they are Trio fixtures, so this needs pytest-trio.

Run: python -m pytest examples/test_bot_with_plugin.py   (CI runs it through tests/test_examples.py)
"""

from __future__ import annotations

import pytest
import trio

from meshxmpp.testing import Cluster, RunningNode, TestClient

CLIENT_NS = "jabber:client"


async def run_bot(bot: TestClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The bot under test: reads messages forever and replies to each one."""
    task_status.started()
    while True:
        msg = await bot.wait_for(lambda el: el.name == "message" and el.findtext("body", CLIENT_NS) is not None,
                                 timeout=3600, what="a message for the bot")
        body = msg.findtext("body", CLIENT_NS) or ""
        await bot.send_message(msg.get("from") or "", "pong" if body == "ping" else body.upper())


@pytest.mark.trio
@pytest.mark.meshxmpp(domain="bots.example")
async def test_bot_answers(meshxmpp_node: RunningNode) -> None:
    await meshxmpp_node.add_user("bot")
    await meshxmpp_node.add_user("alice")
    bot = await meshxmpp_node.client("bot", resource="bot", presence=True)
    alice = await meshxmpp_node.client("alice", resource="phone")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_bot, bot)
        await alice.send_message("bot@bots.example", "ping")
        assert (await alice.wait_message("pong", from_="bot@bots.example")).get("to") == "alice@bots.example/phone"
        await alice.send_message("bot@bots.example", "hello")
        await alice.wait_message("HELLO")
        nursery.cancel_scope.cancel()
    await alice.aclose()
    await bot.aclose()


@pytest.mark.trio
@pytest.mark.meshxmpp(nodes=2)
async def test_bot_answers_across_the_mesh_and_after_a_delay(meshxmpp_cluster: Cluster) -> None:
    c = meshxmpp_cluster
    await c.add_user("bot")
    await c.add_user("alice")
    bot = await c.client(0, "bot", resource="bot", presence=True)
    alice = await c.client(1, "alice", resource="phone")
    await c.session_visible("bot@localhost/bot")
    c.delay(0.05)  # every mesh frame now takes 50 ms more
    async with trio.open_nursery() as nursery:
        await nursery.start(run_bot, bot)
        await alice.send_message("bot@localhost", "ping")
        await alice.wait_message("pong", timeout=5)
        nursery.cancel_scope.cancel()
    await alice.aclose()
    await bot.aclose()
