"""Three ``meshxmpp serve`` subprocesses started from the command line form a mesh; slixmpp clients spread
over them see one service (issue 5).

The nodes run as separate processes (tests/interop/_mesh_procs.py): same domain and SQLite file, their own
ports, ``--mesh-port``/``--node-name``/``--peers`` on the command line, the ``test`` timing profile. The
clients are slixmpp (asyncio) over real sockets. Every wait has a deadline and says what it waited for:
stanzas are awaited as events; the nodes' state (another process) is read with bounded polls of
``GET /api/cluster`` or ``meshxmpp cluster status``. Node 2 is SIGKILLed in the kill test; only the explain test, which
needs nodes 0 and 1 only, runs after it.

The routing policies share that one cluster: every node has a ``[[routing.sender]]`` rule per policy for
one sender account each (``SENDER_POLICIES`` in _mesh_procs.py), so one set of bob's devices and four
senders check every policy against the one-node recipients of test_slixmpp_policies.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.interop._mesh_procs import DOMAIN, SENDER_POLICIES, MeshProcs, started
from tests.interop.slix import Slix
from tests.interop.test_slixmpp_policies import ALL, CHAT, CONFIGS, DEVICES, HEADLINE, POLICIES, expected

pytestmark = pytest.mark.timeout(120)

D = DOMAIN
PW = "pw-secret"
#: The people of the tests below, then one sender per routing policy (its own [[routing.sender]] rule).
USERS = ["amy", "ben", "alice", "bob", "carol", "eve", "frank", "grace", *SENDER_POLICIES]
#: The test profile's bound on failure detection (issue 5): kill -> dead in every survivor's status.
DETECTION_BOUND = 5.0


@pytest.fixture(scope="module")
def mesh_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcs]:
    tmp: Path = tmp_path_factory.mktemp("mesh-procs")
    t0 = time.monotonic()
    with started(tmp, [(u, PW) for u in USERS]) as procs:
        print(f"users created and three nodes converged in {time.monotonic() - t0:.2f} s: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in procs.timings.items()))
        yield procs


@pytest.fixture
def procs(mesh_procs: MeshProcs, request: pytest.FixtureRequest) -> Iterator[MeshProcs]:
    """The running mesh; the nodes' log tails are printed when the test failed."""
    failed_before = request.session.testsfailed
    yield mesh_procs
    if request.session.testsfailed > failed_before:
        print(mesh_procs.tails(60))


# ---------------------------------------------------------------------------------------- asyncio helpers


async def poll(check: Callable[[], Any], what: Callable[[], str] | str, *, within: float = 15.0,
               interval: float = 0.02) -> Any:
    """Bounded poll of ``check`` (run in a thread: it may call a subprocess's HTTP API)."""
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(check)
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {within} s: {what() if callable(what) else what}")
        await asyncio.sleep(interval)  # bounded poll of another process's state


async def until(pred: Callable[[], bool], what: Callable[[], str] | str, within: float = 15.0) -> None:
    """Bounded poll of client-side state (slixmpp's roster has no awaitable change event)."""
    try:
        async with asyncio.timeout(within):
            while not pred():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"after {within} s: {what() if callable(what) else what}") from None


@asynccontextmanager
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """``await login(node, "user/resource", priority=0)``: connected, roster fetched, available; every
    client still connected at the end is dropped."""
    made: list[Slix] = []

    async def login(node: Any, jid: str, *, priority: int | None = 0, roster: bool = True,
                    presence: bool = True) -> Slix:
        user, resource = jid.split("/")
        c = Slix(f"{user}@{D}/{resource}", PW)
        made.append(c)
        await c.connect(node.c2s_address)
        if roster:
            await c.xmpp.get_roster()
        if presence:
            c.xmpp.send_presence(ppriority=priority)
        await c.ping_server()
        return c

    try:
        yield login
    finally:
        for c in made:
            if not c.disconnected.is_set():
                c.abort()


def bodies(c: Slix) -> list[str]:
    return [str(m["body"]) for m in c.drain_messages()]


def presences_from(c: Slix, jid: str, type_: str) -> list[Any]:
    return [p for p in c.presences if str(p["from"]) == jid and p["type"] == type_]


