"""pcap file header, pcapng section and interface blocks, timestamp scales: byte vectors."""

from __future__ import annotations

import struct

import pytest

from capture_bytes import idb, shb
from halfclose.capture import formats
from halfclose.capture.formats import CaptureFormat, FormatError


@pytest.mark.parametrize(
    ("raw", "big", "nano", "rec_len"),
    [
        ("d4c3b2a1", False, False, 16),
        ("a1b2c3d4", True, False, 16),
        ("4d3cb2a1", False, True, 16),
        ("a1b23c4d", True, True, 16),
        ("34cdb2a1", False, False, 24),
    ],
)
def test_pcap_header_magics(raw: str, big: bool, nano: bool, rec_len: int) -> None:
    e = ">" if big else "<"
    data = bytes.fromhex(raw) + struct.pack(e + "HHiIII", 2, 4, 0, 0, 96, 276)
    hdr = formats.parse_pcap_header(data)
    assert (hdr.big_endian, hdr.nanosecond, hdr.record_header_len) == (big, nano, rec_len)
    assert (hdr.snaplen, hdr.linktype, hdr.version_major, hdr.fcs_len) == (96, 276, 2, 0)
    assert formats.detect_format(data) is CaptureFormat.PCAP


def test_pcap_header_fcs_bits_and_errors() -> None:
    data = bytes.fromhex("d4c3b2a1") + struct.pack("<HHiIII", 2, 4, 0, 0, 65535, 0x10000000 | (2 << 29) | 1)
    hdr = formats.parse_pcap_header(data)
    assert hdr.linktype == 1 and hdr.fcs_len == 4
    with pytest.raises(FormatError, match="cut short"):
        formats.parse_pcap_header(data[:20])
    with pytest.raises(FormatError, match="unknown magic 0x464c457f"):
        formats.parse_pcap_header(b"\x7fELF" + b"\x00" * 20)


@pytest.mark.parametrize("big", [False, True])
def test_section_header(big: bool) -> None:
    s = formats.parse_shb(shb(big=big))
    assert (s.big_endian, s.version_major, s.version_minor, s.block_len) == (big, 1, 0, 28)
    assert formats.detect_format(shb(big=big)) is CaptureFormat.PCAPNG


def test_section_header_errors() -> None:
    good = shb()
    with pytest.raises(FormatError, match="byte-order magic"):
        formats.parse_shb(good[:8] + b"\x00\x00\x00\x00" + good[12:])
    with pytest.raises(FormatError, match="less than 28"):
        formats.parse_shb(good[:4] + struct.pack("<I", 24) + good[8:])
    # Early writers left the padding out of the length: read it rounded up, as Wireshark does.
    assert formats.parse_shb(good[:4] + struct.pack("<I", 30) + good[8:]).block_len == 32
    with pytest.raises(FormatError, match="cut short"):
        formats.parse_shb(good[:12])
    with pytest.raises(FormatError, match="block type"):
        formats.parse_shb(b"\x01\x00\x00\x00" + good[4:])


@pytest.mark.parametrize("big", [False, True])
def test_interface_description_options(big: bool) -> None:
    d = formats.parse_idb(idb(big=big, linktype=113, snaplen=128, tsresol=9, tsoffset=-5), big)
    assert (d.linktype, d.snaplen, d.tsresol, d.tsoffset, d.name) == (113, 128, 9, -5, "eth0")
    plain = formats.parse_idb(idb(big=big)[:16] + idb(big=big)[-4:], big)
    assert plain.tsresol == 6 and plain.tsoffset == 0


def test_interface_description_cut_options_end_the_list() -> None:
    block = bytearray(idb(tsresol=3))
    block[18:20] = struct.pack("<H", 200)  # first option claims 200 bytes
    assert formats.parse_idb(bytes(block), False).tsresol == 6
    with pytest.raises(FormatError):
        formats.parse_idb(bytes(block[:12]), False)


@pytest.mark.parametrize(
    ("tsresol", "raw", "ns"),
    [
        (6, 1_500_000, 1_500_000_000),
        (9, 7, 7),
        (0, 2, 2_000_000_000),
        (12, 1_234_567, 1_234),
        (0x80 | 10, 3 * 1024 + 512, 3_500_000_000),
        (0x80 | 40, (1 << 40) + (1 << 39), 1_500_000_000),
        (0x80, 4, 4_000_000_000),
    ],
)
def test_timestamp_scale(tsresol: int, raw: int, ns: int) -> None:
    mul, div, shift = formats.timestamp_scale(tsresol)
    if shift == 0:
        assert raw * mul // div == ns
    else:
        if shift > 32:
            raw >>= shift - 32
            shift = 32
        assert (raw >> shift) * 10**9 + ((raw & ((1 << shift) - 1)) * 10**9 >> shift) == ns


def test_detect_format_and_names() -> None:
    assert formats.detect_format(b"GET / HTTP/1.1") is None
    assert formats.detect_format(b"\xd4\xc3") is None
    assert formats.link_type_name(276) == "LINUX_SLL2 (276)"
    assert formats.link_type_name(147) == "link type 147"
