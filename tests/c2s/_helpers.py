"""Shared helpers for the c2s tests: a byte-level driver for the sans-IO negotiation, and a node
context with a recording fake router for the listener tests."""

from __future__ import annotations

import base64
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from meshxmpp.c2s import negotiation as n
from meshxmpp.c2s.sasl import ScramClient, ScramCredentials, derive_credentials, plain_client
from meshxmpp.c2s.session import Session
from meshxmpp.config import Config, evolve
from meshxmpp.context import NodeContext
from meshxmpp.hub import Hub
from meshxmpp.routing.table import SessionRegistry
from meshxmpp.storage.memory import MemoryStorage
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened, XmlEvent
from meshxmpp.xml.serialize import STREAM_FOOTER, stream_header, to_bytes
from meshxmpp.xml.stream import XmlStream

DOMAIN = "example.org"
_CREDS: dict[str, dict[str, ScramCredentials]] = {}


def creds(password: str = "secret") -> dict[str, ScramCredentials]:
    """SCRAM credentials, derived once per password (PBKDF2 is slow on purpose)."""
    if password not in _CREDS:
        _CREDS[password] = derive_credentials(password, salt=b"0123456789abcdef")
    return _CREDS[password]


def header(to: str | None = DOMAIN, **extra: str) -> bytes:
    data = stream_header(from_=None, to=to, id=None)
    if extra:
        attrs = "".join(f" {k.replace('_', ':')}='{v}'" for k, v in extra.items())
        data = data.replace(b" version=", attrs.encode() + b" version=", 1)
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


def auth(mechanism: str, data: bytes | None) -> bytes:
    el = Element("auth", ns.SASL, {"mechanism": mechanism})
    if data is not None:
        el.append(b64(data))
    return to_bytes(el)


def response(data: bytes) -> bytes:
    return to_bytes(Element("response", ns.SASL, children=[b64(data)]))


def bind_iq(resource: str | None = None, iq_id: str = "b1") -> bytes:
    iq = Element("iq", ns.CLIENT, {"type": "set", "id": iq_id})
    b = iq.add("bind", ns.BIND)
    if resource is not None:
        b.add("resource", ns.BIND, text=resource)
    return to_bytes(iq)


def session_iq(iq_id: str = "s1") -> bytes:
    iq = Element("iq", ns.CLIENT, {"type": "set", "id": iq_id})
    iq.add("session", ns.SESSION)
    return to_bytes(iq)


