"""The lab's TLS: a CA and a server certificate made for one run, and where the app connects.

Every run with ``--tls`` gets its own throwaway certificate authority: :func:`make_pki` creates
the CA, signs a server certificate for the lab host name with it, writes the files and forgets
the CA's private key (nothing else can ever be signed by it). The clients trust exactly that CA
(no "verify off"), and the server certificate names the host the clients ask for (SNI).

:func:`endpoint` says what the app is given: the URL scheme, host, port, HTTP/2 and the CA file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from halfclose.lab.config import LabConfig

__all__ = ["Endpoint", "RunPki", "endpoint", "make_pki"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPki:
    """The TLS files of one run (PEM).

    Fields:
        ca_cert: the CA certificate the clients trust, readable by any uid (the app's too).
        cert: the server certificate, followed by the CA certificate (the chain servers send).
        key: the server's private key (mode 0600).
        bundle: the server certificate chain and its key in one file (HAProxy's ``crt``; 0600).
        hostname: the name the server certificate is for (its subject alternative name).
    """

    ca_cert: Path
    cert: Path
    key: Path
    bundle: Path
    hostname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """Where and how the app reaches the lab server.

    Fields:
        scheme: ``https`` with TLS, else ``http``.
        host: the lab host name (resolved through the lab DNS server; the TLS SNI).
        port: the server's port.
        http2: the server speaks HTTP/2 there: negotiated with ALPN over TLS, or h2c with prior
            knowledge over plain TCP (``scheme == "http"``).
        ca_cert: the CA file to trust (None without TLS).
        path: the image's path (any query string is accepted and ignored).
    """

    scheme: str
    host: str
    port: int
    http2: bool
    ca_cert: Path | None
    path: str = "/img.png"

    def url(self, query: str = "") -> str:
        """The image's URL, the port omitted when it is the scheme's default."""
        default = {"http": 80, "https": 443}[self.scheme]
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{query}" if query else "")


def endpoint(config: LabConfig, pki: RunPki | None) -> Endpoint:
    """The endpoint the runner gives the app for *config* (*pki*: the run's, with ``--tls``)."""
    return Endpoint(
        scheme="https" if config.tls else "http",
        host=config.hostname,
        port=config.http_port,
        http2=config.http2,
        ca_cert=pki.ca_cert if pki is not None else None,
    )


def make_pki(
    folder: Path,
    hostname: str,
    *,
    public_dir: Path | None = None,
    addresses: Sequence[str] = (),
    valid_for: datetime.timedelta = datetime.timedelta(days=2),
) -> RunPki:
    """Create a CA and a server certificate for *hostname* in *folder* (created if needed).

    The CA certificate is also copied to *public_dir* when given (a folder any uid can read,
    for an app whose run folder it cannot enter) and that copy is the one returned as
    ``ca_cert``. *addresses* are added to the certificate as IP subject alternative names.
    The CA's private key is never written anywhere.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "halfclose lab"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"halfclose lab CA for {hostname}"),
    ])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + ca_pem
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_path = _write(folder / "ca.pem", ca_pem, 0o644)
    cert_path = _write(folder / "server.pem", chain_pem, 0o644)
    key_path = _write(folder / "server.key", key_pem, 0o600)
    bundle_path = _write(folder / "server-bundle.pem", chain_pem + key_pem, 0o600)
    if public_dir is not None:
        public_dir.mkdir(parents=True, exist_ok=True)
        ca_path = _write(public_dir / "ca.pem", ca_pem, 0o644)
    return RunPki(ca_cert=ca_path, cert=cert_path, key=key_path, bundle=bundle_path, hostname=hostname)


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write *data* to *path* atomically with *mode* (a key is never readable by others, even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)
        file.write(data)
    os.replace(tmp, path)
    return path
