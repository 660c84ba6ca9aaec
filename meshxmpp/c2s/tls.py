"""The server TLS context for STARTTLS (RFC 6120 section 5) and direct TLS (XEP-0368).

With ``[tls] cert``/``key`` configured, those files are used. Without them, a self-signed
development certificate for the domain is generated once with ``cryptography`` into
``<data_dir>/dev-cert.pem`` and ``dev-key.pem`` (mode 0600) and reused, so TLS works out of the box.
Runs at start-up, before the event loop serves anyone: the blocking file I/O is deliberate.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from meshxmpp.config import Config

__all__ = [
    "ALPN_PROTOCOL",
    "DEV_CERT",
    "DEV_KEY",
    "dev_certificate",
    "load_or_create_secret",
    "ssl_context",
    "write_private",
]

log = logging.getLogger("meshxmpp.c2s.tls")

#: XEP-0368 section 3: the ALPN protocol name for client-to-server XMPP.
ALPN_PROTOCOL = "xmpp-client"
DEV_CERT = "dev-cert.pem"
DEV_KEY = "dev-key.pem"
_DEV_VALIDITY = datetime.timedelta(days=3650)


def ssl_context(config: Config) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, the configured or the development certificate."""
    cert, key = config.tls.cert, config.tls.key
    if cert is None and key is None:
        cert_path, key_path = dev_certificate(config.domain, Path(config.data_dir))
        cert, key = str(cert_path), str(key_path)
    elif cert is None:
        raise ValueError("[tls] key is set but cert is not")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)  # key None: the key is in the cert file
    ctx.set_alpn_protocols([ALPN_PROTOCOL])
    return ctx


def dev_certificate(domain: str, data_dir: Path) -> tuple[Path, Path]:
    """Paths of a self-signed certificate for ``domain`` in ``data_dir``, generated when missing
    (or when the one there does not name ``domain``, e.g. after a domain change)."""
    cert_path, key_path = data_dir / DEV_CERT, data_dir / DEV_KEY
    if cert_path.exists() and key_path.exists() and _names_domain(cert_path, domain):
        return cert_path, key_path
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(domain)]
    try:
        alt_names = [x509.IPAddress(ipaddress.ip_address(domain))]
    except ValueError:
        pass
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _DEV_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.warning(
        "no [tls] cert configured: generated a self-signed development certificate for %s in %s",
        domain,
        cert_path,
    )
    return cert_path, key_path


def _names_domain(cert_path: Path, domain: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, OSError, x509.ExtensionNotFound):
        return False
    names = [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    names += san.get_values_for_type(x509.DNSName)
    return domain in names


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # in case the file existed with a wider mode
        f.write(data)
    os.replace(tmp, path)


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """A node secret kept in ``path`` (0600), created once with ``size`` random bytes.

    Used for the stable fake SCRAM salt of unknown users: it must survive restarts, or a changed
    salt would tell an observer that the account does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    if len(data) >= size:
        return data
    data = secrets.token_bytes(size)
    write_private(path, data)
    return data
