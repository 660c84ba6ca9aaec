"""The HTTP listener over real loopback sockets (h11 as the client-side oracle), plus a few
deterministic cases over memory streams under the autojump clock."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.testing

from meshxmpp import testing
from meshxmpp.http import HttpServer, Request, Response
from meshxmpp.http.api import error_response, json_response

Handler = Callable[[Request], Awaitable[Response]]


# -- helpers --------------------------------------------------------------------------------------


@asynccontextmanager
async def serving(handler: Handler | None = None, **limits: Any) -> AsyncIterator[tuple[str, int]]:
    """A node, plus (with ``handler`` or ``limits``) a second HttpServer of our own on it."""
    async with testing.node() as n:
        if handler is None and not limits:
            yield n.http_address
            return
        server = HttpServer(n.ctx, bind="127.0.0.1", port=0, handler=handler, **limits)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            yield "127.0.0.1", port
            nursery.cancel_scope.cancel()


async def read_all(stream: trio.abc.ReceiveStream, *, within: float = 10.0) -> bytes:
    """Everything until the server closes (fails the test if it never does)."""
    data = b""
    with trio.fail_after(within):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset after the answer
                return data
            if not chunk:
                return data
            data += chunk


def parse(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Responses in ``data`` (Content-Length framed, as the server always sends)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


async def raw(address: tuple[str, int], data: bytes, *, half_close: bool = False) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        if half_close:
            await stream.send_eof()
        return await read_all(stream)


class Client:
    """h11 client over a real socket: requests on one keep-alive connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> tuple[h11.Response, bytes]:
        hdrs = [("Host", "localhost"), *(headers or [])]
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        response: h11.Response | None = None
        received = b""
        with trio.fail_after(10):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                        self.conn.start_next_cycle()
                    return response, received


@asynccontextmanager
async def client(address: tuple[str, int]) -> AsyncIterator[Client]:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        yield Client(stream)


def header(response: h11.Response, name: str) -> str | None:
    for k, v in response.headers:
        if k.decode() == name.lower():
            return v.decode()
    return None


# -- the node's listener --------------------------------------------------------------------------


async def test_healthz() -> None:
    async with serving() as address, client(address) as c:
        response, body = await c.request("GET", "/healthz")
    assert response.status_code == 200
    assert body == b"ok"
    assert header(response, "content-type") == "text/plain; charset=utf-8"
    assert header(response, "date") and header(response, "server")


async def test_head_is_get_without_a_body() -> None:
    async with serving() as address, client(address) as c:
        response, body = await c.request("HEAD", "/healthz")
        assert (response.status_code, body, header(response, "content-length")) == (200, b"", "2")
        response, body = await c.request("GET", "/healthz")  # the connection is still in step
        assert body == b"ok"


async def test_unknown_path_is_404_json() -> None:
    async with serving() as address, client(address) as c:
        response, body = await c.request("GET", "/nowhere?x=1")
    assert response.status_code == 404
    assert header(response, "content-type") == "application/json"
    assert json.loads(body) == {"error": "no such resource: /nowhere", "status": 404}


async def test_wrong_method_is_405_with_allow() -> None:
    async with serving() as address, client(address) as c:
        response, body = await c.request("POST", "/healthz", body=b"{}")
        assert response.status_code == 405
        assert header(response, "allow") == "GET, HEAD"
        assert json.loads(body)["status"] == 405
        response, body = await c.request("DELETE", "/api/explain")
        assert response.status_code == 405


async def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async with serving() as address, client(address) as c:
        first, _ = await c.request("GET", "/healthz")
        second, body = await c.request("GET", "/nope")
        third, body3 = await c.request("GET", "/healthz")
    assert (first.status_code, second.status_code, third.status_code, body3) == (200, 404, 200, b"ok")
    assert header(first, "connection") is None  # HTTP/1.1 default: keep-alive


async def test_pipelined_requests_are_answered_in_order() -> None:
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with serving() as address:
        responses = parse(await raw(address, req))
    assert [r[0] for r in responses] == [200, 404]
    assert responses[1][1]["connection"] == "close"


