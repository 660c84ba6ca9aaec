"""The meshxmpp command, run as a real process (``python -m meshxmpp``), plus its logging setup."""

from __future__ import annotations

import io
import logging
import os
import queue
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshxmpp import cli
from meshxmpp._logging import OneLineFormatter, is_expected_network_error, setup_logging
from meshxmpp.c2s.sasl import derive_credentials
from meshxmpp.config import Config, load_config
from meshxmpp.storage import SqliteStorage

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.pop("MESHXMPP_CONFIG", None)
    e.pop("MESHXMPP_MESH_SECRET", None)
    return e


def run(
    cwd: Path, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshxmpp", *args],
        cwd=cwd,
        env=env(),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() installs a handler on the root logger; keep tests independent of each other.
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


class InProcess:
    """``meshxmpp ARGS`` through ``cli.main`` in this process: same code path, no start-up cost."""

    def __init__(
        self, cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        monkeypatch.chdir(cwd)

    def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli.main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def meshxmpp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> InProcess:
    return InProcess(tmp_path, capsys, monkeypatch)


async def credentials(db: Path, user: str) -> dict | None:  # type: ignore[type-arg]
    storage = SqliteStorage(db)
    await storage.open()
    try:
        return await storage.accounts.get_credentials(user)
    finally:
        await storage.close()


async def password_is(db: Path, user: str, password: str) -> bool:
    creds = await credentials(db, user)
    assert creds is not None, f"{user} does not exist"
    c = creds["SHA-256"]
    again = derive_credentials(password, salt=c.salt, iterations=c.iterations)["SHA-256"]
    return again.stored_key == c.stored_key


# ---------------------------------------------------------------------------------------------
# basics


def test_version(tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout == f"meshxmpp {version}\n"


def test_check_config_prints_ok(tmp_path: Path) -> None:
    result = run(tmp_path, "check-config")
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
    (tmp_path / "m.toml").write_text('domain = "example.org"\n')
    # --config is accepted after the command too.
    result = run(tmp_path, "check-config", "--config", "m.toml")
    assert (result.returncode, result.stdout) == (0, "OK\n")
    assert not (tmp_path / "meshxmpp-data").exists()  # checking changes nothing


def test_example_config_checks(tmp_path: Path) -> None:
    result = run(tmp_path, "--config", str(ROOT / "examples" / "meshxmpp.toml"), "check-config")
    assert (result.returncode, result.stdout) == (0, "OK\n")


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 2
    assert "command is required" in result.stderr


def test_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path, "--log-level", "loud", "check-config")
    assert result.returncode == 2
    result = run(tmp_path, "--log-level", "DEBUG", "check-config")
    assert result.returncode == 0


# ---------------------------------------------------------------------------------------------
# accounts


def has_password(db: Path, user: str, password: str) -> bool:
    return trio.run(password_is, db, user, password)


def test_account_lifecycle(tmp_path: Path, meshxmpp: InProcess) -> None:
    db = tmp_path / "meshxmpp-data" / "meshxmpp.sqlite3"

    assert meshxmpp("adduser", "Admin@LocalHost", "--password", "change-me") == (
        0,
        "user admin@localhost created\n",
        "",
    )
    assert has_password(db, "admin@localhost", "change-me")

    assert meshxmpp("adduser", "admin@localhost", "--password", "other") == (
        1,
        "",
        "meshxmpp: user admin@localhost already exists (use passwd to change the password, or --exist-ok)\n",
    )
    code, out, _ = meshxmpp("adduser", "admin@localhost", "--password", "other", "--exist-ok")
    assert (code, out) == (0, "user admin@localhost already exists (left unchanged)\n")
    assert has_password(db, "admin@localhost", "change-me")

    assert meshxmpp("adduser", "bob@localhost", "--password", "b0b")[0] == 0
    assert meshxmpp("listusers") == (0, "admin@localhost\nbob@localhost\n", "")

    assert meshxmpp("passwd", "bob@localhost", "--password", "new secret") == (
        0,
        "password of bob@localhost changed\n",
        "",
    )
    assert has_password(db, "bob@localhost", "new secret")
    assert not has_password(db, "bob@localhost", "b0b")

    assert meshxmpp("deluser", "bob@localhost") == (0, "user bob@localhost deleted\n", "")
    assert trio.run(credentials, db, "bob@localhost") is None
    for args in (("deluser", "bob@localhost"), ("passwd", "bob@localhost", "--password", "x")):
        assert meshxmpp(*args) == (1, "", "meshxmpp: no such user: bob@localhost\n")

    assert meshxmpp("listusers") == (0, "admin@localhost\n", "")


def test_password_is_never_stored_in_clear(tmp_path: Path, meshxmpp: InProcess) -> None:
    assert meshxmpp("adduser", "carol@localhost", "--password", "VeryUniquePassw0rd")[0] == 0
    data = b"".join(p.read_bytes() for p in (tmp_path / "meshxmpp-data").iterdir() if p.is_file())
    assert b"VeryUniquePassw0rd" not in data


def test_password_from_stdin(tmp_path: Path, meshxmpp: InProcess) -> None:
    db = tmp_path / "meshxmpp-data" / "meshxmpp.sqlite3"
    assert meshxmpp("adduser", "dave@localhost", stdin="  spaces kept  \nsecond line ignored\n")[0] == 0
    assert has_password(db, "dave@localhost", "  spaces kept  ")
    assert meshxmpp("passwd", "dave@localhost", stdin="changed\r\n")[0] == 0
    assert has_password(db, "dave@localhost", "changed")


async def test_password_from_a_pipe_in_a_real_process(tmp_path: Path) -> None:
    r = run(tmp_path, "adduser", "dave@localhost", input="piped secret\n")
    assert (r.returncode, r.stdout) == (0, "user dave@localhost created\n"), r.stderr
    assert await password_is(
        tmp_path / "meshxmpp-data" / "meshxmpp.sqlite3", "dave@localhost", "piped secret"
    )


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_empty_password_is_refused(meshxmpp: InProcess, stdin: str) -> None:
    code, _, err = meshxmpp("adduser", "erin@localhost", stdin=stdin)
    assert code == 2
    assert "empty password" in err
    assert meshxmpp("listusers")[1] == ""


def test_no_stdin_at_all_in_a_real_process(tmp_path: Path) -> None:
    r = run(tmp_path, "adduser", "erin@localhost")  # stdin is /dev/null
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1


def test_password_refused_by_precis(meshxmpp: InProcess) -> None:
    code, _, err = meshxmpp("adduser", "erin@localhost", "--password", "bell\x07")
    assert code == 2
    assert "password refused" in err


@pytest.mark.parametrize(
    ("jid", "words"),
    [
        ("alice@example.org", 'this node serves "localhost", not "example.org"'),
        ("alice@localhost/phone", "expected USER@DOMAIN"),
        ("localhost", "expected USER@DOMAIN"),
        ("al ice@localhost", "invalid address"),
        ("@localhost", "invalid address"),
    ],
)
@pytest.mark.parametrize("command", ["adduser", "passwd", "deluser"])
def test_bad_user_argument_exits_2(
    tmp_path: Path, meshxmpp: InProcess, command: str, jid: str, words: str
) -> None:
    extra = ["--password", "x"] if command != "deluser" else []
    code, out, err = meshxmpp(command, jid, *extra)
    assert code == 2
    assert words in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "meshxmpp-data").exists()


def test_foreign_domain_in_a_real_process(tmp_path: Path) -> None:
    r = run(tmp_path, "adduser", "alice@example.org", "--password", "x")
    assert r.returncode == 2
    assert r.stderr.startswith('meshxmpp: this node serves "localhost", not "example.org"')


def test_domain_and_data_dir_from_options_and_file(tmp_path: Path, meshxmpp: InProcess) -> None:
    args = ("adduser", "alice@example.org", "--password", "x", "--domain", "example.org", "--data-dir", "d1")
    assert meshxmpp(*args)[0] == 0
    assert has_password(tmp_path / "d1" / "meshxmpp.sqlite3", "alice@example.org", "x")

    (tmp_path / "m.toml").write_text('domain = "example.net"\ndata_dir = "d2"\n')
    assert meshxmpp("--config", "m.toml", "adduser", "bob@example.net", "--password", "y")[0] == 0
    assert meshxmpp("listusers", "--config", "m.toml")[1] == "bob@example.net\n"
    assert meshxmpp("--config", "m.toml", "adduser", "bob@localhost", "--password", "y")[0] == 2


def test_memory_backend_accepts_commands(tmp_path: Path, meshxmpp: InProcess) -> None:
    (tmp_path / "m.toml").write_text('[storage]\nbackend = "memory"\n')
    assert meshxmpp("--config", "m.toml", "adduser", "a@localhost", "--password", "x")[0] == 0
    assert meshxmpp("--config", "m.toml", "listusers") == (0, "", "")  # nothing survives


# ---------------------------------------------------------------------------------------------
# prompting on a terminal


def _run_on_tty(cwd: Path, args: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling terminal, answering each prompt."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "meshxmpp", *args], env())
        finally:
            os._exit(127)
    output = b""
    pending = list(answers)
    prompts = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # Answer each prompt once it is shown: getpass flushes earlier type-ahead.
            if output.count(b"Password") > prompts and pending:
                prompts += 1
                os.write(fd, pending.pop(0).encode() + b"\n")
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a POSIX pseudo-terminal")
async def test_adduser_prompts_twice_on_a_tty(tmp_path: Path) -> None:
    code, out = _run_on_tty(tmp_path, ["adduser", "frank@localhost"], ["tty secret", "tty secret"])
    assert code == 0, out
    assert "Password:" in out and "Password (again):" in out
    assert "tty secret" not in out  # not echoed
    assert await password_is(tmp_path / "meshxmpp-data" / "meshxmpp.sqlite3", "frank@localhost", "tty secret")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a POSIX pseudo-terminal")
def test_adduser_prompt_mismatch_exits_2(tmp_path: Path) -> None:
    code, out = _run_on_tty(tmp_path, ["adduser", "grace@localhost"], ["one", "two"])
    assert code == 2, out
    assert "passwords do not match" in out
    assert run(tmp_path, "listusers").stdout == ""


# ---------------------------------------------------------------------------------------------
# serve


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    # [http] is on by default at 127.0.0.1:5280, which another node on this machine may hold.
    (tmp_path / "serve.toml").write_text("[http]\nport = 0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshxmpp", "--config", "serve.toml", "serve", "--c2s-port", "0",
         "--data-dir", "data"],
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and a child
        # inherits that; give the node the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_line(
    proc: subprocess.Popen[str], pattern: str, timeout: float = 30
) -> tuple[re.Match[str], str]:
    """Read stderr lines (in a thread: a pipe's buffered reader and select() do not mix)."""
    assert proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            lines.put(line)
            if re.search(pattern, line):
                return  # leave the rest to communicate()

    threading.Thread(target=pump, daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
            continue
        seen += line
        m = re.search(pattern, line)
        if m:
            return m, seen
    raise AssertionError(f"no line matching {pattern!r} in:\n{seen}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_starts_accepts_and_stops_cleanly(serve: subprocess.Popen[str], sig: signal.Signals) -> None:
    m, _ = _wait_for_line(serve, r"c2s on \S+:(\d+)")
    port = int(m.group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        s.settimeout(10)
        assert b"<stream:stream" in s.recv(4096)
    serve.send_signal(sig)
    _, rest = serve.communicate(timeout=30)
    assert serve.returncode == 0, rest
    assert "Traceback" not in rest


def test_serve_port_in_use_is_one_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "m.toml").write_text(f'[c2s]\nbind = "127.0.0.1"\nport = {port}\n[http]\nport = 0\n')
        r = run(tmp_path, "--config", "m.toml", "serve", timeout=60)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("meshxmpp: ")]
    assert len(errors) == 1 and "cannot start" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# serve: mesh options


def serve_config(*args: str) -> Config:
    """The configuration `meshxmpp serve ARGS` would run with (parsed, not started)."""
    parsed = cli.build_parser().parse_args(["serve", *args])
    return load_config(getattr(parsed, "config", None), cli._overrides(parsed))


def test_serve_mesh_options_set_the_mesh_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHXMPP_MESH_SECRET", raising=False)
    parsed = cli.build_parser().parse_args([
        "serve", "--peers", "10.0.0.2:5701, node3.example.org:5701,[fd00::3]:5701", "--mesh-port", "5801",
        "--node-name", "node-1", "--mesh-bind", "10.0.0.1", "--mesh-profile", "test",
    ])
    assert (parsed.peers, parsed.mesh_port, parsed.node_name, parsed.mesh_bind, parsed.mesh_profile) == (
        ["10.0.0.2:5701", "node3.example.org:5701", "[fd00::3]:5701"], 5801, "node-1", "10.0.0.1", "test")
    assert cli._overrides(parsed) == {
        "mesh.peers": ["10.0.0.2:5701", "node3.example.org:5701", "[fd00::3]:5701"],
        "mesh.port": 5801, "mesh.bind": "10.0.0.1", "mesh.node_name": "node-1", "mesh.profile": "test",
    }
    monkeypatch.setenv("MESHXMPP_MESH_SECRET", "from-the-environment")
    mesh = serve_config("--peers", "10.0.0.2:5701,node3.example.org:5701", "--mesh-port", "5801",
                        "--node-name", "node-1", "--mesh-bind", "10.0.0.1", "--mesh-profile", "test").mesh
    assert mesh.peer_addresses() == [("10.0.0.2", 5701), ("node3.example.org", 5701)]
    assert (mesh.port, mesh.node_name, mesh.bind, mesh.profile) == (5801, "node-1", "10.0.0.1", "test")
    assert mesh.advertise_address() == ("10.0.0.1", 5801)
    assert mesh.enabled and mesh.secrets() == [b"from-the-environment"]


def test_serve_mesh_options_win_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHXMPP_MESH_SECRET", raising=False)
    (tmp_path / "m.toml").write_text(
        '[mesh]\nport = 5701\npeers = ["10.0.0.9:5701"]\nsecret = "s"\nprofile = "lan"\nnode_name = "file"\n'
    )
    monkeypatch.chdir(tmp_path)
    mesh = serve_config("--config", "m.toml", "--mesh-port", "0", "--mesh-profile", "test",
                        "--node-name", "cli").mesh
    assert (mesh.port, mesh.profile, mesh.node_name, mesh.peers) == (0, "test", "cli", ("10.0.0.9:5701",))
    assert serve_config("--config", "m.toml", "--peers", "").mesh.peers == ()
    assert serve_config("--config", "m.toml").mesh.node_name == "file"


@pytest.mark.parametrize(("args", "key"), [
    (["--mesh-port", "abc"], "mesh.port"),
    (["--mesh-port", "70000"], "mesh.port"),
    (["--mesh-profile", "wan"], "mesh.profile"),
    (["--node-name", "has space"], "mesh.node_name"),
    (["--mesh-bind", "not an address"], "mesh.bind"),
    (["--peers", "10.0.0.2:5701,nohost", "--mesh-port", "0"], "mesh.peers[1]"),
    (["--peers", "10.0.0.2:5701"], "mesh.secret"),  # peers need a secret
])
def test_serve_mesh_option_errors_name_the_key(
    meshxmpp: InProcess, monkeypatch: pytest.MonkeyPatch, args: list[str], key: str
) -> None:
    monkeypatch.delenv("MESHXMPP_MESH_SECRET", raising=False)
    code, out, err = meshxmpp("serve", *args)
    assert (code, out) == (2, "")
    assert err.startswith(f"meshxmpp: config error at {key}: "), err
    assert err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    stream = io.StringIO()
    setup_logging("debug", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


def test_log_records_are_one_line(log_stream: io.StringIO) -> None:
    log = logging.getLogger("meshxmpp.test")
    log.info("peer said %s", "evil\r\n2099-01-01 00:00:00,000 ERROR fake line")
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        log.exception("connection from 192.0.2.1 lost")
    try:
        raise KeyError("bug")
    except KeyError:
        log.exception("handler crashed")
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith(
        "INFO meshxmpp.test: peer said evil\\r\\n2099-01-01 00:00:00,000 ERROR fake line"
    )
    assert lines[1].endswith(
        "connection from 192.0.2.1 lost (ConnectionResetError: [Errno 104] Connection reset by peer)"
    )
    assert "Traceback" not in lines[1]
    # A bug keeps its traceback, folded onto the line.
    assert "ERROR meshxmpp.test: handler crashed | Traceback (most recent call last):" in lines[2]
    assert "test_cli.py" in lines[2] and lines[2].endswith("KeyError: 'bug'")


def test_setup_logging_replaces_only_its_own_handler(log_stream: io.StringIO) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    setup_logging("warning", log_stream)
    assert len(root.handlers) == before
    assert root.level == logging.WARNING


def test_expected_network_errors() -> None:
    import ssl

    import trio

    for exc in (
        ConnectionResetError(),
        BrokenPipeError(),
        TimeoutError(),
        OSError(113, "No route to host"),
        ssl.SSLError(1, "bad handshake"),
        trio.BrokenResourceError(),
        trio.ClosedResourceError(),
        trio.TooSlowError(),
        ExceptionGroup("g", [ConnectionResetError(), trio.BrokenResourceError()]),
    ):
        assert is_expected_network_error(exc), exc
    for exc in (
        KeyError("x"),
        ValueError(),
        OSError(13, "Permission denied"),
        ExceptionGroup("g", [ConnectionResetError(), ValueError()]),
    ):
        assert not is_expected_network_error(exc), exc
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m", None, None)
    assert "\n" not in OneLineFormatter().format(record)


# ---------------------------------------------------------------------------------------------
# README and CI agree


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", section, re.S)
    return [
        line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    start, test = commands
    assert "adduser" in start and "serve" in start
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert any(line.startswith(test) for line in ci_lines), f"{test!r} is not a line of .ci/run"
    shlex.split(start), shlex.split(test)  # both parse as shell
