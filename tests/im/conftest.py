"""Fixtures for the im tests; the harness itself is ``tests/im/_harness.py``."""

from __future__ import annotations

import pytest

from tests.im._harness import Harness


@pytest.fixture
async def h() -> Harness:
    harness = Harness()
    await harness.add_user("alice")
    await harness.add_user("bob")
    await harness.add_user("carol")
    return harness