async def ready(sender: Slix, receiver: Slix) -> None:
    """``sender`` sends a marker to ``receiver``'s full JID and it arrives. A node pushes its session
    table changes before the stanzas forwarded after them, on the same link: once the marker is in, the
    receiver's node knows the sender's session as of the presence it sent before."""
    marker = f"ready from {sender.jid}"
    sender.xmpp.send_message(mto=receiver.jid, mbody=marker, mtype="chat")
    await receiver.next_message(lambda m: m["body"] == marker)


async def befriend(a: Slix, b: Slix) -> None:
    """``a`` subscribes to ``b``; slixmpp's default auto-authorise/auto-subscribe makes it both ways."""
    bare_a, bare_b = a.xmpp.boundjid.bare, b.xmpp.boundjid.bare
    a.xmpp.send_presence(pto=bare_b, ptype="subscribe")
    for x, other in ((a, bare_b), (b, bare_a)):
        await until(lambda x=x, other=other: x.xmpp.client_roster[other]["subscription"] == "both",  # type: ignore[misc]
                    f"{x.jid}'s roster never showed {other} with subscription both")


def run(coro: Any) -> None:
    asyncio.run(coro)


# ---------------------------------------------------------------------------------------- 1. the cluster


def test_three_cli_nodes_form_one_cluster(procs: MeshProcs) -> None:
    """Started from the CLI with one shared --peers list: each node is healthy, sees three members alive
    (itself included, once: it dropped its own address from the peers), under its --node-name."""
    views = procs.cli_status_all(range(3))
    for i in range(3):
        assert procs.http_get(i, "/healthz") == (200, b"ok")
        view = views[i]
        assert isinstance(view, dict), view
        assert view["node"] == f"node{i}"
        assert view["profile"] == "test"
        members = {m["name"]: m for m in view["members"]}
        assert sorted(members) == ["node0", "node1", "node2"]
        assert {m["state"] for m in members.values()} == {"alive"}
        for j in range(3):
            assert members[f"node{j}"]["address"] == f"127.0.0.1:{procs[j].mesh_port}"


# ---------------------------------------------------------------------------------------- 2. stanzas


def test_full_and_bare_jid_messages_and_iq_across_nodes(procs: MeshProcs) -> None:
    async def scenario() -> None:
        async with clients() as login:
            amy = await login(procs[0], "amy/desk")
            one = await login(procs[1], "ben/one", priority=5)
            two = await login(procs[2], "ben/two", priority=1)
            for b in (one, two):
                await ready(b, amy)  # node 0 knows both of ben's sessions with their priorities

            # Full JID, node 0 -> node 2: only that resource.
            amy.xmpp.send_message(mto=f"ben@{D}/two", mbody="to two", mtype="chat")
            assert (await two.next_message())["body"] == "to two"
            # Bare JID, node 0 -> top priority (ben/one on node 1), not the lower one on node 2.
            amy.xmpp.send_message(mto=f"ben@{D}", mbody="to the bare jid", mtype="chat")
            assert (await one.next_message())["body"] == "to the bare jid"
            # Answers the other way round, node 1 and node 2 -> node 0.
            one.xmpp.send_message(mto=amy.jid, mbody="from one", mtype="chat")
            two.xmpp.send_message(mto=amy.jid, mbody="from two", mtype="chat")
            got = {str((await amy.next_message())["body"]) for _ in range(2)}
            assert got == {"from one", "from two"}

            # An iq to a full JID on another node is answered by that client (both ways).
            rtt = await amy.xmpp.plugin["xep_0199"].ping(jid=f"ben@{D}/two", timeout=10)
            assert rtt is not None
            await two.xmpp.plugin["xep_0199"].ping(jid=amy.jid, timeout=10)

            # Nothing else went anywhere.
            for c in (amy, one, two):
                await c.ping_server()
            assert bodies(one) == [] and bodies(two) == [] and bodies(amy) == []
            for c in (amy, one, two):
                await c.disconnect()

    run(scenario())


