"""Start and stop the benchmarked XMPP servers as child processes, each with its own config.

Every server runs from a fresh temporary directory, listens on its own port on 127.0.0.1 only,
serves the domain ``bench.local``, allows SASL PLAIN without TLS, and gets the accounts
bench0..bench{n-1} with the password "pw":

- meshxmpp: ``python -m meshxmpp --config X serve``; accounts written through its storage API
  (meshxmpp.storage.open_storage + meshxmpp.c2s.sasl.derive_credentials), or with
  ``meshxmpp adduser`` when that API is not there.
- prosody (Debian package): ``prosody --config X -F``; accounts written as its internal_plain
  data files before the start.
- ejabberd (Debian package): ``ejabberdctl --config-dir X --node N foreground``, from a copy of
  the script that does not switch to the ejabberd user, so the node stays in our process tree;
  accounts created by in-band registration (XEP-0077), open only on this instance.

Used by run.py; can also be used alone to start one server and leave it running:

    python benchmarks/servers.py prosody --accounts 1200      # prints port and pid, Ctrl-C stops
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import loadgen, procstat
except ImportError:  # pragma: no cover
    import loadgen  # type: ignore[no-redef]
    import procstat  # type: ignore[no-redef]

DOMAIN = loadgen.DOMAIN
PASSWORD = loadgen.PASSWORD
HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def user_names(n: int, prefix: str = "bench") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


class ServerError(RuntimeError):
    pass


class Server:
    """Base class: a server process started in its own session (process group)."""

    name = "?"

    def __init__(self, workdir: Path | None = None, keep: bool = False) -> None:
        self.keep = keep
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "server.log"
        self._log = None

    # -- to override
    def unavailable(self) -> str | None:
        """None when the server can run here, else the reason it cannot."""
        return None

    def version(self) -> str:
        return "?"

    def prepare(self, n_accounts: int) -> None:
        """Write config (and accounts, where that is done offline) before the start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return self.workdir

    async def create_accounts_online(self, n_accounts: int) -> None:
        """Create accounts once the server runs (only where prepare() cannot)."""

    # -- common
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, n_accounts: int, ready_timeout: float = 60.0, nice: int = 0) -> None:
        """Prepare, start, wait until it answers, create accounts. ``nice``: the niceness the
        server runs at (negative needs root), inherited by all its processes and threads."""
        self.prepare(n_accounts)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.cwd(),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None,
        )
        self.wait_ready(ready_timeout)
        asyncio.run(self.create_accounts_online(n_accounts))

    def wait_ready(self, timeout: float) -> None:
        """Until the port answers a stream header with stream features."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with code {self.proc.returncode}; {self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    s.sendall(loadgen.stream_header(DOMAIN))
                    data = b""
                    s.settimeout(2)
                    while not loadgen.FEATURES_END.search(data):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if loadgen.FEATURES_END.search(data):
                        return
                    last = repr(data[-200:])
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServerError(
            f"{self.name} not ready on port {self.port} after {timeout:.0f} s ({last}); {self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "log: " + " | ".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to every process of the tree (by pid), then SIGKILL to what is left."""
        if self.proc is not None and self.proc.poll() is None:
            pids = procstat.tree_pids(self.proc.pid)
            for pid in reversed(pids):  # leaves first: the server itself before its wrappers
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                self.proc.poll()
                time.sleep(0.1)
            for pid in pids:
                if _alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


