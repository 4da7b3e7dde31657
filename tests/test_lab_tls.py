"""The run's PKI: a certificate a strict TLS client accepts for the lab name, and nothing more."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from halfclose.lab.config import LabConfig
from halfclose.lab.tls import RunPki, endpoint, make_pki

HOST = "img.lab.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> RunPki:
    base = tmp_path_factory.mktemp("pki")
    return make_pki(base / "tls", HOST, public_dir=base / "public")


def _handshake(pki: RunPki, server_name: str, ca: Path) -> tuple[str, str | None]:
    """One TLS handshake on loopback; the client verifies as the lab's clients do."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.cert, pki.key)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx = ssl.create_default_context(cafile=str(ca))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.set_alpn_protocols(["h2"])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                version = tls.version() or ""
                alpn = tls.selected_alpn_protocol()
                tls.sendall(b"x")
        finally:
            thread.join(5)
    return version, alpn


def test_a_strict_client_trusts_the_server_certificate_for_the_lab_name(pki: RunPki) -> None:
    version, alpn = _handshake(pki, HOST, pki.ca_cert)
    assert version == "TLSv1.3"
    assert alpn == "h2"


def test_another_name_is_refused(pki: RunPki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(pki, "other.lab.test", pki.ca_cert)


def test_another_runs_ca_is_not_trusted(pki: RunPki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", HOST)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(pki, HOST, other.ca_cert)


def test_files_and_modes(pki: RunPki) -> None:
    folder = pki.cert.parent
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "server-bundle.pem", "server.key", "server.pem"]
    assert pki.ca_cert.parent.name == "public"
    assert pki.ca_cert.read_bytes() == (folder / "ca.pem").read_bytes()
    assert stat.S_IMODE(pki.ca_cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(pki.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.bundle.stat().st_mode) == 0o600
    # The CA's key is not kept: only the server's key is anywhere.
    keys = [p for p in folder.iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    assert sorted(p.name for p in keys) == ["server-bundle.pem", "server.key"]
    assert pki.bundle.read_bytes().count(b"PRIVATE KEY-----") == 2
    leaf, ca = x509.load_pem_x509_certificates(pki.cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert leaf.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_endpoint_follows_the_config(pki: RunPki) -> None:
    plain = endpoint(LabConfig(), None)
    assert (plain.scheme, plain.port, plain.ca_cert, plain.http2) == ("http", 80, None, False)
    assert plain.url() == f"http://{HOST}/img.png"
    tls = endpoint(LabConfig(tls=True, http2=True, http_port=8443), pki)
    assert (tls.scheme, tls.ca_cert, tls.http2) == ("https", pki.ca_cert, True)
    assert tls.url("n=3") == f"https://{HOST}:8443/img.png?n=3"
