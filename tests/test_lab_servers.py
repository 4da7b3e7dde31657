from __future__ import annotations

import contextlib
import struct
import zlib
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from halfclose.errors import UsageError
from halfclose.lab.config import SERVER_HTTP2, LabConfig, ServerKind, validate
from halfclose.lab.servers import PROGRAMS, DnsAnswers, Site, Tls, dnsmasq_argv, lab_image, nginx_config, processes
from halfclose.lab.servers.builtin import processes as builtin_processes
from halfclose.proc import PACKAGES

ANSWERS = DnsAnswers(name="img.lab.test", ttl=3, a=("198.18.4.1",), aaaa=())


def _ask(name: str, rdtype: str) -> dns.message.Message:
    wire = ANSWERS.respond(dns.message.make_query(name, rdtype).to_wire())
    assert wire is not None
    return dns.message.from_wire(wire)


def test_a_answer_carries_the_ttl() -> None:
    reply = _ask("img.lab.test", "A")
    assert reply.flags & dns.flags.AA
    (rrset,) = reply.answer
    assert rrset.ttl == 3
    assert [r.to_text() for r in rrset] == ["198.18.4.1"]


def test_name_is_case_insensitive_and_aaaa_is_empty_noerror() -> None:
    reply = _ask("IMG.Lab.Test", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


def test_other_names_are_nxdomain() -> None:
    assert _ask("other.lab.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_garbage_and_responses_are_ignored() -> None:
    assert ANSWERS.respond(b"\x00\x01garbage") is None
    response = dns.message.make_response(dns.message.make_query("img.lab.test", "A")).to_wire()
    assert ANSWERS.respond(response) is None


def test_lab_image_is_a_valid_png_of_about_20_kb() -> None:
    png = lab_image()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert 18_000 <= len(png) <= 24_000
    offset = 8
    kinds = []
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        data = png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data)
        kinds.append(kind)
        offset += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert lab_image() == png


def test_nginx_config_listens_on_both_families_with_the_timeout(tmp_path: Path) -> None:
    site = Site(listen=("198.18.4.1", "fd68::1"), port=80, idle_timeout_s=2.5, folder=tmp_path,
                image=tmp_path / "img.png", python="python3")
    text = nginx_config(site)
    assert "listen 198.18.4.1:80;" in text
    assert "listen [fd68::1]:80;" in text
    assert "keepalive_timeout 2500ms;" in text
    assert "daemon off;" in text


def test_dnsmasq_argv_is_local_only(tmp_path: Path) -> None:
    argv = dnsmasq_argv(listen=["198.18.4.1"], answers=ANSWERS, pid_file=tmp_path / "pid")
    assert "--host-record=img.lab.test,198.18.4.1" in argv
    assert "--local-ttl=3" in argv
    assert "--no-resolv" in argv
    assert "--listen-address=198.18.4.1" in argv


def _site(tmp_path: Path, **kw: object) -> Site:
    base: dict[str, object] = {"listen": ("198.18.4.1", "fd68::1"), "port": 443, "idle_timeout_s": 2.5,
                               "folder": tmp_path, "image": tmp_path / "www" / "img.png", "python": "python3"}
    return Site(**(base | kw))  # type: ignore[arg-type]


def test_every_server_config_carries_the_idle_timeout_tls_version_and_http2(tmp_path: Path) -> None:
    tls = Tls(cert=tmp_path / "c.pem", key=tmp_path / "k.pem", bundle=tmp_path / "b.pem", version="1.2")
    site = _site(tmp_path, tls=tls, http2=True)
    texts = {kind.value: "\n".join(" ".join(p.argv) + "\n" + "\n".join(p.files.values())
                                    for p in processes(kind, site)) for kind in ServerKind}
    expected = {
        "nginx": ["keepalive_timeout 2500ms;", "ssl_protocols TLSv1.2;", "listen [fd68::1]:443 ssl http2;"],
        "apache": ["KeepAliveTimeout 2500ms", "SSLProtocol -all +TLSv1.2", "Protocols h2 http/1.1"],
        "haproxy": ["timeout http-keep-alive 2500ms", "alpn h2,http/1.1 ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2"],
        "node": ['"keepAliveTimeout": 1500', '"sessionTimeout": 2500', '"version": "TLSv1.2"', '"http2": true'],
        "caddy": ['"idle_timeout": "2500ms"', '"protocol_max": "tls1.2"', '"h2"'],
        "uvicorn": ["--idle-timeout 2.5", "--tls-version 1.2"],
        "go": ["-idle-timeout 2500ms", "-tls-version 1.2", "-http2"],
        "builtin": ["--idle-timeout 2.5", "--tls-version 1.2", "--http2"],
    }
    for name, parts in expected.items():
        for part in parts:
            assert part in texts[name], (name, part)
    assert '"h3"' not in texts["caddy"]
    # Every file a server writes is in its folder (removed with the run).
    for kind in ServerKind:
        for process in processes(kind, site):
            assert all(path.is_relative_to(tmp_path) for path in process.files)


def test_h2c_and_plain_configs(tmp_path: Path) -> None:
    h2c = _site(tmp_path, port=80, http2=True)
    assert "listen 198.18.4.1:80 http2;" in processes(ServerKind.NGINX, h2c)[0].files[tmp_path / "nginx.conf"]
    assert "Protocols h2c http/1.1" in processes(ServerKind.APACHE, h2c)[0].files[tmp_path / "apache2.conf"]
    plain = processes(ServerKind.APACHE, _site(tmp_path, port=80))[0].files[tmp_path / "apache2.conf"]
    assert "SSLEngine" not in plain and "Protocols" not in plain and "mod_http2" not in plain
    backend, front = processes(ServerKind.HAPROXY, _site(tmp_path, port=80))
    assert "127.0.0.1" in backend.argv and "ssl" not in front.files[tmp_path / "haproxy.cfg"]


def test_combinations_a_server_cannot_do_are_refused() -> None:
    with pytest.raises(UsageError, match="uvicorn does not speak HTTP/2"):
        validate(LabConfig(server=ServerKind.UVICORN, http2=True, tls=True))
    with pytest.raises(UsageError, match="go speaks HTTP/2 only over TLS"):
        validate(LabConfig(server=ServerKind.GO, http2=True))
    with pytest.raises(UsageError, match="node closes idle connections 1 s after"):
        validate(LabConfig(server=ServerKind.NODE, idle_timeout_s=1))
    with pytest.raises(UsageError, match="needs the built-in server"):
        validate(LabConfig(server=ServerKind.CADDY, race=True))
    with pytest.raises(UsageError, match="caddy cannot be told to announce"):
        validate(LabConfig(server=ServerKind.CADDY, keepalive_header=True))
    with pytest.raises(UsageError, match="nginx cannot close idle connections with RST"):
        validate(LabConfig(server=ServerKind.NGINX, server_rst=True))
    for kind in (ServerKind.BUILTIN, ServerKind.NGINX, ServerKind.HAPROXY):
        validate(LabConfig(server=kind, keepalive_header=True))
    for kind in (ServerKind.BUILTIN, ServerKind.HAPROXY):
        validate(LabConfig(server=kind, server_rst=True))
    for kind in ServerKind:
        if "tls" in SERVER_HTTP2[kind]:
            validate(LabConfig(server=kind, http2=True, tls=True))


def test_cli_refuses_them_in_one_line() -> None:
    from runcli import halfclose

    result = halfclose("lab", "run", "--server", "uvicorn", "--http2", "--tls")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "halfclose lab: error: --http2: uvicorn does not speak HTTP/2 (drop --http2 or pick another --server)"]


