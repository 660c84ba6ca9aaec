"""Mutual TLS on mesh links (issue 5, item 3) over real loopback sockets.

Certificates come from trustme CAs; the contexts from ``MeshConfig.ssl_contexts()``, as a node builds
them. Nodes of one cluster CA link and exchange frames (encrypted: a recording proxy in between never
sees a payload); a certificate from another CA, no client certificate, or no TLS at all is refused on
both sides and counted as an auth failure; and the secret is still checked inside TLS. Like the other
transport tests, nothing sleeps: every wait is on a callback event.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from meshxmpp.config import Config, ConfigError, MeshConfig, evolve, load_config
from meshxmpp.mesh.transport import MeshTransport
from meshxmpp.mesh.wire import Kind
from tests.mesh.test_transport import SECRET, TIMEOUT, F, Rec, make, mesh, start
from tests.mesh.test_transport_auth import PAYLOAD, WRONG, read_all

Contexts = tuple[ssl.SSLContext, ssl.SSLContext]


def write_pems(directory: Path, ca: trustme.CA, leaf: trustme.LeafCert | None, name: str) -> dict[str, str]:
    """The three [mesh] keys for a node with ``leaf`` (signed by some CA) that trusts ``ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {k: str(directory / f"{name}-{k}.pem") for k in ("tls_ca", "tls_cert", "tls_key")}
    ca.cert_pem.write_to_path(paths["tls_ca"])
    if leaf is not None:
        Path(paths["tls_cert"]).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(paths["tls_key"])
    return paths


def contexts(
    tmp_path: Path, ca: trustme.CA, *, signed_by: trustme.CA | None = None, name: str = "n"
) -> Contexts:
    """A node's (server, client) contexts: it trusts ``ca``; its certificate is from ``signed_by``.

    The certificate names a host that is not the one dialled: nobody checks host names."""
    leaf = (signed_by or ca).issue_cert(f"{name}.mesh.invalid")
    result = MeshConfig(**write_pems(tmp_path / name, ca, leaf, name)).ssl_contexts()
    assert result is not None
    return result


