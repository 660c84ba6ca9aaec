from __future__ import annotations

import ast
import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshxmpp.c2s import sasl
from meshxmpp.c2s.sasl import (
    MECHANISMS,
    Challenge,
    Failure,
    NeedCredentials,
    ScramClient,
    ScramCredentials,
    ServerMechanism,
    Success,
    derive_credentials,
    plain_client,
    server_mechanism,
)
from meshxmpp.jid import InvalidJID, prepare_localpart

KEY = b"fake-salt-key"

# RFC 5802 §5 (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256): user "user", password "pencil".
VECTORS: dict[str, dict[str, Any]] = {
    "SCRAM-SHA-1": dict(
        salt="QSXCR+Q6sek8bf92",
        cnonce="fyko+d2lbbFgONRv9qkxdawL",
        snonce="3rfcNHYJY1ZVvWVs7j",
        client_first=b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        server_first=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        client_final=b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        server_final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    ),
    "SCRAM-SHA-256": dict(
        salt="W22ZaJ0SNY7soEsUEjb6gQ==",
        cnonce="rOprNGfwEbeRWgbNEkqO",
        snonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        client_first=b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        server_first=b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        client_final=(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ),
        server_final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ),
}
SCRAMS = ["SCRAM-SHA-256", "SCRAM-SHA-1"]


def vector_creds(mech: str) -> dict[str, ScramCredentials]:
    return derive_credentials("pencil", salt=base64.b64decode(VECTORS[mech]["salt"]))


def run(
    mech: str,
    creds: dict[str, ScramCredentials] | None,
    username: str = "user",
    password: str = "pencil",
    *,
    authzid: str | None = None,
    domain: str | None = None,
    nonce: bytes = b"server-nonce-1234",
) -> tuple[Success | Failure, ScramClient | None]:
    """Client <-> server exchange; returns the final server result (and the SCRAM client)."""
    server = server_mechanism(mech, nonce=nonce, fake_salt_key=KEY, domain=domain)
    if mech == "PLAIN":
        r = server.step(plain_client(username, password, authzid))
        if not isinstance(r, NeedCredentials):
            assert isinstance(r, Failure)
            return r, None
        final = server.provide(creds)
        assert isinstance(final, (Success, Failure))
        return final, None
    client = ScramClient(mech, username, password, b"client-nonce", authzid=authzid)
    r = server.step(client.first())
    if not isinstance(r, NeedCredentials):
        assert isinstance(r, Failure)
        return r, client
    challenge = server.provide(creds)
    assert isinstance(challenge, Challenge)
    last = server.step(client.final(challenge))
    assert isinstance(last, (Success, Failure))
    assert server.done
    return last, client


# --------------------------------------------------------------------------- RFC vectors


@pytest.mark.parametrize("mech", SCRAMS)
def test_rfc_vector_server(mech: str) -> None:
    v = VECTORS[mech]
    server = server_mechanism(mech, nonce=v["snonce"].encode(), fake_salt_key=KEY)
    assert server.name == mech
    assert server.step(v["client_first"]) == NeedCredentials("user")
    challenge = server.provide(vector_creds(mech))
    assert type(challenge) is Challenge
    assert challenge == v["server_first"]
    assert server.step(v["client_final"]) == Success(v["server_final"], "user")


@pytest.mark.parametrize("mech", SCRAMS)
def test_rfc_vector_client(mech: str) -> None:
    v = VECTORS[mech]
    client = ScramClient(mech.removeprefix("SCRAM-"), "user", "pencil", v["cnonce"])
    assert client.mechanism == mech
    assert client.first() == v["client_first"]
    assert client.final(v["server_first"]) == v["client_final"]
    assert client.verify(v["server_final"])
    assert not client.verify(b"v=" + base64.b64encode(b"\x00" * (20 if mech == "SCRAM-SHA-1" else 32)))
    assert not client.verify(b"e=other-error")
    assert not client.verify(b"v=***")


