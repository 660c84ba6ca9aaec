"""``async with meshxmpp.testing.node() as n``: a real node in-process on a free loopback port."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from meshxmpp.c2s.sasl import derive_credentials
from meshxmpp.config import Config, load_config
from meshxmpp.jid import JID
from meshxmpp.node import Node
from meshxmpp.testing._client import TestClient


class RunningNode:
    """A started node plus helpers for tests."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def config(self) -> Config:
        return self.node.config

    @property
    def domain(self) -> str:
        return self.node.config.domain

    @property
    def ctx(self) -> Any:
        return self.node.ctx

    @property
    def c2s_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.node.c2s_port)

    @property
    def http_address(self) -> tuple[str, int]:
        """Where the node's HTTP listener (health check, admin API) answers."""
        port = self.node.http_port
        if port is None:
            raise RuntimeError("the HTTP listener is disabled ([http] enabled = false)")
        return ("127.0.0.1", port)

    async def add_user(self, local: str, password: str = "secret") -> tuple[str, str]:
        jid = f"{local}@{self.domain}"
        assert self.node.ctx is not None
        # Fewer PBKDF2 rounds than production would be a test-only shortcut we do not take:
        # the stored credentials are exactly what `meshxmpp adduser` writes.
        await self.node.ctx.storage.accounts.create(jid, derive_credentials(password))
        return jid, password

    async def client(self, local: str, password: str = "secret", *, resource: str | None = None,
                     presence: bool = False, starttls: bool = False, mechanism: str = "SCRAM-SHA-256",
                     timeout: float = 10.0) -> TestClient:
        host, port = self.c2s_address
        return await TestClient.connect(host, port, f"{local}@{self.domain}", password, resource=resource,
                                        starttls=starttls, mechanism=mechanism, presence=presence,
                                        timeout=timeout)

    async def session_count(self, jid: str, count: int, *, timeout: float = 10.0) -> None:
        """Wait until ``jid`` (bare) has exactly ``count`` bound sessions on this node."""
        bare = JID.parse(jid).bare
        assert self.node.ctx is not None
        with trio.move_on_after(timeout):
            while len(self.node.ctx.sessions.of(bare)) != count:  # noqa: ASYNC110
                await trio.sleep(0.005)  # bounded poll; the registry has no change event
            return
        raise TimeoutError(f"{jid} has {len(self.node.ctx.sessions.of(bare))} sessions, wanted {count}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@asynccontextmanager
async def node(overrides: dict[str, Any] | None = None, *, data_dir: str | None = None,
               **top_level: Any) -> AsyncIterator[RunningNode]:
    """Start a node on 127.0.0.1 with ephemeral ports and a temporary SQLite database.

    ``overrides`` is a nested dict in the shape of the TOML file (``{"c2s": {"idle_timeout": 5}}``);
    keyword arguments set top-level keys (``domain="example.org"``).
    """
    with tempfile.TemporaryDirectory(prefix="meshxmpp-test-") as tmp:
        base: dict[str, Any] = {
            "domain": "localhost",
            "data_dir": data_dir or tmp,
            "c2s": {"bind": "127.0.0.1", "port": 0, "require_encryption": False},
            "http": {"bind": "127.0.0.1", "port": 0},
        }
        config = load_config(None, _merge(_merge(base, top_level), overrides or {}))
        the_node = Node(config, handle_signals=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(the_node.run)
            try:
                yield RunningNode(the_node)
            finally:
                the_node.stop()
                await the_node.stopped.wait()
