"""A node without sockets for the im features: the real Hub, Router, SessionRegistry and
MemoryStorage, with fake sessions that record what they are sent."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import trio

from meshxmpp import im
from meshxmpp.config import load_config
from meshxmpp.context import NodeContext
from meshxmpp.hub import Hub
from meshxmpp.jid import JID
from meshxmpp.routing import policy
from meshxmpp.routing.router import Router
from meshxmpp.routing.table import SessionRegistry
from meshxmpp.storage.memory import MemoryStorage
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

DOMAIN = "example.org"


class FakeSession:
    """The attributes of c2s.session.Session the features use; ``got`` is what it was sent."""

    def __init__(self, jid: str) -> None:
        self.jid = JID.parse(jid)
        self.bare = self.jid.bare
        self.node = "local"
        self.available = False
        self.priority = 0
        self.show: str | None = None
        self.presence: Element | None = None
        self.interested = False
        self.directed: set[JID] = set()
        self.carbons = False
        self.bound_at = 0.0
        self.last_activity = 0.0
        self.closed = False
        self.aborted = False
        self.ended = False
        self.got: list[Element] = []

    def send(self, el: Element) -> None:
        if not self.closed:
            self.got.append(el)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        self.closed = True

    async def wait_flushed(self) -> None:
        """``got`` is the socket: everything sent is written at once."""
        await trio.lowlevel.checkpoint()

    def take(self, pred: Callable[[Element], bool] = lambda el: True) -> list[Element]:
        """Remove and return what matched."""
        out = [el for el in self.got if pred(el)]
        self.got = [el for el in self.got if not pred(el)]
        return out

    def __repr__(self) -> str:
        return f"<FakeSession {self.jid}>"


class Harness:
    def __init__(self, **config: Any) -> None:
        self.config = load_config(None, {"domain": DOMAIN, **config})
        self.storage = MemoryStorage()
        self.hub = Hub()
        self.sessions = SessionRegistry()
        self.router = Router(
            hub=self.hub,
            sessions=self.sessions,
            domain=DOMAIN,
            accounts=self.storage.accounts,
            policy_config=policy.PolicyConfig.from_routing_config(self.config.routing_dict()),
        )
        self.clock = 1_700_000_000.0
        self.ctx = NodeContext(
            config=self.config,
            domain=DOMAIN,
            storage=self.storage,
            hub=self.hub,
            sessions=self.sessions,
            router=self.router,
            now=lambda: self.clock,
        )
        im.register_all(self.hub, self.ctx)

    async def add_user(self, local: str) -> str:
        jid = f"{local}@{DOMAIN}"
        await self.storage.accounts.create(jid, {})  # only existence matters here
        return jid

    def bind(self, full: str) -> FakeSession:
        session = FakeSession(full)
        old = self.sessions.bind(session)  # type: ignore[arg-type]
        assert old is None
        return session

    async def send(self, session: FakeSession, el: Element) -> None:
        """What the c2s session does with a stanza it read: stamp 'from', route, await."""
        el.set("from", str(session.jid))
        result = self.router.route(el, session)  # type: ignore[arg-type]
        if result is not None and inspect.isawaitable(result):
            await result

    async def inject(self, el: Element) -> None:
        """A stanza arriving from elsewhere (no local origin)."""
        result = self.router.route(el, None)
        if result is not None and inspect.isawaitable(result):
            await result

    async def end(self, session: FakeSession) -> None:
        session.closed = True
        await self.router.session_ended(session)  # type: ignore[arg-type]

    async def online(self, full: str, *, priority: int | None = None, roster: bool = True) -> FakeSession:
        session = self.bind(full)
        if roster:
            await self.send(session, roster_get())
        await self.send(session, available(priority))
        return session


def roster_get() -> Element:
    iq = Element("iq", ns.CLIENT, {"type": "get", "id": "r1"})
    iq.add("query", ns.ROSTER)
    return iq


def roster_set(
    jid: str,
    *,
    name: str | None = None,
    groups: tuple[str, ...] = (),
    remove: bool = False,
    id_: str = "s1",
    **extra: str,
) -> Element:
    iq = Element("iq", ns.CLIENT, {"type": "set", "id": id_})
    attrs = {"jid": jid, **extra}
    if name is not None:
        attrs["name"] = name
    if remove:
        attrs["subscription"] = "remove"
    item = iq.add("query", ns.ROSTER).add("item", ns.ROSTER, attrs)
    for g in groups:
        item.add("group", ns.ROSTER, text=g)
    return iq


def available(priority: int | None = None, to: str | None = None, show: str | None = None) -> Element:
    el = Element("presence", ns.CLIENT, {"to": to} if to else {})
    if show is not None:
        el.add("show", ns.CLIENT, text=show)
    if priority is not None:
        el.add("priority", ns.CLIENT, text=str(priority))
    return el


def pres(type_: str | None, to: str | None = None) -> Element:
    attrs = {}
    if type_:
        attrs["type"] = type_
    if to:
        attrs["to"] = to
    return Element("presence", ns.CLIENT, attrs)


def chat(to: str, body: str, type_: str = "chat") -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": type_})
    el.add("body", ns.CLIENT, text=body)
    return el


def is_push(el: Element) -> bool:
    return el.name == "iq" and el.get("type") == "set" and el.find("query", ns.ROSTER) is not None


def push_item(el: Element) -> Element:
    query = el.find("query", ns.ROSTER)
    assert query is not None
    item = query.find("item", ns.ROSTER)
    assert item is not None
    return item


def is_presence(type_: str | None = None, from_: str | None = None) -> Callable[[Element], bool]:
    def pred(el: Element) -> bool:
        return (
            el.name == "presence" and el.get("type") == type_ and (from_ is None or el.get("from") == from_)
        )

    return pred


def error_condition(el: Element) -> str | None:
    err = el.find("error", ns.CLIENT)
    if err is None:
        return None
    return next((c.name for c in err.children if isinstance(c, Element) and c.ns == ns.STANZA_ERRORS), None)