def test_rfc_vector_keys() -> None:
    # RFC 7677/5802 keys recomputed by hand from the definitions
    creds = vector_creds("SCRAM-SHA-1")
    salted = hashlib.pbkdf2_hmac("sha1", b"pencil", base64.b64decode("QSXCR+Q6sek8bf92"), 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha1")
    assert creds["SHA-1"].stored_key == hashlib.sha1(client_key).digest()
    assert creds["SHA-1"].server_key == hmac.digest(salted, b"Server Key", "sha1")
    assert creds["SHA-1"].iterations == 4096
    assert len(creds["SHA-256"].stored_key) == 32


def test_derive_credentials() -> None:
    a = derive_credentials("secret")
    b = derive_credentials("secret")
    assert set(a) == {"SHA-1", "SHA-256"}
    assert a["SHA-1"].hash_name == "SHA-1" and a["SHA-256"].hash_name == "SHA-256"
    assert len(a["SHA-256"].salt) == 16
    assert a["SHA-256"].salt != b["SHA-256"].salt  # random salt
    assert a["SHA-256"].stored_key != b["SHA-256"].stored_key
    c = derive_credentials("secret", salt=b"0123456789abcdef", iterations=5000)
    assert c["SHA-1"].iterations == 5000 and c["SHA-1"].salt == b"0123456789abcdef"
    with pytest.raises(ValueError):
        derive_credentials("secret", iterations=4095)
    with pytest.raises(ValueError):
        derive_credentials("")
    with pytest.raises(ValueError):
        derive_credentials("bell\x07")
    with pytest.raises(ValueError):
        derive_credentials("x", salt=b"")
    # OpaqueString: a non-ASCII space in the password is the ASCII space
    assert derive_credentials("a\u00a0b", salt=b"s" * 16) == derive_credentials("a b", salt=b"s" * 16)


def test_contract_shapes() -> None:
    assert MECHANISMS == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
    assert issubclass(Challenge, bytes)
    for mech in MECHANISMS:
        assert isinstance(server_mechanism(mech, nonce=b"n", fake_salt_key=KEY), ServerMechanism)
    with pytest.raises(ValueError):
        server_mechanism("DIGEST-MD5", nonce=b"n", fake_salt_key=KEY)
    assert Failure("not-authorized") == Failure("not-authorized")


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(sasl.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"trio", "socket", "sqlite3", "asyncio", "os", "random", "time"}
    assert not any(isinstance(n, (ast.Await, ast.AsyncFunctionDef)) for n in ast.walk(tree))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("mech", MECHANISMS)
def test_roundtrip(mech: str) -> None:
    creds = derive_credentials("correct horse")
    result, client = run(mech, creds, "alice", "correct horse")
    assert isinstance(result, Success)
    assert result.username == "alice"
    if client is not None:
        assert client.verify(result.additional)
    else:
        assert result.additional == b""


@pytest.mark.parametrize("mech", MECHANISMS)
def test_username_is_normalised(mech: str) -> None:
    creds = derive_credentials("pw")
    result, _ = run(mech, creds, "\uff21LICE", "pw")  # fullwidth A, uppercase
    assert isinstance(result, Success) and result.username == "alice"


@pytest.mark.parametrize("mech", MECHANISMS)
def test_wrong_password_and_unknown_user_fail_identically(mech: str) -> None:
    creds = derive_credentials("right")
    wrong, _ = run(mech, creds, "alice", "wrong")
    unknown, _ = run(mech, None, "alice", "wrong")
    unknown_right_pw, _ = run(mech, None, "alice", "right")
    assert wrong == unknown == unknown_right_pw == Failure("not-authorized")
    assert isinstance(wrong, Failure) and wrong.text is None


@pytest.mark.parametrize("mech", SCRAMS)
def test_unknown_user_gets_stable_plausible_salt(mech: str) -> None:
    def first_challenge(user: str, key: bytes = KEY) -> bytes:
        server = server_mechanism(mech, nonce=b"snonce", fake_salt_key=key)
        client = ScramClient(mech, user, "x", "cnonce")
        assert server.step(client.first()) == NeedCredentials(user)
        challenge = server.provide(None)
        assert isinstance(challenge, Challenge)
        return challenge

    a, b = first_challenge("ghost"), first_challenge("ghost")
    assert a == b  # same salt every time, like a real account
    assert first_challenge("ghost") != first_challenge("spook")
    assert first_challenge("ghost") != first_challenge("ghost", b"other key")
    real_server = server_mechanism(mech, nonce=b"snonce", fake_salt_key=KEY)
    real_server.step(ScramClient(mech, "alice", "x", "cnonce").first())
    real = real_server.provide(derive_credentials("x"))
    assert isinstance(real, Challenge)
    # same shape: r=…,s=<16 bytes>,i=4096
    for challenge in (a, real):
        r, s, i = challenge.split(b",")
        assert len(base64.b64decode(s[2:])) == 16 and i == b"i=4096"


@pytest.mark.parametrize("mech", MECHANISMS)
def test_unknown_user_does_the_same_key_work(mech: str) -> None:
    """The fake path runs PBKDF2 exactly where the real path does, with the same iterations."""

    def count(creds: dict[str, ScramCredentials] | None) -> tuple[list[int], int]:
        """PBKDF2 iteration counts over provide()+final step, HMACs in the final step."""
        iterations: list[int] = []
        hmacs = [0]
        real_pbkdf2, real_hmac = hashlib.pbkdf2_hmac, hmac.digest

        def pbkdf2(name: str, pw: bytes, salt: bytes, n: int) -> bytes:
            iterations.append(n)
            return real_pbkdf2(name, pw, salt, n)

        def digest(key: bytes, msg: bytes, name: str) -> bytes:
            hmacs[0] += 1
            return real_hmac(key, msg, name)

        server = server_mechanism(mech, nonce=b"snonce", fake_salt_key=KEY)
        client = ScramClient(mech, "bob", "pw", "cnonce") if mech != "PLAIN" else None
        r = server.step(client.first() if client else plain_client("bob", "pw"))
        assert isinstance(r, NeedCredentials)
        with mock.patch.object(hashlib, "pbkdf2_hmac", pbkdf2):
            c = server.provide(creds)
        if client:
            assert isinstance(c, Challenge)
            final = client.final(c)
            with mock.patch.object(hashlib, "pbkdf2_hmac", pbkdf2), mock.patch.object(hmac, "digest", digest):
                server.step(final)
        return iterations, hmacs[0]

    real = count(derive_credentials("other"))
    fake = count(None)
    assert real[0] == fake[0] == ([4096] if mech == "PLAIN" else [])
    assert real[1] == fake[1]


def test_plain_prefers_sha256_and_falls_back_to_sha1() -> None:
    creds = derive_credentials("pw")
    only_sha1 = {"SHA-1": creds["SHA-1"]}
    assert isinstance(run("PLAIN", only_sha1, "alice", "pw")[0], Success)
    assert run("PLAIN", only_sha1, "alice", "nope")[0] == Failure("not-authorized")
    # SCRAM-SHA-256 against an account with SHA-1 keys only: like an unknown user
    assert run("SCRAM-SHA-256", only_sha1, "alice", "pw")[0] == Failure("not-authorized")
    assert isinstance(run("SCRAM-SHA-1", only_sha1, "alice", "pw")[0], Success)


def test_random_server_nonce_bytes_are_encoded() -> None:
    nonce = bytes(range(256))[:24]  # not printable: base64-encoded into the challenge
    creds = derive_credentials("pw")
    result, client = run("SCRAM-SHA-256", creds, "alice", "pw", nonce=nonce)
    assert isinstance(result, Success) and client is not None and client.verify(result.additional)
    with pytest.raises(ValueError):
        server_mechanism("SCRAM-SHA-256", nonce=b"", fake_salt_key=KEY)


_passwords = st.text(min_size=1, max_size=24).filter(lambda p: _ok(sasl.prepare_password, p))
_usernames = st.text(min_size=1, max_size=16).filter(lambda u: _ok(prepare_localpart, u))


def _ok(f: object, s: str) -> bool:
    try:
        f(s)  # type: ignore[operator]
    except (ValueError, InvalidJID):
        return False
    return True


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.sampled_from(MECHANISMS), _usernames, _passwords, _passwords)
def test_roundtrip_property(mech: str, username: str, password: str, other: str) -> None:
    creds = derive_credentials(password)
    result, client = run(mech, creds, username, password)
    assert isinstance(result, Success)
    assert result.username == prepare_localpart(username)
    if client is not None:
        assert client.verify(result.additional)
    if sasl.prepare_password(other) != sasl.prepare_password(password):
        assert run(mech, creds, username, other)[0] == Failure("not-authorized")
    assert run(mech, None, username, password)[0] == Failure("not-authorized")


