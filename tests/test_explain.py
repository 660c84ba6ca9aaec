"""`meshxmpp explain` and GET /api/explain against a real node with real sessions.

Bob is logged in five times (TestClient over loopback): desk and laptop at priority 5 (laptop
away), phone at 1, tablet at -1 with carbons on, and watch bound without presence. For each policy
the explanation must name the sessions that really receive alice's message, and its text must be
the line the router logs at debug level when it routes that message.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from meshxmpp import cli, testing
from meshxmpp.http import api
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "explain-token-0123456789"

#: (resource, priority or None for no presence, show, carbons)
DEVICES = [
    ("desk", 5, None, False),
    ("laptop", 5, "away", False),
    ("phone", 1, None, False),
    ("tablet", -1, None, True),
    ("watch", None, None, False),
]

#: policy -> (who gets the message, who gets a <received/> carbon copy)
EXPECTED = {
    "most-available": (["desk"], ["tablet"]),
    "top-priority-all": (["desk", "laptop"], ["tablet"]),
    "all-non-negative": (["desk", "laptop", "phone"], ["tablet"]),
    "all-connected": (["desk", "laptop", "phone", "tablet", "watch"], []),
}


async def login_devices(n: testing.RunningNode) -> tuple[TestClient, dict[str, TestClient]]:
    await n.add_user("alice")
    await n.add_user("bob")
    alice = await n.client("alice", resource="laptop", presence=True)
    devices: dict[str, TestClient] = {}
    for resource, priority, show, carbons in DEVICES:
        c = await n.client("bob", resource=resource)
        devices[resource] = c
        if carbons:
            reply = await c.iq(Element("iq", ns.CLIENT, {"type": "set"}, children=[Element("enable", ns.CARBONS)]))
            assert reply.get("type") == "result", reply
        if priority is not None:
            presence = Element("presence", ns.CLIENT)
            if show is not None:
                presence.add("show", ns.CLIENT, text=show)
            presence.add("priority", ns.CLIENT, text=str(priority))
            await c.send(presence)
        await c.ping()  # the presence has been handled
    return alice, devices


@asynccontextmanager
async def bob_online(policy: str, **overrides: Any) -> AsyncIterator[tuple[testing.RunningNode, TestClient,
                                                                           dict[str, TestClient]]]:
    async with testing.node({"routing": {"policy": policy}, **overrides}) as n:
        alice, devices = await login_devices(n)
        try:
            yield n, alice, devices
        finally:
            for c in [alice, *devices.values()]:
                await c.aclose()


def resource_of(jid: str) -> str:
    return jid.rsplit("/", 1)[1]


async def received(devices: dict[str, TestClient]) -> tuple[list[str], list[str]]:
    """Who got the message itself and who a carbon copy (after a round trip each)."""
    originals, carbons = [], []
    for resource, c in devices.items():
        await c.ping()
        for el in c.pending():
            if el.name != "message":
                continue
            if el.find("received", ns.CARBONS) is not None:
                carbons.append(resource)
            elif el.find("body", ns.CLIENT) is not None:
                originals.append(resource)
    return originals, carbons


@pytest.mark.parametrize("policy", list(EXPECTED))
async def test_explain_matches_the_delivery_and_the_log(policy: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.router")
    async with bob_online(policy) as (n, alice, devices):
        request = api.Request("GET", "/api/explain", {"to": ["bob@localhost"], "type": ["chat"],
                                                      "from": ["alice@localhost"]}, {}, b"", "127.0.0.1")
        response = await api.handle(n.ctx, request)
        assert response.status == 200, response.body
        report = json.loads(response.body)

        message = Element("message", ns.CLIENT, {"to": "bob@localhost", "type": "chat"})
        message.add("body", ns.CLIENT, text="hello")
        await alice.send(message)
        originals, carbons = await received(devices)

    want_originals, want_carbons = EXPECTED[policy]
    assert report["policy"] == policy
    assert report["rule"] == f"message/bare/{policy}"
    delivered = [resource_of(a["jid"]) for a in report["actions"] if a["action"] == "deliver"]
    copied = [resource_of(a["jid"]) for a in report["actions"] if a["action"] == "carbon"]
    assert (delivered, copied) == (want_originals, want_carbons)
    assert (sorted(originals), sorted(carbons)) == (want_originals, want_carbons)  # what really happened
    assert [(resource_of(s["jid"]), s["available"], s["priority"], s["show"], s["carbons"])
            for s in report["sessions"]] == [
        ("desk", True, 5, None, False), ("laptop", True, 5, "away", False), ("phone", True, 1, None, False),
        ("tablet", True, -1, None, True), ("watch", False, 0, None, False)]
    logged = [r.getMessage() for r in caplog.records if r.name == "meshxmpp.router"]
    assert f"bob@localhost -> {report['explain']}" in logged


async def test_explain_to_a_full_jid_and_a_headline() -> None:
    async with bob_online("most-available") as (n, _alice, _devices):
        full = json.loads((await api.handle(n.ctx, api.Request(
            "GET", "/api/explain", {"to": ["bob@localhost/phone"]}, {}, b"", "127.0.0.1"))).body)
        gone = json.loads((await api.handle(n.ctx, api.Request(
            "GET", "/api/explain", {"to": ["bob@localhost/car"], "type": ["normal"]}, {}, b"", "::1"))).body)
        headline = json.loads((await api.handle(n.ctx, api.Request(
            "GET", "/api/explain", {"to": ["bob@localhost"], "type": ["headline"]}, {}, b"", "::1"))).body)
    assert full["rule"] == "message/full/deliver"
    assert full["actions"] == [{"action": "deliver", "jid": "bob@localhost/phone"},
                               {"action": "carbon", "jid": "bob@localhost/tablet", "direction": "received"}]
    assert (gone["rule"], gone["actions"]) == ("message/full-absent/bounce", [
        {"action": "bounce", "condition": "service-unavailable", "error_type": "cancel"}])
    assert headline["rule"] == "message/bare/headline"
    assert [resource_of(a["jid"]) for a in headline["actions"]] == ["desk", "laptop", "phone"]


def test_explain_text_renders_every_part() -> None:
    report = {
        "to": "bob@localhost", "type": "chat", "from": "alice@localhost", "policy": "most-available",
        "account_exists": True, "rule": "message/bare/most-available", "rule_ref": "REF",
        "rule_summary": "SUMMARY", "via": "message/full-absent/as-bare",
        "actions": [{"action": "deliver", "jid": "bob@localhost/a"},
                    {"action": "carbon", "jid": "bob@localhost/bb", "direction": "received"}],
        "sessions": [{"jid": "bob@localhost/a", "available": True, "priority": 3, "show": "dnd", "carbons": False},
                     {"jid": "bob@localhost/bb", "available": True, "priority": -1, "show": None, "carbons": True},
                     {"jid": "bob@localhost/c", "available": False, "priority": 0, "show": None, "carbons": False}],
        "explain": "LINE",
    }
    assert api.explain_text(report).splitlines() == [
        "chat message to bob@localhost from alice@localhost",
        "policy: most-available",
        "sessions of bob@localhost:",
        "  bob@localhost/a   available, priority 3, show dnd, carbons off  -> deliver",
        "  bob@localhost/bb  available, priority -1, show -, carbons on    -> carbon (received)",
        "  bob@localhost/c   no presence, priority 0, show -, carbons off  -> nothing",
        "outcome:",
        "  deliver to bob@localhost/a",
        "  carbon copy (received) to bob@localhost/bb",
        "rule: message/full-absent/as-bare, then message/bare/most-available (REF)",
        "      SUMMARY",
        "debug log line: LINE",
    ]
    stored = dict(report, actions=[{"action": "store-offline"}], sessions=[], via=None)
    assert "sessions of bob@localhost: none bound" in api.explain_text(stored)
    assert "  store offline (delivered when the user comes back)" in api.explain_text(stored)


# -- the command, against a node in a thread --------------------------------------------------------


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    return e


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshxmpp", *args], cwd=tmp_path, env=env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def write_config(tmp_path: Path, port: int, token: str | None = None, *, enabled: bool = True) -> str:
    text = f'domain = "localhost"\n[http]\nbind = "127.0.0.1"\nport = {port}\nenabled = {str(enabled).lower()}\n'
    if token is not None:
        text += f'admin_token = "{token}"\n'
    path = tmp_path / "node.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def node_in_thread() -> Iterator[testing.ThreadNode]:
    with testing.run_in_thread({"routing": {"policy": "all-non-negative"}, "http": {"admin_token": TOKEN}}) as tn:
        alice, devices = tn.call(login_devices, tn.running)
        try:
            yield tn
        finally:
            for c in [alice, *devices.values()]:
                tn.call(c.aclose)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # cli.main() installs a handler on the root logger.
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


def test_cli_explain_against_a_running_node(node_in_thread: testing.ThreadNode, tmp_path: Path) -> None:
    config = write_config(tmp_path, node_in_thread.running.http_address[1], TOKEN)
    r = run_cli(tmp_path, "--config", config, "explain", "--to", "bob@localhost", "--type", "chat",
                "--from", "alice@localhost")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["chat message to bob@localhost from alice@localhost", "policy: all-non-negative",
                         "sessions of bob@localhost:"]
    rows = {line.split()[0]: line for line in lines[3:8]}
    assert rows["bob@localhost/desk"].endswith("-> deliver")
    assert "available, priority 5, show away" in rows["bob@localhost/laptop"]
    assert rows["bob@localhost/phone"].endswith("-> deliver")
    assert "priority -1" in rows["bob@localhost/tablet"] and rows["bob@localhost/tablet"].endswith(
        "-> carbon (received)")
    assert "no presence" in rows["bob@localhost/watch"] and rows["bob@localhost/watch"].endswith("-> nothing")
    assert lines[8:12] == ["outcome:", "  deliver to bob@localhost/desk", "  deliver to bob@localhost/laptop",
                           "  deliver to bob@localhost/phone"]
    assert "rule: message/bare/all-non-negative (RFC 6121 8.5.2.1.1 (b)" in r.stdout
    assert ("debug log line: message/bare/all-non-negative: deliver to bob@localhost/desk, bob@localhost/laptop, "
            "bob@localhost/phone; carbon (received) to bob@localhost/tablet") in r.stdout
    assert r.stderr == ""


def test_cli_explain_wrong_token_and_bad_input(node_in_thread: testing.ThreadNode, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    port = node_in_thread.running.http_address[1]
    code = cli.main(["--config", write_config(tmp_path, port, "another-token-0123456789"), "explain",
                     "--to", "bob@localhost"])
    err = capsys.readouterr().err
    assert code == 1
    assert "answered 401: a valid bearer token is required" in err
    code = cli.main(["--config", write_config(tmp_path, port, TOKEN), "explain", "--to", "bob@elsewhere.org"])
    err = capsys.readouterr().err
    assert code == 2
    assert "answered 400: parameter 'to' must be an account of this node's domain (localhost)" in err


def test_cli_explain_without_a_node_is_one_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    r = run_cli(tmp_path, "--config", write_config(tmp_path, port), "explain", "--to", "bob@localhost")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"meshxmpp: no node answers at http://127.0.0.1:{port} (")
    assert len(r.stderr.splitlines()) == 1


def test_cli_explain_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "--to", "bob@@localhost"]) == 2
    assert "--to: invalid address" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["explain", "--to", "bob@localhost", "--type", "sms"])
    assert info.value.code == 2
    capsys.readouterr()
    config = write_config(tmp_path, 5280, enabled=False)
    assert cli.main(["--config", config, "explain", "--to", "bob@localhost"]) == 1
    assert "[http] enabled = false" in capsys.readouterr().err


async def test_routing_log_uses_explain_text_for_absent_users(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.router")
    async with testing.node() as n:
        await n.add_user("alice")
        await n.add_user("bob")
        report = json.loads((await api.handle(n.ctx, api.Request(
            "GET", "/api/explain", {"to": ["bob@localhost"]}, {}, b"", "127.0.0.1"))).body)
        async with await n.client("alice", resource="x") as alice:
            message = Element("message", ns.CLIENT, {"to": "bob@localhost", "type": "chat"})
            message.add("body", ns.CLIENT, text="later")
            await alice.send(message)
            await alice.ping()  # alice's stanzas are routed in order: the message is decided
    assert report["explain"] == "message/offline/store: store offline"
    assert "bob@localhost -> message/offline/store: store offline" in [
        r.getMessage() for r in caplog.records if r.name == "meshxmpp.router"]


def test_cli_explain_gives_up_on_a_node_that_never_answers(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as mute:  # accepts connections (the kernel does), never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        port = mute.getsockname()[1]
        code = cli.main(["--config", write_config(tmp_path, port), "explain", "--to", "bob@localhost",
                         "--timeout", "0.2"])
    assert code == 1
    assert f"no node answers at http://127.0.0.1:{port} (no answer within 0.2 s)" in capsys.readouterr().err
