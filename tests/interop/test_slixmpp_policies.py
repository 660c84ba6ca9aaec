"""The four routing policies through slixmpp, an independent client, over real sockets (issue 4).

bob is logged in three times (phone, tablet, laptop) and goes through four configurations of
priorities; in each, alice sends a chat and a headline to bob's bare JID. Who gets what is written
out by hand below from docs/routing.md ("Choosing a policy" and the bare-JID rows of the decision
table), not computed by ``policy.decide``. Every connection negotiates STARTTLS and SCRAM-SHA-256,
as in test_slixmpp_im.py.

One node and one set of connections per policy, with the configurations in sequence (the first is
the one with a session that never sent presence; the others change priorities with new presence,
which the node treats exactly like a fresh login's): a slixmpp connection costs about half a
second, nearly all of it loading the system CA bundle, so a fresh set per (policy, configuration)
would take a minute.

most-available breaks a tie of priority and show by the most recent activity: after the presences
the test pings from phone, then tablet, then laptop, so the last of the tied sessions in that order
was active last (the node stamps activity when it reads from a connection).

"Service X" is a second account, servicex@example.org, under a per-sender override
(``[[routing.sender]] match = "servicex@example.org"``, policy all-connected) on a domain whose
policy is most-available: its messages reach every device, alice's reach one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshxmpp.testing import run_in_thread
from tests.interop.slix import Slix

pytestmark = pytest.mark.timeout(90)

DOMAIN = "example.org"
TLS: dict[str, Any] = {"c2s": {"require_encryption": True}}
DEVICES = ("phone", "tablet", "laptop")  # connected, given presence and pinged in this order

#: Priorities of phone, tablet, laptop; None: bound, never sent presence.
#: In this order: laptop is bound without presence only until the second configuration.
CONFIGS: dict[str, tuple[int | None, int | None, int | None]] = {
    "one-without-presence": (5, 5, None),
    "different-priorities": (5, 1, 0),
    "equal-priorities": (5, 5, 5),
    "one-negative": (1, 0, -1),
}

ALL = frozenset(DEVICES)

#: (configuration, policy) -> who gets a chat sent to the bare JID (docs/routing.md).
CHAT: dict[tuple[str, str], frozenset[str]] = {
    # 5, 1, 0: one at the top; 0 is not negative; all-connected takes every session anyway.
    ("different-priorities", "most-available"): frozenset({"phone"}),
    ("different-priorities", "top-priority-all"): frozenset({"phone"}),
    ("different-priorities", "all-non-negative"): ALL,
    ("different-priorities", "all-connected"): ALL,
    # 5, 5, 5: most-available's tie goes to the most recent activity (laptop pinged last).
    ("equal-priorities", "most-available"): frozenset({"laptop"}),
    ("equal-priorities", "top-priority-all"): ALL,
    ("equal-priorities", "all-non-negative"): ALL,
    ("equal-priorities", "all-connected"): ALL,
    # 1, 0, -1: a negative priority never gets it via the bare JID, except under all-connected.
    ("one-negative", "most-available"): frozenset({"phone"}),
    ("one-negative", "top-priority-all"): frozenset({"phone"}),
    ("one-negative", "all-non-negative"): frozenset({"phone", "tablet"}),
    ("one-negative", "all-connected"): ALL,
    # 5, 5, no presence: a session without presence gets nothing, except under all-connected.
    ("one-without-presence", "most-available"): frozenset({"tablet"}),
    ("one-without-presence", "top-priority-all"): frozenset({"phone", "tablet"}),
    ("one-without-presence", "all-non-negative"): frozenset({"phone", "tablet"}),
    ("one-without-presence", "all-connected"): ALL,
}

#: configuration -> who gets a headline sent to the bare JID under the first three policies
#: (every available non-negative session); under all-connected every bound session gets it.
HEADLINE: dict[str, frozenset[str]] = {
    "different-priorities": ALL,
    "equal-priorities": ALL,
    "one-negative": frozenset({"phone", "tablet"}),
    "one-without-presence": frozenset({"phone", "tablet"}),
}

POLICIES = ("most-available", "top-priority-all", "all-non-negative", "all-connected")


async def bob_devices(address: tuple[str, int]) -> dict[str, Slix]:
    devices = {name: Slix(f"bob@{DOMAIN}/{name}", "bob-pw") for name in DEVICES}
    for c in devices.values():
        await c.connect(address)
    return devices


async def set_priorities(devices: dict[str, Slix], priorities: tuple[int | None, ...]) -> None:
    for c, priority in zip(devices.values(), priorities, strict=True):
        if priority is not None:
            c.xmpp.send_presence(ppriority=priority)
    for c in devices.values():  # in DEVICES order: laptop is the last active
        await c.ping_server()  # and its presence (with its priority) has been processed
    for c in devices.values():
        assert [m["body"] for m in c.drain_messages()] == [], c.jid  # presence brings no message


async def received(devices: dict[str, Slix], sender: Slix) -> dict[str, list[str]]:
    """Bodies each device got, once everything the sender sent has been routed and delivered."""
    await sender.ping_server()  # the node handles a connection's stanzas in order
    out = {}
    for name, c in devices.items():
        await c.ping_server()  # everything queued for this device before the pong has arrived
        out[name] = sorted(m["body"] for m in c.drain_messages())
    return out


def expected(targets: dict[str, frozenset[str]]) -> dict[str, list[str]]:
    """{body: devices} -> {device: sorted bodies}."""
    return {d: sorted(body for body, who in targets.items() if d in who) for d in DEVICES}


async def disconnect(*clients: Slix) -> None:
    for c in clients:
        await c.disconnect()


@pytest.mark.parametrize("policy", POLICIES)
def test_bare_jid_delivery_per_policy(policy: str) -> None:
    with run_in_thread({**TLS, "routing": {"policy": policy}}, domain=DOMAIN) as n:
        n.add_user("alice", "alice-pw")
        n.add_user("bob", "bob-pw")

        async def scenario() -> None:
            devices = await bob_devices(n.c2s_address)
            alice = Slix(f"alice@{DOMAIN}/desk", "alice-pw")
            await alice.connect(n.c2s_address)
            for config, priorities in CONFIGS.items():
                await set_priorities(devices, priorities)
                alice.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody=f"chat {config}", mtype="chat")
                alice.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody=f"headline {config}", mtype="headline")
                got = await received(devices, alice)
                headline = ALL if policy == "all-connected" else HEADLINE[config]
                assert got == expected({f"chat {config}": CHAT[config, policy],
                                        f"headline {config}": headline}), (policy, config, priorities)
                # Nothing bounced: someone got the chat, and headlines are never bounced.
                assert [m["type"] for m in alice.drain_messages()] == [], (policy, config)
            await disconnect(alice, *devices.values())

        asyncio.run(scenario())
        assert n.call(n.running.ctx.storage.offline.count, f"bob@{DOMAIN}") == 0  # nothing stored


def test_service_x_sender_override_reaches_every_device() -> None:
    overrides = {**TLS, "routing": {"policy": "most-available",
                                    "sender": [{"match": f"servicex@{DOMAIN}", "policy": "all-connected"}]}}
    with run_in_thread(overrides, domain=DOMAIN) as n:
        for user in ("alice", "bob", "servicex"):
            n.add_user(user, f"{user}-pw")

        async def scenario() -> None:
            devices = await bob_devices(n.c2s_address)
            await set_priorities(devices, (5, 1, None))  # laptop: bound without presence
            alice = Slix(f"alice@{DOMAIN}/desk", "alice-pw")
            service = Slix(f"servicex@{DOMAIN}/notifier", "servicex-pw")
            for c in (alice, service):
                await c.connect(n.c2s_address)
            alice.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody="from a person", mtype="chat")
            service.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody="from service x", mtype="chat")
            service.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody="service x normal", mtype="normal")
            service.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody="service x headline", mtype="headline")
            await alice.ping_server()
            got = await received(devices, service)
            assert got == expected({
                "from a person": frozenset({"phone"}),  # the domain's most-available
                "from service x": ALL,  # the override: every bound session, with or without presence
                "service x normal": ALL,
                "service x headline": ALL,
            })
            for sender in (alice, service):
                assert [m["type"] for m in sender.drain_messages()] == []
            await disconnect(alice, service, *devices.values())

        asyncio.run(scenario())
