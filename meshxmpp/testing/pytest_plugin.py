"""pytest plugin: meshxmpp servers as fixtures (registered through the ``pytest11`` entry point).

Fixtures (docs/testing.md, "pytest plugin"):

- ``meshxmpp_node``: a started node (`RunningNode`), for Trio tests (pytest-trio);
- ``meshxmpp_cluster``: a converged `Cluster` of 3 nodes by default, for Trio tests;
- ``meshxmpp_thread_node`` / ``meshxmpp_thread_cluster``: the same in a background thread (`ThreadNode`,
  `ThreadCluster`), for synchronous and asyncio tests (slixmpp...);
- ``meshxmpp_sim``: a deterministic `SimCluster` (no sockets, simulated time).

Options, each overriding the one before: the ``meshxmpp_options`` fixture (override it in a conftest for a
whole directory), the ``@pytest.mark.meshxmpp(nodes=3, overrides={...}, seed=..., **top_level)`` marker
(closest wins), and ``request.param`` from ``@pytest.mark.parametrize("meshxmpp_cluster", [2, 3],
indirect=True)`` (an int is the number of nodes, a dict is options).

The plugin module's registered name is its import path, so ``-p meshxmpp.testing.pytest_plugin`` or
``pytest_plugins = ["meshxmpp.testing.pytest_plugin"]`` next to the installed entry point registers it once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from meshxmpp.testing._cluster import Cluster, cluster
from meshxmpp.testing._node import RunningNode, node
from meshxmpp.testing._sim import SimCluster
from meshxmpp.testing._thread import ThreadCluster, ThreadNode, run_cluster_in_thread, run_in_thread

MARKER = "meshxmpp"

#: Option names the fixtures read; anything else is a top-level configuration key (``domain=...``).
_NODE_ONLY = ("overrides", "data_dir")
_CLUSTER_ONLY = ("nodes", "overrides", "seed")
_SIM_KEYS = ("nodes", "seed", "loss", "duplicate", "latency", "profile", "timing", "repair_interval",
             "start_spread")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(nodes=3, overrides=None, seed=None, **top_level): options for the meshxmpp_* fixtures "
        "(number of cluster nodes, nested config overrides, fault seed, top-level config keys)")


@pytest.fixture
def meshxmpp_options() -> dict[str, Any]:
    """Base options for every meshxmpp fixture; override this fixture to change them for a directory."""
    return {}


def _options(request: pytest.FixtureRequest, base: dict[str, Any]) -> dict[str, Any]:
    opts = dict(base)
    # Outer markers first, so the closest (function, then class, then module) wins.
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            opts["nodes"] = marker.args[0]
        opts.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, int) and not isinstance(param, bool):
        opts["nodes"] = param
    elif isinstance(param, dict):
        opts.update(param)
    elif param is not None:
        raise TypeError(f"meshxmpp fixture parameter must be an int (nodes) or a dict of options, got {param!r}")
    return opts


def _node_args(opts: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    top = {k: v for k, v in opts.items() if k not in _CLUSTER_ONLY + _NODE_ONLY + _SIM_KEYS}
    if opts.get("data_dir") is not None:
        top["data_dir"] = opts["data_dir"]
    return opts.get("overrides"), top


def _cluster_args(opts: dict[str, Any]) -> tuple[int, dict[str, Any] | None, int | None, dict[str, Any]]:
    top = {k: v for k, v in opts.items() if k not in _CLUSTER_ONLY + _NODE_ONLY + _SIM_KEYS}
    return int(opts.get("nodes", 3)), opts.get("overrides"), opts.get("seed"), top


@pytest.fixture
async def meshxmpp_node(request: pytest.FixtureRequest,
                        meshxmpp_options: dict[str, Any]) -> AsyncIterator[RunningNode]:
    """A started node on free loopback ports with a temporary SQLite database (needs pytest-trio)."""
    overrides, top = _node_args(_options(request, meshxmpp_options))
    async with node(overrides, **top) as n:
        yield n


@pytest.fixture
async def meshxmpp_cluster(request: pytest.FixtureRequest,
                           meshxmpp_options: dict[str, Any]) -> AsyncIterator[Cluster]:
    """A converged cluster (3 nodes unless told) with fault injection (needs pytest-trio)."""
    n, overrides, seed, top = _cluster_args(_options(request, meshxmpp_options))
    async with cluster(n, overrides, seed=seed, **top) as c:
        yield c


@pytest.fixture
def meshxmpp_thread_node(request: pytest.FixtureRequest,
                         meshxmpp_options: dict[str, Any]) -> Iterator[ThreadNode]:
    """A node running in a background thread: for synchronous and asyncio tests."""
    overrides, top = _node_args(_options(request, meshxmpp_options))
    with run_in_thread(overrides, **top) as n:
        yield n


@pytest.fixture
def meshxmpp_thread_cluster(request: pytest.FixtureRequest,
                            meshxmpp_options: dict[str, Any]) -> Iterator[ThreadCluster]:
    """A cluster running in a background thread: for synchronous and asyncio tests."""
    n, overrides, seed, top = _cluster_args(_options(request, meshxmpp_options))
    with run_cluster_in_thread(n, overrides, seed=seed, **top) as c:
        yield c


@pytest.fixture
def meshxmpp_sim(request: pytest.FixtureRequest, meshxmpp_options: dict[str, Any]) -> SimCluster:
    """A deterministic `SimCluster` (marker keys: nodes, seed, loss, duplicate, latency, profile...)."""
    opts = _options(request, meshxmpp_options)
    kw = {k: v for k, v in opts.items() if k in _SIM_KEYS and k != "nodes"}
    return SimCluster(int(opts.get("nodes", 3)), **kw)
