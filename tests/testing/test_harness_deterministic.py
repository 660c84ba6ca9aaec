"""Deterministic mode (`SimCluster`): 30 simulated minutes in seconds, exact replays of a seed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from meshxmpp.testing import SimCluster, SimTimeout

pytestmark = pytest.mark.timeout(300)

MINUTES_30 = 30 * 60.0


def half_hour(n: int, seed: int) -> tuple[SimCluster, float]:
    started = time.monotonic()
    sim = SimCluster(n, seed=seed, loss=0.10, duplicate=0.01)
    sim.converged()
    sim.bind(0, "alice@example.org/desk")
    sim.bind(n - 1, "bob@example.org/phone", priority=5)
    sim.run_for(MINUTES_30)
    return sim, time.monotonic() - started


@pytest.mark.parametrize(("n", "seed"), [(3, 1), (5, 2), (7, 3)])
def test_half_hour_at_ten_percent_loss_no_false_deaths(n: int, seed: int) -> None:
    sim, took = half_hour(n, seed)
    assert sim.now >= MINUTES_30
    assert took < 60.0, f"n={n} seed={seed}: 30 simulated minutes took {took:.1f} s of real time"
    assert sim.false_deaths() == [], f"n={n} seed={seed}: {sim.false_deaths()[:5]}"
    assert sim.statistics()["dropped"] > 0  # the loss was real
    suspicions = [e for e in sim.trace() if e.kind == "MemberChanged" and " suspect " in e.detail]
    assert suspicions, "10 % loss never made anyone suspect anyone: the run did not test much"
    sim.loss = 0.0
    sim.converged(timeout=30)
    assert sim.table(0) == [("alice@example.org/desk", "n0"), ("bob@example.org/phone", f"n{n - 1}")]


def test_same_seed_same_trace() -> None:
    first, _ = half_hour(3, 42)
    again, _ = half_hour(3, 42)
    assert first.trace() == again.trace()
    assert len(first.trace()) > 10
    # Another seed is another run (a minute of it shows).
    short = [SimCluster(3, seed=s, loss=0.1) for s in (42, 43)]
    for sim in short:
        sim.run_for(60)
    assert short[0].trace() != short[1].trace()


def scenario(seed: int) -> SimCluster:
    sim = SimCluster(4, seed=seed, loss=0.05)
    sim.converged()
    sim.bind(3, "carol@example.org/a")
    sim.run_for(5)
    sim.kill(3)
    sim.run_until(lambda: all(sim.members(i)["n3"] == "dead" for i in sim.live()), timeout=30,
                  what="n3 not dead everywhere")
    sim.partition({0, 1}, {2})
    sim.run_for(20)
    sim.heal()
    sim.restart(3)
    sim.converged(timeout=60)
    return sim


def test_faults_replay_exactly_and_deaths_are_classified() -> None:
    a, b = scenario(9), scenario(9)
    assert a.trace() == b.trace()
    kinds = {e.kind for e in a.trace()}
    assert {"harness", "MemberChanged", "SessionsLost"} <= kinds
    deaths = a.deaths()
    # n3 was killed: every survivor's verdict on it is a true one; so are verdicts across the partition.
    assert any(d.member == "n3" and not d.false for d in deaths)
    assert any({d.observer, d.member} & {"n2"} and not d.false for d in deaths)
    assert a.false_deaths() == []
    assert a.table(0) == []  # carol's session died with n3


def test_replay_is_independent_of_hash_randomisation() -> None:
    code = ("from meshxmpp.testing import SimCluster\n"
            "s = SimCluster(4, seed=5, loss=0.1); s.converged(); s.bind(1, 'a@x/r'); s.run_for(120)\n"
            "print(repr(s.trace()))\n")
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                   timeout=120, check=True).stdout)
    assert outs[0] == outs[1] and outs[0].startswith("[TraceEvent(")


def test_waits_fail_with_the_seed_and_the_time() -> None:
    sim = SimCluster(3, seed=77)
    sim.converged()
    sim.partition({0}, {1, 2})
    sim.run_for(10)
    with pytest.raises(SimTimeout, match=r"seed 77: after 5 simulated s .*not converged"):
        sim.converged(timeout=5)
