"""How fast the mesh converges, and what it costs on the wire: simulated, deterministic by seed.

Real `MeshCore`s (membership + directory + forwarding) run on `SimNet` with a fake clock
(`meshxmpp.testing._simmesh.sim_mesh`): no sockets, no sleeping, one seed replays one run exactly.
Three measurements (issue #5's benchmark acceptance point):

1. **bind -> visible everywhere**: once every node sees every member alive, one random node binds
   a new session (``core.put_session``); the time until every node's directory holds it, in
   simulated seconds, in gossip rounds (the profile's ``gossip_interval``) and in repair rounds
   (``repair_interval``). Several binds per seed, spaced by a random fraction of a repair
   interval so that they fall at every phase of the repair timer.
2. **kill -> detected everywhere**: a random node, holding a session, is killed; the time until
   every survivor has reported ``SessionsLost`` for it (its sessions purged, one survivor told to
   announce them), in seconds and in probe intervals.
3. **bytes on the wire per node per second**: ``--sessions`` (10,000) sessions spread over the
   nodes, converged; then the steady traffic over ``--window`` simulated seconds (membership
   probes and gossip, push-pull, periodic digest repair), without churn and with ``--churn``
   binds and as many unbinds per second per node. Bytes are frame payloads + 6 bytes of frame
   header, as `SimMeshNode` counts them (no TCP/IP, no TLS).

SimNet's ``loss`` drops any frame with that probability. Mesh links are TCP, which does not lose
frames, so 0 % is the realistic figure; 10 % exercises the repair path (a lost delta is only
recovered by the periodic digest exchange) and false suspicions.

    python3 benchmarks/mesh_convergence.py                   # all three, about 1-2 minutes
    python3 benchmarks/mesh_convergence.py --only convergence --seeds 10
    python3 benchmarks/mesh_convergence.py --only bandwidth --sessions 10000 --window 60 --churn 10

Prints tables and writes JSON to benchmarks/results/mesh-convergence-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from meshxmpp.jid import JID  # noqa: E402
from meshxmpp.mesh._records import SessionRecord  # noqa: E402
from meshxmpp.mesh._swim_timing import PROFILES  # noqa: E402
from meshxmpp.mesh.core import MemberChanged, SessionsLost  # noqa: E402
from meshxmpp.mesh.wire import Kind  # noqa: E402
from meshxmpp.testing._simmesh import PORT, sim_mesh  # noqa: E402

#: repair_interval of each profile, as `config.MeshConfig.repair_every()` picks it for a real node.
REPAIR = {"test": 1.0, "lan": 10.0}
KIND_NAMES = {int(Kind.MEMBERSHIP): "membership", int(Kind.DIRECTORY): "directory"}


# ------------------------------------------------------------------------------------ helpers
def addr(node) -> tuple[str, int]:
    return (node.name, PORT)


def flush(net, node) -> None:
    """Hand what ``node`` queued outside a SimNet callback (a bind) to the network now, as the real
    glue does (`mesh.service` wakes its pump on every local write)."""
    after_call = getattr(net, "_after_call", None)
    if after_call is None:  # pragma: no cover - SimNet changed
        raise RuntimeError("SimNet has no _after_call: cannot push a local write out immediately")
    after_call(addr(node))


def make_mesh(n: int, seed: int, profile: str, loss: float):
    return sim_mesh(
        n, seed=seed, profile=profile, repair_interval=REPAIR[profile], loss=loss, notify_send_failed=True
    )


def wait_members(net, nodes, limit: float) -> bool:
    """Until every live node sees every live node alive and has joined (got a directory answer)."""
    n = len(nodes)
    return net.run_for(
        limit, until=lambda: all(x.core.joined and len(x.core.membership.alive()) == n for x in nodes)
    )


def record(node_name: str, jid: JID, now: float) -> SessionRecord:
    return SessionRecord(
        jid=jid,
        node=node_name,
        available=True,
        priority=0,
        bound_at=1_700_000_000.0 + now,
        last_activity=now,
        presence="<presence/>",
    )


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)
    return {
        "n": len(v),
        "median": statistics.median(v),
        "p90": v[min(len(v) - 1, int(math.ceil(0.9 * len(v))) - 1)],
        "max": v[-1],
        "min": v[0],
    }


def print_table(head: list[str], rows: list[list[str]], title: str = "") -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    if title:
        print()
        print(title)
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


# ------------------------------------------------------------------------------------ 1 + 2
def run_convergence(n: int, profile: str, loss: float, seed: int, binds: int) -> dict:
    """One simulated cluster: ``binds`` sequential binds, then one kill. Times in simulated seconds."""
    timing = PROFILES[profile]
    repair = REPAIR[profile]
    net, nodes = make_mesh(n, seed, profile, loss)
    rng = random.Random(f"bench/{seed}/{n}/{profile}/{loss}")
    out: dict = {"bind_s": [], "bind_timeouts": 0, "false_deaths": 0}
    if not wait_members(net, nodes, 300.0):
        out["error"] = "members never all alive"
        return out
    out["members_converged_at_s"] = net.now
    marks = [len(x.events) for x in nodes]
    limit = 30 * repair + 10.0
    for k in range(binds):
        net.run_for(rng.uniform(0.0, repair))
        owner = nodes[rng.randrange(n)]
        jid = JID.parse(f"user{k}@bench.local/r{seed}")
        t0 = net.now
        owner.core.put_session(record(owner.name, jid, t0))
        flush(net, owner)
        ok = net.run_for(
            limit, until=lambda jid=jid: all(x.core.directory.get(jid) is not None for x in nodes)
        )
        if ok:
            out["bind_s"].append(net.now - t0)
        else:
            out["bind_timeouts"] += 1
    # A wrongly declared death during the bind phase (only possible with loss).
    for x, mark in zip(nodes, marks, strict=True):
        out["false_deaths"] += sum(
            1 for _, e in x.events[mark:] if isinstance(e, MemberChanged) and e.state == "dead"
        )

    # Kill one node that holds a session; wait for every survivor's SessionsLost.
    wait_members(net, nodes, 120.0)
    victim = nodes[rng.randrange(n)]
    vjid = JID.parse(f"victim@bench.local/r{seed}")
    victim.core.put_session(record(victim.name, vjid, net.now))
    flush(net, victim)
    net.run_for(limit, until=lambda: all(x.core.directory.get(vjid) is not None for x in nodes))
    net.run_for(rng.uniform(0.0, timing.probe_interval))
    survivors = [x for x in nodes if x is not victim]
    start = {id(x): len(x.events) for x in survivors}
    seen: dict[int, float] = {}

    def detected() -> bool:
        for x in survivors:
            if id(x) in seen:
                continue
            for when, e in x.events[start[id(x)] :]:
                if isinstance(e, SessionsLost) and e.node == victim.name:
                    seen[id(x)] = when
                    break
            start[id(x)] = len(x.events)
        return len(seen) == len(survivors)

    t_kill = net.now
    net.kill(addr(victim))
    ok = net.run_for(600.0, until=detected)
    if ok:
        times = sorted(seen.values())
        out["detect_all_s"] = times[-1] - t_kill
        out["detect_first_s"] = times[0] - t_kill
        announcers = [
            e
            for x in survivors
            for _, e in x.events
            if isinstance(e, SessionsLost) and e.node == victim.name and e.announce
        ]
        out["announcers"] = len(announcers)
        out["victim_records_purged"] = all(not x.core.directory.records_of(victim.name) for x in survivors)
    else:
        out["detect_timeout"] = True
    return out


def convergence(args) -> dict:
    results = []
    for profile in args.profiles:
        for n in args.nodes:
            for loss in args.loss:
                t = time.perf_counter()
                runs = [run_convergence(n, profile, loss, seed, args.binds) for seed in range(args.seeds)]
                binds = [v for r in runs for v in r["bind_s"]]
                detect = [r["detect_all_s"] for r in runs if "detect_all_s" in r]
                first = [r["detect_first_s"] for r in runs if "detect_first_s" in r]
                res = {
                    "nodes": n,
                    "profile": profile,
                    "loss": loss,
                    "seeds": args.seeds,
                    "bind": summary(binds),
                    "bind_timeouts": sum(r["bind_timeouts"] for r in runs),
                    "detect_all": summary(detect),
                    "detect_first": summary(first),
                    "detect_timeouts": sum(1 for r in runs if r.get("detect_timeout")),
                    "false_deaths": sum(r["false_deaths"] for r in runs),
                    "announcers": [r.get("announcers") for r in runs],
                    "purged": all(r.get("victim_records_purged", False) for r in runs),
                    "errors": [r["error"] for r in runs if "error" in r],
                    "wall_s": round(time.perf_counter() - t, 2),
                }
                results.append(res)
                b, d = res["bind"], res["detect_all"]
                print(
                    f"  {n:>2} nodes {profile:<4} loss {loss:>4.0%}: bind median "
                    f"{b.get('median', float('nan')) * 1000:.1f} ms max {b.get('max', float('nan')) * 1000:.1f} ms;"
                    f" kill detected by all in median {d.get('median', float('nan')):.2f} s"
                    f"  [{res['wall_s']:.1f} s]",
                    flush=True,
                )
    return {"rows": results}


def print_convergence(conv: dict) -> None:
    head = [
        "nodes",
        "profile",
        "loss",
        "binds",
        "median ms",
        "max ms",
        "median gossip rnds",
        "max gossip rnds",
        "median repair rnds",
        "max repair rnds",
        "timeouts",
    ]
    rows = []
    for r in conv["rows"]:
        g = PROFILES[r["profile"]].gossip_interval
        rep = REPAIR[r["profile"]]
        b = r["bind"]
        if not b["n"]:
            rows.append([r["nodes"], r["profile"], f"{r['loss']:.0%}", 0] + ["-"] * 6 + [r["bind_timeouts"]])
            continue
        rows.append(
            [
                r["nodes"],
                r["profile"],
                f"{r['loss']:.0%}",
                b["n"],
                f"{b['median'] * 1000:.1f}",
                f"{b['max'] * 1000:.1f}",
                f"{b['median'] / g:.2f}",
                f"{b['max'] / g:.2f}",
                f"{b['median'] / rep:.3f}",
                f"{b['max'] / rep:.3f}",
                r["bind_timeouts"],
            ]
        )
    print_table(head, rows, "Bind on one node -> the session is in every node's directory (simulated time)")
    print(
        "gossip round = gossip_interval (test 0.1 s, lan 0.2 s); repair round = repair_interval (test 1 s, lan 10 s)."
    )
    print(
        "Deltas are pushed directly to every live member at the bind; only a lost one waits for a repair round."
    )

    head = [
        "nodes",
        "profile",
        "loss",
        "kills",
        "all survivors median s",
        "max s",
        "median probe intvls",
        "max probe intvls",
        "first survivor median s",
        "one announcer",
        "false deaths",
    ]
    rows = []
    for r in conv["rows"]:
        p = PROFILES[r["profile"]].probe_interval
        d, f = r["detect_all"], r["detect_first"]
        if not d["n"]:
            rows.append(
                [r["nodes"], r["profile"], f"{r['loss']:.0%}", 0] + ["-"] * 5 + ["-", r["false_deaths"]]
            )
            continue
        one = all(a == 1 for a in r["announcers"] if a is not None)
        rows.append(
            [
                r["nodes"],
                r["profile"],
                f"{r['loss']:.0%}",
                d["n"],
                f"{d['median']:.2f}",
                f"{d['max']:.2f}",
                f"{d['median'] / p:.1f}",
                f"{d['max'] / p:.1f}",
                f"{f['median']:.2f}",
                "yes" if one else "NO",
                r["false_deaths"],
            ]
        )
    print_table(head, rows, "Node killed -> every survivor reported SessionsLost for it (simulated time)")
    print(
        "probe interval: test 0.4 s, lan 1.0 s. 'false deaths': live members declared dead during the bind phase."
    )
    print(
        "The killed node's link refuses new frames (notify_send_failed), as a crashed process's port would."
    )


# ------------------------------------------------------------------------------------ 3
class KindCounter:
    """Counts frames and bytes a core sends, by frame kind (wraps its drain_outgoing)."""

    def __init__(self, core) -> None:
        self.frames: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        inner = core.drain_outgoing

        def drain():
            out = inner()
            for _, kind, payload in out:
                name = KIND_NAMES.get(int(kind), "forward")
                self.frames[name] = self.frames.get(name, 0) + 1
                self.bytes[name] = self.bytes.get(name, 0) + len(payload) + 6
            return out

        core.drain_outgoing = drain

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.frames), dict(self.bytes)


def run_bandwidth(
    n: int, profile: str, sessions: int, churn: float, window: float, seed: int, step: float = 0.05
) -> dict:
    net, nodes = make_mesh(n, seed, profile, 0.0)
    counters = [KindCounter(x.core) for x in nodes]
    if not wait_members(net, nodes, 120.0):
        return {"error": "members never all alive"}
    rng = random.Random(f"bw/{seed}/{n}/{profile}")
    # Spread the sessions over the nodes (round robin), push them, let everything converge.
    live: list[list[JID]] = [[] for _ in nodes]
    for i in range(sessions):
        j = i % n
        jid = JID.parse(f"u{i}@bench.local/r")
        nodes[j].core.put_session(record(nodes[j].name, jid, net.now))
        live[j].append(jid)
    for x in nodes:
        flush(net, x)
    t0 = net.now
    net.run_for(120.0, until=lambda: all(len(x.core.directory) == sessions for x in nodes))
    fill_s = net.now - t0
    fill_bytes = sum(c.snapshot()[1].get("directory", 0) for c in counters)
    # Let the initial burst and its repairs pass: two repair intervals and two push-pull intervals.
    net.run_for(2 * max(REPAIR[profile], PROFILES[profile].push_pull_interval))
    before = [c.snapshot() for c in counters]
    frames0 = [x.frames_out for x in nodes]
    bytes0 = [x.bytes_out for x in nodes]
    serial = sessions
    t_start = net.now
    end = t_start + window
    ops = 0
    # Churn: Poisson binds per node at `churn`/s, each followed by the unbind of the node's oldest session.
    next_op = [t_start + rng.expovariate(churn) if churn else math.inf for _ in nodes]
    while net.now < end - 1e-9:
        target = min(end, net.now + step, min(next_op))
        net.run_until(target)
        for j, x in enumerate(nodes):
            while next_op[j] <= net.now:
                jid = JID.parse(f"u{serial}@bench.local/r")
                serial += 1
                x.core.put_session(record(x.name, jid, net.now))
                live[j].append(jid)
                x.core.remove_session(live[j].pop(0))
                ops += 2
                next_op[j] += rng.expovariate(churn)
            flush(net, x)
    elapsed = net.now - t_start
    per_node = []
    for x, c, b0, fr0, by0 in zip(nodes, counters, before, frames0, bytes0, strict=True):
        f1, b1 = c.snapshot()
        per_node.append(
            {
                "node": x.name,
                "bytes_per_s": (x.bytes_out - by0) / elapsed,
                "frames_per_s": (x.frames_out - fr0) / elapsed,
                "by_kind_bytes_per_s": {
                    k: (b1.get(k, 0) - b0[1].get(k, 0)) / elapsed for k in set(b1) | set(b0[1])
                },
                "by_kind_frames_per_s": {
                    k: (f1.get(k, 0) - b0[0].get(k, 0)) / elapsed for k in set(f1) | set(b0[0])
                },
                "repairs": x.core.counters["repairs"],
            }
        )
    consistent = len({len(x.core.directory) for x in nodes}) == 1
    return {
        "nodes": n,
        "profile": profile,
        "sessions": sessions,
        "churn_per_node_s": churn,
        "window_s": elapsed,
        "seed": seed,
        "per_node": per_node,
        "ops": ops,
        "fill_s": fill_s,
        "fill_directory_bytes": fill_bytes,
        "directory_sizes_equal_at_end": consistent,
    }


def bandwidth(args) -> dict:
    rows = []
    for profile in args.bw_profiles:
        for n in args.bw_nodes:
            for churn in (0.0, args.churn) if args.churn else (0.0,):
                t = time.perf_counter()
                r = run_bandwidth(n, profile, args.sessions, churn, args.window, seed=1)
                r["wall_s"] = round(time.perf_counter() - t, 2)
                rows.append(r)
                if "error" in r:
                    print(f"  {n} nodes {profile}: {r['error']}")
                    continue
                mean = statistics.mean(p["bytes_per_s"] for p in r["per_node"])
                print(
                    f"  {n:>2} nodes {profile:<4} {args.sessions} sessions churn {churn:g}/s/node: "
                    f"{mean:,.0f} B/s per node  [{r['wall_s']:.1f} s]",
                    flush=True,
                )
    return {"rows": rows}


def print_bandwidth(bw: dict) -> None:
    head = [
        "nodes",
        "profile",
        "sessions",
        "churn /s/node",
        "B/s per node (mean)",
        "max node",
        "membership B/s",
        "directory B/s",
        "frames/s per node",
        "initial fill: MB sent (all nodes)",
    ]
    rows = []
    for r in bw["rows"]:
        if "error" in r:
            continue
        pn = r["per_node"]
        mean = statistics.mean(p["bytes_per_s"] for p in pn)
        memb = statistics.mean(p["by_kind_bytes_per_s"].get("membership", 0.0) for p in pn)
        dire = statistics.mean(p["by_kind_bytes_per_s"].get("directory", 0.0) for p in pn)
        frames = statistics.mean(p["frames_per_s"] for p in pn)
        churn = r["churn_per_node_s"]
        rows.append(
            [
                r["nodes"],
                r["profile"],
                f"{r['sessions']:,}",
                f"{churn:g} binds + {churn:g} unbinds" if churn else "0",
                f"{mean:,.0f}",
                f"{max(p['bytes_per_s'] for p in pn):,.0f}",
                f"{memb:,.0f}",
                f"{dire:,.0f}",
                f"{frames:.1f}",
                f"{r['fill_directory_bytes'] / 1e6:.2f}",
            ]
        )
    win = bw["rows"][0]["window_s"] if bw["rows"] else 0
    print_table(
        head, rows, f"Bytes sent per node per simulated second, steady state over {win:g} s (no loss)"
    )
    print("Bytes = frame payload + 6-byte frame header (TCP/IP and TLS overhead not included).")
    print(
        "'initial fill': directory bytes all nodes sent to replicate the sessions once (before the window)."
    )
    print(
        "Churn: each node binds new sessions as a Poisson process at the given rate and unbinds its oldest one each time."
    )


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("convergence", "bandwidth"), help="run one part only")
    p.add_argument("--nodes", default="3,10,30", help="cluster sizes for convergence (default 3,10,30)")
    p.add_argument("--profiles", default="test,lan", help="timing profiles (default test,lan)")
    p.add_argument("--loss", default="0,0.1", help="frame loss probabilities (default 0,0.1)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per configuration (default 5)")
    p.add_argument("--binds", type=int, default=8, help="binds measured per seed (default 8)")
    p.add_argument("--bw-nodes", default="3,10", help="cluster sizes for bandwidth (default 3,10)")
    p.add_argument("--bw-profiles", default="lan,test", help="profiles for bandwidth (default lan,test)")
    p.add_argument("--sessions", type=int, default=10_000, help="sessions for bandwidth (default 10000)")
    p.add_argument("--window", type=float, default=60.0, help="bandwidth window, simulated s (default 60)")
    p.add_argument(
        "--churn",
        type=float,
        default=10.0,
        help="binds (and as many unbinds) per second per node; 0: only the no-churn row (default 10)",
    )
    p.add_argument("--output", help="JSON file (default benchmarks/results/mesh-convergence-<time>.json)")
    args = p.parse_args(argv)
    args.nodes = [int(x) for x in args.nodes.split(",") if x]
    args.profiles = [x for x in args.profiles.split(",") if x]
    args.loss = [float(x) for x in args.loss.split(",") if x]
    args.bw_nodes = [int(x) for x in args.bw_nodes.split(",") if x]
    args.bw_profiles = [x for x in args.bw_profiles.split(",") if x]
    for prof in args.profiles + args.bw_profiles:
        if prof not in PROFILES:
            p.error(f"unknown profile {prof!r}")

    started = time.perf_counter()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: dict = {
        "meta": {
            "time": stamp,
            "host": platform.node(),
            "python": platform.python_version(),
            "argv": sys.argv[1:] if argv is None else argv,
            "cpus": os.cpu_count(),
        }
    }
    if args.only in (None, "convergence"):
        print(
            f"convergence: nodes {args.nodes}, profiles {args.profiles}, loss {args.loss}, "
            f"{args.seeds} seeds x {args.binds} binds + 1 kill",
            flush=True,
        )
        out["convergence"] = convergence(args)
    if args.only in (None, "bandwidth"):
        print(
            f"bandwidth: nodes {args.bw_nodes}, profiles {args.bw_profiles}, {args.sessions} sessions, "
            f"{args.window:g} s window, churn 0 and {args.churn:g}/s/node",
            flush=True,
        )
        out["bandwidth"] = bandwidth(args)
    if "convergence" in out:
        print_convergence(out["convergence"])
    if "bandwidth" in out:
        print_bandwidth(out["bandwidth"])
    out["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    path = Path(args.output) if args.output else HERE / "results" / f"mesh-convergence-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nsaved {path} (total {out['meta']['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
