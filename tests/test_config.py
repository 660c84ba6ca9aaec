"""meshxmpp.config: defaults, loading, validation (in process and through the CLI), aliases, docs."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import attrs
import pytest

from meshxmpp import cli
from meshxmpp import config as config_module
from meshxmpp.config import (
    C2SConfig,
    Config,
    ConfigError,
    RoutingConfig,
    SenderRule,
    evolve,
    load_config,
    reference_markdown,
)
from meshxmpp.mesh._swim_timing import PROFILES, Timing

ROOT = Path(__file__).resolve().parent.parent
TIMING_KEYS = [f.name for f in dataclasses.fields(Timing)]


def write(tmp_path: Path, text: str, name: str = "meshxmpp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(autouse=True)
def _no_mesh_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_config reads MESHXMPP_MESH_SECRET; the defaults below assume it is not set.
    monkeypatch.delenv("MESHXMPP_MESH_SECRET", raising=False)


# ---------------------------------------------------------------------------------------------
# defaults


def test_defaults_match_the_contract() -> None:
    c = load_config()
    assert c == Config()
    assert (c.domain, c.data_dir, c.log_level) == ("localhost", "meshxmpp-data", "info")
    assert attrs.asdict(c.c2s) == {
        "bind": "0.0.0.0",
        "port": 5222,
        "direct_tls_port": None,
        "require_encryption": True,
        "negotiation_timeout": 30.0,
        "idle_timeout": 600.0,
        "write_timeout": 30.0,
        "outbox_limit": 1048576,
        "max_stanza_size": 262144,
        "max_stanza_size_preauth": 8192,
        "max_depth": 64,
        "auth_failure_delay": 1.0,
        "max_auth_attempts": 3,
    }
    assert (c.tls.cert, c.tls.key) == (None, None)
    assert (c.storage.backend, c.storage.path) == ("sqlite", None)
    assert (c.offline.max_per_user, c.offline.delivery) == (1000, "first-resource")
    assert (c.routing.policy, c.routing.sender) == ("top-priority-all", ())
    assert c.muc.domain is None
    assert (c.components.port, c.components.service) == (5347, ())
    assert attrs.asdict(c.mesh) == {
        "bind": "0.0.0.0",
        "port": 5701,
        "peers": (),
        "secret": None,
        "profile": "lan",
        "advertise": None,
        "node_name": None,
        "join_timeout": 5.0,
        "discovery": "static",
        "dns": None,
        "heartbeat_interval": 5.0,
        "heartbeat_expiry": 30.0,
        "repair_interval": None,
        "forward_window": 512,
        "forward_retransmit": 1.0,
        "max_frame": 1048576,
        "dial_timeout": 3.0,
        "handshake_timeout": 3.0,
        "tls_ca": None, "tls_cert": None, "tls_key": None,
        **dict.fromkeys(TIMING_KEYS),
    }
    assert not c.mesh.enabled and c.mesh.secrets() == []
    assert (c.http.bind, c.http.port) == ("127.0.0.1", 5280)


def test_config_is_frozen_and_hashable() -> None:
    c = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.domain = "x"  # type: ignore[misc]
    assert hash(c) == hash(Config())


def test_storage_path() -> None:
    assert Config().storage_path == Path("meshxmpp-data") / "meshxmpp.sqlite3"
    assert evolve(Config(), data_dir="/srv/x").storage_path == Path("/srv/x/meshxmpp.sqlite3")
    assert evolve(Config(), storage={"path": "/db/chat.sqlite3"}).storage_path == Path("/db/chat.sqlite3")
    assert Config().data_path == Path("meshxmpp-data")


def test_routing_dict_defaults() -> None:
    expected = {
        "policy": "top-priority-all",
        "sender": [],
        "all_negative": "store",
        "no_available": "store",
        "absent_normal": "bounce",
        "absent_headline": "drop",
        "absent_groupchat": "bounce",
        "unknown_user": "bounce",
        "store_chat_states": False,
        "route.all-resources": None,
        "route.really-all-resources": None,
    }
    assert Config().routing.routing_dict() == expected
    assert Config().routing_dict() == expected


def test_routing_options_match_the_policy_engine() -> None:
    """[routing] keys, defaults and choices are the engine's OPTIONS (routing/policy.py)."""
    from meshxmpp.routing import policy

    fields = attrs.fields_dict(RoutingConfig)
    defaults = policy.PolicyConfig()
    for option in policy.OPTIONS:
        assert option.key in fields, f"routing.{option.key} missing from RoutingConfig"
        field = fields[option.key]
        assert field.default == getattr(defaults, option.key)
        for choice in option.choices:
            load_config(overrides={"routing": {option.key: choice}})
        if isinstance(option.choices[0], str):
            with pytest.raises(ConfigError):
                load_config(overrides={"routing": {option.key: "no-such-choice"}})
    assert set(config_module.ROUTING_POLICIES) == set(policy.POLICIES)
    assert RoutingConfig().policy == policy.DEFAULT_POLICY