async def test_http10_closes_after_the_answer() -> None:
    async with serving() as address:
        responses = parse(await raw(address, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert [(s, b) for s, _, b in responses] == [(200, b"ok")]


# -- malformed and oversized requests ----------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",  # non-ASCII target
    b"GET /api/explain?to=%ff HTTP/1.1\r\nHost: x\r\n\r\n",  # not UTF-8 once decoded
])
async def test_bad_request_bytes_get_400_and_close(data: bytes) -> None:
    async with serving() as address:
        responses = parse(await raw(address, data))
    assert len(responses) == 1
    status, headers, body = responses[0]
    assert status == 400
    assert headers["connection"] == "close"
    assert json.loads(body)["status"] == 400
    assert b"Traceback" not in body


async def test_oversized_headers_get_431() -> None:
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n"
    async with serving() as address:
        responses = parse(await raw(address, data))
    assert [r[0] for r in responses] == [431]
    assert json.loads(responses[0][2])["error"] == "request line and headers larger than 16384 bytes"


async def test_the_header_cap_holds_however_the_bytes_arrive() -> None:
    # h11 alone checks its cap only while a head is incomplete; one complete 17 KB head in the
    # buffer would pass. The server reads no further than the cap, so it never gets there.
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16400 + b"\r\n\r\n"
    async with serving() as address:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(data)
            responses = parse(await read_all(stream))
    assert [r[0] for r in responses] == [431]


async def test_headers_just_under_the_cap_are_fine() -> None:
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 15000 + b"\r\nConnection: close\r\n\r\n"
    async with serving() as address:
        responses = parse(await raw(address, data))
    assert [(r[0], r[2]) for r in responses] == [(200, b"ok")]


async def test_oversized_body_is_refused_from_content_length_before_it_is_read() -> None:
    head = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
    async with serving() as address:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(head)  # and none of the body
            responses = parse(await read_all(stream))
    assert [(r[0], r[1]["connection"]) for r in responses] == [(413, "close")]


async def test_oversized_chunked_body_gets_413() -> None:
    chunk = b"a" * 30000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    data = b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with serving() as address:
        responses = parse(await raw(address, data))
    assert [r[0] for r in responses] == [413]


async def test_body_under_the_cap_is_read_and_the_connection_kept() -> None:
    seen: list[Request] = []

    async def echo(request: Request) -> Response:
        seen.append(request)
        return json_response({"n": len(request.body)})

    async with serving(echo) as address, client(address) as c:
        r1, b1 = await c.request("POST", "/x?a=1&a=2&b=", body=b"z" * 60000)
        r2, b2 = await c.request("GET", "/y", headers=[("X-A", "1"), ("X-A", "2")])
    assert (r1.status_code, json.loads(b1), r2.status_code) == (200, {"n": 60000}, 200)
    assert seen[0].method == "POST" and seen[0].path == "/x"
    assert seen[0].query == {"a": ["1", "2"], "b": [""]}
    assert seen[1].headers["x-a"] == "1, 2"
    assert seen[1].peer == "127.0.0.1"


async def test_expect_100_continue() -> None:
    async def echo(request: Request) -> Response:
        return Response(200, request.body, "text/plain")

    head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    async with serving(echo) as address:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(head)
            with trio.fail_after(10):
                interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hello")
            await stream.send_eof()
            data = await read_all(stream)
    assert parse(data)[0][0::2] == (200, b"hello")


# -- errors in routes -------------------------------------------------------------------------------


async def test_a_failing_route_gets_500_without_a_traceback() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internals")

    async with serving(broken) as address, client(address) as c:
        response, body = await c.request("GET", "/x")
        again, _ = await c.request("GET", "/x")  # the connection survives
    assert response.status_code == 500 and again.status_code == 500
    assert json.loads(body) == {"error": "internal server error", "status": 500}
    assert b"secret" not in body and b"Traceback" not in body


async def test_error_response_helper() -> None:
    r = error_response(418, "teapot", (("X", "y"),))
    assert (r.status, json.loads(r.body), r.headers) == (418, {"error": "teapot", "status": 418}, (("X", "y"),))