class Driver:
    """Client bytes in, server effects out, through real parsers on both sides; no I/O."""

    def __init__(self, *, accounts: dict[str, dict[str, ScramCredentials]] | None = None, **kw: Any) -> None:
        kw.setdefault("domain", DOMAIN)
        kw.setdefault("rng", random.Random(0))
        kw.setdefault("fake_salt_key", b"fake-salt-key")
        self.neg = n.Negotiation(**kw)
        self.accounts = {"alice": creds()} if accounts is None else accounts
        self.server_parser = XmlStream(max_stanza_size=1 << 20)  # reads what the client sends
        self.client_parser = XmlStream(max_stanza_size=1 << 20)  # reads what the server sends
        self.received: list[XmlEvent] = []  # client side: events parsed from the server's bytes
        self.effects: list[n.Effect] = []  # every effect, in order
        self.raw = bytearray()  # every byte the server sent

    # -- client -> server
    def send(self, data: bytes) -> list[n.Effect]:
        effects: list[n.Effect] = []
        for event in self.server_parser.feed(data):
            effects += self.event(event)
        return effects

    def event(self, event: XmlEvent) -> list[n.Effect]:
        return self._absorb(self.neg.receive(event))

    def _absorb(self, effects: list[n.Effect]) -> list[n.Effect]:
        out = list(effects)
        for effect in effects:
            self.effects.append(effect)
            if isinstance(effect, n.Send):
                self.raw += effect.data
                self.received += self.client_parser.feed(effect.data)
            elif isinstance(effect, n.StartTLS):
                self.server_parser.restart()
                self.client_parser.restart()
                out += self._absorb(self.neg.tls_established())
            elif isinstance(effect, n.NeedCredentials):
                out += self._absorb(self.neg.provide_credentials(self.accounts.get(effect.username)))
            elif isinstance(effect, n.AuthSucceeded):
                self.server_parser.restart()
                self.client_parser.restart()
        return out

    # -- what the client saw
    def elements(self) -> list[Element]:
        return [e.element for e in self.received if isinstance(e, StanzaReceived)]

    def last(self) -> Element:
        return self.elements()[-1]

    def pop(self) -> list[Element]:
        els = self.elements()
        self.received.clear()
        return els

    def headers(self) -> list[StreamOpened]:
        return [e for e in self.received if isinstance(e, StreamOpened)]

    def closed(self) -> bool:
        return any(isinstance(e, StreamClosed) for e in self.received)

    # -- whole steps
    def open(self, **extra: str) -> Element:
        self.received.clear()
        self.send(header(**extra))
        features = self.elements()[-1]
        assert features.name == "features", features
        return features

    def starttls(self) -> Element:
        self.open()
        self.send(to_bytes(Element("starttls", ns.TLS)))
        assert self.last().name == "proceed"
        return self.open()

    def scram(self, username: str = "alice", password: str = "secret", hash_name: str = "SHA-256") -> Element:
        client = ScramClient(hash_name, username, password, b"client-nonce-0123")
        self.received.clear()
        self.send(auth(client.mechanism, client.first()))
        challenge = self.last()
        if challenge.name != "challenge":
            return challenge
        final = client.final(base64.b64decode(challenge.text))
        self.send(response(final))
        outcome = self.elements()[-1]
        if outcome.name == "success":
            assert client.verify(base64.b64decode(outcome.text))
        return outcome

    def plain(self, username: str = "alice", password: str = "secret") -> Element:
        self.received.clear()
        self.send(auth("PLAIN", plain_client(username, password)))
        return self.last()

    def login(self, resource: str | None = "laptop") -> Element:
        """STARTTLS, SCRAM-SHA-256, bind: the bind result."""
        self.starttls()
        assert self.scram().name == "success"
        self.open()
        self.received.clear()
        self.send(bind_iq(resource))
        return self.last()


# ----------------------------------------------------------------------------- listener side


class FakeRouter:
    """Records what the listener routes. ``on_route`` may return an awaitable or raise."""

    def __init__(self, sessions: SessionRegistry) -> None:
        self.sessions = sessions
        self.routed: list[tuple[Element, Session | None]] = []
        self.ended: list[Session] = []
        self.on_route: Callable[[Element, Session | None], Awaitable[None] | None] | None = None
        self.changed = trio.Event()

    def route(self, el: Element, origin: Session | None) -> Awaitable[None] | None:
        self.routed.append((el, origin))
        self._changed()
        if self.on_route is not None:
            return self.on_route(el, origin)
        return None

    def deliver(self, session: Session, el: Element) -> None:
        session.send(el)

    async def session_ended(self, session: Session) -> None:
        self.sessions.unbind(session)
        self.ended.append(session)
        self._changed()
        await trio.lowlevel.checkpoint()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()


def make_config(tmp_path: Path, **c2s: Any) -> Config:
    return evolve(
        Config(), domain=DOMAIN, data_dir=str(tmp_path), c2s={"port": 0, "bind": "127.0.0.1", **c2s}
    )


async def make_ctx(tmp_path: Path, **c2s: Any) -> NodeContext:
    storage = MemoryStorage()
    await storage.open()
    await storage.accounts.create(f"alice@{DOMAIN}", creds())
    await storage.accounts.create(f"bob@{DOMAIN}", creds("hunter2"))
    sessions = SessionRegistry()
    router = FakeRouter(sessions)
    return NodeContext(
        config=make_config(tmp_path, **c2s),
        domain=DOMAIN,
        storage=storage,
        hub=Hub(),
        sessions=sessions,
        router=router,  # type: ignore[arg-type]
        now=lambda: 1_700_000_000.0,
    )


__all__ = [
    "DOMAIN",
    "STREAM_FOOTER",
    "Driver",
    "FakeRouter",
    "auth",
    "b64",
    "bind_iq",
    "creds",
    "header",
    "make_config",
    "make_ctx",
    "response",
    "session_iq",
]