def test_roster_subscription_and_presence_across_nodes(procs: MeshProcs) -> None:
    async def scenario() -> None:
        async with clients() as login:
            alice = await login(procs[0], "alice/laptop")
            bob = await login(procs[1], "bob/desk")
            carol = await login(procs[2], "carol/phone")
            bob.xmpp.auto_authorize = None  # bob answers himself
            bob.xmpp.auto_subscribe = False

            # alice (node 0) asks bob (node 1); bob approves and asks back; alice's client approves.
            alice.xmpp.send_presence(pto=f"bob@{D}", ptype="subscribe")
            await bob.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == f"alice@{D}",
                                    "subscribe from alice")
            bob.xmpp.send_presence(pto=f"alice@{D}", ptype="subscribed")
            bob.xmpp.send_presence(pto=f"alice@{D}", ptype="subscribe")
            for c, other in ((alice, f"bob@{D}"), (bob, f"alice@{D}")):
                await until(lambda c=c, other=other: c.xmpp.client_roster[other]["subscription"] == "both",  # type: ignore[misc]
                            f"{c.jid} never saw {other} as both in its roster")
            # Presence flows both ways across the nodes once subscribed.
            await alice.wait_presence(lambda p: str(p["from"]) == f"bob@{D}/desk" and p["type"] == "available",
                                      "bob available")
            await bob.wait_presence(lambda p: str(p["from"]) == f"alice@{D}/laptop" and p["type"] == "available",
                                    "alice available")
            # The stored rosters (a fresh roster get, answered from the shared SQLite file) agree.
            for c, other in ((alice, f"bob@{D}"), (bob, f"alice@{D}")):
                result = await c.xmpp.get_roster()
                items = {str(k): v for k, v in result["roster"]["items"].items()}
                assert items[other]["subscription"] == "both", items

            # A contact on node 2: alice subscribes to carol (her client approves and asks back).
            await befriend(alice, carol)
            await alice.wait_presence(lambda p: str(p["from"]) == f"carol@{D}/phone" and p["type"] == "available",
                                      "carol available (after the subscription)")
            carol.xmpp.send_presence(pshow="away", pstatus="in a meeting")
            away = await alice.wait_presence(lambda p: str(p["from"]) == f"carol@{D}/phone" and p["show"] == "away",
                                             "carol's away presence from node 2")
            assert away["status"] == "in a meeting"

            # A clean logout on node 1 reaches node 0 as unavailable.
            await bob.disconnect()
            await alice.wait_presence(lambda p: str(p["from"]) == f"bob@{D}/desk" and p["type"] == "unavailable",
                                      "bob unavailable after logout")
            for c in (alice, carol):
                await c.disconnect()

    run(scenario())


# ---------------------------------------------------------------------------------------- 2b. routing policies

#: bob's devices are spread over nodes 1 and 2; the four senders (one per policy) are on node 0.
BOB_NODE = {"phone": 1, "tablet": 2, "laptop": 1}
SENDER_NODE = 0
SENDER_OF = {policy: local for local, policy in SENDER_POLICIES.items()}


def bob_sessions(report: dict[str, Any]) -> dict[str, tuple[bool, int]]:
    """device -> (available, priority) of bob's sessions in an explain report."""
    prefix = f"bob@{D}/"
    return {s["jid"].removeprefix(prefix): (s["available"], s["priority"]) for s in report["sessions"]}


def explained(report: dict[str, Any]) -> frozenset[str]:
    """The devices an explain report delivers to."""
    return frozenset(a["jid"].split("/", 1)[1] for a in report["actions"] if a["action"] == "deliver")


