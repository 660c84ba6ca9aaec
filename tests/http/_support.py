"""Helpers for the HTTP tests: one request over a real socket with the standard library's client
(as an operator's script or a load balancer's probe would send it)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import trio

TOKEN = "s3cret-Token_0123456789+/="


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


async def request(address: tuple[str, int], method: str, target: str, *, body: bytes | None = None,
                  json_body: Any = None, token: str | None = None, headers: dict[str, str] | None = None,
                  ) -> Answer:
    """One request on a fresh connection; ``json_body`` is sent as ``application/json``."""
    hdrs = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"

    def call() -> Answer:
        conn = http.client.HTTPConnection(*address, timeout=10)
        try:
            conn.request(method, target, body=body, headers=hdrs)
            r = conn.getresponse()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    return await trio.to_thread.run_sync(call)
