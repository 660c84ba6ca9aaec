"""tls.ssl_context: configured certificates, the generated development certificate, secrets."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import trustme
from cryptography import x509

from meshxmpp.c2s import tls
from meshxmpp.config import Config, evolve


def config(tmp_path: Path, **changes: object) -> Config:
    changes = {"domain": "example.org", "data_dir": str(tmp_path / "data"), **changes}
    return evolve(Config(), **changes)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_certificate_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    ctx = tls.ssl_context(config(tmp_path))
    cert_path, key_path = tmp_path / "data" / tls.DEV_CERT, tmp_path / "data" / tls.DEV_KEY
    assert mode(cert_path) == 0o600 and mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.org"]
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2

    before = (cert_path.read_bytes(), key_path.read_bytes())
    tls.ssl_context(config(tmp_path))
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_dev_certificate_follows_a_domain_change(tmp_path: Path) -> None:
    tls.ssl_context(config(tmp_path))
    first = (tmp_path / "data" / tls.DEV_CERT).read_bytes()
    tls.ssl_context(config(tmp_path, domain="chat.example.net"))
    second = (tmp_path / "data" / tls.DEV_CERT).read_bytes()
    assert first != second
    cert = x509.load_pem_x509_certificate(second)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["chat.example.net"]


def test_dev_certificate_for_an_ip_domain(tmp_path: Path) -> None:
    cert_path, _ = tls.dev_certificate("127.0.0.1", tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_configured_certificate_is_used(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("example.org")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    tls.ssl_context(config(tmp_path, tls={"cert": str(cert_file), "key": str(key_file)}))
    assert not (tmp_path / "data" / tls.DEV_CERT).exists()  # no development certificate made


def test_secret_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret.key"
    first = tls.load_or_create_secret(path)
    assert len(first) == 32 and mode(path) == 0o600
    assert tls.load_or_create_secret(path) == first
