"""C2SListener.run on real loopback sockets: STARTTLS with the development certificate verified by
the client, direct TLS with ALPN, and a stream error that survives closing under unread input."""

from __future__ import annotations

import ssl
from pathlib import Path

import trio

from meshxmpp.c2s import tls
from meshxmpp.c2s.listener import C2SListener
from meshxmpp.jid import JID
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.serialize import STREAM_FOOTER
from tests.c2s._helpers import DOMAIN, FakeRouter, header, make_ctx

TIMEOUT = 20


def verifying_context(data_dir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(data_dir / tls.DEV_CERT))
    ctx.set_alpn_protocols([tls.ALPN_PROTOCOL])
    return ctx


async def test_run_reports_the_bound_port_and_serves_starttls(tmp_path: Path) -> None:
    ctx = await make_ctx(tmp_path)
    listener = C2SListener(ctx)  # dev certificate generated into tmp_path
    router: FakeRouter = ctx.router  # type: ignore[assignment]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(listener.run)
            assert port == listener.port and port != 0

            stream = await trio.open_tcp_stream("127.0.0.1", port)
            client = TestClient(stream, DOMAIN)
            features = await client.open_stream()
            assert features.find("starttls", ns.TLS) is not None
            await client.send(Element("starttls", ns.TLS))
            assert (await client.next_stanza()).name == "proceed"
            # the client verifies the development certificate for the domain
            client.stream = trio.SSLStream(stream, verifying_context(tmp_path), server_hostname=DOMAIN)
            await client.stream.do_handshake()
            await client.open_stream()
            await client.authenticate("alice", "secret", "SCRAM-SHA-256")
            await client.open_stream()
            assert await client.bind("laptop") == JID.parse(f"{'alice'}@{DOMAIN}/laptop")

            await client.send(Element("message", ns.CLIENT, {"to": f"bob@{DOMAIN}"}))
            await router.wait_until(lambda: len(router.routed) == 1)
            assert router.routed[0][0].get("from") == f"alice@{DOMAIN}/laptop"

            await client.send_raw(STREAM_FOOTER)
            await client.wait_closed()
            await router.wait_until(lambda: len(router.ended) == 1)
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_direct_tls_listener_with_alpn(tmp_path: Path) -> None:
    ctx = await make_ctx(tmp_path, direct_tls_port=0)
    listener = C2SListener(ctx, direct_tls=True)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(listener.run)
            # XEP-0368: TLS from the first byte; the server name is the domain, not the host dialled
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, verifying_context(tmp_path), server_hostname=DOMAIN)
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == tls.ALPN_PROTOCOL
            client = TestClient(stream, DOMAIN)
            features = await client.open_stream()
            assert features.find("starttls", ns.TLS) is None
            await client.authenticate("alice", "secret", "PLAIN")
            await client.open_stream()
            assert (await client.bind()).bare == JID.parse(f"alice@{DOMAIN}")
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_stream_error_arrives_although_the_client_keeps_sending(tmp_path: Path) -> None:
    """A 1 MiB pre-auth stanza: the server stops reading at the limit, and still its error is
    read by the client (the listener lingers instead of resetting the connection)."""
    ctx = await make_ctx(tmp_path, require_encryption=False)
    listener = C2SListener(ctx)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(listener.run)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            payload = header() + b"<message><body>" + b"A" * (1 << 20) + b"</body></message>"

            async def send() -> None:
                try:
                    await stream.send_all(payload)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(send)
            received = bytearray()
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
            assert b"<policy-violation" in received and received.endswith(STREAM_FOOTER)
            await stream.aclose()
            nursery.cancel_scope.cancel()