# ---------------------------------------------------------------------------------------------
# loading


FULL = """
domain = "Example.ORG"
data_dir = "/var/lib/meshxmpp"
log_level = "DEBUG"

[c2s]
bind = "::"
port = 15222
direct_tls_port = 15223
require_encryption = false
negotiation_timeout = 5
idle_timeout = 60.5
write_timeout = 2
outbox_limit = 4096
max_stanza_size = 65536
max_stanza_size_preauth = 4096
max_depth = 32
auth_failure_delay = 0
max_auth_attempts = 5

[storage]
backend = "memory"
path = "x.db"

[offline]
max_per_user = 0
delivery = "all-resources"

[routing]
policy = "most-available"
unknown_user = "drop"
store_chat_states = true
[[routing.sender]]
match = "*.bots.example.org"
policy = "all-connected"
[[routing.sender]]
match = "boss@example.org"
policy = "all-non-negative"

[muc]
domain = "conference.example.org"

[components]
port = 0
[[components.service]]
domain = "gw.example.org"
secret = "s3cret"

[mesh]
bind = "10.0.0.1"
port = 0
peers = ["10.0.0.2:5701", "node3.example.org:5701", "[fd00::3]:5701"]
secret = ["new-secret", "old-secret"]
profile = "test"
advertise = "node1.example.org:15701"
node_name = "node-1"
join_timeout = 0
repair_interval = 2.5
forward_window = 64
forward_retransmit = 0.25
max_frame = 65536
dial_timeout = 1
handshake_timeout = 1.5
probe_interval = 0.5
probe_timeout = 0.25
indirect_checks = 0
suspicion_mult = 3
suspicion_max_timeout_mult = 2
gossip_interval = 0.05
gossip_nodes = 4
retransmit_mult = 2
awareness_max_multiplier = 3
dead_reclaim_time = 0
reconnect_interval = 2
reconnect_timeout = 60
push_pull_interval = 10
gossip_to_the_dead_time = 0

[http]
bind = "0.0.0.0"
port = 8080
"""