def test_each_policy_gives_the_one_node_recipients_across_cli_nodes(procs: MeshProcs) -> None:
    """bob's phone and laptop on node 1, his tablet on node 2; four senders on node 0, each under a
    per-sender policy. For each configuration of priorities of test_slixmpp_policies.py, each sender
    sends a chat and a headline to bob's bare JID, and every device gets exactly what one node gives
    (CHAT and HEADLINE there, written from docs/routing.md). What ``GET /api/explain`` on node 0
    predicts for each sender is checked against the same tables.

    Waits: after each device's presence, until node 0's explain shows it with that priority (presences
    are sent one after another in DEVICES order, so the most-available tie-break, by the replicated
    last activity, sees the same order as on one node); after the senders' messages, until node 0 has
    no forwarded stanza unacked (acked: in the device's outbox), then a ping of each device's server."""
    bare = f"bob@{D}"
    problems: list[str] = []

    def explain(policy: str, type_: str) -> dict[str, Any]:
        return procs.explain(SENDER_NODE, bare, type_, f"{SENDER_OF[policy]}@{D}")

    async def shown(want: dict[str, tuple[bool, int] | bool]) -> None:
        """Until node 0 shows bob's sessions as ``want`` (device -> (available, priority); False: bound
        without presence; devices not named: anything)."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen.update(bob_sessions(explain(POLICIES[0], "chat")))
            return all(d in seen and (seen[d] == w if w is not False else seen[d][0] is False)
                       for d, w in want.items())

        await poll(check, lambda: f"node{SENDER_NODE} never showed bob's sessions as {want}: {seen}", within=10)

    def forwards_done() -> bool:
        forward = procs.status(SENDER_NODE)["forward"]
        return bool(forward["in_flight"] == 0 and forward["backlog"] == 0)

    async def scenario() -> None:
        async with clients() as login:
            devices = {d: await login(procs[BOB_NODE[d]], f"bob/{d}", roster=False, presence=False)
                       for d in DEVICES}
            senders = {p: await login(procs[SENDER_NODE], f"{SENDER_OF[p]}/desk", roster=False,
                                      presence=False) for p in POLICIES}
            await shown({d: False for d in DEVICES})  # node 0 knows the three bound sessions
            for config, priorities in CONFIGS.items():
                for d, priority in zip(DEVICES, priorities, strict=True):
                    if priority is None:
                        continue
                    devices[d].xmpp.send_presence(ppriority=priority)
                    await devices[d].ping_server()
                    await shown({d: (True, priority)})
                await shown({d: False if p is None else (True, p) for d, p in zip(DEVICES, priorities, strict=True)})
                for c in devices.values():
                    assert bodies(c) == [], (config, c.jid)  # presence brings no message

                want_heads = {p: ALL if p == "all-connected" else HEADLINE[config] for p in POLICIES}
                for p in POLICIES:  # what node 0 says it will do, for each sender
                    chat = await asyncio.to_thread(explain, p, "chat")
                    head = await asyncio.to_thread(explain, p, "headline")
                    if chat["policy"] != p:
                        problems.append(f"{config}: explain from {SENDER_OF[p]} names policy {chat['policy']}")
                    for t, report, one_node in (("chat", chat, CHAT[config, p]), ("headline", head, want_heads[p])):
                        if explained(report) != one_node:
                            problems.append(f"{config}, {p}: explain {t} delivers to {sorted(explained(report))}, "
                                            f"one node gives {sorted(one_node)}: {report['explain']}")

                for p, sender in senders.items():
                    sender.xmpp.send_message(mto=bare, mbody=f"chat {config} {p}", mtype="chat")
                    sender.xmpp.send_message(mto=bare, mbody=f"headline {config} {p}", mtype="headline")
                for sender in senders.values():
                    await sender.ping_server()  # node 0 has routed (and forwarded) what it sent
                await poll(forwards_done, lambda: f"node{SENDER_NODE} still forwarding: "
                           f"{procs.status(SENDER_NODE)['forward']}", within=10)
                got = {}
                for d, c in devices.items():
                    await c.ping_server()  # what was acked into its outbox came before the pong
                    got[d] = sorted(bodies(c))
                want = expected({**{f"chat {config} {p}": CHAT[config, p] for p in POLICIES},
                                 **{f"headline {config} {p}": want_heads[p] for p in POLICIES}})
                if got != want:
                    problems.append(f"{config} {dict(zip(DEVICES, priorities, strict=True))}: " + "; ".join(
                        f"{d} got {got[d]}, one node gives {want[d]} (extra {sorted(set(got[d]) - set(want[d]))}, "
                        f"missing {sorted(set(want[d]) - set(got[d]))})" for d in DEVICES if got[d] != want[d]))
                for p, sender in senders.items():
                    bounced = [(m["type"], str(m["body"])) for m in sender.drain_messages()]
                    if bounced:
                        problems.append(f"{config}: {SENDER_OF[p]} got back {bounced}")
            for c in (*devices.values(), *senders.values()):
                await c.disconnect()
        # The next tests count sessions: wait until bob's and the senders' are gone from every node.
        left: dict[str, list[str]] = {}

        def gone() -> bool:
            left.clear()
            for i in range(3):
                for user in ("bob", *SENDER_POLICIES):
                    jids = [s["jid"] for s in procs.explain(i, f"{user}@{D}")["sessions"]]
                    if jids:
                        left[f"node{i}"] = left.get(f"node{i}", []) + jids
            return not left

        await poll(gone, lambda: f"sessions still listed after logout: {left}")

    run(scenario())
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- 4. status table


def member_sessions(status: dict[str, Any]) -> dict[str, int]:
    return {m["name"]: m["sessions"] for m in status["members"]}


def test_cluster_status_table(procs: MeshProcs, capsys: pytest.CaptureFixture[str]) -> None:
    want = {"node0": 1, "node1": 2, "node2": 0}

    async def scenario() -> str:
        async with clients() as login:
            amy = await login(procs[0], "amy/desk")
            ben1 = await login(procs[1], "ben/one")
            ben2 = await login(procs[1], "ben/two")
            views: dict[int, Any] = {}

            def counts_everywhere() -> bool:
                for i in range(3):
                    views[i] = procs.status(i)
                return all(member_sessions(v) == want and v["sessions"]["total"] == 3 for v in views.values())

            await poll(counts_everywhere, lambda: f"session counts {want} not seen everywhere: {views}")
            table = await asyncio.to_thread(procs.cli_status, 2, as_json=False)
            for c in (amy, ben1, ben2):
                await c.disconnect()
            assert table.returncode == 0, table.stderr
            return table.stdout

    out = asyncio.run(scenario())
    with capsys.disabled():
        print("\n$ meshxmpp cluster status --config node2.toml\n" + out)
    lines = out.splitlines()
    assert lines[0].startswith("node node2  epoch ")
    assert "profile test" in lines[0]
    assert lines[1].startswith("sessions: 0 local, 3 in the cluster")
    header = lines[3].split()
    assert header == ["NAME", "ADDRESS", "STATE", "INCARNATION", "SESSIONS"]
    rows = {r.split()[0]: r.split() for r in lines[4:]}
    assert sorted(rows) == ["node0", "node1", "node2"]
    for name, row in rows.items():
        i = int(name[-1])
        assert row[1] == f"127.0.0.1:{procs[i].mesh_port}"
        assert row[2] == "alive"
        assert int(row[4]) == want[name]


# ---------------------------------------------------------------------------------------- 3. SIGKILL


def test_sigkill_a_node_detection_unavailable_once_and_no_lost_messages(
        procs: MeshProcs, capsys: pytest.CaptureFixture[str]) -> None:
    """eve has two resources on node 2, which is SIGKILLed while frank (node 0) and grace (node 1), her
    contacts, keep sending to her bare JID. Every survivor reports node 2 dead within the bound, its
    sessions leave the tables, each contact gets one unavailable per lost resource, and every accepted
    message reaches eve when she logs in again on a survivor."""
    victim, survivors = 2, (0, 1)
    lost = [f"eve@{D}/a", f"eve@{D}/b"]
    report: list[str] = []

    #: body -> what the sender's node thought of node 2 when it accepted the message
    phase: dict[str, str] = {}

    async def scenario() -> None:
        async with clients() as login:
            frank = await login(procs[0], "frank/desk")
            grace = await login(procs[1], "grace/desk")
            eve_a = await login(procs[victim], "eve/a")
            eve_b = await login(procs[victim], "eve/b")
            await befriend(frank, eve_a)
            await befriend(grace, eve_a)
            for contact in (frank, grace):
                for jid in lost:
                    await contact.wait_presence(lambda p, jid=jid: str(p["from"]) == jid and p["type"] == "available",
                                                f"{jid} available")
                for eve in (eve_a, eve_b):
                    await ready(eve, contact)  # the contact's node knows both of eve's sessions, available
            views: dict[int, Any] = {}

            def four_sessions() -> bool:
                for i in range(3):
                    views[i] = procs.status(i)
                return all(v["sessions"]["total"] == 4 and member_sessions(v)["node2"] == 2
                           for v in views.values())

            await poll(four_sessions, lambda: f"4 sessions (2 on node2) not seen everywhere: {views}")

            # ---- the kill
            t_kill = procs.kill(victim)
            eve_a.abort()
            eve_b.abort()
            suspect_at: dict[int, float] = {}
            dead_at: dict[int, float] = {}
            purged_at: dict[int, float] = {}
            last: dict[int, Any] = {}

            async def watch(i: int) -> None:
                deadline = t_kill + 15.0
                while i not in dead_at or i not in purged_at:
                    status = await asyncio.to_thread(procs.status, i)
                    now = time.monotonic()
                    last[i] = status
                    state = {m["name"]: m for m in status["members"]}[f"node{victim}"]
                    if i not in suspect_at and state["state"] != "alive":
                        suspect_at[i] = now - t_kill
                    if i not in dead_at and state["state"] in ("dead", "left"):
                        dead_at[i] = now - t_kill
                        assert state["state"] == "dead", f"node{i} says node{victim} is {state['state']}"
                    if i not in purged_at and status["sessions"]["total"] == 2 and state["sessions"] == 0:
                        purged_at[i] = now - t_kill
                    assert now < deadline, f"node{i} after 15 s: {status}"
                    await asyncio.sleep(0.01)  # bounded poll of another process's status

            accepted: list[str] = []

            async def send(c: Slix, who: str, node: int) -> None:
                k = 0
                extra = 0
                while extra < 3:  # keep sending until both survivors noticed, then 3 more
                    body = f"after the kill: {who} #{k}"
                    c.xmpp.send_message(mto=f"eve@{D}", mbody=body, mtype="chat")
                    await c.ping_server()  # the round trip orders it after the message: accepted
                    accepted.append(body)
                    phase[body] = ("dead" if node in dead_at else "suspect" if node in suspect_at
                                   else "alive")
                    k += 1
                    if len(dead_at) == len(survivors) and len(purged_at) == len(survivors):
                        extra += 1
                    await asyncio.sleep(0.05)  # pacing (about 20 messages a second), not a wait

            await asyncio.gather(watch(0), watch(1), send(frank, "frank", 0), send(grace, "grace", 1))
            report.append("detection (kill -> dead in cluster status): "
                          + ", ".join(f"node{i} {dead_at[i]:.3f} s" for i in survivors))
            report.append("sessions purged (sessions.total 4 -> 2): "
                          + ", ".join(f"node{i} {purged_at[i]:.3f} s" for i in survivors))
            report.append("first seen not alive (suspect): "
                          + ", ".join(f"node{i} {suspect_at[i]:.3f} s" for i in survivors))
            report.append(f"messages accepted after the kill: {len(accepted)}; by what the sender's node "
                          f"thought of node{victim} then: "
                          + str({p: list(phase.values()).count(p) for p in ("alive", "suspect", "dead")}))
            for i in survivors:
                assert dead_at[i] < DETECTION_BOUND, f"node{i} took {dead_at[i]:.3f} s to see node{victim} dead"
                assert last[i]["sessions"]["total"] == 2

            # ---- exactly one unavailable per lost resource at each contact
            for contact in (frank, grace):
                for jid in lost:
                    await contact.wait_presence(lambda p, jid=jid: str(p["from"]) == jid and p["type"] == "unavailable",
                                                f"{jid} unavailable after the kill")
            # Both survivors detected the death already (the event another announcement would follow);
            # give a duplicate a bounded moment to show up, and make a round trip across the mesh.
            await grace.xmpp.plugin["xep_0199"].ping(jid=frank.jid, timeout=10)
            await frank.xmpp.plugin["xep_0199"].ping(jid=grace.jid, timeout=10)
            for contact in (frank, grace):
                for jid in lost:
                    try:
                        await asyncio.wait_for(contact.wait_presence(
                            lambda p, c=contact, jid=jid: len(presences_from(c, jid, "unavailable")) > 1, "dup"), 0.5)
                    except (TimeoutError, AssertionError):
                        pass
                    n = len(presences_from(contact, jid, "unavailable"))
                    assert n == 1, f"{contact.jid} got {n} unavailable presences from {jid}"
            report.append("unavailable presences per lost resource: "
                          + ", ".join(f"{c.xmpp.boundjid.user}: " + "/".join(
                              str(len(presences_from(c, j, "unavailable"))) for j in lost) for c in (frank, grace)))

            # ---- what `meshxmpp cluster status` shows on a survivor now
            table = await asyncio.to_thread(procs.cli_status, 0, as_json=False)
            assert table.returncode == 0, table.stderr
            report.append("$ meshxmpp cluster status --config node0.toml  (after the kill)\n" + table.stdout)
            rows = {r.split()[0]: r.split() for r in table.stdout.splitlines()[4:]}
            assert rows[f"node{victim}"][2] == "dead" and rows[f"node{victim}"][4] == "0", table.stdout
            assert table.stdout.splitlines()[1].startswith("sessions: 1 local, 2 in the cluster"), table.stdout

            # ---- every accepted message reaches eve, once and in order, when she comes back on a survivor
            back = await login(procs[1], "eve/back")
            got: list[str] = []
            want = set(accepted)
            try:
                async with asyncio.timeout(15):
                    while not want <= set(got):
                        got.append(str((await back.messages.get())["body"]))
            except TimeoutError:
                raise AssertionError(f"missing after the kill: {sorted(want - set(got))}; got {got}") from None
            await back.ping_server()
            got += bodies(back)
            for c in (frank, grace, back):
                await c.disconnect()

        problems = []
        dupes = sorted({b for b in got if got.count(b) > 1}, key=lambda b: (b.split()[3], int(b.rsplit("#")[1])))
        by_phase = {p: sum(1 for b in dupes if phase.get(b) == p) for p in ("alive", "suspect", "dead")}
        report.append(f"messages delivered to eve/back: {len(got)}, {len(set(got))} distinct, duplicated: "
                      f"{len(dupes)}; duplicated by what the sender's node thought of node{victim} when it "
                      f"accepted them (alive = in flight when it died): {by_phase}")
        if dupes:
            problems.append(f"{len(dupes)} of {len(set(got))} messages delivered more than once "
                            f"(by phase {by_phase}): {dupes}")
        for who in ("frank", "grace"):
            seq = [int(b.rsplit("#", 1)[1]) for b in dict.fromkeys(got) if f" {who} #" in b]
            # Order is not promised across a node's death (docs/mesh.md): what was in flight to the
            # dead node is stored when it is declared dead, after messages accepted in between may
            # have been stored already. Recorded, not asserted.
            report.append(f"{who}'s messages in the order eve/back got them (first copies): {seq}")
        assert not problems, "\n".join(problems)

    try:
        run(scenario())
    finally:
        with capsys.disabled():
            print("\n" + "\n".join(report))


# ---------------------------------------------------------------------------------------- explain


def test_explain_on_one_node_sees_the_sessions_on_the_others(procs: MeshProcs) -> None:
    """``meshxmpp explain`` asks node 0 what it would do with a message to ben, whose sessions are on
    node 1: the router forwards it to ben/one (priority 5), so explain should say so. (Runs after the
    kill test: it uses the surviving nodes 0 and 1 only.)"""
    async def scenario() -> tuple[dict[str, Any], str]:
        async with clients() as login:
            amy = await login(procs[0], "amy/desk")
            one = await login(procs[1], "ben/one", priority=5)
            two = await login(procs[1], "ben/two", priority=1)
            for b in (one, two):
                await ready(b, amy)
            amy.xmpp.send_message(mto=f"ben@{D}", mbody="routed by node 0", mtype="chat")
            assert (await one.next_message())["body"] == "routed by node 0"  # what the router does
            code, body = await asyncio.to_thread(procs.http_get, 0, f"/api/explain?to=ben@{D}")
            assert code == 200, body
            text = await asyncio.to_thread(procs.cli, "explain", "--config", str(procs[0].config),
                                           "--to", f"ben@{D}")
            for c in (amy, one, two):
                await c.disconnect()
            return json.loads(body), text.stdout + text.stderr

    report, text = asyncio.run(scenario())
    print(text)
    assert sorted(s["jid"] for s in report["sessions"]) == [f"ben@{D}/one", f"ben@{D}/two"], (report, text)
    assert report["actions"] == [{"action": "deliver", "jid": f"ben@{D}/one"}], (report, text)
