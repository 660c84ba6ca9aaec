"""``meshxmpp import prosody`` end to end: Prosody's files -> the CLI -> SQLite -> a real node -> a client
that logs in with its Prosody password and finds its roster.

Runs on the committed fixtures (real Prosody 0.12.3 output, ``data/README.md``) always, and on a data
directory made right now by Debian's ``prosodyctl register`` when Prosody is installed
(``apt-get install -y prosody``).
"""

from __future__ import annotations

import io
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshxmpp import cli, testing
from meshxmpp.testing import ClientError, TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

DATA = Path(__file__).parent / "data" / "prosody"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


async def meshxmpp(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``meshxmpp ARGS`` through ``cli.main`` (which calls trio.run, hence the thread)."""
    capsys.readouterr()
    old_stdin, sys.stdin = sys.stdin, io.StringIO("")
    try:
        code = await trio.to_thread.run_sync(cli.main, list(args))
    finally:
        sys.stdin = old_stdin
    out, err = capsys.readouterr()
    return code, out, err


def roster_get() -> Element:
    iq = Element("iq", ns.CLIENT, {"type": "get"})
    iq.add("query", ns.ROSTER)
    return iq


async def login(node: testing.RunningNode, local: str, password: str, mechanism: str) -> TestClient:
    return await node.client(local, password, mechanism=mechanism)


async def test_fixture_import_then_login_and_roster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "meshxmpp"
    args = ("import", "prosody", str(DATA), "--domain", "example.org", "--data-dir", str(target))

    code, out, _ = await meshxmpp(capsys, *args, "--dry-run")
    assert code == 0, out
    assert "would create alice@example.org (SCRAM-SHA-1)" in out and "dry run: nothing was changed" in out
    assert not target.exists()  # a dry run creates no database

    code, out, err = await meshxmpp(capsys, *args)
    assert code == 0, out + err
    assert "accounts: 2 created, 0 already present, 0 failed; roster items: 7 added, 0 already present" in out
    assert "grace@remote.example: name: characters XML cannot carry removed" in err

    code, out, _ = await meshxmpp(capsys, *args)  # idempotent
    assert code == 0
    assert "accounts: 0 created, 2 already present, 0 failed; roster items: 0 added, 7 already present" in out

    async with testing.node(domain="example.org", data_dir=str(target)) as node:
        # SCRAM-SHA-1 with Prosody's stored keys, PLAIN checked against them.
        for mechanism in ("SCRAM-SHA-1", "PLAIN"):
            client = await login(node, "alice", 'pässword "q"', mechanism)
            await client.aclose()
        with pytest.raises(ClientError):
            await login(node, "alice", "wrong", "SCRAM-SHA-1")
        # Prosody kept no SHA-256 keys: SCRAM-SHA-256 fails until the password is changed (docs/import.md).
        with pytest.raises(ClientError):
            await login(node, "alice", 'pässword "q"', "SCRAM-SHA-256")

        async with await login(node, "alice", 'pässword "q"', "SCRAM-SHA-1") as alice:
            reply = await alice.iq(roster_get())
            assert reply.get("type") == "result", reply
            query = reply.find("query", ns.ROSTER)
            assert query is not None
            items = {str(it.get("jid")): it for it in query.findall("item", ns.ROSTER)}
            # Hidden items (pending requests from people not in the roster) are not listed.
            assert sorted(items) == ["bob.smith@example.org", "carol@plain.example", "frank@remote.example",
                                     "grace@remote.example"]
            bob = items["bob.smith@example.org"]
            assert (bob.get("name"), bob.get("subscription")) == ('Bob "B" Smith', "both")
            assert sorted(g.text for g in bob.findall("group", ns.ROSTER)) == ["Friends", "Wörk"]
            assert items["carol@plain.example"].get("ask") == "subscribe"
            assert items["frank@remote.example"].get("subscription") == "from"
            # Initial presence: the pending requests kept by Prosody are delivered again,
            # dave's with the stanza Prosody stored.
            await alice.send_presence()
            dave = await alice.wait_for(
                lambda el: el.name == "presence" and el.get("type") == "subscribe"
                and el.get("from") == "dave@remote.example", what="dave's subscription request")
            assert dave.findtext("status", ns.CLIENT) == 'Hi Alice, it\'s "Dave"\n— ok?'
            await alice.wait_for(
                lambda el: el.name == "presence" and el.get("type") == "subscribe"
                and el.get("from") == "erin@example.org", what="erin's subscription request")

        async with await login(node, "bob.smith", "hunter2", "SCRAM-SHA-1") as bob_client:
            reply = await bob_client.iq(roster_get())
            jids = [it.get("jid") for it in reply.find("query", ns.ROSTER).findall("item", ns.ROSTER)]  # type: ignore[union-attr]
            assert jids == ["alice@example.org"]


async def test_plain_password_host_gets_every_mechanism(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "meshxmpp"
    code, out, err = await meshxmpp(capsys, "import", "prosody", str(DATA), "--domain", "plain.example",
                                    "--data-dir", str(target))
    assert code == 0, out + err
    assert "create carol@plain.example (plain password)" in out
    async with testing.node(domain="plain.example", data_dir=str(target)) as node:
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
            client = await login(node, "carol", "plainpw", mechanism)
            await client.aclose()


async def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await meshxmpp(capsys, "import", "prosody", str(DATA), "--domain", "nope.example",
                                  "--data-dir", str(tmp_path / "x"))
    assert code == 2 and "no Prosody host 'nope.example'" in err
    code, _, err = await meshxmpp(capsys, "import", "prosody", str(tmp_path / "missing"),
                                  "--data-dir", str(tmp_path / "x"))
    assert code == 2 and "is not a directory" in err
    assert not (tmp_path / "x").exists()


async def test_failed_accounts_give_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "prosody"
    shutil.copytree(DATA, data)
    (data / "example%2eorg" / "accounts" / "mallory.dat").write_text('return { password = io.read() };\n')
    code, out, _ = await meshxmpp(capsys, "import", "prosody", str(data), "--domain", "example.org",
                                  "--data-dir", str(tmp_path / "m"))
    assert code == 1
    assert "failed mallory@example.org: unreadable:" in out and "names are not data: 'io'" in out
    assert "accounts: 2 created, 0 already present, 1 failed" in out


# -- against prosodyctl itself, when installed ----------------------------------------------------

PROSODYCTL = shutil.which("prosodyctl")


def _prosody_data_dir() -> Iterator[Path]:
    # prosodyctl run as root drops to the "prosody" user, which must be able to write the directory;
    # pytest's tmp_path (under a 0700 directory of root's) is out of its reach.
    base = Path(tempfile.mkdtemp(prefix="meshxmpp-prosody-"))
    try:
        data = base / "data"
        data.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("prosody")
            for path in (base, data):
                os.chown(path, user.pw_uid, user.pw_gid)
        (base / "prosody.cfg.lua").write_text(
            f'data_path = "{data}"\npidfile = "{base}/prosody.pid"\n'
            'log = { { levels = { min = "error" }, to = "console" } }\n'
            'storage = "internal"\nVirtualHost "example.org"\n  authentication = "internal_hashed"\n'
        )
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def prosody_dir() -> Iterator[Path]:
    if PROSODYCTL is None:
        pytest.skip("prosodyctl is not installed (apt-get install -y prosody); the fixture tests cover the format")
    yield from _prosody_data_dir()


async def test_real_prosodyctl_register(prosody_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    users = {"zoë": "Zoë's secret ☃", "mallory.o-brien": "p@ss w0rd"}
    for user, password in users.items():
        result = await trio.to_thread.run_sync(lambda u=user, p=password: subprocess.run(
            [PROSODYCTL or "prosodyctl", "--config", str(prosody_dir / "prosody.cfg.lua"), "register", u,
             "example.org", p], capture_output=True, text=True, timeout=60))
        assert result.returncode == 0, result.stdout + result.stderr
    data = prosody_dir / "data"
    assert (data / "example%2eorg" / "accounts" / "zo%c3%ab.dat").is_file()
    target = tmp_path / "meshxmpp"
    code, out, err = await meshxmpp(capsys, "import", "prosody", str(data), "--domain", "example.org",
                                    "--data-dir", str(target))
    assert code == 0, out + err
    assert "accounts: 2 created" in out
    async with testing.node(domain="example.org", data_dir=str(target)) as node:
        for user, password in users.items():
            for mechanism in ("SCRAM-SHA-1", "PLAIN"):
                client = await login(node, user, password, mechanism)
                await client.aclose()