# --------------------------------------------------------------------------- gs2 / authzid


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize(
    ("authzid", "domain", "expected"),
    [
        (None, "example.org", "ok"),
        ("alice@example.org", "example.org", "ok"),
        ("Alice@Example.ORG", "example.org", "ok"),
        ("alice@example.org", "EXAMPLE.org.", "ok"),
        ("alice@example.org", None, "ok"),
        ("bob@example.org", "example.org", "invalid-authzid"),
        ("alice@other.org", "example.org", "invalid-authzid"),
        ("alice@example.org/res", "example.org", "invalid-authzid"),
        ("example.org", "example.org", "invalid-authzid"),
        ("not a jid@", "example.org", "invalid-authzid"),
        ("bob@example.org", None, "invalid-authzid"),
    ],
)
def test_authzid(mech: str, authzid: str | None, domain: str | None, expected: str) -> None:
    creds = derive_credentials("pw")
    result, _ = run(mech, creds, "alice", "pw", authzid=authzid, domain=domain)
    if expected == "ok":
        assert isinstance(result, Success) and result.username == "alice"
    else:
        assert result == Failure(expected)


def test_authzid_with_escaped_chars_in_scram() -> None:
    # a=… uses saslname escaping; ',' cannot be in a JID anyway but '=' round-trips
    server = server_mechanism("SCRAM-SHA-1", nonce=b"s", fake_salt_key=KEY, domain="example.org")
    assert server.step(b"n,a=a=3Db@example.org,n=a=3Db,r=abc") == NeedCredentials("a=b")
    server = server_mechanism("SCRAM-SHA-1", nonce=b"s", fake_salt_key=KEY, domain="example.org")
    assert server.step(b"n,a=a=2Cb@example.org,n=a=3Db,r=abc") == Failure("invalid-authzid")


