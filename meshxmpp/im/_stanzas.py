"""Small helpers the im features share: build, store and send stanzas, and per-user locks."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.serialize import to_str
from meshxmpp.xml.stream import parse_element

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.routing.router import StanzaEvent


def presence(type_: str | None, from_: str, to: str | None) -> Element:
    attrs = {"from": from_}
    if to is not None:
        attrs["to"] = to
    if type_ is not None:
        attrs["type"] = type_
    return Element("presence", ns.CLIENT, attrs)


def readdress(el: Element, *, from_: str | None = None, to: str | None = None) -> Element:
    """A copy of ``el`` with new addresses (elements handed to the router are immutable)."""
    out = el.copy()
    if from_ is not None:
        out.set("from", from_)
    if to is not None:
        out.set("to", to)
    return out


def last_presence(session: Any) -> Element | None:
    """The last broadcast presence of a local session (an Element) or of a mesh directory record
    (kept serialised); None when there is none or it cannot be read."""
    p = session.presence
    if isinstance(p, str):
        try:
            return loads(p)
        except ValueError:
            return None
    return p  # type: ignore[no-any-return]


def dumps(el: Element) -> str:
    return to_str(el)


def loads(data: str) -> Element:
    """Parse one stanza that ``dumps`` wrote (stored offline messages, pending requests);
    raises ValueError when it is not one well-formed element."""
    try:
        return parse_element(data, max_size=len(data.encode()) + 1024, max_depth=1000)
    except StreamError as e:
        raise ValueError(f"stored stanza unreadable: {e.condition}") from e


async def route(ctx: NodeContext, el: Element) -> None:
    """Hand ``el`` to the router as coming from the server (its 'from' is already right)."""
    result = ctx.router.route(el, None)
    if result is not None and inspect.isawaitable(result):
        await result


class KeyedLocks:
    """One ``trio.Lock`` per key, dropped when nobody holds or waits for it.

    Read-modify-write of one user's roster or offline queue spans storage awaits; two
    connections doing it at once would lose an update without this.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


async def bounce(
    ctx: NodeContext, el: Element, error_type: str, condition: str, text: str | None = None
) -> None:
    """Error reply for ``el`` to its sender, routed (and awaited); errors are never answered."""
    if el.get("type") == "error" or not el.get("from"):
        return
    reply = el.error_reply(error_type, condition, text)
    if not reply.get("from"):
        reply.set("from", ctx.domain)
    await route(ctx, reply)


def answer(ctx: NodeContext, event: StanzaEvent, reply: Element) -> Any:
    """Send ``reply`` to the sender of ``event``: straight to a local client session (sync), else
    through the router (returns the awaitable). Always truthy, so it ends the event chain."""
    if event.origin is not None:
        ctx.router.deliver(event.origin, reply)
        return True
    if not reply.get("from"):
        reply.set("from", ctx.domain)
    return route(ctx, reply)
