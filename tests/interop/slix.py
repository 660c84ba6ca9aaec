"""slixmpp as an independent client for interop tests (asyncio, against a node in a thread)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import slixmpp
from slixmpp.stanza import Message

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)

TIMEOUT = 15.0


class Slix:
    """One slixmpp connection with queues of what it received."""

    def __init__(self, jid: str, password: str, *, mech: str | None = "SCRAM-SHA-256",
                 starttls: bool = True) -> None:
        self.xmpp = slixmpp.ClientXMPP(jid, password, sasl_mech=mech)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the node's development certificate is self-signed
        self.xmpp.ssl_context = ctx
        self.xmpp.enable_starttls = starttls
        self.xmpp.enable_plaintext = not starttls
        self.xmpp.enable_direct_tls = False
        self.xmpp.register_plugin("xep_0199")
        self.xmpp.register_plugin("xep_0030")
        self.xmpp.register_plugin("xep_0203")  # delayed delivery, to read offline stamps
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.presences: list[Any] = []
        self.presence_event = asyncio.Event()
        self.started = asyncio.Event()
        self.failed = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.roster_pushes: list[Any] = []
        self.xmpp.add_event_handler("session_start", lambda _e: self.started.set())
        self.xmpp.add_event_handler("failed_all_auth", lambda _e: self.failed.set())
        self.xmpp.add_event_handler("failed_auth", lambda _e: self.failed.set())
        self.xmpp.add_event_handler("disconnected", lambda _e: self.disconnected.set())
        self.xmpp.add_event_handler("message", self.messages.put_nowait)
        self.xmpp.add_event_handler("message_error", self.messages.put_nowait)
        self.xmpp.add_event_handler("presence", self._on_presence)
        self.xmpp.add_event_handler("roster_update", self.roster_pushes.append)

    def _on_presence(self, pres: Any) -> None:
        self.presences.append(pres)
        self.presence_event.set()

    @property
    def jid(self) -> str:
        return str(self.xmpp.boundjid)

    async def connect(self, address: tuple[str, int]) -> None:
        self.xmpp.connect(address[0], address[1])
        done, _ = await asyncio.wait(
            [asyncio.create_task(self.started.wait()), asyncio.create_task(self.failed.wait())],
            timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not self.started.is_set():
            raise AssertionError(f"{self.xmpp.boundjid} could not log in (failed={self.failed.is_set()})")

    async def try_login(self, address: tuple[str, int]) -> bool:
        """Connect and report whether authentication succeeded."""
        self.xmpp.connect(address[0], address[1])
        await asyncio.wait(
            [asyncio.create_task(self.started.wait()), asyncio.create_task(self.failed.wait())],
            timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        assert self.started.is_set() or self.failed.is_set(), "neither success nor failure in time"
        return self.started.is_set()

    async def ping_server(self) -> None:
        """A round trip: whatever the server sent before the pong has been processed."""
        await self.xmpp.plugin["xep_0199"].ping(jid=self.xmpp.boundjid.domain, timeout=TIMEOUT)

    async def next_message(self, pred: Callable[[Message], bool] = lambda m: True) -> Message:
        async with asyncio.timeout(TIMEOUT):
            while True:
                msg = await self.messages.get()
                if pred(msg):
                    return msg

    async def wait_presence(self, pred: Callable[[Any], bool], what: str) -> Any:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for p in self.presences:
                    if pred(p):
                        return p
                self.presence_event.clear()
                try:
                    await self.presence_event.wait()
                except TimeoutError:
                    raise AssertionError(f"{self.jid}: no presence matching {what}; got {self.presences}") from None

    def drain_messages(self) -> list[Message]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    async def disconnect(self) -> None:
        self.xmpp.disconnect(wait=1.0)
        async with asyncio.timeout(TIMEOUT):
            await self.disconnected.wait()

    def abort(self) -> None:
        """Drop the TCP connection without closing the stream."""
        self.xmpp.abort()
