"""Named events with priority-ordered handlers (Prosody's util/events.lua, in Python).

A feature module hooks event names such as ``message/bare`` or ``iq-get/host/urn:xmpp:ping``.
``fire`` calls handlers from the highest priority down; the first truthy result stops the chain and
is returned. A handler that needs to wait (storage) is an ``async def``: calling it returns a
coroutine, which is truthy, so it stops the chain and the caller awaits it. Handlers on the hot path
are plain functions, so routing a message costs no checkpoint.
"""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[Any], Any]


class Hub:
    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        # event name -> list of (-priority, insertion order, handler), kept sorted.
        self._handlers: dict[str, list[tuple[int, int, Handler]]] = {}

    def hook(self, event: str, handler: Handler, priority: int = 0) -> None:
        chain = self._handlers.setdefault(event, [])
        bisect.insort(chain, (-priority, len(chain), handler), key=lambda t: (t[0], t[1]))

    def unhook(self, event: str, handler: Handler) -> None:
        chain = self._handlers.get(event, [])
        chain[:] = [t for t in chain if t[2] is not handler]

    def has_handlers(self, event: str) -> bool:
        return bool(self._handlers.get(event))

    def fire(self, event: str, data: Any) -> Any:
        """Run handlers for ``event``; return the first truthy result (maybe an awaitable), else None."""
        chain = self._handlers.get(event)
        if not chain:
            return None
        for _, _, handler in chain:
            result = handler(data)
            if result:
                return result
        return None

    async def fire_async(self, event: str, data: Any) -> Any:
        """``fire`` and, when the handler that stopped the chain returned an awaitable, await it."""
        result = self.fire(event, data)
        if inspect.isawaitable(result):
            return await result
        return result

    async def fire_all(self, event: str, data: Any) -> None:
        """Run every handler (no short-circuit), awaiting the async ones in priority order."""
        for _, _, handler in list(self._handlers.get(event, ())):
            result = handler(data)
            if inspect.isawaitable(result):
                await result


def maybe_awaitable(result: Any) -> Awaitable[Any] | None:
    return result if inspect.isawaitable(result) else None
