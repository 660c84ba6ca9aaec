"""The pytest plugin's fixtures as a user's suite meets them (pytest-trio for the async ones)."""

from __future__ import annotations

import pytest

from meshxmpp.testing import Cluster, RunningNode, SimCluster

pytestmark = pytest.mark.timeout(120)


async def test_node_fixture_defaults(meshxmpp_node: RunningNode) -> None:
    assert meshxmpp_node.domain == "localhost"
    await meshxmpp_node.add_user("alice")
    alice = await meshxmpp_node.client("alice", resource="r")
    await alice.ping()
    await alice.aclose()


@pytest.mark.meshxmpp(domain="example.org", overrides={"c2s": {"max_stanza_size": 20000}})
async def test_node_fixture_marker(meshxmpp_node: RunningNode) -> None:
    assert meshxmpp_node.domain == "example.org"
    assert meshxmpp_node.config.c2s.max_stanza_size == 20000


@pytest.mark.meshxmpp(nodes=2, seed=99)
async def test_cluster_fixture_marker(meshxmpp_cluster: Cluster) -> None:
    assert len(meshxmpp_cluster) == 2 and meshxmpp_cluster.seed == 99
    await meshxmpp_cluster.converged()


@pytest.mark.parametrize("meshxmpp_cluster", [1, {"nodes": 3, "domain": "example.com"}], indirect=True)
async def test_cluster_fixture_parametrized(meshxmpp_cluster: Cluster) -> None:
    assert len(meshxmpp_cluster) in (1, 3)
    if len(meshxmpp_cluster) == 3:
        assert meshxmpp_cluster.domain == "example.com"
    await meshxmpp_cluster.converged()


@pytest.mark.meshxmpp(nodes=4, seed=8, loss=0.1)
def test_sim_fixture(meshxmpp_sim: SimCluster) -> None:
    assert len(meshxmpp_sim) == 4 and meshxmpp_sim.seed == 8 and meshxmpp_sim.loss == 0.1
    meshxmpp_sim.converged()
    meshxmpp_sim.run_for(60)
    assert meshxmpp_sim.false_deaths() == []


class TestOptionsFixtureOverride:
    """A conftest (here: the class) can override ``meshxmpp_options`` for many tests at once."""

    @pytest.fixture
    def meshxmpp_options(self) -> dict[str, object]:
        return {"domain": "override.example", "nodes": 2}

    async def test_node(self, meshxmpp_node: RunningNode) -> None:
        assert meshxmpp_node.domain == "override.example"

    @pytest.mark.meshxmpp(nodes=1)  # the marker wins over the options fixture
    async def test_cluster(self, meshxmpp_cluster: Cluster) -> None:
        assert meshxmpp_cluster.domain == "override.example" and len(meshxmpp_cluster) == 1
