"""XMPP load generator on raw sockets (asyncio Protocols, uvloop when installed).

Every client logs in the way a real client does (stream header, SASL PLAIN, stream restart,
bind to resource "r", initial presence, a ping to the server as a barrier), then the clients
send each other ``<message type='chat'>`` to full JIDs: client i sends to client (i + 1) mod N,
so each client receives from exactly one sender and the sender's in-flight count is exact
(sent by i minus received by i + 1). Deliveries are counted by counting ``<message`` in what
each client receives; nothing is parsed as XML.

Modes:
  max     every client keeps ``window`` messages in flight for ``duration`` seconds
  steady  ``rate`` messages/s in total, spread round-robin over the clients (a client whose
          window is full skips its turn; the skips are reported)

Server CPU is the user + system time of the server's process tree (/proc), read at the start
and the end of the measurement window (warm-up excluded). Memory per idle connection is the
RSS growth of the server tree when ``idle`` more clients log in and stay idle, divided by
``idle``.

Standalone use against a running server whose accounts bench0..benchK-1 (password "pw") exist:

    python benchmarks/loadgen.py --port 5222 --pid SERVER_PID --clients 200 --mode max
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

try:  # allow both `python benchmarks/loadgen.py` and `import benchmarks.loadgen`
    from . import procstat
except ImportError:  # pragma: no cover
    import procstat  # type: ignore[no-redef]

DOMAIN = "bench.local"
PASSWORD = "pw"
RESOURCE = "r"
BODY = "Hello! This is a benchmark message of a typical chat length, about 80 bytes long."

FEATURES_END = re.compile(rb"</(?:[A-Za-z0-9_.-]+:)?features\s*>|<(?:[A-Za-z0-9_.-]+:)?features[^>]*/>")
SUCCESS = re.compile(rb"<(?:[A-Za-z0-9_.-]+:)?success[\s/>]")
BOUND = re.compile(rb"</(?:[A-Za-z0-9_.-]+:)?jid\s*>")
PONG = re.compile(rb"id=['\"]bnchping['\"]")
REG_ANSWER = re.compile(rb"<iq[^>]*id=['\"]bnchreg['\"][^>]*>")
FAILURE = re.compile(
    rb"<(?:[A-Za-z0-9_.-]+:)?failure[\s/>]|<stream:error|</stream:stream>|type=['\"]error['\"]"
)

MESSAGE_TAG = b"<message"
_TAIL = len(MESSAGE_TAG) - 1


class HandshakeError(Exception):
    pass


def stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0' "
        "xml:lang='en'>"
    ).encode()


def chat_message(to_index: int, domain: str, prefix: str) -> bytes:
    return (
        f"<message type='chat' to='{prefix}{to_index}@{domain}/{RESOURCE}' id='b1'>"
        f"<body>{BODY}</body></message>"
    ).encode()


class Client(asyncio.Protocol):
    """One XMPP client connection. Handshake via ``expect``; then cheap counting."""

    __slots__ = (
        "index",
        "transport",
        "buf",
        "waiter",
        "closed",
        "counting",
        "received",
        "errors",
        "tail",
        "on_delivered",
        "sent",
        "outbox",
        "stream_errors",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.counting = False
        self.received = 0
        self.errors = 0
        self.stream_errors = 0
        self.tail = b""
        self.on_delivered = None
        self.sent = 0
        self.outbox = b""

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.counting:
            chunk = self.tail + data
            n = chunk.count(MESSAGE_TAG)
            self.tail = data[-_TAIL:]
            if b"error" in chunk:
                self.errors += chunk.count(b"<error")
                if b"stream:error" in chunk or b"</stream:stream>" in chunk:
                    self.stream_errors += 1
            if n:
                self.received += n
                cb = self.on_delivered
                if cb is not None:
                    cb(self.index, n)
            return
        self.buf += data
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- handshake helpers
    async def expect(self, pattern: re.Pattern[bytes], limit_s: float, fail: bool = True) -> bytes:
        """Wait until ``pattern`` appears in the input; return and consume the input up to it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            m = pattern.search(self.buf)
            if m is not None:
                head = bytes(self.buf[: m.end()])
                del self.buf[: m.end()]
                if fail and FAILURE.search(head):
                    raise HandshakeError(f"client {self.index}: server said {head[-300:]!r}")
                return head
            if fail and FAILURE.search(self.buf):
                raise HandshakeError(f"client {self.index}: server said {bytes(self.buf[-300:])!r}")
            if self.closed:
                raise HandshakeError(
                    f"client {self.index}: connection closed while waiting for {pattern.pattern!r}; "
                    f"got {bytes(self.buf[-300:])!r}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HandshakeError(
                    f"client {self.index}: timeout waiting for {pattern.pattern!r}; got {bytes(self.buf[-300:])!r}"
                )
            self.waiter = loop.create_future()
            try:
                await asyncio.wait_for(self.waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self.waiter = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def login(self, user: str, domain: str, password: str, limit_s: float) -> None:
        header = stream_header(domain)
        self.write(header)
        await self.expect(FEATURES_END, limit_s)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.write(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()
        )
        await self.expect(SUCCESS, limit_s)
        self.buf.clear()
        self.write(header)
        await self.expect(FEATURES_END, limit_s)
        self.write(
            b"<iq type='set' id='bnchbind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>" + RESOURCE.encode() + b"</resource></bind></iq>"
        )
        await self.expect(BOUND, limit_s)
        self.write(
            b"<presence/><iq type='get' id='bnchping' to='"
            + domain.encode()
            + b"'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        await self.expect(PONG, limit_s, fail=False)
        self.buf.clear()

    async def register(self, user: str, domain: str, password: str, limit_s: float) -> str:
        """In-band registration (XEP-0077). Returns "created" or "exists"."""
        self.write(stream_header(domain))
        await self.expect(FEATURES_END, limit_s)
        self.write(
            f"<iq type='set' id='bnchreg' to='{domain}'><query xmlns='jabber:iq:register'>"
            f"<username>{user}</username><password>{password}</password></query></iq>".encode()
        )
        head = await self.expect(REG_ANSWER, limit_s, fail=False)
        tag = head[head.rindex(b"<iq") :]
        if re.search(rb"type=['\"]result['\"]", tag):
            return "created"
        # An error: read the rest of the stanza to see which.
        rest = await self.expect(re.compile(rb"</iq>"), limit_s, fail=False)
        if b"conflict" in rest:
            return "exists"
        raise HandshakeError(f"registration of {user} refused: {(tag + rest)[:400]!r}")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(b"</stream:stream>")
            except Exception:
                pass
            self.transport.close()


async def connect(host: str, port: int, index: int) -> Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: Client(index), host, port)
    return proto


async def open_clients(
    host: str,
    port: int,
    users: list[str],
    *,
    domain: str = DOMAIN,
    password: str = PASSWORD,
    concurrency: int = 50,
    limit_s: float = 60.0,
    first_index: int = 0,
) -> list[Client]:
    """Connect and log in one client per user, ``concurrency`` handshakes at a time."""
    sem = asyncio.Semaphore(concurrency)
    clients: list[Client | None] = [None] * len(users)

    async def one(i: int, user: str) -> None:
        async with sem:
            c = await connect(host, port, first_index + i)
            clients[i] = c
            await c.login(user, domain, password, limit_s)

    try:
        await _gather_or_cancel([one(i, u) for i, u in enumerate(users)])
    except BaseException:
        for c in clients:
            if c is not None:
                c.close()
        raise
    return clients  # type: ignore[return-value]


async def _gather_or_cancel(coros: list) -> None:
    """Run all; on the first failure cancel the rest and raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def register_users(
    host: str,
    port: int,
    users: list[str],
    *,
    domain: str = DOMAIN,
    password: str = PASSWORD,
    concurrency: int = 50,
    limit_s: float = 30.0,
) -> dict[str, int]:
    """Create accounts by in-band registration, one connection per account."""
    sem = asyncio.Semaphore(concurrency)
    outcome = {"created": 0, "exists": 0}

    async def one(i: int, user: str) -> None:
        async with sem:
            c = await connect(host, port, i)
            try:
                outcome[await c.register(user, domain, password, limit_s)] += 1
            finally:
                c.close()

    await _gather_or_cancel([one(i, u) for i, u in enumerate(users)])
    return outcome


async def close_clients(clients: list[Client], settle: float = 0.0) -> None:
    for c in clients:
        c.close()
    if settle:
        await asyncio.sleep(settle)


# ---------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    mode: str
    clients: int
    window: int
    duration_s: float
    warmup_s: float
    rate_target: float | None
    delivered: int = 0
    msgs_per_s: float = 0.0
    server_cpu_s: float = 0.0
    cpu_ms_per_1000: float | None = None
    server_cpu_cores: float = 0.0
    loadgen_cpu_cores: float = 0.0
    other_cpu_cores: float = 0.0
    sent_total: int = 0
    delivered_total: int = 0
    lost_after_drain: int = 0
    error_stanzas: int = 0
    stream_errors: int = 0
    window_full_skips: int = 0
    notes: list[str] = field(default_factory=list)


class Load:
    """Drives message traffic between already logged-in clients."""

    def __init__(self, clients: list[Client], domain: str, prefix: str, window: int) -> None:
        self.clients = clients
        self.n = len(clients)
        self.window = window
        self.sending = False
        self.skips = 0
        self.msgs = [chat_message((i + 1) % self.n, domain, prefix) for i in range(self.n)]
        self.delivered = 0
        self.max_refill = False
        self.sent_base = sum(c.sent for c in clients)  # clients may come from an earlier phase
        for i, c in enumerate(clients):
            c.index = i
            c.counting = True
            c.on_delivered = self._on_delivered
            c.tail = b""

    def inflight(self, i: int) -> int:
        return self.clients[i].sent - self.clients[(i + 1) % self.n].received

    def _on_delivered(self, receiver: int, n: int) -> None:
        self.delivered += n
        if self.max_refill and self.sending:
            sender = (receiver - 1) % self.n
            c = self.clients[sender]
            room = self.window - (c.sent - self.clients[receiver].received)
            if room > 0 and not c.closed:
                c.transport.write(self.msgs[sender] * room)  # type: ignore[union-attr]
                c.sent += room

    def start_max(self) -> None:
        self.sending = True
        self.max_refill = True
        for i, c in enumerate(self.clients):
            room = self.window - self.inflight(i)
            if room > 0:
                c.transport.write(self.msgs[i] * room)  # type: ignore[union-attr]
                c.sent += room

    async def run_steady(self, rate: float, until: float, tick: float = 0.005) -> None:
        """Send ``rate`` messages/s round-robin until the loop time ``until``."""
        loop = asyncio.get_running_loop()
        self.sending = True
        self.max_refill = False
        t0 = loop.time()
        scheduled = 0
        rr = 0
        n = self.n
        while self.sending:
            now = loop.time()
            if now >= until:
                break
            due = int(rate * (now - t0)) - scheduled
            scheduled += due
            for _ in range(due):
                i = rr
                rr = (rr + 1) % n
                c = self.clients[i]
                if c.sent - self.clients[(i + 1) % n].received >= self.window or c.closed:
                    self.skips += 1
                    continue
                c.transport.write(self.msgs[i])  # type: ignore[union-attr]
                c.sent += 1
            await asyncio.sleep(tick)

    def stop(self) -> None:
        self.sending = False
        self.max_refill = False

    def sent_total(self) -> int:
        """Messages sent in this phase."""
        return sum(c.sent for c in self.clients) - self.sent_base

    async def drain(self, limit_s: float) -> int:
        """Wait until every sent message has arrived (or timeout); return how many are missing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            missing = self.sent_total() - self.delivered
            if missing <= 0:
                return 0
            await asyncio.sleep(0.05)
        return self.sent_total() - self.delivered

    def detach(self) -> None:
        for c in self.clients:
            c.on_delivered = None


async def measure_load(
    clients: list[Client],
    server_pid: int,
    *,
    mode: str = "max",
    duration: float = 10.0,
    warmup: float = 2.0,
    window: int = 8,
    rate: float = 2000.0,
    domain: str = DOMAIN,
    prefix: str = "bench",
    drain_timeout: float = 10.0,
    on_window_start=None,
) -> LoadResult:
    """Run one load phase over ``clients`` and measure the server during it."""
    loop = asyncio.get_running_loop()
    res = LoadResult(
        mode=mode,
        clients=len(clients),
        window=window,
        duration_s=duration,
        warmup_s=warmup,
        rate_target=rate if mode == "steady" else None,
    )
    load = Load(clients, domain, prefix, window)
    start = loop.time()
    steady_task = None
    if mode == "max":
        load.start_max()
    elif mode == "steady":
        steady_task = asyncio.ensure_future(load.run_steady(rate, start + warmup + duration))
    else:
        raise ValueError(f"unknown mode {mode!r}")

    await asyncio.sleep(warmup)
    if steady_task is not None and steady_task.done():
        steady_task.result()
    if on_window_start is not None:
        on_window_start()
    d0 = load.delivered
    c0 = procstat.tree_cpu_seconds(server_pid)
    s0 = procstat.self_cpu_seconds()
    m0 = procstat.machine_busy_seconds()
    skips0 = load.skips
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    d1 = load.delivered
    c1 = procstat.tree_cpu_seconds(server_pid)
    s1 = procstat.self_cpu_seconds()
    m1 = procstat.machine_busy_seconds()
    t1 = time.perf_counter()
    skips1 = load.skips

    load.stop()
    if steady_task is not None:
        await steady_task
    missing = await load.drain(drain_timeout)
    load.detach()

    elapsed = t1 - t0
    res.delivered = d1 - d0
    res.msgs_per_s = res.delivered / elapsed
    res.server_cpu_s = c1 - c0
    res.cpu_ms_per_1000 = (res.server_cpu_s * 1e6 / res.delivered) if res.delivered else None
    res.server_cpu_cores = res.server_cpu_s / elapsed
    res.loadgen_cpu_cores = (s1 - s0) / elapsed
    res.other_cpu_cores = max(0.0, (m1 - m0) / elapsed - res.server_cpu_cores - res.loadgen_cpu_cores)
    res.sent_total = load.sent_total()
    res.delivered_total = load.delivered
    res.lost_after_drain = missing
    res.error_stanzas = sum(c.errors for c in clients)
    res.stream_errors = sum(c.stream_errors for c in clients)
    res.window_full_skips = skips1 - skips0
    closed = sum(1 for c in clients if c.closed)
    if closed:
        res.notes.append(f"{closed} client connections were closed by the server")
    if missing:
        res.notes.append(f"{missing} messages not delivered {drain_timeout:.0f} s after the load stopped")
    if res.error_stanzas:
        res.notes.append(f"{res.error_stanzas} error stanzas received")
    if res.loadgen_cpu_cores > 0.9:
        res.notes.append(
            f"load generator used {res.loadgen_cpu_cores:.2f} cores: throughput may be bound by the load "
            "generator, CPU per message is still comparable"
        )
    if res.other_cpu_cores > 0.15:
        res.notes.append(
            f"other processes used {res.other_cpu_cores:.2f} cores during the window: figures are noisy"
        )
    if mode == "steady" and res.window_full_skips:
        res.notes.append(f"{res.window_full_skips} sends skipped because the window was full (server behind)")
    return res


async def measure_idle_memory(
    host: str,
    port: int,
    server_pid: int,
    users: list[str],
    *,
    domain: str = DOMAIN,
    settle: float = 1.5,
    first_index: int = 100000,
) -> dict:
    """RSS of the server tree before/after ``len(users)`` more idle logged-in connections."""
    await asyncio.sleep(0.5)
    rss0 = procstat.tree_rss_kib(server_pid)
    t = time.perf_counter()
    idle = await open_clients(host, port, users, domain=domain, first_index=first_index)
    login_s = time.perf_counter() - t
    await asyncio.sleep(settle)
    rss1 = procstat.tree_rss_kib(server_pid)
    alive = sum(1 for c in idle if not c.closed)
    await close_clients(idle)
    return {
        "idle_connections": len(users),
        "still_open_after_settle": alive,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "kib_per_idle_connection": (rss1 - rss0) / len(users) if users else None,
        "logins_per_s": len(users) / login_s if login_s > 0 else None,
    }


def install_uvloop(enabled: bool = True) -> str:
    """Use uvloop's event loop policy when available; return the loop name."""
    if enabled:
        try:
            import uvloop  # type: ignore[import-not-found]

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
        except ImportError:
            pass
    return "asyncio"


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=("max", "steady"), default="max")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="server process (its tree is measured)")
    p.add_argument("--domain", default=DOMAIN)
    p.add_argument("--prefix", default="bench", help="account names are PREFIX0, PREFIX1, ...")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--window", type=int, default=8, help="messages in flight per client")
    p.add_argument("--rate", type=float, default=2000.0, help="steady mode: messages/s in total")
    p.add_argument("--idle", type=int, default=0, help="also measure RSS per idle connection with N more")
    p.add_argument(
        "--register", action="store_true", help="create the accounts by in-band registration first"
    )
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        p.error("only loopback addresses are allowed")
    raise_fd_limit()
    loop_name = install_uvloop(not args.no_uvloop)

    async def run() -> dict:
        users = [f"{args.prefix}{i}" for i in range(args.clients + args.idle)]
        if args.register:
            await register_users(args.host, args.port, users, domain=args.domain)
        clients = await open_clients(args.host, args.port, users[: args.clients], domain=args.domain)
        out: dict = {"loop": loop_name}
        if args.idle:
            out["memory"] = await measure_idle_memory(
                args.host, args.port, args.pid, users[args.clients :], domain=args.domain
            )
        r = await measure_load(
            clients,
            args.pid,
            mode=args.mode,
            duration=args.duration,
            warmup=args.warmup,
            window=args.window,
            rate=args.rate,
            domain=args.domain,
            prefix=args.prefix,
        )
        out["load"] = asdict(r)
        await close_clients(clients, settle=0.2)
        return out

    out = asyncio.run(run())
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
