"""Three ``python -m meshxmpp serve`` subprocesses forming a mesh on loopback, for the interop tests.

Every node gets its own TOML file (same domain, same SQLite file, its own client, HTTP and mesh ports)
and is started from the command line with ``--mesh-port``, ``--node-name`` and one ``--peers`` list
naming all three nodes (each node drops itself from it). The domain keeps the default routing
policy; every node has the same ``[[routing.sender]]`` rules giving one sender account each policy
(`SENDER_POLICIES`). Node ``i``'s output goes to ``node{i}.log`` in the temporary directory; `tails`
returns the ends of those files for failure reports. Every wait is a bounded poll that says what it
was waiting for when it gives up.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DOMAIN = "localhost"
SECRET = "meshxmpp-interop-subprocess-secret"
PYTHON = sys.executable
#: Sender accounts with a ``[[routing.sender]]`` rule of their own on every node (local part -> policy),
#: so that one cluster shows each routing policy; everybody else gets the default (top-priority-all).
SENDER_POLICIES: dict[str, str] = {
    "via-most-available": "most-available",
    "via-top-priority-all": "top-priority-all",
    "via-all-non-negative": "all-non-negative",
    "via-all-connected": "all-connected",
}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound to port 0 together, then closed)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class WaitTimeout(AssertionError):
    pass


def wait_until(check: Callable[[], T | None], what: Callable[[], str] | str, *, timeout: float,
               interval: float = 0.02) -> T:
    """Bounded poll: call ``check`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"after {timeout} s: {what() if callable(what) else what}")
        time.sleep(interval)  # bounded poll of a subprocess's state (no event crosses the process boundary)


@dataclass
class NodeProc:
    index: int
    config: Path
    log: Path
    c2s_port: int
    http_port: int
    mesh_port: int
    proc: subprocess.Popen[bytes] | None = None
    killed_at: float | None = None

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def c2s_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.c2s_port)


@dataclass
class MeshProcs:
    tmp: Path
    n: int = 3
    nodes: list[NodeProc] = field(default_factory=list)
    #: seconds: users created, every node healthy and converged (from the start of the processes)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ports = free_ports(3 * self.n)
        db = self.tmp / "mesh.sqlite3"
        for i in range(self.n):
            c2s, http_port, mesh = ports[3 * i: 3 * i + 3]
            data_dir = self.tmp / f"node{i}"
            data_dir.mkdir()
            config = self.tmp / f"node{i}.toml"
            config.write_text(
                f'domain = "{DOMAIN}"\n'
                f'data_dir = "{data_dir}"\n'
                'log_level = "info"\n'
                "[storage]\n"
                f'path = "{db}"\n'
                "[c2s]\n"
                f'bind = "127.0.0.1"\nport = {c2s}\nrequire_encryption = false\n'
                "[http]\n"
                f'bind = "127.0.0.1"\nport = {http_port}\n'
                "[mesh]\n"
                f'bind = "127.0.0.1"\nsecret = "{SECRET}"\nprofile = "test"\n'
                + "".join(f'[[routing.sender]]\nmatch = "{local}@{DOMAIN}"\npolicy = "{policy}"\n'
                          for local, policy in SENDER_POLICIES.items())
            )
            self.nodes.append(NodeProc(i, config, self.tmp / f"node{i}.log", c2s, http_port, mesh))

    def __getitem__(self, i: int) -> NodeProc:
        return self.nodes[i]

    @property
    def peers(self) -> str:
        return ",".join(f"127.0.0.1:{n.mesh_port}" for n in self.nodes)

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes if n.proc is not None and n.killed_at is None]

    # ------------------------------------------------------------------ commands

    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "meshxmpp", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def add_users(self, users: Sequence[tuple[str, str]]) -> None:
        """``meshxmpp adduser`` for every (local, password), in parallel (one SQLite file, many writers)."""
        procs = [
            (local, subprocess.Popen(
                [PYTHON, "-m", "meshxmpp", "adduser", "--config", str(self.nodes[0].config),
                 f"{local}@{DOMAIN}", "--password", password],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            for local, password in users
        ]
        problems = []
        for local, p in procs:
            out, _ = p.communicate(timeout=30)
            if p.returncode != 0 or f"user {local}@{DOMAIN} created" not in out:
                problems.append(f"adduser {local}: exit {p.returncode}: {out.strip()}")
        assert not problems, "\n".join(problems)

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for node in self.nodes:
            log = node.log.open("wb")
            node.proc = subprocess.Popen(
                [PYTHON, "-m", "meshxmpp", "serve", "--config", str(node.config),
                 "--mesh-port", str(node.mesh_port), "--node-name", node.name, "--peers", self.peers],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()  # the child holds its own descriptor

    def kill(self, i: int) -> float:
        """SIGKILL node ``i``; returns the monotonic time just before the signal."""
        node = self.nodes[i]
        assert node.proc is not None
        t = time.monotonic()
        node.proc.send_signal(signal.SIGKILL)
        node.killed_at = t
        node.proc.wait(timeout=10)
        return t

    def close(self) -> None:
        for node in self.nodes:
            p = node.proc
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
        for node in self.nodes:
            p = node.proc
            if p is None:
                continue
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def check_running(self) -> None:
        for node in self.live():
            assert node.proc is not None
            code = node.proc.poll()
            if code is not None:
                raise AssertionError(f"{node.name} exited with {code}:\n{self.tail(node.index)}")

    # ------------------------------------------------------------------ HTTP

    def http_get(self, i: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.nodes[i].http_port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def healthy(self, i: int) -> bool:
        try:
            return self.http_get(i, "/healthz") == (200, b"ok")
        except OSError:
            return False

    def status(self, i: int) -> dict[str, Any]:
        """``GET /api/cluster`` (what ``meshxmpp cluster status`` prints), decoded."""
        code, body = self.http_get(i, "/api/cluster")
        assert code == 200, f"node{i} /api/cluster answered {code}: {body[:200]!r}"
        result: dict[str, Any] = json.loads(body)
        return result

    def explain(self, i: int, to: str, type_: str = "chat", sender: str | None = None) -> dict[str, Any]:
        """``GET /api/explain`` on node ``i`` (what ``meshxmpp explain`` prints), decoded."""
        query = {"to": to, "type": type_, **({"from": sender} if sender is not None else {})}
        code, body = self.http_get(i, "/api/explain?" + urllib.parse.urlencode(query))
        assert code == 200, f"node{i} /api/explain?{query} answered {code}: {body[:200]!r}"
        result: dict[str, Any] = json.loads(body)
        return result

    def states(self, i: int) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.status(i)["members"]}

    def cli_status(self, i: int, *, as_json: bool) -> subprocess.CompletedProcess[str]:
        args = ["cluster", "status", "--config", str(self.nodes[i].config)]
        return self.cli(*args, *(["--json"] if as_json else []))

    def cli_status_all(self, indices: Sequence[int]) -> dict[int, dict[str, Any] | str]:
        """``meshxmpp cluster status --json`` on several nodes at once: decoded, or the error text."""
        procs = {
            i: subprocess.Popen([PYTHON, "-m", "meshxmpp", "cluster", "status", "--config",
                                 str(self.nodes[i].config), "--json", "--timeout", "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in indices
        }
        out: dict[int, dict[str, Any] | str] = {}
        for i, p in procs.items():
            stdout, stderr = p.communicate(timeout=20)
            if p.returncode == 0:
                try:
                    out[i] = json.loads(stdout)
                except ValueError:
                    out[i] = f"not JSON: {stdout[:200]!r}"
            else:
                out[i] = f"exit {p.returncode}: {stderr.strip()}"
        return out

    # ------------------------------------------------------------------ logs

    def tail(self, i: int, lines: int = 40) -> str:
        try:
            text = self.nodes[i].log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"----- {n.name} ({n.log}) -----\n{self.tail(n.index, lines)}" for n in self.nodes)


@contextlib.contextmanager
def started(tmp: Path, users: Sequence[tuple[str, str]], *, timeout: float = 30.0) -> Any:
    """Users created, three nodes serving and seeing each other alive; every process killed at exit."""
    procs = MeshProcs(tmp)
    try:
        t0 = time.monotonic()
        procs.add_users(users)
        procs.timings["adduser"] = time.monotonic() - t0
        t0 = time.monotonic()
        procs.start()

        def all_healthy() -> bool:
            procs.check_running()
            return all(procs.healthy(n.index) for n in procs.nodes)

        wait_until(all_healthy, lambda: "GET /healthz not answered by every node\n" + procs.tails(),
                   timeout=timeout, interval=0.05)
        procs.timings["healthy"] = time.monotonic() - t0
        views: dict[int, dict[str, Any] | str] = {}
        want = {n.name: "alive" for n in procs.nodes}

        def same(view: dict[str, Any] | str) -> bool:
            return isinstance(view, dict) and {m["name"]: m["state"] for m in view["members"]} == want

        def converged_http() -> bool:
            procs.check_running()
            views.update({n.index: procs.status(n.index) for n in procs.nodes})
            return all(same(v) for v in views.values())

        def converged_cli() -> bool:
            procs.check_running()
            views.update(procs.cli_status_all(range(procs.n)))
            return all(same(v) for v in views.values())

        # The cheap HTTP poll first, then what `meshxmpp cluster status --json` says on every node.
        for check in (converged_http, converged_cli):
            wait_until(check, lambda: f"cluster status never showed {want} on every node: {views}\n"
                       + procs.tails(), timeout=timeout, interval=0.05)
        procs.timings["converged"] = time.monotonic() - t0
        yield procs
    finally:
        procs.close()