# -- deadlines --------------------------------------------------------------------------------------


async def test_slow_client_gets_408_and_is_closed() -> None:
    async with serving(timeout=0.2, request_timeout=0.5) as address:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            responses = parse(await read_all(stream, within=5))
    assert [(r[0], r[1]["connection"]) for r in responses] == [(408, "close")]


async def test_idle_keep_alive_connection_is_closed_quietly() -> None:
    async with serving(timeout=0.2) as address, client(address) as c:
        response, _ = await c.request("GET", "/healthz")
        assert response.status_code == 200
        assert await read_all(c.stream, within=5) == b""  # closed, nothing said


async def test_a_connection_that_never_speaks_is_closed() -> None:
    async with serving(timeout=0.2) as address:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            assert await read_all(stream, within=5) == b""


async def test_dripping_client_is_cut_off_by_the_request_deadline(autojump_clock: trio.testing.MockClock) -> None:
    # Each byte arrives within the per-read deadline, the whole head does not: 408 after
    # request_timeout. Memory streams and the autojump clock: deterministic, no real waiting.
    async def never(request: Request) -> Response:
        raise AssertionError("not reached")

    server = HttpServer(None, bind="127.0.0.1", port=0, handler=never, timeout=1.0, request_timeout=3.0)
    client_end, server_end = trio.testing.memory_stream_pair()
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    received = b""
    answered_after: list[float] = []
    start = trio.current_time()

    async def read() -> None:
        nonlocal received
        while chunk := await client_end.receive_some(65536):
            if not received:
                answered_after.append(trio.current_time() - start)
            received += chunk

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_end, "127.0.0.1")
        nursery.start_soon(read)
        for byte in data[:-1]:
            await trio.sleep(0.5)
            if received:
                break
            await client_end.send_all(bytes([byte]))
    assert parse(received)[0][0] == 408
    assert answered_after == [3.0]
    assert server.statistics().active == 0


async def test_client_gone_before_the_answer_ends_quietly(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(200, b"x" * 100000, "text/plain")

    server = HttpServer(None, bind="127.0.0.1", port=0, handler=slow, timeout=1.0)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_end, "127.0.0.1")
        await client_end.send_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        await client_end.aclose()
        release.set()
    assert server.statistics().active == 0  # returned (after h11's send_failed), nothing raised


async def test_a_write_that_stalls_hits_the_write_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async def big(request: Request) -> Response:
        return Response(200, b"x" * 10_000_000, "text/plain")

    server = HttpServer(None, bind="127.0.0.1", port=0, handler=big, timeout=1.0, request_timeout=30.0)
    # A lockstep pair: a write completes only when the client reads, and this client never does.
    client_end, server_end = trio.testing.lockstep_stream_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_end.send_all, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        await server.handle_stream(server_end, "127.0.0.1")
    assert trio.current_time() - start < 5.0  # the write deadline (1 s) plus bounded cleanup


async def test_statistics_count_connections_and_requests() -> None:
    async def ok(request: Request) -> Response:
        return Response(200, b"", "text/plain")

    async with testing.node() as n:
        server = HttpServer(n.ctx, bind="127.0.0.1", port=0, handler=ok)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            async with client(("127.0.0.1", port)) as c:
                await c.request("GET", "/a")
                await c.request("GET", "/b")
            stats = server.statistics()
            assert (stats.port, stats.accepted, stats.requests) == (port, 1, 2)
            nursery.cancel_scope.cancel()


async def test_node_without_http() -> None:
    async with testing.node({"http": {"enabled": False}}) as n:
        assert n.node.http_port is None
        with pytest.raises(RuntimeError, match="disabled"):
            _ = n.http_address


async def test_server_needs_a_context_or_a_handler() -> None:
    with pytest.raises(ValueError):
        HttpServer(None, bind="127.0.0.1", port=0)


async def test_port_in_use_names_the_listener() -> None:
    async def ok(request: Request) -> Response:
        return Response(200)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = HttpServer(None, bind="127.0.0.1", port=port, handler=ok)
        with pytest.raises(OSError, match=f"HTTP listener on 127.0.0.1:{port}: "):
            await server.run()
