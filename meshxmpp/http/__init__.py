"""The HTTP side of a node: health checks, metrics and the admin API on h11 and Trio (``[http]``).

`server.HttpServer` is the Trio glue, `api` the routes as plain functions ``Request -> Response``
(`admin` the admin API's write side, `metrics` the Prometheus/OpenMetrics exposition);
docs/operations.md describes them for operators.
"""

from __future__ import annotations

from meshxmpp.http.api import Request, Response
from meshxmpp.http.server import HttpServer, HttpStatistics

__all__ = ["HttpServer", "HttpStatistics", "Request", "Response"]