def test_every_server_program_names_its_debian_package() -> None:
    setup = (Path(__file__).parents[1] / "scripts" / "setup").read_text()
    for kind in ServerKind:
        for program in PROGRAMS[kind]:
            assert f'"{program}:{PACKAGES[program]}"' in setup or program == "node", program
    assert PACKAGES["go"] == "golang-go" and PACKAGES["apache2"] == "apache2"


def test_announce_and_rst_options_reach_the_configs(tmp_path: Path) -> None:
    from halfclose.lab.servers import haproxy, nginx

    site = Site(listen=("198.18.0.1",), port=80, idle_timeout_s=2.0, folder=tmp_path, image=tmp_path / "img.png",
                python="python3", keepalive_header=True, close_rst=True)
    assert "keepalive_timeout 2000ms 2s;" in nginx.nginx_config(site)
    text = haproxy.haproxy_config(site)
    assert "option nolinger" in text and "http-response set-header Keep-Alive timeout=2" in text
    (proc,) = builtin_processes(site)
    assert "--close-rst" in proc.argv and "--keepalive-header" in proc.argv
    plain = Site(listen=("198.18.0.1",), port=80, idle_timeout_s=2.0, folder=tmp_path, image=tmp_path / "img.png",
                 python="python3")
    assert "nolinger" not in haproxy.haproxy_config(plain) and "2000ms;" in nginx.nginx_config(plain)