def test_load_every_key(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, FULL))
    assert c.domain == "example.org"  # normalised as JIDs are
    assert c.log_level == "debug"
    assert c.data_dir == "/var/lib/meshxmpp"
    assert c.c2s == C2SConfig(
        bind="::",
        port=15222,
        direct_tls_port=15223,
        require_encryption=False,
        negotiation_timeout=5.0,
        idle_timeout=60.5,
        write_timeout=2.0,
        outbox_limit=4096,
        max_stanza_size=65536,
        max_stanza_size_preauth=4096,
        max_depth=32,
        auth_failure_delay=0.0,
        max_auth_attempts=5,
    )
    assert isinstance(c.c2s.negotiation_timeout, float)
    assert (c.storage.backend, c.storage.path) == ("memory", "x.db")
    assert (c.offline.max_per_user, c.offline.delivery) == (0, "all-resources")
    assert (c.routing.policy, c.routing.unknown_user, c.routing.store_chat_states) == (
        "most-available",
        "drop",
        True,
    )
    assert c.routing.sender == (
        SenderRule(match="*.bots.example.org", policy="all-connected"),
        SenderRule(match="boss@example.org", policy="all-non-negative"),
    )
    assert c.muc.domain == "conference.example.org"
    assert c.components.port == 0
    assert [(s.domain, s.secret) for s in c.components.service] == [("gw.example.org", "s3cret")]
    assert c.mesh.peers == ("10.0.0.2:5701", "node3.example.org:5701", "[fd00::3]:5701")
    assert c.mesh.peer_addresses() == [("10.0.0.2", 5701), ("node3.example.org", 5701), ("fd00::3", 5701)]
    m = c.mesh
    assert m.secret == ("new-secret", "old-secret")
    assert m.secrets() == [b"new-secret", b"old-secret"]
    assert m.enabled
    assert (m.profile, m.advertise_address(), m.node_name) == ("test", ("node1.example.org", 15701), "node-1")
    assert (m.join_timeout, m.repair_every(), m.forward_window, m.forward_retransmit) == (0.0, 2.5, 64, 0.25)
    assert (m.max_frame, m.dial_timeout, m.handshake_timeout) == (65536, 1.0, 1.5)
    assert m.timing() == Timing(
        probe_interval=0.5, probe_timeout=0.25, indirect_checks=0, suspicion_mult=3,
        suspicion_max_timeout_mult=2, gossip_interval=0.05, gossip_nodes=4, retransmit_mult=2,
        awareness_max_multiplier=3, dead_reclaim_time=0.0, reconnect_interval=2.0, reconnect_timeout=60.0,
        push_pull_interval=10.0, gossip_to_the_dead_time=0.0,
    )
    assert (c.http.bind, c.http.port) == ("0.0.0.0", 8080)
    assert c.routing_dict()["sender"] == [
        {"match": "*.bots.example.org", "policy": "all-connected"},
        {"match": "boss@example.org", "policy": "all-non-negative"},
    ]


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain = "a.example"\n[c2s]\nport = 1\nbind = "127.0.0.1"\n')
    c = load_config(path, {"c2s.port": 2, "data_dir": "d"})
    assert (c.domain, c.c2s.port, c.c2s.bind, c.data_dir) == ("a.example", 2, "127.0.0.1", "d")
    c = load_config(path, {"c2s": {"port": 3}})
    assert (c.c2s.port, c.c2s.bind) == (3, "127.0.0.1")


def test_port_zero_is_allowed() -> None:
    c = load_config(overrides={"c2s.port": 0, "mesh.port": 0, "http.port": 0, "components.port": 0})
    assert c.c2s.port == 0


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_example_file_is_the_defaults_and_names_every_key() -> None:
    example = ROOT / "examples" / "meshxmpp.toml"
    assert load_config(example) == Config()
    text = example.read_text(encoding="utf-8")
    for prefix, cls, _array in config_module._sections(Config, ""):
        for field in attrs.fields(cls):
            if attrs.has(field.type):
                continue
            key = field.metadata.get("key") or field.name
            if config_module._is_homogeneous_tuple(field.type) and attrs.has(field.type.__args__[0]):
                assert f"[[{prefix}.{key}]]" in text
                continue
            assert re.search(rf'^#? ?"?{re.escape(key)}"? =', text, re.M), (
                f"{prefix}.{key} missing from example"
            )


def test_evolve_validates_and_accepts_table_dicts() -> None:
    c = evolve(Config(), domain="Example.org", c2s={"port": 0}, storage={"backend": "memory"})
    assert (c.domain, c.c2s.port, c.storage.backend) == ("example.org", 0, "memory")
    with pytest.raises(ConfigError) as info:
        evolve(c, c2s={"port": 70000})
    assert info.value.key == "c2s.port"
    with pytest.raises(ConfigError) as info:
        evolve(c, c2s={"port": True})
    assert info.value.key == "c2s.port"
    with pytest.raises(ConfigError) as info:
        Config(routing=RoutingConfig(policy="nope"))
    assert info.value.key == "routing.policy"


# ---------------------------------------------------------------------------------------------
# validation errors: (TOML, key, words the message must contain)