def without_client_cert(ca: trustme.CA, server: ssl.SSLContext) -> Contexts:
    """A node whose dialling side presents no certificate (it still verifies the listener)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    ca.configure_trust(client)
    return server, client


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_failures(rec: Rec) -> list[str]:
    return [c.reason for c in rec.closed if c.reason.startswith("TLS failed: ")]


async def refused(dialer: Rec, listener: Rec, *, count: int = 1) -> None:
    """``dialer`` dials ``listener`` with a frame queued; both see the connection fail, nothing passes."""
    assert dialer.t.send(listener.addr, F, PAYLOAD)
    await dialer.wait(lambda: len(dialer.closed) == count)
    await listener.wait(lambda: len(listener.closed) == count)
    for rec in (dialer, listener):
        assert rec.frames == [] and rec.ups == [] and rec.t.peers() == ()
        assert rec.t.statistics().peers == {} and rec.t.statistics().connections == 0
    assert not dialer.t.send(listener.addr, F, PAYLOAD)  # the dial failed: backoff


async def recording_proxy(
    target: tuple[str, int], seen: bytearray, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Forward one connection to ``target`` and record every byte going either way."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(("127.0.0.1", listeners[0].socket.getsockname()[1]))
    async with listeners[0]:
        down = await listeners[0].accept()
    up = await trio.open_tcp_stream(*target)

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            while data := await src.receive_some(65536):
                seen.extend(data)
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with down, up, trio.open_nursery() as nursery:
        nursery.start_soon(pump, down, up)
        nursery.start_soon(pump, up, down)


# --------------------------------------------------------------------------- one cluster CA


async def test_nodes_of_one_ca_link_and_exchange_frames_both_ways(tmp_path: Path, ca: trustme.CA) -> None:
    a_ctx, b_ctx = contexts(tmp_path, ca, name="a"), contexts(tmp_path, ca, name="b")
    seen = bytearray()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a, b = make("alpha", ssl_contexts=a_ctx), make("beta", ssl_contexts=b_ctx)
            await start(nursery, a)
            await start(nursery, b)
            via = await nursery.start(recording_proxy, b.addr, seen)
            assert a.t.send(via, F, PAYLOAD)
            await b.wait(lambda: b.frames)
            assert b.frames == [("alpha", F, PAYLOAD)] and b.ups == [("alpha", a.addr)]
            assert b.t.send("alpha", Kind.ACK, b"the answer, also secret")
            assert a.t.send(via, Kind.MEMBERSHIP, b"more")
            await a.wait(lambda: a.frames)
            await b.wait(lambda: len(b.frames) == 2)
            assert a.frames == [("beta", Kind.ACK, b"the answer, also secret")]
            assert a.ups == [("beta", b.addr)]  # the name and address proved by the HMAC handshake
            for rec in (a, b):
                stats = rec.t.statistics()
                assert stats.auth_failures == stats.handshake_failures == stats.protocol_errors == 0

            # a graceful close under TLS (no half-close there: the BYEs carry it): frames in flight
            # still arrive, and nobody sees an internal error
            for i in range(50):
                assert a.t.send("beta", F, b"late %d" % i)
            assert a.t.disconnect("beta")
            await b.wait(lambda: b.downs)
            await a.wait(lambda: a.closed)
            await b.wait(lambda: b.closed)
            assert b.payloads()[2:] == [b"late %d" % i for i in range(50)]
            assert a.closed[0].reason == "disconnect" and b.closed[0].reason == "closed by peer: disconnect"
            await a.t.aclose()
            await b.t.aclose()
    assert seen  # the link went through the proxy, encrypted: no payload, not even the node names
    for plain in (PAYLOAD, b"the answer, also secret", b"late 0", b"alpha", b"beta"):
        assert plain not in seen


async def test_links_survive_shutdown_and_reconnect(tmp_path: Path, ca: trustme.CA) -> None:
    """aclose() under TLS (BYE "shutdown", close_notify) and a fresh dial afterwards."""
    ctx = contexts(tmp_path, ca)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a, b = make("a", ssl_contexts=ctx), make("b", ssl_contexts=ctx)
            await start(nursery, a)
            await start(nursery, b)
            assert a.t.send(b.addr, F, b"one")
            await b.wait(lambda: b.frames)
            assert b.t.disconnect("a")
            await a.wait(lambda: a.downs)
            assert a.t.send(b.addr, F, b"two")  # dials again
            await b.wait(lambda: len(b.frames) == 2)
            await b.t.aclose()
            await a.wait(lambda: len(a.downs) == 2)
            assert [c.reason for c in a.closed] == ["closed by peer: disconnect", "closed by peer: shutdown"]
            assert a.t.statistics().connections == 0
            await a.t.aclose()


# --------------------------------------------------------------------------- refused by TLS


@pytest.mark.parametrize("stranger_trusts", ["its own CA", "the cluster CA"])
async def test_a_certificate_from_another_ca_is_refused_both_ways(
    tmp_path: Path, ca: trustme.CA, stranger_trusts: str
) -> None:
    other = trustme.CA()
    good_ctx = contexts(tmp_path, ca, name="good")
    trusted = other if stranger_trusts == "its own CA" else ca
    stranger_ctx = contexts(tmp_path, trusted, signed_by=other, name="stranger")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            # same secret: only the certificates differ
            good, bad = make("good", ssl_contexts=good_ctx), make("bad", ssl_contexts=stranger_ctx)
            await start(nursery, good)
            await start(nursery, bad)
            await refused(bad, good)  # the stranger dials us
            await refused(good, bad, count=2)  # we dial the stranger
            for rec in (good, bad):
                assert rec.t.statistics().auth_failures == 2 and rec.t.statistics().handshake_failures == 0
                assert len(tls_failures(rec)) == 2, rec.closed
            # whoever holds the cluster CA names the reason: the stranger's certificate
            assert any("certificate refused" in r for r in tls_failures(good))
            await good.t.aclose()
            await bad.t.aclose()


async def test_a_peer_without_a_client_certificate_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    server_ctx, _ = ctx = contexts(tmp_path, ca)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            good, anon = (
                make("good", ssl_contexts=ctx),
                make("anon", ssl_contexts=without_client_cert(ca, server_ctx)),
            )
            await start(nursery, good)
            await start(nursery, anon)
            await refused(anon, good)
            assert good.closed[0].reason == "TLS failed: the peer sent no certificate"
            assert anon.closed[0].reason.startswith("TLS failed: the peer closed the connection")
            assert good.t.statistics().auth_failures == anon.t.statistics().auth_failures == 1

            # a bare TLS client with no certificate gets nothing either (under TLS 1.3 its handshake
            # completes, and the refusal shows as the connection closing)
            client = without_client_cert(ca, server_ctx)[1]
            stream = trio.SSLStream(await trio.open_tcp_stream(*good.addr), client, server_hostname=None)
            try:
                await stream.do_handshake()
                await stream.send_all(b"anything")
                received = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                received = b""
            assert received == b""
            await stream.aclose()
            await good.wait(lambda: len(good.closed) == 2)
            assert good.closed[1].reason == "TLS failed: the peer sent no certificate"
            assert good.frames == [] and good.t.statistics().auth_failures == 2
            await good.t.aclose()
            await anon.t.aclose()


async def test_a_plain_tcp_node_cannot_link_to_a_tls_node(tmp_path: Path, ca: trustme.CA) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            tls, plain = make("tls", ssl_contexts=contexts(tmp_path, ca)), make("plain")
            await start(nursery, tls)
            await start(nursery, plain)
            await refused(plain, tls)  # plain dials the TLS node
            assert tls.closed[0].reason == "TLS failed: the peer does not use TLS"
            # the TLS node tells it why, in the mesh framing it speaks
            assert plain.closed[0].reason == (
                "handshake: closed by peer during handshake: this node requires TLS on mesh links"
            )

            await refused(tls, plain, count=2)  # the TLS node dials the plain one
            assert (
                plain.closed[1].reason == "handshake: the peer uses TLS on mesh links and this node does not"
            )
            assert tls.closed[1].reason == (
                "TLS failed: the peer does not use TLS (it says 'this node does not use TLS on mesh links')"
            )
            assert tls.t.statistics().auth_failures == 2 and tls.t.statistics().handshake_failures == 0
            assert plain.t.statistics().handshake_failures == 2 and plain.t.statistics().auth_failures == 0
            await tls.t.aclose()
            await plain.t.aclose()


async def test_the_secret_is_still_checked_under_tls(tmp_path: Path, ca: trustme.CA) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            good = make("good", ssl_contexts=contexts(tmp_path, ca, name="good"))
            bad = make("bad", secrets=[WRONG], ssl_contexts=contexts(tmp_path, ca, name="bad"))
            await start(nursery, good)
            await start(nursery, bad)
            await refused(bad, good)
            await refused(good, bad, count=2)
            for rec in (good, bad):
                assert [c.reason for c in rec.closed] == ["auth failed", "auth failed"]
                assert rec.t.statistics().auth_failures == 2
            await good.t.aclose()
            await bad.t.aclose()


async def test_garbage_and_silence_on_a_tls_port(tmp_path: Path, ca: trustme.CA) -> None:
    """Nothing a stranger does before or during TLS crashes or hangs the transport."""
    ctx = contexts(tmp_path, ca)
    bye = b"\x00\x00\x00\x26\x01\x09this node requires TLS on mesh links"
    cases = [  # what the stranger sends, what it gets back, how the connection ends
        (b"", b"", "handshake: connection closed during the handshake"),
        (b"GET / HTTP/1.1\r\n\r\n", bye, "TLS failed: the peer does not use TLS"),
        (bytes(range(256)) * 8, bye, "TLS failed: the peer does not use TLS"),
        (b"\x16\x03\x01\x00\x05hello", b"", "TLS failed: TLS error: "),  # a broken ClientHello
    ]
    async with mesh("good", "peer", ssl_contexts=ctx, handshake_timeout=0.5) as (good, peer):
        for i, (blob, answer, reason) in enumerate(cases):
            stream = await trio.open_tcp_stream(*good.addr)
            try:
                await stream.send_all(blob)
                await stream.send_eof()
            except trio.BrokenResourceError:
                pass
            assert await read_all(stream) == answer  # no TLS alert, nothing else
            await stream.aclose()
            await good.wait(lambda i=i: len(good.closed) == i + 1)  # type: ignore[misc]
            assert good.closed[i].reason.startswith(reason)
        silent = await trio.open_tcp_stream(*good.addr)  # a TLS handshake that never starts
        await good.wait(lambda: len(good.closed) == len(cases) + 1)
        await silent.aclose()
        stats = good.t.statistics()
        assert good.closed[-1].reason == "handshake timeout" and stats.connections == 0
        assert stats.auth_failures == 3 and stats.handshake_failures == 2
        assert peer.t.send(good.addr, F, b"still here")  # and the port still serves real peers
        await good.wait(lambda: good.frames)


# --------------------------------------------------------------------------- configuration


def test_config_keys_all_three_or_none(tmp_path: Path, ca: trustme.CA) -> None:
    paths = write_pems(tmp_path, ca, ca.issue_cert("n1.mesh.invalid"), "n1")
    assert Config().mesh.tls_ca is Config().mesh.tls_cert is Config().mesh.tls_key is None
    assert Config().mesh.ssl_contexts() is None and not Config().mesh.tls_enabled

    cfg = load_config(overrides={f"mesh.{k}": v for k, v in paths.items()})
    assert cfg.mesh.tls_enabled
    assert (cfg.mesh.tls_ca, cfg.mesh.tls_cert, cfg.mesh.tls_key) == tuple(paths.values())

    toml = tmp_path / "meshxmpp.toml"
    toml.write_text("[mesh]\n" + "".join(f'{k} = "{v}"\n' for k, v in paths.items()), encoding="utf-8")
    assert load_config(toml).mesh == cfg.mesh

    for missing in ("tls_ca", "tls_cert", "tls_key"):
        partial = {f"mesh.{k}": v for k, v in paths.items() if k != missing}
        with pytest.raises(ConfigError) as info:
            load_config(overrides=partial)
        assert info.value.key == f"mesh.{missing}" and "together with" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"mesh.tls_key": paths["tls_key"]})
    assert info.value.key == "mesh.tls_ca"
    with pytest.raises(ConfigError) as info:
        evolve(Config(), mesh={"tls_cert": paths["tls_cert"]})  # built in code: the same check
    assert info.value.key == "mesh.tls_ca"

    # the files must exist when the config is loaded (as for [tls] cert and key)
    for key in ("tls_ca", "tls_cert", "tls_key"):
        with pytest.raises(ConfigError) as info:
            load_config(
                overrides={**{f"mesh.{k}": v for k, v in paths.items()}, f"mesh.{key}": "/no/such.pem"}
            )
        assert info.value.key == f"mesh.{key}" and info.value.message == "file not found: /no/such.pem"
    for bad in ("", 5, ["a"]):
        with pytest.raises(ConfigError) as info:
            load_config(overrides={**{f"mesh.{k}": v for k, v in paths.items()}, "mesh.tls_cert": bad})
        assert info.value.key == "mesh.tls_cert" and info.value.message.startswith("must be a file path")


def test_ssl_contexts_are_mutual_tls_against_the_cluster_ca_only(tmp_path: Path, ca: trustme.CA) -> None:
    paths = write_pems(tmp_path, ca, ca.issue_cert("n1.mesh.invalid"), "n1")
    result = MeshConfig(**paths).ssl_contexts()
    assert result is not None
    server, client = result
    assert server.protocol == ssl.PROTOCOL_TLS_SERVER and client.protocol == ssl.PROTOCOL_TLS_CLIENT
    for ctx in (server, client):
        assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED  # 1.3 when both have it
        assert ctx.cert_store_stats()["x509_ca"] == 1  # the cluster CA, no system CAs
    MeshTransport(node_name="n1", bind="127.0.0.1", port=0, secrets=[SECRET], ssl_contexts=result)

    # a key that does not match the certificate: ssl_contexts() says so (the node does not start)
    other = ca.issue_cert("n2.mesh.invalid")
    other.private_key_pem.write_to_path(paths["tls_key"])
    with pytest.raises(ssl.SSLError):
        MeshConfig(**paths).ssl_contexts()


def test_transport_refuses_contexts_that_are_not_mutual(tmp_path: Path, ca: trustme.CA) -> None:
    server, client = contexts(tmp_path, ca)
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # CERT_NONE: would admit anyone with the secret
    checking = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on: no host name to check
    for bad in ((lax, client), (server, checking), (server,), "ctx"):
        with pytest.raises(ValueError):
            MeshTransport(node_name="n", bind="127.0.0.1", port=0, secrets=[SECRET], ssl_contexts=bad)  # type: ignore[arg-type]