def test_gs2_y_flag_is_accepted() -> None:
    creds = derive_credentials("pw")
    server = server_mechanism("SCRAM-SHA-256", nonce=b"s", fake_salt_key=KEY)
    client = ScramClient("SHA-256", "alice", "pw", "c", gs2_flag="y")
    assert client.first().startswith(b"y,,")
    assert server.step(client.first()) == NeedCredentials("alice")
    challenge = server.provide(creds)
    assert isinstance(challenge, Challenge)
    final = server.step(client.final(challenge))
    assert isinstance(final, Success) and client.verify(final.additional)


@pytest.mark.parametrize(
    "client_first",
    [
        b"p=tls-unique,,n=user,r=abc",
        b"p=tls-exporter,,n=user,r=abc",
        b"x,,n=user,r=abc",
        b"N,,n=user,r=abc",
        b",,n=user,r=abc",
        b"n,n=user,r=abc",  # gs2 header missing its second comma
        b"n=user,r=abc",
        b"n,b=x,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,a=a=4Fb,n=user,r=abc",
        b"n,,r=abc,n=user",
        b"n,,n=user",
        b"n,,n=,r=abc",
        b"n,,n=us=er,r=abc",
        b"n,,n=us=2,r=abc",
        b"n,,n=user,r=",
        b"n,,n=user,r=a b",
        b"n,,n=user,r=abc,",
        b"n,,n=user,r=abc,1=x",
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=us\xffer,r=abc",
        b"n,,n=user,r=abc\x00",
        b"\x00user\x00pencil",
        b"garbage",
    ],
)
def test_bad_client_first(client_first: bytes) -> None:
    server = server_mechanism("SCRAM-SHA-256", nonce=b"s", fake_salt_key=KEY)
    result = server.step(client_first)
    assert isinstance(result, Failure) and result.condition == "malformed-request"
    assert server.done


