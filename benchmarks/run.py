"""Benchmark meshxmpp, Prosody and ejabberd in one run, with the same load, on this machine.

For each server that is installed: start it with its own config (servers.py), log in the load
clients, measure RSS per idle authenticated connection, then a max-load phase and (unless
--steady-rate 0) a steady-rate phase of full-JID chat between the clients (loadgen.py); stop it.
Prints a table and writes JSON to benchmarks/results/.

    python benchmarks/run.py                       # all servers, defaults
    python benchmarks/run.py --servers prosody,ejabberd --duration 5

Only ratios between servers within one run mean something: the load generator shares the
machine's two cores with the server, and repeats differ by up to ~25 %.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE))
    import loadgen
    import servers
else:  # pragma: no cover
    from . import loadgen, servers

DEFAULT_SERVERS = "meshxmpp,prosody,ejabberd"
REFERENCES = ("ejabberd", "prosody")


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


async def bench_one(srv: servers.Server, args: argparse.Namespace) -> dict:
    host, port, pid = servers.HOST, srv.port, srv.pid
    users = servers.user_names(args.clients + args.idle)
    out: dict = {}
    t = time.monotonic()
    clients = await loadgen.open_clients(host, port, users[: args.clients])
    out["login_s"] = round(time.monotonic() - t, 2)
    phases = out["phase_s"] = {}
    try:
        if args.idle:
            t = time.monotonic()
            out["memory"] = await loadgen.measure_idle_memory(host, port, pid, users[args.clients :])
            await asyncio.sleep(1.0)  # let the server finish closing them
            phases["memory"] = round(time.monotonic() - t, 2)
        profiler = None

        def start_profiler() -> None:
            nonlocal profiler
            if args.profile and srv.name == "meshxmpp":
                profiler = start_py_spy(pid, args.duration, Path(args.profile))

        t = time.monotonic()
        r = await loadgen.measure_load(
            clients,
            pid,
            mode="max",
            duration=args.duration,
            warmup=args.warmup,
            window=args.window,
            on_window_start=start_profiler,
        )
        out["max"] = asdict(r)
        phases["max"] = round(time.monotonic() - t, 2)
        if profiler is not None:
            out["profile"] = finish_py_spy(profiler)
        if args.steady_rate > 0:
            t = time.monotonic()
            r = await loadgen.measure_load(
                clients,
                pid,
                mode="steady",
                duration=args.steady_duration,
                warmup=1.0,
                window=args.window,
                rate=args.steady_rate,
            )
            out["steady"] = asdict(r)
            phases["steady"] = round(time.monotonic() - t, 2)
    finally:
        t = time.monotonic()
        await loadgen.close_clients(clients, settle=0.3)
        phases["close"] = round(time.monotonic() - t, 2)
    return out


# -- py-spy ------------------------------------------------------------------------------------
def start_py_spy(pid: int, duration: float, outdir: Path) -> tuple[subprocess.Popen, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    raw = outdir / "meshxmpp-py-spy.txt"
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(round(duration))),
        "--rate",
        "100",
        "--format",
        "raw",
        "--output",
        str(raw),
        "--nonblocking",
    ]
    print(f"  profiling: {' '.join(cmd)}", flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), raw


def finish_py_spy(handle: tuple[subprocess.Popen, Path]) -> dict:
    proc, raw = handle
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode != 0 or not raw.exists():
        return {"error": err.decode(errors="replace").strip()[-500:]}
    sys.path.insert(0, str(HERE))
    import profile_top

    return {"raw": str(raw), **profile_top.summarize(raw)}


# -- report ------------------------------------------------------------------------------------
def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def print_table(results: dict[str, dict]) -> None:
    present = [r for r in REFERENCES if results.get(r, {}).get("max", {}).get("cpu_ms_per_1000")]
    head = [
        "server",
        "msgs/s (max)",
        "CPU ms/1000 (max)",
        "msgs/s (steady)",
        "CPU ms/1000 (steady)",
        "KiB/idle conn",
    ]
    head += [f"CPU vs {r}" for r in present]
    rows = []
    for name, res in results.items():
        if "error" in res or "skipped" in res:
            continue
        mx, st, mem = res.get("max", {}), res.get("steady", {}), res.get("memory", {})
        row = [
            name,
            _fmt(mx.get("msgs_per_s"), ",.0f"),
            _fmt(mx.get("cpu_ms_per_1000"), ".1f"),
            _fmt(st.get("msgs_per_s"), ",.0f"),
            _fmt(st.get("cpu_ms_per_1000"), ".1f"),
            _fmt(mem.get("kib_per_idle_connection"), ".1f"),
        ]
        for ref in present:
            ours, theirs = mx.get("cpu_ms_per_1000"), results[ref]["max"]["cpu_ms_per_1000"]
            row.append(_fmt(ours / theirs if ours else None, ".2f") + "x" if ours else "-")
        rows.append(row)
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
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()
    print("CPU = user+system of the server's process tree per 1000 delivered messages (lower is better);")
    print("'CPU vs X' compares the max-load figure; KiB/idle conn = RSS growth / idle logged-in connections.")
    for name, res in results.items():
        if "skipped" in res:
            print(f"{name}: skipped: {res['skipped']}")
        elif "error" in res:
            print(f"{name}: FAILED: {res['error']}")
        else:
            for phase in ("max", "steady"):
                for note in res.get(phase, {}).get("notes", []):
                    print(f"{name} ({phase}): {note}")
            mem = res.get("memory")
            if mem and mem.get("still_open_after_settle", 0) < mem.get("idle_connections", 0):
                print(
                    f"{name} (memory): only {mem['still_open_after_settle']} of {mem['idle_connections']} "
                    "idle connections were still open when RSS was read"
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated, from {', '.join(servers.SERVERS)} (default {DEFAULT_SERVERS})",
    )
    p.add_argument("--clients", type=int, default=200, help="clients exchanging messages (default 200)")
    p.add_argument("--duration", type=float, default=10.0, help="max-load measurement window, s (default 10)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="max-load warm-up before the window, s (default 2)"
    )
    p.add_argument("--window", type=int, default=8, help="messages in flight per client (default 8)")
    p.add_argument(
        "--steady-rate",
        type=float,
        default=2000.0,
        help="messages/s of the steady phase; 0 skips it (default 2000)",
    )
    p.add_argument("--steady-duration", type=float, default=5.0, help="steady window, s (default 5)")
    p.add_argument(
        "--idle",
        type=int,
        default=1000,
        help="extra idle logged-in connections for the memory figure; 0 skips it (default 1000)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the servers and the load generator, e.g. -10 (root) so that other "
        "work on a shared machine disturbs the figures less (default 0)",
    )
    p.add_argument("--profile", metavar="DIR", help="run py-spy on meshxmpp during the max-load window")
    p.add_argument("--keep", action="store_true", help="keep the servers' temporary directories")
    p.add_argument("--no-uvloop", action="store_true", help="load generator on plain asyncio")
    p.add_argument("--output", help="JSON file (default benchmarks/results/run-<time>.json)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in servers.SERVERS]
    if unknown:
        p.error(f"unknown server(s): {', '.join(unknown)}")
    loadgen.raise_fd_limit()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    loop_name = loadgen.install_uvloop(not args.no_uvloop)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    started = time.monotonic()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
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
        "idle": args.idle,
        "nice": args.nice,
        "loadavg_at_start": os.getloadavg(),
    }
    print(
        f"benchmark: {args.clients} clients, window {args.window}, max load {args.duration:g} s "
        f"(+{args.warmup:g} s warm-up), steady {args.steady_rate:g}/s for {args.steady_duration:g} s, "
        f"{args.idle} idle connections; load generator on {loop_name}; nice {args.nice}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    results: dict[str, dict] = {}
    try:
        for name in names:
            srv = servers.SERVERS[name](keep=args.keep)
            why = srv.unavailable()
            if why:
                print(f"{name}: SKIPPED: {why}", flush=True)
                results[name] = {"skipped": why}
                srv.stop()
                continue
            t = time.monotonic()
            try:
                srv.start(args.clients + args.idle, nice=args.nice)
                start_s = round(time.monotonic() - t, 2)
                version = srv.version()
                print(
                    f"{name}: {version}, port {srv.port}, ready with {args.clients + args.idle} accounts "
                    f"in {time.monotonic() - t:.1f} s",
                    flush=True,
                )
                res = asyncio.run(bench_one(srv, args))
                res["version"] = version
                res["start_s"] = start_s
                results[name] = res
                mx, mem = res["max"], res.get("memory") or {}
                print(
                    f"{name}: max {mx['msgs_per_s']:,.0f} msgs/s, {_fmt(mx['cpu_ms_per_1000'], '.1f')} CPU ms/1000"
                    f" (server {mx['server_cpu_cores']:.2f} cores, loadgen {mx['loadgen_cpu_cores']:.2f},"
                    f" other {mx['other_cpu_cores']:.2f})"
                    + (
                        f"; steady {res['steady']['msgs_per_s']:,.0f} msgs/s, "
                        f"{_fmt(res['steady']['cpu_ms_per_1000'], '.1f')} CPU ms/1000"
                        if "steady" in res
                        else ""
                    )
                    + (f"; {mem['kib_per_idle_connection']:.1f} KiB/idle conn" if mem else "")
                    + f"  [{time.monotonic() - t:.0f} s]",
                    flush=True,
                )
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one server failing must not lose the others
                msg = f"{type(exc).__name__}: {exc}"
                print(f"{name}: FAILED: {msg[:2000]}", flush=True)
                results[name] = {"error": msg}
            finally:
                t = time.monotonic()
                srv.stop()
                if name in results and "error" not in results[name] and "skipped" not in results[name]:
                    results[name].setdefault("phase_s", {})["stop"] = round(time.monotonic() - t, 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    meta["total_s"] = round(time.monotonic() - started, 1)
    print_table(results)
    out = Path(args.output) if args.output else HERE / "results" / f"run-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nsaved {out} (total {meta['total_s']:.0f} s)")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
