"""``meshxmpp cluster status`` against a real HttpServer whose context has a stand-in mesh.

The command is synchronous (http.client), so it runs in a worker thread while the server runs in the
test's Trio loop; it reaches the server exactly as `meshxmpp explain` does, from the [http] table of
the configuration file."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from meshxmpp import cli
from meshxmpp.config import load_config
from meshxmpp.http import HttpServer

TOKEN = "cluster-Token_0123456789+/="

STATUS = {
    "node": "n1:5701", "epoch": 7, "incarnation": 2, "profile": "test",
    "members": [
        {"name": "n1:5701", "address": "127.0.0.1:5701", "state": "alive", "incarnation": 2, "sessions": 3},
        {"name": "n2:5702", "address": "127.0.0.1:5702", "state": "dead", "incarnation": 5, "sessions": 0},
    ],
    "sessions": {"local": 3, "total": 3},
    "forward": {"in_flight": 0, "backlog": 2},
}


class StandInMesh:
    def status(self) -> dict[str, Any]:
        return STATUS


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() installs a handler on the root logger; keep tests independent of each other.
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


@asynccontextmanager
async def node_api(mesh: Any, *, token: str | None = None) -> AsyncIterator[int]:
    """A real HttpServer answering the admin API on 127.0.0.1 with ``ctx.mesh = mesh``; yields its port."""
    http: dict[str, Any] = {"bind": "127.0.0.1"}
    if token is not None:
        http["admin_token"] = token
    ctx = SimpleNamespace(config=load_config(None, {"http": http}), mesh=mesh)
    server = HttpServer(ctx, bind="127.0.0.1", port=0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        yield await nursery.start(server.run)
        nursery.cancel_scope.cancel()


def config_file(tmp_path: Path, port: int, extra: str = "") -> str:
    path = tmp_path / "node.toml"
    path.write_text(f'[http]\nbind = "127.0.0.1"\nport = {port}\n{extra}', encoding="utf-8")
    return str(path)


async def meshxmpp(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``meshxmpp ARGS`` through cli.main, in a thread so that the server keeps running."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(cli.main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_status_prints_a_header_and_one_row_per_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with node_api(StandInMesh()) as port:
        code, out, err = await meshxmpp(capsys, "cluster", "status", "--config", config_file(tmp_path, port))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "node n1:5701  epoch 7  incarnation 2  profile test"
    header = lines.index("NAME     ADDRESS         STATE  INCARNATION  SESSIONS")
    assert lines[header + 1:] == [
        "n1:5701  127.0.0.1:5701  alive  2            3",
        "n2:5702  127.0.0.1:5702  dead   5            0",
    ]


async def test_json_prints_the_answer_as_received(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node_api(StandInMesh()) as port:
        # --config before the command works too.
        code, out, _ = await meshxmpp(capsys, "--config", config_file(tmp_path, port), "cluster", "status",
                                      "--json")
    assert code == 0
    assert json.loads(out) == STATUS


async def test_token_from_the_configuration_is_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node_api(StandInMesh(), token=TOKEN) as port:
        good = config_file(tmp_path, port, f'admin_token = "{TOKEN}"\n')
        code, out, _ = await meshxmpp(capsys, "cluster", "status", "--json", "--config", good)
        assert (code, json.loads(out)) == (0, STATUS)
        wrong = config_file(tmp_path, port, 'admin_token = "not-the-token-0123456789"\n')
        code, out, err = await meshxmpp(capsys, "cluster", "status", "--config", wrong)
    assert (code, out) == (1, "")
    assert err.startswith(f"meshxmpp: the node at http://127.0.0.1:{port} answered 401: ")
    assert "bearer token" in err


async def test_mesh_disabled_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node_api(None) as port:
        code, out, err = await meshxmpp(capsys, "cluster", "status", "--config", config_file(tmp_path, port))
    assert (code, out) == (1, "")
    assert err == (f"meshxmpp: the node at http://127.0.0.1:{port} runs without a mesh "
                   "(set [mesh] secret to form a cluster)\n")


async def test_mesh_disabled_exits_1_with_json_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node_api(None) as port:
        code, out, err = await meshxmpp(capsys, "cluster", "status", "--json", "--config",
                                        config_file(tmp_path, port))
    assert (code, out) == (1, "")
    assert "runs without a mesh" in err


async def test_unreachable_node_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, out, err = await meshxmpp(capsys, "cluster", "status", "--timeout", "5", "--config",
                                    config_file(tmp_path, port))
    assert (code, out) == (1, "")
    assert err.startswith(f"meshxmpp: no node answers at http://127.0.0.1:{port} (")
    assert err.count("\n") == 1


async def test_a_node_that_does_not_answer_in_time_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as silent:  # accepts (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        code, _, err = await meshxmpp(capsys, "cluster", "status", "--timeout", "0.3", "--config",
                                      config_file(tmp_path, port))
    assert code == 1
    assert "no answer within 0.3 s" in err


async def test_unexpected_status_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Broken:
        def status(self) -> dict[str, Any]:
            return {"node": "x"}  # no epoch, no members

    async with node_api(Broken()) as port:
        code, _, err = await meshxmpp(capsys, "cluster", "status", "--config", config_file(tmp_path, port))
    assert code == 1
    assert "try --json" in err


def test_http_disabled_or_port_zero_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "off.toml"
    path.write_text("[http]\nenabled = false\n")
    assert cli.main(["cluster", "status", "--config", str(path)]) == 1
    assert "[http] enabled = false" in capsys.readouterr().err
    path.write_text("[http]\nport = 0\n")
    assert cli.main(["cluster", "status", "--config", str(path)]) == 2
    assert "cluster status needs the port" in capsys.readouterr().err


def test_cluster_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["cluster"])
    assert info.value.code == 2
    assert "CLUSTER_COMMAND" in capsys.readouterr().err