def test_client_first_extensions_are_ignored() -> None:
    server = server_mechanism("SCRAM-SHA-256", nonce=b"s", fake_salt_key=KEY)
    assert server.step(b"n,,n=user,r=abc,x=ext") == NeedCredentials("user")


@pytest.mark.parametrize("mech", SCRAMS)
def test_invalid_username_is_not_authorized(mech: str) -> None:
    for name in (b"a b", b"a@b", b"\xe2\x99\x9a"):  # space, '@', BLACK CHESS KING
        server = server_mechanism(mech, nonce=b"s", fake_salt_key=KEY)
        assert server.step(b"n,,n=" + name + b",r=abc") == Failure("not-authorized")


# --------------------------------------------------------------------------- client-final tampering


def _challenged(
    mech: str = "SCRAM-SHA-1", authzid: str | None = None
) -> tuple[ServerMechanism, ScramClient, bytes]:
    v = VECTORS[mech]
    server = server_mechanism(mech, nonce=v["snonce"].encode(), fake_salt_key=KEY)
    client = ScramClient(mech, "user", "pencil", v["cnonce"], authzid=authzid)
    server.step(client.first())
    challenge = server.provide(vector_creds(mech))
    assert isinstance(challenge, Challenge)
    final = client.final(challenge)
    return server, client, final


def test_nonce_mismatch() -> None:
    server, _, final = _challenged()
    tampered = final.replace(b"3rfcNHYJY1ZVvWVs7j", b"3rfcNHYJY1ZVvWVs7k")
    assert server.step(tampered) == Failure("malformed-request", "nonce mismatch")


def test_nonce_mismatch_from_the_client_side() -> None:
    client = ScramClient("SHA-1", "user", "pencil", "fyko")
    with pytest.raises(ValueError):
        client.final(b"r=other,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ValueError):
        client.final(b"r=fyko,s=QSXCR+Q6sek8bf92,i=4096")  # no server part
    with pytest.raises(ValueError):
        client.final(b"r=fykoX,s=***,i=4096")
    with pytest.raises(ValueError):
        client.final(b"r=fykoX,s=QSXCR+Q6sek8bf92,i=zero")
    with pytest.raises(ValueError):
        client.final(b"s=QSXCR+Q6sek8bf92,r=fykoX,i=4096")
    assert not client.verify(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")  # final() never succeeded


def test_tampered_proof() -> None:
    server, _, final = _challenged()
    head, _, proof = final.rpartition(b",p=")
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    assert server.step(head + b",p=" + base64.b64encode(bytes(raw))) == Failure("not-authorized")


def test_tampered_auth_message() -> None:
    # An extension injected into client-final changes the AuthMessage, so the proof is wrong.
    server, _, final = _challenged()
    head, _, proof = final.rpartition(b",p=")
    assert server.step(head + b",x=injected,p=" + proof) == Failure("not-authorized")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f.replace(b"c=biws", b"c=eSws"),  # claims 'y' after sending 'n' (downgrade)
        lambda f: f.replace(b"c=biws", b"c=biws*"),
        lambda f: f.replace(b"c=biws,", b""),
        lambda f: f.rpartition(b",p=")[0],
        lambda f: f.rpartition(b",p=")[0] + b",p=",
        lambda f: f.rpartition(b",p=")[0] + b",p=AAAA",  # wrong length
        lambda f: f.rpartition(b",p=")[0] + b",p=!!!!",
        lambda f: f + b",x=after-proof",
        lambda f: b"r=" + f,
        lambda f: f.replace(b"r=", b"n="),
        lambda f: f + b"\xff",
        lambda f: b"",
    ],
)
def test_bad_client_final(mutate: object) -> None:
    server, _, final = _challenged()
    result = server.step(mutate(final))  # type: ignore[operator]
    assert isinstance(result, Failure) and result.condition == "malformed-request"


def test_channel_binding_must_repeat_the_gs2_header_with_authzid() -> None:
    server, client, final = _challenged(authzid="user@example.com")
    result = server.step(final)
    assert isinstance(result, Success) and client.verify(result.additional)
    server, _, final = _challenged(authzid="user@example.com")
    assert server.step(final.replace(final[2 : final.index(b",")], b"biws")) == Failure(
        "malformed-request", "channel binding data does not match the gs2 header"
    )