# ---------------------------------------------------------------------------------------------
class Meshxmpp(Server):
    name = "meshxmpp"

    def __init__(self, *a, python: str | None = None, **kw) -> None:
        super().__init__(*a, **kw)
        self.python = python or sys.executable

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-m", "meshxmpp", *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Run the tree's code even when meshxmpp is not installed.
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def unavailable(self) -> str | None:
        try:
            r = self._run("--version", timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`python -m meshxmpp --version` failed: {exc}"
        if r.returncode != 0:
            return (
                f"`python -m meshxmpp --version` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
            )
        return None

    def version(self) -> str:
        r = self._run("--version", timeout=30)
        return (r.stdout or r.stderr).strip()

    @property
    def config_path(self) -> Path:
        return self.workdir / "meshxmpp.toml"

    def prepare(self, n_accounts: int) -> None:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        self.config_path.write_text(
            f'domain = "{DOMAIN}"\n'
            f'data_dir = "{data}"\n'
            'log_level = "warning"\n'
            "\n[c2s]\n"
            f'bind = "{HOST}"\n'
            f"port = {self.port}\n"
            "require_encryption = false\n"
            "\n[http]\n"
            "enabled = false\n"
        )
        self._create_accounts(n_accounts)

    def _create_accounts(self, n: int) -> None:
        if n <= 0:
            return
        t = time.monotonic()
        # Fast path: one process, one key derivation shared by all accounts (same password).
        r = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_meshxmpp_accounts",
                str(self.config_path),
                str(n),
            ],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode == 0:
            # Check with the CLI that the server will see them (the storage API may change).
            listed = self._run("--config", str(self.config_path), "listusers", timeout=60)
            if listed.returncode == 0 and f"bench{n - 1}@{DOMAIN}" in listed.stdout.split():
                return
            fast_error = [f"`meshxmpp listusers` does not list the accounts: {listed.stdout[-200:]!r}"]
        else:
            fast_error = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        print(
            f"  meshxmpp: storage API unusable ({fast_error[0]}); falling back to `meshxmpp adduser`",
            file=sys.stderr,
        )
        # Slow path: the CLI, 8 at a time.
        pending = [f"{u}@{DOMAIN}" for u in user_names(n)]
        running: list[subprocess.Popen[bytes]] = []
        while pending or running:
            while pending and len(running) < 8:
                jid = pending.pop()
                running.append(
                    subprocess.Popen(
                        [
                            self.python,
                            "-m",
                            "meshxmpp",
                            "--config",
                            str(self.config_path),
                            "adduser",
                            jid,
                            "--password",
                            PASSWORD,
                            "--exist-ok",
                        ],
                        cwd=self.workdir,
                        env=self.env(),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            p = running.pop(0)
            _, err = p.communicate(timeout=120)
            if p.returncode != 0:
                raise ServerError(f"meshxmpp adduser failed: {err.decode(errors='replace').strip()[-300:]}")
        print(f"  meshxmpp: {n} accounts via adduser in {time.monotonic() - t:.0f} s", file=sys.stderr)

    def command(self) -> list[str]:
        return [self.python, "-m", "meshxmpp", "--config", str(self.config_path), "serve"]


def _meshxmpp_accounts(config_path: str, n: int) -> None:
    """Child helper: create bench0..bench{n-1} in meshxmpp's storage directly."""
    import trio

    from meshxmpp.c2s.sasl import derive_credentials
    from meshxmpp.config import load_config
    from meshxmpp.storage import open_storage

    config = load_config(config_path)
    creds = derive_credentials(PASSWORD)

    async def run() -> None:
        storage = open_storage(config)
        await storage.open()
        try:
            for user in user_names(n):  # storage keys accounts by bare JID, as `meshxmpp adduser` does
                await storage.accounts.create(f"{user}@{DOMAIN}", creds)
        finally:
            with trio.CancelScope(shield=True):
                await storage.close()

    trio.run(run)


# ---------------------------------------------------------------------------------------------
class Prosody(Server):
    name = "prosody"
    gc_mode: str | None = None  # None: Debian's default (incremental)

    def unavailable(self) -> str | None:
        if shutil.which("prosody") is None:
            return "prosody is not installed (run benchmarks/setup.sh)"
        return None

    def version(self) -> str:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True)
        v = r.stdout.strip() or "?"
        return f"Prosody {v}" + (f" (gc {self.gc_mode})" if self.gc_mode else "")

    @property
    def config_path(self) -> Path:
        return self.workdir / "prosody.cfg.lua"

    def prepare(self, n_accounts: int) -> None:
        data = self.workdir / "data"
        (self.workdir / "certs").mkdir(exist_ok=True)
        gc = f'gc = {{ mode = "{self.gc_mode}" }}\n' if self.gc_mode else ""
        self.config_path.write_text(
            "-- written by meshxmpp benchmarks/servers.py\n"
            "run_as_root = true\n"
            f'pidfile = "{self.workdir}/prosody.pid"\n'
            f'data_path = "{data}"\n'
            f'certificates = "{self.workdir}/certs"\n'
            'interfaces = { "127.0.0.1" }\n'
            'local_interfaces = { "127.0.0.1" }\n'
            f"c2s_ports = {{ {self.port} }}\n"
            "c2s_direct_tls_ports = { }\n"
            "s2s_ports = { }\n"
            "s2s_direct_tls_ports = { }\n"
            "component_ports = { }\n"
            "http_ports = { }\n"
            "https_ports = { }\n"
            'network_backend = "epoll"\n'
            'authentication = "internal_plain"\n'
            'storage = "internal"\n'
            "c2s_require_encryption = false\n"
            "allow_unencrypted_plain_auth = true\n"
            "s2s_require_encryption = false\n"
            'modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; }\n'
            'modules_disabled = { "s2s"; }\n'
            f'log = {{ warn = "{self.workdir}/prosody.log" }}\n' + gc + f'\nVirtualHost "{DOMAIN}"\n'
        )
        # internal_plain account files: <data>/<host, %-encoded>/accounts/<user>.dat
        host_dir = "".join(c if c.isalnum() else f"%{ord(c):02x}" for c in DOMAIN)
        acc = data / host_dir / "accounts"
        acc.mkdir(parents=True, exist_ok=True)
        body = f'return {{\n\t["password"] = "{PASSWORD}";\n}};\n'
        for u in user_names(n_accounts):
            (acc / f"{u}.dat").write_text(body)

    def command(self) -> list[str]:
        return ["prosody", "--config", str(self.config_path), "-F"]


class ProsodyGenerational(Prosody):
    name = "prosody-gen"
    gc_mode = "generational"


# ---------------------------------------------------------------------------------------------
class Ejabberd(Server):
    name = "ejabberd"
    ctl = "ejabberdctl"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.node = f"bench{os.getpid()}x{self.port}@localhost"

    def unavailable(self) -> str | None:
        if shutil.which(self.ctl) is None and not Path("/usr/sbin/ejabberdctl").exists():
            return "ejabberd is not installed (run benchmarks/setup.sh)"
        return None

    def version(self) -> str:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "ejabberd"], capture_output=True, text=True)
        return f"ejabberd {r.stdout.strip() or '?'}"

    def prepare(self, n_accounts: int) -> None:
        wd = self.workdir
        for d in ("spool", "logs"):
            (wd / d).mkdir(exist_ok=True)
        (wd / "ejabberd.yml").write_text(
            "# written by meshxmpp benchmarks/servers.py\n"
            "hosts:\n"
            f"  - {DOMAIN}\n"
            "loglevel: warning\n"
            "certfiles: []\n"
            "acme:\n"
            "  auto: false\n"
            "listen:\n"
            "  -\n"
            f"    port: {self.port}\n"
            f'    ip: "{HOST}"\n'
            "    module: ejabberd_c2s\n"
            "    starttls_required: false\n"
            "    max_stanza_size: 262144\n"
            "    backlog: 1024\n"  # the default (5) drops handshakes when many clients connect at once
            "auth_method: internal\n"
            "auth_password_format: plain\n"
            "registration_timeout: infinity\n"
            "access_rules:\n"
            "  register:\n"
            "    allow: all\n"
            "modules:\n"
            "  mod_disco: {}\n"
            "  mod_ping: {}\n"
            "  mod_roster: {}\n"
            "  mod_register:\n"
            "    ip_access: all\n"
            "    access: register\n"
        )
        # Sourced by ejabberdctl: node name (unique per instance), a cookie of our own, Erlang
        # distribution (and epmd, if this node has to start it) on loopback only.
        (wd / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={self.node}\n"
            'ERL_OPTIONS="-setcookie meshxmppbench -kernel inet_dist_use_interface {127,0,0,1}"\n'
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
        )
        if Path("/etc/ejabberd/inetrc").exists():
            shutil.copy("/etc/ejabberd/inetrc", wd / "inetrc")
        # Debian's ejabberdctl switches to the ejabberd user (su) when started by root; the node
        # would then leave our process tree (su starts a new session) and get su's file limits.
        # A copy without that switch keeps the node our child, with our limits.
        script = Path(shutil.which(self.ctl) or "/usr/sbin/ejabberdctl").read_text()
        script = re.sub(r"(?m)^INSTALLUSER=.*$", "INSTALLUSER=", script)
        (wd / "ejabberdctl").write_text(script)
        os.chmod(wd / "ejabberdctl", 0o755)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.workdir)  # Erlang writes .erlang.cookie into $HOME
        env["EJABBERD_BYPASS_WARNINGS"] = "true"
        return env

    def cwd(self) -> Path:
        return self.workdir

    def command(self) -> list[str]:
        wd = self.workdir
        return [
            str(wd / "ejabberdctl"),
            "--config-dir",
            str(wd),
            "--config",
            str(wd / "ejabberd.yml"),
            "--ctl-config",
            str(wd / "ejabberdctl.cfg"),
            "--spool",
            str(wd / "spool"),
            "--logs",
            str(wd / "logs"),
            "--node",
            self.node,
            "foreground",
        ]

    def log_tail(self, lines: int = 15) -> str:
        out = super().log_tail(lines)
        try:
            text = (self.workdir / "logs" / "ejabberd.log").read_text(errors="replace").splitlines()
            out += " | ejabberd.log: " + " | ".join(text[-lines:])
        except OSError:
            pass
        return out

    async def create_accounts_online(self, n_accounts: int) -> None:
        users = user_names(n_accounts)
        deadline = time.monotonic() + 30
        while True:  # the listener can open before mod_register is up
            try:
                await loadgen.register_users(HOST, self.port, users[:1])
                break
            except (loadgen.HandshakeError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await loadgen.register_users(HOST, self.port, users[1:])


SERVERS: dict[str, type[Server]] = {
    "meshxmpp": Meshxmpp,
    "prosody": Prosody,
    "prosody-gen": ProsodyGenerational,
    "ejabberd": Ejabberd,
}


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    if argv[:1] == ["_meshxmpp_accounts"]:
        _meshxmpp_accounts(argv[1], int(argv[2]))
        return 0
    import argparse

    p = argparse.ArgumentParser(description="Start one benchmark server and keep it running until Ctrl-C.")
    p.add_argument("server", choices=sorted(SERVERS))
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    loadgen.raise_fd_limit()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    srv = SERVERS[args.server](keep=args.keep)
    why = srv.unavailable()
    if why:
        print(f"{srv.name}: {why}", file=sys.stderr)
        return 1
    try:
        t = time.monotonic()
        srv.start(args.accounts)
        print(
            f"{srv.version()} on {HOST}:{srv.port}, pid {srv.pid}, dir {srv.workdir}, "
            f"{args.accounts} accounts, ready in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        srv.proc.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
