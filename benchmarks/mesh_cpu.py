"""Server CPU of a message between two nodes of a mesh against a message within one node.

Starts two ``meshxmpp serve`` processes (node ``a`` and node ``b``, ``b`` joining through ``a``
with ``--peers``-style seeds, one shared SQLite account store as nodes on one host use), so the
CPU of each node is read from /proc as `run.py` does. Logs in ``--clients`` raw-socket clients
(`loadgen.Client`), half on each node: client i is on node a when ``i % 4 < 2``, else on b.
Every client sends to exactly one partner and receives from exactly that partner:

- **same node**: partner ``i ^ 1`` (0<->1 on a, 2<->3 on b): no message crosses the mesh;
- **cross node**: partner ``i ^ 2`` (0<->2, 1<->3): every message is forwarded a -> b or b -> a.

Both placements load both nodes equally, with the same clients, so the difference is the mesh:
directory lookup, the forward frame, its ack, the receiving node's delivery. Messages go to full
JIDs (``benchN@bench.local/r``) and to bare JIDs (``benchN@bench.local``, routed to the one
available resource). For each (target, placement) the script runs a max-load phase (``--window``
messages in flight per client) and, unless ``--steady-rate 0``, a steady-rate phase, and reports
server CPU (user + system of both node processes) per 1000 delivered messages, each node's share,
and the cross / same ratio.

    python3 benchmarks/mesh_cpu.py                        # about 2 minutes
    python3 benchmarks/mesh_cpu.py --repeat 2 --duration 5 --steady-rate 1000

The machine is shared (2 cores for both nodes and the load generator): only ratios within one
run mean something. Results go to benchmarks/results/mesh-cpu-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402
import servers  # noqa: E402

DOMAIN = loadgen.DOMAIN
SECRET = "meshxmpp-benchmark-secret-0123456789"


# ------------------------------------------------------------------------------------ servers
class MeshNode(servers.Meshxmpp):
    """One ``meshxmpp serve`` of the 2-node mesh."""

    def __init__(self, node_name: str, storage: Path, peers: list[int], profile: str, **kw) -> None:
        super().__init__(**kw)
        self.node_name = node_name
        self.storage = storage
        self.mesh_port = servers.free_port()
        self.peers = peers
        self.profile = profile

    def prepare(self, n_accounts: int) -> None:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        peers = ", ".join(f'"{servers.HOST}:{p}"' for p in self.peers)
        self.config_path.write_text(
            f'domain = "{DOMAIN}"\n'
            f'data_dir = "{data}"\n'
            'log_level = "warning"\n'
            "\n[c2s]\n"
            f'bind = "{servers.HOST}"\n'
            f"port = {self.port}\n"
            "require_encryption = false\n"
            "\n[http]\n"
            "enabled = false\n"
            "\n[storage]\n"
            f'path = "{self.storage}"\n'
            "\n[mesh]\n"
            f'bind = "{servers.HOST}"\n'
            f"port = {self.mesh_port}\n"
            f'secret = "{SECRET}"\n'
            f'profile = "{self.profile}"\n'
            f'node_name = "{self.node_name}"\n'
            f"peers = [{peers}]\n"
            "join_timeout = 10.0\n"
        )
        self._create_accounts(n_accounts)


# ------------------------------------------------------------------------------------ load
def message(to: int, bare: bool) -> bytes:
    jid = f"bench{to}@{DOMAIN}" + ("" if bare else f"/{loadgen.RESOURCE}")
    return f"<message type='chat' to='{jid}' id='m1'><body>{loadgen.BODY}</body></message>".encode()


class PairLoad:
    """Like `loadgen.Load`, but client i sends to ``partner[i]`` (an involution: i's only sender is
    its partner), so a sender's in-flight count is exact."""

    def __init__(self, clients: list[loadgen.Client], partner: list[int], bare: bool, window: int) -> None:
        self.clients = clients
        self.partner = partner
        self.window = window
        self.msgs = [message(partner[i], bare) for i in range(len(clients))]
        self.sent0 = [c.sent for c in clients]
        self.recv0 = [c.received for c in clients]
        self.delivered = 0
        self.sending = False
        self.max_refill = False
        self.skips = 0
        for i, c in enumerate(clients):
            c.index = i
            c.counting = True
            c.on_delivered = self._on_delivered
            c.tail = b""

    def inflight(self, i: int) -> int:
        j = self.partner[i]
        return (self.clients[i].sent - self.sent0[i]) - (self.clients[j].received - self.recv0[j])

    def _send(self, i: int, k: int) -> None:
        c = self.clients[i]
        c.transport.write(self.msgs[i] * k)  # type: ignore[union-attr]
        c.sent += k

    def _on_delivered(self, receiver: int, n: int) -> None:
        self.delivered += n
        if self.max_refill and self.sending:
            sender = self.partner[receiver]
            room = self.window - self.inflight(sender)
            if room > 0 and not self.clients[sender].closed:
                self._send(sender, room)

    def start_max(self) -> None:
        self.sending = self.max_refill = True
        for i in range(len(self.clients)):
            room = self.window - self.inflight(i)
            if room > 0:
                self._send(i, room)

    async def run_steady(self, rate: float, until: float, tick: float = 0.005) -> None:
        loop = asyncio.get_running_loop()
        self.sending, self.max_refill = True, False
        t0, scheduled, rr, n = loop.time(), 0, 0, len(self.clients)
        while self.sending and loop.time() < until:
            due = int(rate * (loop.time() - t0)) - scheduled
            scheduled += due
            for _ in range(due):
                i, rr = rr, (rr + 1) % n
                if self.inflight(i) >= self.window or self.clients[i].closed:
                    self.skips += 1
                    continue
                self._send(i, 1)
            await asyncio.sleep(tick)

    def stop(self) -> None:
        self.sending = self.max_refill = False

    def sent_total(self) -> int:
        return sum(c.sent - s for c, s in zip(self.clients, self.sent0, strict=True))

    async def drain(self, limit_s: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline and self.sent_total() > self.delivered:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return self.sent_total() - self.delivered

    def detach(self) -> None:
        for c in self.clients:
            c.on_delivered = None


async def phase(
    clients,
    partner,
    pids: dict[str, int],
    *,
    bare: bool,
    mode: str,
    duration: float,
    warmup: float,
    window: int,
    rate: float,
    on_window_start=None,
) -> dict:
    loop = asyncio.get_running_loop()
    errors0 = sum(c.errors for c in clients)
    load = PairLoad(clients, partner, bare, window)
    task = None
    if mode == "max":
        load.start_max()
    else:
        task = asyncio.ensure_future(load.run_steady(rate, loop.time() + warmup + duration))
    await asyncio.sleep(warmup)
    if on_window_start is not None:
        on_window_start()
    d0 = load.delivered
    c0 = {k: procstat.tree_cpu_seconds(p) for k, p in pids.items()}
    s0, m0, t0, k0 = (
        procstat.self_cpu_seconds(),
        procstat.machine_busy_seconds(),
        time.perf_counter(),
        load.skips,
    )
    await asyncio.sleep(duration)
    d1 = load.delivered
    c1 = {k: procstat.tree_cpu_seconds(p) for k, p in pids.items()}
    s1, m1, t1, k1 = (
        procstat.self_cpu_seconds(),
        procstat.machine_busy_seconds(),
        time.perf_counter(),
        load.skips,
    )
    load.stop()
    if task is not None:
        await task
    missing = await load.drain(10.0)
    load.detach()
    elapsed = t1 - t0
    delivered = d1 - d0
    cpu = {k: c1[k] - c0[k] for k in pids}
    server = sum(cpu.values())
    out = {
        "mode": mode,
        "bare": bare,
        "delivered": delivered,
        "msgs_per_s": delivered / elapsed,
        "cpu_s": cpu,
        "cpu_ms_per_1000": server * 1e6 / delivered if delivered else None,
        "node_ms_per_1000": {k: v * 1e6 / delivered if delivered else None for k, v in cpu.items()},
        "server_cores": server / elapsed,
        "loadgen_cores": (s1 - s0) / elapsed,
        "other_cores": max(0.0, (m1 - m0) / elapsed - server / elapsed - (s1 - s0) / elapsed),
        "lost_after_drain": missing,
        "error_stanzas": sum(c.errors for c in clients) - errors0,
        "window_full_skips": k1 - k0,
        "closed_clients": sum(1 for c in clients if c.closed),
    }
    return out


async def check_routes(clients, partner, bare: bool, limit_s: float = 15.0) -> None:
    """One message per client to its partner until all arrive: the mesh knows every session."""
    load = PairLoad(clients, partner, bare, 1)
    for i in range(len(clients)):
        load._send(i, 1)
    missing = await load.drain(limit_s)
    load.detach()
    errors = sum(c.errors for c in clients)
    if missing or errors:
        raise RuntimeError(
            f"route check ({'bare' if bare else 'full'} JIDs): {missing} messages missing, "
            f"{errors} error stanzas after {limit_s:.0f} s"
        )


async def bench(nodes: dict[str, MeshNode], args) -> dict:
    n = args.clients
    users = servers.user_names(n)
    placement = ["a" if i % 4 < 2 else "b" for i in range(n)]
    same = [i ^ 1 for i in range(n)]
    cross = [i ^ 2 for i in range(n)]
    assert all(placement[i] == placement[same[i]] for i in range(n))
    assert all(placement[i] != placement[cross[i]] for i in range(n))
    clients: list[loadgen.Client] = [None] * n  # type: ignore[list-item]
    t = time.monotonic()
    for name in ("a", "b"):
        idx = [i for i in range(n) if placement[i] == name]
        got = await loadgen.open_clients(servers.HOST, nodes[name].port, [users[i] for i in idx])
        for i, c in zip(idx, got, strict=True):
            clients[i] = c
    login_s = time.monotonic() - t
    pids = {name: node.pid for name, node in nodes.items()}
    out: dict = {"login_s": round(login_s, 2), "phases": []}
    try:
        await asyncio.sleep(0.5)
        for bare in (False, True):
            await check_routes(clients, cross, bare)
            await check_routes(clients, same, bare)
        modes = [("max", args.duration, args.warmup)]
        if args.steady_rate > 0:
            modes.append(("steady", args.steady_duration, 1.0))
        for rep in range(args.repeat):
            for mode, duration, warmup in modes:
                for bare in (False, True):
                    order = [("same", same), ("cross", cross)]
                    if rep % 2:
                        order.reverse()
                    for where, partner in order:
                        profiler = None

                        def start_profiler(where=where, mode=mode, bare=bare, duration=duration) -> None:
                            nonlocal profiler
                            if args.profile_dir and mode == "max" and not bare:
                                profiler = run.start_py_spy(
                                    pids["a"], duration, Path(args.profile_dir) / where
                                )

                        r = await phase(
                            clients,
                            partner,
                            pids,
                            bare=bare,
                            mode=mode,
                            duration=duration,
                            warmup=warmup,
                            window=args.window,
                            rate=args.steady_rate,
                            on_window_start=start_profiler,
                        )
                        r.update(placement=where, repeat=rep)
                        if profiler is not None:
                            r["profile"] = run.finish_py_spy(profiler)
                        out["phases"].append(r)
                        print(
                            f"  {mode:<6} {'bare' if bare else 'full'} {where:<5}: {r['msgs_per_s']:>8,.0f} msgs/s,"
                            f" {r['cpu_ms_per_1000']:.1f} CPU ms/1000 (a {r['node_ms_per_1000']['a']:.1f}, "
                            f"b {r['node_ms_per_1000']['b']:.1f}); servers {r['server_cores']:.2f} cores, "
                            f"loadgen {r['loadgen_cores']:.2f}, other {r['other_cores']:.2f}"
                            + (f"; LOST {r['lost_after_drain']}" if r["lost_after_drain"] else "")
                            + (f"; {r['error_stanzas']} errors" if r["error_stanzas"] else ""),
                            flush=True,
                        )
                        await asyncio.sleep(0.3)
    finally:
        await loadgen.close_clients(clients, settle=0.3)
    return out


def print_table(res: dict, args) -> None:
    groups: dict[tuple[str, bool], dict[str, list[dict]]] = {}
    for p in res["phases"]:
        groups.setdefault((p["mode"], p["bare"]), {}).setdefault(p["placement"], []).append(p)
    head = [
        "load",
        "to",
        "same: msgs/s",
        "same: CPU ms/1000",
        "cross: msgs/s",
        "cross: CPU ms/1000",
        "cross: node a / b",
        "cross / same",
    ]
    rows = []
    for (mode, bare), by in groups.items():
        s = by.get("same", [])
        c = by.get("cross", [])
        if not s or not c:
            continue
        sm = statistics.median(p["cpu_ms_per_1000"] for p in s)
        cm = statistics.median(p["cpu_ms_per_1000"] for p in c)
        ca = statistics.median(p["node_ms_per_1000"]["a"] for p in c)
        cb = statistics.median(p["node_ms_per_1000"]["b"] for p in c)
        label = f"max (window {args.window})" if mode == "max" else f"steady {args.steady_rate:g}/s"
        rows.append(
            [
                label,
                "bare JID" if bare else "full JID",
                f"{statistics.median(p['msgs_per_s'] for p in s):,.0f}",
                f"{sm:.1f}",
                f"{statistics.median(p['msgs_per_s'] for p in c):,.0f}",
                f"{cm:.1f}",
                f"{ca:.1f} / {cb:.1f}",
                f"{cm / sm:.2f}x",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))
    )
    print()
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                str(x).ljust(w) if i == 0 else str(x).rjust(w)
                for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()
    print(
        "CPU = user + system of both node processes per 1000 delivered messages (lower is better); medians "
        f"over {args.repeat} repeat(s)."
    )
    print("'same': sender and receiver on one node (no mesh hop); 'cross': on different nodes (forwarded).")
    notes = set()
    for p in res["phases"]:
        if p["other_cores"] > 0.15:
            notes.add(
                f"other processes used up to {max(q['other_cores'] for q in res['phases']):.2f} cores "
                "during some windows: figures are noisy"
            )
        if p["lost_after_drain"] or p["error_stanzas"] or p["closed_clients"]:
            notes.add("some phases lost messages, got error stanzas or closed clients: see the JSON")
        if p["mode"] == "steady" and p["window_full_skips"]:
            notes.add("steady: some sends were skipped because a window was full (servers behind the rate)")
        if p["loadgen_cores"] > 0.9:
            notes.add("the load generator used > 0.9 cores in some windows: throughput is its limit there")
    for note in sorted(notes):
        print(note)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--clients", type=int, default=200, help="clients, half per node; multiple of 4 (default 200)"
    )
    p.add_argument("--duration", type=float, default=8.0, help="max-load window, s (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="max-load warm-up, s (default 2)")
    p.add_argument("--window", type=int, default=8, help="messages in flight per client (default 8)")
    p.add_argument(
        "--steady-rate",
        type=float,
        default=1000.0,
        help="messages/s of the steady phases; 0 skips them (default 1000)",
    )
    p.add_argument("--steady-duration", type=float, default=5.0, help="steady window, s (default 5)")
    p.add_argument(
        "--repeat", type=int, default=1, help="repeat every phase, alternating same/cross order (default 1)"
    )
    p.add_argument(
        "--profile", default="lan", choices=("lan", "test"), help="mesh timing profile (default lan)"
    )
    p.add_argument(
        "--nice", type=int, default=0, help="niceness of the nodes and the load generator (e.g. -10)"
    )
    p.add_argument(
        "--profile-dir",
        metavar="DIR",
        help="py-spy on node a during the full-JID max-load windows (DIR/same, DIR/cross)",
    )
    p.add_argument("--keep", action="store_true", help="keep the nodes' temporary directories")
    p.add_argument("--no-uvloop", action="store_true", help="load generator on plain asyncio")
    p.add_argument("--output", help="JSON file (default benchmarks/results/mesh-cpu-<time>.json)")
    args = p.parse_args(argv)
    if args.clients % 4 or args.clients < 4:
        p.error("--clients must be a positive multiple of 4")
    loadgen.raise_fd_limit()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    loop_name = loadgen.install_uvloop(not args.no_uvloop)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    meta = {
        "time": stamp,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loop": loop_name,
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "window": args.window,
        "steady_rate": args.steady_rate,
        "steady_duration_s": args.steady_duration,
        "repeat": args.repeat,
        "profile": args.profile,
        "nice": args.nice,
        "loadavg_at_start": os.getloadavg(),
    }
    print(
        f"mesh cpu: 2 nodes, {args.clients} clients ({args.clients // 2} per node), window {args.window}, "
        f"max {args.duration:g} s (+{args.warmup:g} s warm-up), steady {args.steady_rate:g}/s for "
        f"{args.steady_duration:g} s, x{args.repeat}; profile {args.profile}; load generator on {loop_name}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    shared = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    nodes: dict[str, MeshNode] = {}
    result: dict = {}
    code = 0
    try:
        a = nodes["a"] = MeshNode("a", shared / "accounts.sqlite3", [], args.profile, keep=args.keep)
        t = time.monotonic()
        a.start(args.clients, nice=args.nice)
        b = nodes["b"] = MeshNode(
            "b", shared / "accounts.sqlite3", [a.mesh_port], args.profile, keep=args.keep
        )
        b.start(0, nice=args.nice)
        meta["version"] = a.version()
        print(
            f"nodes: a (pid {a.pid}, c2s {a.port}, mesh {a.mesh_port}), b (pid {b.pid}, c2s {b.port}, "
            f"mesh {b.mesh_port}); {meta['version']}; ready in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        result = asyncio.run(bench(nodes, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        for name, node in nodes.items():
            print(f"node {name}: {node.log_tail()}", file=sys.stderr)
        result["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        for node in reversed(list(nodes.values())):
            node.stop()
        if not args.keep:
            shutil.rmtree(shared, ignore_errors=True)
    meta["total_s"] = round(time.monotonic() - started, 1)
    if result.get("phases"):
        print_table(result, args)
    out = Path(args.output) if args.output else HERE / "results" / f"mesh-cpu-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": result}, indent=2))
    print(f"\nsaved {out} (total {meta['total_s']:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
