"""Run a node in a background thread, for test suites that are not Trio (asyncio, slixmpp, plain)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

from meshxmpp.testing._cluster import Cluster, cluster
from meshxmpp.testing._node import RunningNode, node

T = TypeVar("T")


class ThreadNode:
    """A node running in its own thread with its own Trio loop; methods are blocking."""

    def __init__(self, running: RunningNode, token: trio.lowlevel.TrioToken) -> None:
        self.running = running
        self._token = token

    @property
    def domain(self) -> str:
        return self.running.domain

    @property
    def c2s_address(self) -> tuple[str, int]:
        return self.running.c2s_address

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` inside the node's loop and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def add_user(self, local: str, password: str = "secret") -> tuple[str, str]:
        return self.call(self.running.add_user, local, password)


class ThreadCluster:
    """A `Cluster` running in its own thread with its own Trio loop; methods are blocking."""

    def __init__(self, running: Cluster, token: trio.lowlevel.TrioToken) -> None:
        self.running = running
        self._token = token

    @property
    def domain(self) -> str:
        return self.running.domain

    def c2s_address(self, i: int) -> tuple[str, int]:
        return self.running[i].c2s_address

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """Run ``await fn(*args, **kw)`` inside the cluster's loop and return its result."""
        async def run() -> T:
            return await fn(*args, **kw)

        return trio.from_thread.run(run, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def add_user(self, local: str, password: str = "secret") -> tuple[str, str]:
        return self.call(self.running.add_user, local, password)

    # Blocking forms of the `Cluster` faults and waits (see `Cluster` for what each does).

    @property
    def seed(self) -> int:
        return self.running.seed

    def live(self) -> list[int]:
        return self.call_sync(self.running.live)

    def partition(self, *groups: Any) -> None:
        self.call_sync(self.running.partition, *groups)

    def heal(self) -> None:
        self.call_sync(self.running.heal)

    def drop(self, rate: float = 0.1, *, nodes: Any = None) -> None:
        self.call_sync(lambda: self.running.drop(rate, nodes=nodes))

    def delay(self, seconds: Any, *, nodes: Any = None) -> None:
        self.call_sync(lambda: self.running.delay(seconds, nodes=nodes))

    def clear_faults(self) -> None:
        self.call_sync(self.running.clear_faults)

    def kill(self, i: int) -> None:
        self.call_sync(self.running.kill, i)

    def stop(self, i: int) -> None:
        self.call(self.running.stop, i)

    def start(self, i: int) -> None:
        self.call(self.running.start, i)

    def restart(self, i: int) -> None:
        self.call(self.running.restart, i)

    def converged(self, *, timeout: float = 10.0) -> None:
        self.call(self.running.converged, timeout=timeout)

    def settled(self, *, timeout: float = 10.0) -> None:
        self.call(self.running.settled, timeout=timeout)

    def session_visible(self, jid: str, *, timeout: float = 10.0) -> None:
        self.call(self.running.session_visible, jid, timeout=timeout)

    def wait_dead(self, i: int, *, timeout: float = 10.0) -> None:
        self.call(self.running.wait_dead, i, timeout=timeout)


@contextmanager
def run_in_thread(overrides: dict[str, Any] | None = None, *, timeout: float = 30.0,
                  **top_level: Any) -> Iterator[ThreadNode]:
    """Start a node (as `node`) in a background thread; yields a blocking `ThreadNode`."""
    with _in_thread(lambda: node(overrides, **top_level), ThreadNode, timeout) as n:
        yield n


@contextmanager
def run_cluster_in_thread(n: int = 3, overrides: dict[str, Any] | None = None, *, timeout: float = 60.0,
                          seed: int | None = None, **top_level: Any) -> Iterator[ThreadCluster]:
    """Start a cluster (as `cluster`) in a background thread; yields a blocking `ThreadCluster`."""
    with _in_thread(lambda: cluster(n, overrides, seed=seed, **top_level), ThreadCluster, timeout) as c:
        yield c


@contextmanager
def _in_thread(open_: Callable[[], Any], wrap: Callable[[Any, trio.lowlevel.TrioToken], T],
               timeout: float) -> Iterator[T]:
    started: queue.Queue[Any] = queue.Queue()
    stop_holder: list[trio.Event] = []

    async def main() -> None:
        stop = trio.Event()
        stop_holder.append(stop)
        try:
            async with open_() as running:
                started.put(wrap(running, trio.lowlevel.current_trio_token()))
                await stop.wait()
        except BaseException as exc:  # hand any startup failure to the waiting thread
            started.put(exc)
            raise

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException:
            pass  # already reported through the queue

    thread = threading.Thread(target=thread_main, name="meshxmpp-node", daemon=True)
    thread.start()
    result = started.get(timeout=timeout)
    if isinstance(result, BaseException):
        thread.join(timeout)
        raise RuntimeError("node failed to start") from result
    try:
        yield result
    finally:
        trio.from_thread.run_sync(stop_holder[0].set, trio_token=result._token)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("node thread did not stop within the timeout")
