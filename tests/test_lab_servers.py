from __future__ import annotations

import struct
import zlib
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from halfclose.lab.servers import DnsAnswers, Site, dnsmasq_argv, lab_image, nginx_config

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