BAD: list[tuple[str, str, str]] = [
    ('[c2s]\nport = "abc"', "c2s.port", 'must be an integer between 0 and 65535 (got "abc")'),
    ("[c2s]\nport = 65536", "c2s.port", "between 0 and 65535 (got 65536)"),
    ("[c2s]\nport = -1", "c2s.port", "between 0 and 65535"),
    ("[c2s]\nport = 5222.0", "c2s.port", "integer"),
    ("[c2s]\nport = true", "c2s.port", "got true"),
    ("[c2s]\ndirect_tls_port = 99999", "c2s.direct_tls_port", "between 0 and 65535"),
    ("[c2s]\ndirect_tls_port = 5222", "c2s.direct_tls_port", "must differ from c2s.port"),
    ("[mesh]\nport = 70000", "mesh.port", "between 0 and 65535"),
    ("[http]\nport = 70000", "http.port", "between 0 and 65535"),
    ("[components]\nport = 70000", "components.port", "between 0 and 65535"),
    ('domain = "not a domain"', "domain", "domain name"),
    ('domain = ""', "domain", "domain name"),
    ('domain = "a..b"', "domain", "domain name"),
    ("domain = 5", "domain", "domain name"),
    ('log_level = "loud"', "log_level", '"debug"'),
    ('data_dir = ""', "data_dir", "directory"),
    ("[c2s]\nidle_timeout = 0", "c2s.idle_timeout", "greater than 0"),
    ("[c2s]\nnegotiation_timeout = -1", "c2s.negotiation_timeout", "greater than 0"),
    ("[c2s]\nwrite_timeout = nan", "c2s.write_timeout", "greater than 0"),
    ('[c2s]\nwrite_timeout = "30"', "c2s.write_timeout", "seconds"),
    ("[c2s]\nauth_failure_delay = -0.5", "c2s.auth_failure_delay", "0 or more"),
    ("[c2s]\nmax_stanza_size = 0", "c2s.max_stanza_size", "positive"),
    ("[c2s]\nmax_auth_attempts = 0", "c2s.max_auth_attempts", "positive"),
    ('[c2s]\nrequire_encryption = "yes"', "c2s.require_encryption", "true or false"),
    ('[c2s]\nbind = "not an address!"', "c2s.bind", "IP address"),
    ("[c2s]\nprot = 5222", "c2s.prot", 'unknown key; did you mean "port"?'),
    ("colour = 1", "colour", "unknown key"),
    ("[c2s.extra]\nx = 1", "c2s.extra", "unknown key"),
    ("c2s = 5", "c2s", "must be a table"),
    ('[offline]\ndelivery = "everyone"', "offline.delivery", '"first-resource", "all-resources"'),
    ("[offline]\nmax_per_user = -1", "offline.max_per_user", "0 or more"),
    ('[routing]\npolicy = "random"', "routing.policy", '"most-available"'),
    ('[[routing.sender]]\npolicy = "all-connected"', "routing.sender[0].match", "is required"),
    ('[[routing.sender]]\nmatch = "a@b"', "routing.sender[0].policy", "is required"),
    ('[[routing.sender]]\nmatch = "a@b"\npolicy = "x"', "routing.sender[0].policy", '"all-connected"'),
    ('[[routing.sender]]\nmatch = ""\npolicy = "all-connected"', "routing.sender[0].match", "a bare JID"),
    ('[[routing.sender]]\nmatch = "*.*"\npolicy = "all-connected"', "routing.sender[0].match", '"*.domain"'),
    (
        '[[routing.sender]]\nmatch = "*.a@b.org"\npolicy = "all-connected"',
        "routing.sender[0].match",
        "domain",
    ),
    ('[[routing.sender]]\nmatch = "a@b/c"\npolicy = "all-connected"', "routing.sender[0].match", "bare JID"),
    ('[routing]\nunknown_user = "ignore"', "routing.unknown_user", '"bounce", "drop"'),
    ('[routing]\nstore_chat_states = "no"', "routing.store_chat_states", "true or false"),
    (
        '[[routing.sender]]\nmatch = "a@b"\npolicy = "all-connected"\nweight = 1',
        "routing.sender[0].weight",
        "unknown key",
    ),
    ("[routing]\nsender = 5", "routing.sender", "list of tables"),
    ('[routing]\n"route.all-resources" = "yes"', "routing.route.all-resources", "true or false"),
    ("[routing]\nroute.all-resourcez = true", "routing.route.all-resourcez", "unknown key"),
    (
        '[routing]\npolicy = "most-available"\n"route.really-all-resources" = true',
        "routing.policy",
        "conflicts with route.really-all-resources",
    ),
    ('[tls]\ncert = "cert.pem"', "tls.key", "both or neither"),
    ('[tls]\nkey = "key.pem"', "tls.cert", "both or neither"),
    ('[tls]\ncert = "missing.pem"\nkey = "missing.key"', "tls.cert", "file not found"),
    ('[storage]\nbackend = "oracle"', "storage.backend", '"sqlite", "postgres", "memory"'),
    ('[storage]\nbackend = "postgres"', "storage.dsn", 'required when storage.backend = "postgres"'),
    ('[storage]\ndsn = ""', "storage.dsn", "PostgreSQL connection string"),
    ("[storage]\npool_size = 0", "storage.pool_size", "positive integer"),
    ("[storage]\ntimeout = 0", "storage.timeout", "greater than 0"),
    ('[storage]\npath = ""', "storage.path", "file path"),
    ('[muc]\ndomain = "bad domain"', "muc.domain", "domain name"),
    ('[muc]\ndomain = "localhost"', "muc.domain", "must differ from domain"),
    ('[[components.service]]\ndomain = "gw.localhost"', "components.service[0].secret", "is required"),
    ('[[components.service]]\nsecret = "s"', "components.service[0].domain", "is required"),
    (
        '[[components.service]]\ndomain = "gw.localhost"\nsecret = ""',
        "components.service[0].secret",
        "non-empty",
    ),
    (
        '[[components.service]]\ndomain = "bad domain"\nsecret = "s"',
        "components.service[0].domain",
        "domain name",
    ),
    (
        '[[components.service]]\ndomain = "gw.localhost"\nsecret = "a"\n'
        '[[components.service]]\ndomain = "gw.localhost"\nsecret = "b"',
        "components.service[1].domain",
        "must differ",
    ),
    ('[mesh]\npeers = ["10.0.0.2:5701", "nohost"]\nsecret = "s"', "mesh.peers[1]", '"host:port"'),
    ('[mesh]\npeers = ["10.0.0.2:0"]\nsecret = "s"', "mesh.peers[0]", '"host:port"'),
    ('[mesh]\npeers = "10.0.0.2:5701"\nsecret = "s"', "mesh.peers", 'list of "host:port" strings'),
    ("[mesh]\npeers = [5701]", "mesh.peers[0]", '"host:port"'),
    ('[mesh]\npeers = ["10.0.0.2:5701"]', "mesh.secret", "required when mesh.peers"),
    ('[mesh]\nsecret = ""', "mesh.secret", "a non-empty string, or a non-empty list of non-empty strings"),
    ("[mesh]\nsecret = []", "mesh.secret", "non-empty list"),
    ('[mesh]\nsecret = ["a", ""]', "mesh.secret", "non-empty list"),
    ('[mesh]\nsecret = ["a", 1]', "mesh.secret", "non-empty list"),
    ("[mesh]\nsecret = 12345", "mesh.secret", "(got 12345)"),
    ('[mesh]\nprofile = "wan"', "mesh.profile", '"lan", "test"'),
    ('[mesh]\nadvertise = "10.0.0.1"', "mesh.advertise", '"host:port"'),
    ('[mesh]\nadvertise = "10.0.0.1:0"', "mesh.advertise", '"host:port"'),
    ('[mesh]\nnode_name = ""', "mesh.node_name", "1 to 64 bytes"),
    ('[mesh]\nnode_name = "two words"', "mesh.node_name", "without whitespace"),
    ('[mesh]\nnode_name = "tab\\there"', "mesh.node_name", "printable"),
    (f'[mesh]\nnode_name = "{"é" * 33}"', "mesh.node_name", "64 bytes"),
    ("[mesh]\nnode_name = 5", "mesh.node_name", "UTF-8"),
    ("[mesh]\njoin_timeout = -1", "mesh.join_timeout", "0 or more"),
    ("[mesh]\nrepair_interval = 0", "mesh.repair_interval", "greater than 0"),
    ("[mesh]\nforward_window = 0", "mesh.forward_window", "positive integer"),
    ("[mesh]\nforward_window = 1.5", "mesh.forward_window", "integer"),
    ("[mesh]\nforward_retransmit = 0", "mesh.forward_retransmit", "greater than 0"),
    ("[mesh]\nmax_frame = 65535", "mesh.max_frame", "between 65536 and"),
    ("[mesh]\ndial_timeout = 0", "mesh.dial_timeout", "greater than 0"),
    ('[mesh]\nhandshake_timeout = "3"', "mesh.handshake_timeout", "seconds"),
    ("[mesh]\nprobe_interval = 0", "mesh.probe_interval", "greater than 0"),
    ("[mesh]\nprobe_interval = inf", "mesh.probe_interval", "finite"),
    ("[mesh]\nindirect_checks = -1", "mesh.indirect_checks", "0 or more"),
    ("[mesh]\nsuspicion_mult = 0", "mesh.suspicion_mult", "positive integer"),
    ("[mesh]\ngossip_nodes = 2.0", "mesh.gossip_nodes", "positive integer"),
    ("[mesh]\ndead_reclaim_time = -1", "mesh.dead_reclaim_time", "0 or more"),
    ("[mesh]\nprobe_timeout = 1.0", "mesh.probe_timeout", 'shorter than probe_interval, 1.0 in profile "lan"'),
    ("[mesh]\nprobe_timeout = 0.2\nprobe_interval = 0.2", "mesh.probe_timeout", "shorter than probe_interval"),
    ("[mesh]\nprobe_interval = 0.5", "mesh.probe_interval", 'longer than probe_timeout, 0.5 in profile "lan"'),
    ('[mesh]\nprofile = "test"\nprobe_timeout = 0.4', "mesh.probe_timeout", 'profile "test"'),
    ("[mesh]\nprobe_tiemout = 0.4", "mesh.probe_tiemout", 'did you mean "probe_timeout"?'),
    ('[http]\nbind = ""', "http.bind", "IP address"),
]


