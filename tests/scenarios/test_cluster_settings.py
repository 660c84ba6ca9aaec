"""Cluster settings in the database (issue 7): ``meshxmpp config set`` reaches every running node within a
bounded wait and the next message follows it; invalid keys and values are refused naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from meshxmpp.cluster_settings import KEYS, SettingsWatcher, effective
from meshxmpp.config import load_config
from meshxmpp.storage.cluster import MemoryClusterStore, SqliteClusterStore
from meshxmpp.testing._cluster import cluster
from meshxmpp.testing._node import node

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent.parent


async def meshxmpp(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await trio.run_process([sys.executable, "-m", "meshxmpp", *args], capture_stdout=True,
                                  capture_stderr=True, check=False, env=env)


async def test_config_set_reaches_every_node_and_the_next_message_follows_it() -> None:
    async with cluster(3) as c:
        db = str(c[0].config.storage_path)
        conf = Path(c[0].config.data_dir).parent / "cli.toml"
        conf.write_text(f"[storage]\npath = {json.dumps(db)}\n", encoding="utf-8")
        await c.add_user("alice")
        await c.add_user("bob")
        alice = await c.client(0, "alice", resource="desk")
        # bob is on two nodes: "top" with priority 5, "low" with priority 1.
        top = await c.client(1, "bob", resource="top")
        low = await c.client(2, "bob", resource="low")
        await top.send_presence(priority=5)
        await low.send_presence(priority=1)
        await c.records(1, "bob@localhost/top", lambda r: r.priority == 5)
        await c.records(2, "bob@localhost/low", lambda r: r.priority == 1)
        # The file's policy (top-priority-all): a bare-JID message goes to "top" only.
        await alice.send_message("bob@localhost", "before")
        await top.wait_message("before")
        await c.settled()
        await low.expect_nothing(lambda el: el.name == "message", within=0.3)

        done = await meshxmpp("config", "set", "routing.policy", "all-connected", "--config", str(conf))
        assert done.returncode == 0, done.stderr.decode()
        assert b"routing.policy = all-connected" in done.stdout

        def everywhere() -> bool:
            return all(c[i].ctx.router.policy_config.policy == "all-connected"
                       and c[i].ctx.config.routing.policy == "all-connected" for i in range(3))

        await c.wait(everywhere, "routing.policy not applied on every node", timeout=5.0)
        await alice.send_message("bob@localhost", "after")
        await top.wait_message("after")
        await low.wait_message("after")  # every resource now

        listed = await meshxmpp("config", "list", "--config", str(conf))
        assert b"routing.policy = all-connected (database)" in listed.stdout
        assert b"offline.delivery = first-resource (file)" in listed.stdout

        # Invalid key or value: exit 2, the key named, nothing written.
        bad = await meshxmpp("config", "set", "routing.policy", "everyone", "--config", str(conf))
        assert bad.returncode == 2 and b"routing.policy" in bad.stderr and b"everyone" in bad.stderr
        bad = await meshxmpp("config", "set", "routing.colour", "blue", "--config", str(conf))
        assert bad.returncode == 2 and b"routing.colour" in bad.stderr
        bad = await meshxmpp("config", "set", "muc.history_size", "5000", "--config", str(conf))
        assert bad.returncode == 2 and b"muc.history_size" in bad.stderr
        store = SqliteClusterStore(db)
        await store.open()
        try:
            assert await store.settings() == {"routing.policy": '"all-connected"'}
        finally:
            await store.close()

        # Unset: back to the file's policy everywhere.
        done = await meshxmpp("config", "unset", "routing.policy", "--config", str(conf))
        assert done.returncode == 0, done.stderr.decode()
        await c.wait(lambda: all(c[i].ctx.router.policy_config.policy == "top-priority-all" for i in range(3)),
                     "routing.policy not reverted", timeout=5.0)
        for client in (alice, top, low):
            await client.aclose()


async def test_offline_and_muc_settings_apply_to_a_running_node() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with node({"muc": {"domain": "conference.localhost"}}, data_dir=tmp) as n:
            from meshxmpp.muc.service import service_of

            watcher: SettingsWatcher = n.node.settings
            store = SqliteClusterStore(n.config.storage_path)
            await store.open()
            try:
                offline = watcher.ctx.hub
                before = len(offline._handlers.get("session/end", []))
                await store.set_setting("offline.delivery", '"all-resources"')
                await store.set_setting("muc.history_size", "7")
                await store.set_setting("offline.max_per_user", "3")
                version = watcher.version
                with trio.fail_after(5):
                    await watcher.wait_changed()
                assert watcher.version == version + 1
                ctx = n.ctx
                assert ctx.config.offline.delivery == "all-resources" and ctx.config.offline.max_per_user == 3
                assert len(offline._handlers["session/end"]) == before + 1  # all-resources' hook
                muc = service_of(ctx)
                assert muc is not None and muc.instant.history_size == 7
                assert n.config.muc.history_size == 20  # the file's Config is untouched
                # A row a newer release wrote that this one cannot take is skipped, the rest applied.
                await store.set_setting("muc.history_size", '"lots"')
                await store.delete_setting("offline.delivery")
                with trio.fail_after(5):
                    await watcher.wait_changed()
                assert ctx.config.offline.delivery == "first-resource"
                assert len(offline._handlers["session/end"]) == before
                assert muc.instant.history_size == 20 and ctx.config.offline.max_per_user == 3
            finally:
                await store.close()


async def test_settings_are_applied_before_the_node_serves() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, {"data_dir": tmp})
        store = SqliteClusterStore(config.storage_path)
        await store.open()
        try:
            await store.set_setting("routing.policy", '"most-available"')
        finally:
            await store.close()
        async with node(data_dir=tmp) as n:
            assert n.ctx.router.policy_config.policy == "most-available"


async def test_effective_validates_each_row() -> None:
    base = load_config(None, {"routing": {"route.all-resources": True}})
    config, applied, skipped = effective(base, {"routing.policy": '"all-connected"', "muc.history_size": "3",
                                                "nope.key": '"x"', "offline.delivery": "not json"})
    assert applied == {"muc.history_size": 3}
    assert config.muc.history_size == 3 and config.routing.policy == "top-priority-all"
    assert {s.split(":")[0] for s in skipped} == {"routing.policy", "nope.key", "offline.delivery"}
    assert "routing.policy" in KEYS and "nope.key" not in KEYS
    watcher_store = MemoryClusterStore()
    assert await watcher_store.settings() == {}
