"""Fixtures for the storage tests: the PostgreSQL server (one per session, started on first use)."""

from __future__ import annotations

from meshxmpp.testing._postgres import postgres_server

__all__ = ["postgres_server"]