@pytest.mark.parametrize(("toml", "key", "words"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_value_names_its_key(tmp_path: Path, toml: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml))
    err = info.value
    assert err.key == key
    assert words in err.message
    assert str(err) == f"config error at {key}: {err.message}"
    assert "\n" not in str(err)


@pytest.mark.parametrize(("toml", "key", "words"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_value_through_cli_main(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, key: str, words: str
) -> None:
    path = write(tmp_path, toml)
    assert cli.main(["--config", str(path), "check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"meshxmpp: config error at {key}: ")
    assert words in err
    assert err.count("\n") == 1


# A real process for a third of the cases (each costs ~0.3 s of CPU); every case above went
# through the same main() in process.
SUBPROCESS_CASES = list(range(0, len(BAD), 3))


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, subprocess.CompletedProcess[str]]:
    """`python -m meshxmpp --config FILE check-config` for SUBPROCESS_CASES, run in parallel."""
    base = tmp_path_factory.mktemp("bad")
    procs = {}
    for i in SUBPROCESS_CASES:
        toml = BAD[i][0]
        d = base / str(i)
        d.mkdir()
        path = write(d, toml)
        procs[i] = subprocess.Popen(
            [sys.executable, "-m", "meshxmpp", "--config", str(path), "check-config"],
            cwd=d,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    results = {}
    for i, p in procs.items():
        out, err = p.communicate(timeout=120)
        results[i] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return results


@pytest.mark.parametrize("index", SUBPROCESS_CASES, ids=[f"{i}-{BAD[i][1]}" for i in SUBPROCESS_CASES])
def test_bad_value_through_the_cli_process_exits_2_with_one_line(
    cli_results: dict[int, subprocess.CompletedProcess[str]], index: int
) -> None:
    _toml, key, words = BAD[index]
    result = cli_results[index]
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"meshxmpp: config error at {key}: ")
    assert words in lines[0]


def test_cli_override_error_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshxmpp", "serve", "--c2s-port", "abc"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr == (
        'meshxmpp: config error at c2s.port: must be an integer between 0 and 65535 (got "abc")\n'
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read"), ("[c2s\nport = 1", "not valid TOML"), ("port = = 1", "not valid TOML")],
)
def test_unreadable_or_broken_file(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "meshxmpp.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert words in str(info.value)
    result = subprocess.run(
        [sys.executable, "-m", "meshxmpp", "--config", str(path), "check-config"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert words in result.stderr


def test_tls_pair_of_existing_files(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    c = load_config(overrides={"tls": {"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}})
    assert c.tls.cert == str(tmp_path / "c.pem")


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"data_dir": str(tmp_path / "f")})
    assert info.value.key == "data_dir"


@pytest.mark.parametrize(
    "domain", ["localhost", "example.org", "xn--mnchen-3ya.de", "münchen.de", "[::1]", "10.1.2.3"]
)
def test_good_domains(domain: str) -> None:
    assert load_config(overrides={"domain": domain}).domain


def test_domain_is_normalised_like_jids() -> None:
    assert load_config(overrides={"domain": "Example.ORG."}).domain == "example.org"
    assert load_config(overrides={"domain": "xn--mnchen-3ya.de"}).domain == "münchen.de"


# ---------------------------------------------------------------------------------------------
# Openfire aliases


@pytest.mark.parametrize(
    ("toml", "policy", "all_res", "really_all"),
    [
        ('"route.all-resources" = true', "top-priority-all", True, False),
        ('"route.really-all-resources" = true', "all-non-negative", False, True),
        ('"route.all-resources" = true\n"route.really-all-resources" = true', "all-non-negative", True, True),
        # The unquoted form is a TOML dotted key; it means the same.
        ("route.really-all-resources = true", "all-non-negative", False, True),
        ("route.all-resources = true", "top-priority-all", True, False),
        ('policy = "most-available"\n"route.all-resources" = false', "most-available", False, False),
        (
            'policy = "most-available"\n"route.all-resources" = false\n"route.really-all-resources" = false',
            "most-available",
            False,
            False,
        ),
        ('policy = "all-non-negative"\n"route.really-all-resources" = true', "all-non-negative", False, True),
    ],
)
def test_openfire_aliases(tmp_path: Path, toml: str, policy: str, all_res: bool, really_all: bool) -> None:
    c = load_config(write(tmp_path, "[routing]\n" + toml))
    assert c.routing.policy == policy
    assert (c.routing.all_resources, c.routing.really_all_resources) == (all_res, really_all)
    d = c.routing_dict()
    assert d["policy"] == policy
    assert d["route.all-resources"] is (True if all_res else None)
    assert d["route.really-all-resources"] is (True if really_all else None)
    # The routing engine reads the same policy out of it.
    from meshxmpp.routing.policy import PolicyConfig

    assert PolicyConfig.from_routing_config(d).policy == policy


def test_alias_through_overrides() -> None:
    c = load_config(overrides={"routing.route.all-resources": True})
    assert (c.routing.policy, c.routing.all_resources) == ("top-priority-all", True)
    c = load_config(overrides={"routing": {"route.really-all-resources": True}})
    assert c.routing.policy == "all-non-negative"


def test_alias_conflict_with_explicit_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[routing]\npolicy = "all-connected"\n"route.all-resources" = true'))
    assert info.value.key == "routing.policy"
    assert "route.all-resources" in info.value.message


# ---------------------------------------------------------------------------------------------
# [mesh]


def test_mesh_has_an_override_key_for_every_timing_field() -> None:
    fields = attrs.fields_dict(config_module.MeshConfig)
    hints = typing.get_type_hints(Timing)
    for f in dataclasses.fields(Timing):
        assert f.name in fields, f"mesh.{f.name} missing"
        assert fields[f.name].default is None
        assert fields[f.name].type == hints[f.name] | None
        value = 2.0 if f.name == "probe_interval" else getattr(PROFILES["test"], f.name)
        timing = load_config(overrides={"mesh": {f.name: value}}).mesh.timing()
        assert timing == dataclasses.replace(PROFILES["lan"], **{f.name: value})


def test_mesh_timing_is_the_profile_with_the_overrides() -> None:
    assert load_config().mesh.timing() == PROFILES["lan"]
    assert load_config(overrides={"mesh.profile": "test"}).mesh.timing() == PROFILES["test"]
    m = load_config(overrides={"mesh": {"profile": "test", "gossip_nodes": 5, "reconnect_timeout": 1}}).mesh
    assert m.timing() == dataclasses.replace(PROFILES["test"], gossip_nodes=5, reconnect_timeout=1.0)
    # Both probe values may move together, past the profile's.
    m = load_config(overrides={"mesh": {"probe_interval": 5, "probe_timeout": 2}}).mesh
    assert (m.timing().probe_interval, m.timing().probe_timeout) == (5.0, 2.0)


def test_mesh_repair_interval_follows_the_profile_unless_set() -> None:
    assert load_config().mesh.repair_every() == 10.0
    assert load_config(overrides={"mesh.profile": "test"}).mesh.repair_every() == 1.0
    assert load_config(overrides={"mesh.profile": "test", "mesh.repair_interval": 30}).mesh.repair_every() == 30.0


def test_mesh_secret_forms() -> None:
    m = load_config(overrides={"mesh.secret": "s3cret"}).mesh
    assert (m.secret, m.secrets(), m.enabled) == ("s3cret", [b"s3cret"], True)
    m = load_config(overrides={"mesh.secret": ["ñew", "old"]}).mesh  # a list from code becomes a tuple
    assert (m.secret, m.secrets()) == (("ñew", "old"), ["ñew".encode(), b"old"])
    assert hash(m)
    assert evolve(Config(), mesh={"secret": ["a"]}).mesh.secrets() == [b"a"]
    with pytest.raises(ConfigError) as info:
        evolve(Config(), mesh={"secret": ("a", None)})
    assert info.value.key == "mesh.secret"


def test_mesh_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHXMPP_MESH_SECRET", "from-env")
    assert load_config().mesh.secrets() == [b"from-env"]
    # It satisfies peers' need for a secret ...
    path = write(tmp_path, '[mesh]\npeers = ["10.0.0.2:5701"]\n')
    assert load_config(path).mesh.secrets() == [b"from-env"]
    # ... and the file (or an override) wins over it.
    path = write(tmp_path, '[mesh]\nsecret = ["file", "older"]\n')
    assert load_config(path).mesh.secrets() == [b"file", b"older"]
    assert load_config(path, {"mesh.secret": "cli"}).mesh.secrets() == [b"cli"]
    # Empty means unset.
    monkeypatch.setenv("MESHXMPP_MESH_SECRET", "")
    assert not load_config().mesh.enabled
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[mesh]\npeers = ["10.0.0.2:5701"]\n'))
    assert info.value.key == "mesh.secret"
    assert "MESHXMPP_MESH_SECRET" in info.value.message


def test_mesh_secret_from_the_environment_through_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path, '[mesh]\npeers = ["10.0.0.2:5701"]\n')
    for secret, code in (("from-env", 0), (None, 2)):
        env = cli_env()
        env.pop("MESHXMPP_MESH_SECRET", None)
        if secret is not None:
            env["MESHXMPP_MESH_SECRET"] = secret
        result = subprocess.run([sys.executable, "-m", "meshxmpp", "--config", str(path), "check-config"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == code, result.stderr


@pytest.mark.parametrize(("mesh", "address"), [
    ({}, None),  # wildcard bind: worked out at start
    ({"bind": "::"}, None),
    ({"bind": "10.0.0.1"}, ("10.0.0.1", 5701)),
    ({"bind": "10.0.0.1", "port": 0}, None),  # the port is known once bound
    ({"bind": "node1.example.org", "port": 5801}, ("node1.example.org", 5801)),
    ({"advertise": "[fd00::1]:5701"}, ("fd00::1", 5701)),
    ({"bind": "10.0.0.1", "advertise": "203.0.113.5:15701"}, ("203.0.113.5", 15701)),
])
def test_mesh_advertise_address(mesh: dict[str, object], address: tuple[str, int] | None) -> None:
    assert load_config(overrides={"mesh": mesh}).mesh.advertise_address() == address


@pytest.mark.parametrize("name", ["a", "node-1", "n1:5701", "ñodo", "x" * 64, "é" * 32, "[::1]:5701"])
def test_mesh_node_name_accepted(name: str) -> None:
    assert load_config(overrides={"mesh.node_name": name}).mesh.node_name == name


# ---------------------------------------------------------------------------------------------
# documentation


def test_every_option_is_documented() -> None:
    for _prefix, cls, _array in config_module._sections(Config, ""):
        assert cls.__doc__
        for field in attrs.fields(cls):
            assert field.metadata.get("doc"), f"{cls.__name__}.{field.name} has no doc"
            assert field.metadata.get("expect"), f"{cls.__name__}.{field.name} has no expect"


def test_reference_lists_every_key() -> None:
    ref = reference_markdown()
    for prefix, cls, array in config_module._sections(Config, ""):
        if prefix:
            assert (f"`[[{prefix}]]`" if array else f"`[{prefix}]`") in ref
        for field in attrs.fields(cls):
            if not attrs.has(field.type):
                key = field.metadata.get("key") or field.name
                assert f"`{key}`" in ref or f'`"{key}"`' in ref


def test_configuration_doc_is_current() -> None:
    """docs/configuration.md embeds reference_markdown(); regenerate it if this fails:

    python -c "from meshxmpp.config import reference_markdown; print(reference_markdown())"
    """
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert reference_markdown() in doc