def test_fast_open_where_the_server_listens_with_it(tmp_path: Path) -> None:
    site = _site(tmp_path, port=80, fast_open=True)
    texts = {kind: "\n".join(" ".join(p.argv) + "\n" + "\n".join(p.files.values()) for p in processes(kind, site))
             for kind in (ServerKind.NGINX, ServerKind.HAPROXY, ServerKind.BUILTIN)}
    assert "listen [fd68::1]:80 fastopen=16;" in texts[ServerKind.NGINX]
    assert "bind 198.18.4.1:80 tfo" in texts[ServerKind.HAPROXY]
    assert "--fast-open" in texts[ServerKind.BUILTIN]
    plain = _site(tmp_path, port=80)
    for kind in texts:
        text = "\n".join(" ".join(p.argv) + "\n" + "\n".join(p.files.values()) for p in processes(kind, plain))
        assert "fastopen" not in text and " tfo" not in text and "--fast-open" not in text


def test_the_builtin_server_sets_tcp_fastopen_on_its_listening_sockets() -> None:
    import asyncio
    import socket

    from halfclose.lab.servers.builtin import HttpServerOptions, serve_http

    async def queues(fast_open: bool) -> list[int]:
        servers = await serve_http(["127.0.0.1"], 0, HttpServerOptions(idle_timeout_s=1.0), b"x", None,
                                   fast_open=fast_open)
        try:
            return [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) for srv in servers for s in srv.sockets]
        finally:
            for srv in servers:
                srv.close()

    assert asyncio.run(queues(True)) == [16]
    assert asyncio.run(queues(False)) == [0]


def test_the_builtin_server_starts_its_idle_timer_after_the_tls_handshake(tmp_path: Path) -> None:
    """A client slow to finish its handshake (a browser verifying the certificate) is not closed on the
    idle timer; once the handshake is done and its request answered, the idle timer closes the connection."""
    import asyncio
    import ssl
    import time

    from halfclose.lab.servers.builtin import HttpServerOptions, TlsFiles, serve_http
    from halfclose.lab.tls import make_pki

    pki = make_pki(tmp_path / "tls", "img.lab.test", addresses=["127.0.0.1"])
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    client.set_alpn_protocols(["http/1.1"])

    async def exchange() -> tuple[bytes, float, bytes]:
        servers = await serve_http(["127.0.0.1"], 0, HttpServerOptions(idle_timeout_s=0.3), b"x" * 10,
                                   TlsFiles(cert=pki.cert, key=pki.key, version="1.3"))
        port = servers[0].sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            tls = client.wrap_bio(incoming := ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                  server_hostname="img.lab.test")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            writer.write(outgoing.read())  # the ClientHello
            incoming.write(await reader.read(65536))  # the server's flight
            await asyncio.sleep(1.0)  # more than three idle timeouts before the client's Finished
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:  # the flight came in more than one read
                    more = await asyncio.wait_for(reader.read(65536), 5)
                    assert more, "the server closed the connection during the handshake"
                    incoming.write(more)
            tls.write(b"GET /img.png HTTP/1.1\r\nHost: img.lab.test\r\n\r\n")
            writer.write(outgoing.read())
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"x" * 10):
                data = await reader.read(65536)
                assert data, "the server closed the connection before answering"
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    answer += tls.read(65536)
            answered = time.monotonic()
            rest = b""
            while data := await asyncio.wait_for(reader.read(65536), 5):
                rest += data
            writer.close()
            return answer, time.monotonic() - answered, rest
        finally:
            for server in servers:
                server.close()

    answer, closed_after, rest = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 200")
    assert 0.25 < closed_after < 2.0
    assert rest  # the close_notify that came with the FIN
