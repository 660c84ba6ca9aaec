"""The HTTP side of a node: health check and admin API on h11 and Trio (``[http]``).

`server.HttpServer` is the Trio glue, `api` the routes as plain functions ``Request -> Response``.
"""

from __future__ import annotations

from meshxmpp.http.api import Request, Response
from meshxmpp.http.server import HttpServer, HttpStatistics

__all__ = ["HttpServer", "HttpStatistics", "Request", "Response"]
