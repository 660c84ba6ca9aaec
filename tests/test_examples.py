"""Every file in examples/ runs and does what it says."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshxmpp.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEPLOY = EXAMPLES / "deploy"


def run_example(*args: str, timeout: float = 60) -> str:
    # The checkout first on the path, so the examples run against this tree even when another is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_in_process_chat_example() -> None:
    out = run_example(str(EXAMPLES / "in_process_chat.py"))
    assert "bob got from alice@example.org/laptop: Hi Bob, this went through a real node." in out


def test_embed_node_example() -> None:
    out = run_example(str(EXAMPLES / "embed_node.py"))
    assert "bob (bob@example.org/phone, over STARTTLS) got from alice@example.org/laptop: " \
           "Hello from an embedded node" in out
    assert out.rstrip().endswith("node stopped")


def test_cluster_partition_example() -> None:
    out = run_example(str(EXAMPLES / "cluster_partition.py"))
    assert "bob got: before the partition" in out
    assert "partitioned; after" in out and "node0 sees node0=alive, node1=alive, node2=dead" in out
    assert "healed; converged after" in out
    assert "bob got: after the heal" in out


def test_bot_with_plugin_example() -> None:
    # `-p` loads the plugin whether or not the entry point is installed (registered once either way).
    out = run_example("-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "meshxmpp.testing.pytest_plugin",
                      str(EXAMPLES / "test_bot_with_plugin.py"), timeout=90)
    assert "2 passed" in out, out


@pytest.mark.parametrize("name", ["node1.toml", "node2.toml", "node3.toml"])
def test_deploy_node_configs_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHXMPP_MESH_SECRET", "a secret from the environment")
    config = load_config(DEPLOY / name)
    assert config.mesh.node_name == name.removesuffix(".toml")
    assert config.mesh.secrets() and config.mesh.peers
    assert config.storage.path == "/var/lib/meshxmpp/shared/meshxmpp.sqlite3"


def test_deploy_configs_form_one_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHXMPP_MESH_SECRET", "a secret from the environment")
    configs = [load_config(DEPLOY / f"node{i}.toml") for i in (1, 2, 3)]
    mesh = {f"{c.mesh.bind}:{c.mesh.port}" for c in configs}
    assert len(mesh) == 3
    for c in configs:
        assert set(c.mesh.peers) == mesh - {f"{c.mesh.bind}:{c.mesh.port}"}
    for ports in ([c.c2s.port for c in configs], [c.http.port for c in configs]):
        assert len(set(ports)) == 3
    assert len({c.data_dir for c in configs}) == 3


def test_deploy_compose_file() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    try:
        import yaml
    except ImportError:  # no pyyaml: a light structural check
        for i in (1, 2, 3):
            assert f"\n  node{i}:\n" in text and f"./node{i}.toml:/etc/meshxmpp/node.toml:ro" in text
        return
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert sorted(services) == ["node1", "node2", "node3"]
    for name, service in services.items():
        assert service["command"] == ["--config", "/etc/meshxmpp/node.toml", "serve"]
        mounts = [v.split(":") for v in service["volumes"]]
        config_file = next(src for src, dst, *_ in mounts if dst == "/etc/meshxmpp/node.toml")
        assert (DEPLOY / config_file).is_file() and config_file == f"./{name}.toml"
        assert "MESHXMPP_MESH_SECRET" in service["environment"]
        assert any(dst == "/var/lib/meshxmpp/shared" for _, dst, *_ in mounts)
    assert services["node1"]["build"]["dockerfile"] == "examples/deploy/Dockerfile"
    assert (ROOT / services["node1"]["build"]["dockerfile"]).is_file()
    assert set(doc["volumes"]) == {"node1", "node2", "node3", "shared"}


def test_deploy_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(DEPLOY / "meshxmpp@.service")
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"].endswith("--config /etc/meshxmpp/%i.toml serve")
    assert "check-config" in service["ExecStartPre"]
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