# --------------------------------------------------------------------------- PLAIN


@pytest.mark.parametrize(
    "data",
    [
        b"alice\x00pw",
        b"\x00alice\x00pw\x00",
        b"\x00\x00pw",
        b"\x00alice\x00",
        b"\x00al\xffice\x00pw",
        b"no nuls at all",
    ],
)
def test_plain_malformed(data: bytes) -> None:
    server = server_mechanism("PLAIN", nonce=b"n", fake_salt_key=KEY)
    result = server.step(data)
    assert isinstance(result, Failure) and result.condition == "malformed-request"


def test_plain_invalid_username_or_password_is_not_authorized() -> None:
    for data in (b"\x00a b\x00pw", b"\x00alice\x00bell\x07"):
        server = server_mechanism("PLAIN", nonce=b"n", fake_salt_key=KEY)
        assert server.step(data) == Failure("not-authorized")


def test_plain_password_normalisation() -> None:
    creds = derive_credentials("a b")
    assert isinstance(run("PLAIN", creds, "alice", "a\u00a0b")[0], Success)


# --------------------------------------------------------------------------- exchange shape


@pytest.mark.parametrize("mech", MECHANISMS)
def test_empty_initial_response_gets_one_empty_challenge(mech: str) -> None:
    creds = derive_credentials("pw")
    server = server_mechanism(mech, nonce=b"s", fake_salt_key=KEY)
    assert server.step(b"") == Challenge(b"")
    if mech == "PLAIN":
        assert server.step(plain_client("alice", "pw")) == NeedCredentials("alice")
        assert isinstance(server.provide(creds), Success)
    else:
        client = ScramClient(mech, "alice", "pw", "c")
        assert server.step(client.first()) == NeedCredentials("alice")
        challenge = server.provide(creds)
        assert isinstance(challenge, Challenge)
        final = server.step(client.final(challenge))
        assert isinstance(final, Success)
    server = server_mechanism(mech, nonce=b"s", fake_salt_key=KEY)
    server.step(b"")
    assert isinstance(server.step(b""), Failure)


@pytest.mark.parametrize("mech", MECHANISMS)
def test_out_of_turn(mech: str) -> None:
    unexpected = Failure("malformed-request", "unexpected SASL data")
    server = server_mechanism(mech, nonce=b"s", fake_salt_key=KEY)
    with pytest.raises(RuntimeError):  # the caller's bug: nothing was asked
        server.provide(None)
    data = plain_client("alice", "pw") if mech == "PLAIN" else ScramClient(mech, "alice", "pw", "c").first()
    assert isinstance(server.step(data), NeedCredentials)
    assert server.step(b"again") == unexpected  # the peer's: data while we fetch credentials
    assert server.done
    with pytest.raises(RuntimeError):
        server.provide(None)
    # after the end, more data is refused the same way
    server = server_mechanism(mech, nonce=b"s", fake_salt_key=KEY)
    server.step(data)
    result: object = server.provide(None)
    if mech != "PLAIN":
        assert isinstance(result, Challenge)
        result = server.step(b"c=biws,r=x,p=AAAA")
    assert isinstance(result, Failure) and server.done
    assert server.step(b"more") == unexpected
    with pytest.raises(RuntimeError):
        server.provide(None)


def test_client_constructor_validation() -> None:
    with pytest.raises(ValueError):
        ScramClient("MD5", "u", "p", "n")
    with pytest.raises(ValueError):
        ScramClient("SHA-1", "u", "p", "n", gs2_flag="p")
    with pytest.raises(ValueError):
        ScramClient("SHA-1", "u", "", "n")
    assert ScramClient("SHA-1", "a,b=c", "p", "n").first() == b"n,,n=a=2Cb=3Dc,r=n"
    assert plain_client("alice", "pw") == b"\x00alice\x00pw"
    assert plain_client("alice", "pw", "alice@example.org") == b"alice@example.org\x00alice\x00pw"
