"""File-level structures of pcap and pcapng, parsed from bytes (no I/O here).

pcap: the 24-byte file header (draft-ietf-opsawg-pcap, section 4). pcapng: the Section Header
Block and the Interface Description Block with the options that matter for timestamps,
``if_tsresol`` (code 9) and ``if_tsoffset`` (code 14) (draft-ietf-opsawg-pcapng, sections 4.1,
4.2). Packet records themselves are walked by the compiled kernels.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "BT_IDB",
    "BT_SHB",
    "PCAPNG_BYTE_ORDER_MAGIC",
    "CaptureFormat",
    "FormatError",
    "InterfaceDescription",
    "LinkType",
    "PcapHeader",
    "SectionHeader",
    "detect_format",
    "link_type_name",
    "parse_idb",
    "parse_pcap_header",
    "parse_shb",
    "timestamp_scale",
]


class LinkType(enum.IntEnum):
    """Link types decoded here (values from https://www.tcpdump.org/linktypes.html)."""

    NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
    ETHERNET = 1
    PPP = 9  # PPP, address and control bytes optional
    RAW_12 = 12  # DLT_RAW on most systems, written into some files as is
    RAW_14 = 14  # DLT_RAW on BSD/OS and OpenBSD
    PPP_HDLC = 50  # PPP in HDLC-like framing (or Cisco HDLC)
    PPP_ETHER = 51  # PPPoE session payload without its Ethernet header
    RAW = 101  # raw IPv4 or IPv6, told by the version nibble
    C_HDLC = 104  # Cisco HDLC
    LOOP = 108  # OpenBSD loopback: address family in network byte order
    LINUX_SLL = 113  # Linux cooked capture v1
    PPP_PPPD = 166  # PPP as pppd writes it (a direction byte for the address)
    IPV4 = 228
    IPV6 = 229
    NFLOG = 239  # Linux netfilter log ("tcpdump -i nflog:N", Android)
    IPOIB = 242  # IP over InfiniBand (40-byte address header, then RFC 4391's)
    LINUX_SLL2 = 276  # Linux cooked capture v2 ("tcpdump -i any")


def link_type_name(value: int) -> str:
    """``ETHERNET (1)`` for known link types, ``link type 147`` otherwise."""
    try:
        return f"{LinkType(value).name} ({value})"
    except ValueError:
        return f"link type {value}"


@enum.unique
class CaptureFormat(enum.Enum):
    PCAP = "pcap"
    PCAPNG = "pcapng"


class FormatError(ValueError):
    """Bytes that do not form the structure asked for (the message says what is wrong)."""


# pcap magic numbers as read little-endian: (big-endian file?, nanoseconds?, record header length)
_PCAP_MAGICS: dict[int, tuple[bool, bool, int]] = {
    0xA1B2C3D4: (False, False, 16),
    0xD4C3B2A1: (True, False, 16),
    0xA1B23C4D: (False, True, 16),
    0x4D3CB2A1: (True, True, 16),
    # Alexey Kuznetzov's modified pcap: 8 more bytes per record (ifindex, protocol, pkt_type, pad).
    0xA1B2CD34: (False, False, 24),
    0x34CDB2A1: (True, False, 24),
}

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D


def detect_format(head: bytes) -> CaptureFormat | None:
    """pcap or pcapng from the first 4 bytes, None for anything else."""
    if len(head) < 4:
        return None
    (magic,) = struct.unpack_from("<I", head)
    if magic in _PCAP_MAGICS:
        return CaptureFormat.PCAP
    if magic == BT_SHB:
        return CaptureFormat.PCAPNG
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class PcapHeader:
    """The pcap file header."""

    big_endian: bool
    nanosecond: bool
    record_header_len: int
    version_major: int
    version_minor: int
    thiszone: int
    snaplen: int
    linktype: int
    #: The FCS length announced in the link-type field's upper bits (bytes), 0 if none.
    fcs_len: int

    HEADER_LEN = 24


def parse_pcap_header(data: bytes) -> PcapHeader:
    """Parse the 24-byte pcap file header.

    Raises:
        FormatError: not a pcap header, or cut short.
    """
    if len(data) < 4:
        raise FormatError("file too short for a pcap header")
    (magic,) = struct.unpack_from("<I", data)
    form = _PCAP_MAGICS.get(magic)
    if form is None:
        raise FormatError(f"unknown magic 0x{magic:08x}")
    big, nano, rec_len = form
    if len(data) < PcapHeader.HEADER_LEN:
        raise FormatError(f"pcap header cut short: {len(data)} of 24 bytes")
    e = ">" if big else "<"
    major, minor, thiszone, _sigfigs, snaplen, network = struct.unpack_from(e + "HHiIII", data, 4)
    fcs_len = 2 * ((network >> 29) & 0x7) if network & 0x10000000 else 0
    return PcapHeader(
        big_endian=big,
        nanosecond=nano,
        record_header_len=rec_len,
        version_major=major,
        version_minor=minor,
        thiszone=thiszone,
        snaplen=snaplen,
        linktype=network & 0x03FFFFFF,
        fcs_len=fcs_len,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SectionHeader:
    """A pcapng Section Header Block."""

    big_endian: bool
    version_major: int
    version_minor: int
    block_len: int


def parse_shb(data: bytes) -> SectionHeader:
    """Parse a Section Header Block from its first bytes (at least 16 needed).

    Raises:
        FormatError: not a section header, unknown byte order, bad length.
    """
    if len(data) < 16:
        raise FormatError(f"section header cut short: {len(data)} of 28 bytes")
    (btype,) = struct.unpack_from("<I", data)
    if btype != BT_SHB:
        raise FormatError(f"block type 0x{btype:08x} where a section header was expected")
    (bom,) = struct.unpack_from("<I", data, 8)
    if bom == PCAPNG_BYTE_ORDER_MAGIC:
        big = False
    elif bom == 0x4D3C2B1A:
        big = True
    else:
        raise FormatError(f"unknown byte-order magic 0x{bom:08x} in section header")
    e = ">" if big else "<"
    (blen,) = struct.unpack_from(e + "I", data, 4)
    major, minor = struct.unpack_from(e + "HH", data, 12)
    if blen < 28:
        raise FormatError(f"section header length {blen} is less than 28")
    # Some early (NTAR-era) writers left the padding out of block lengths: read them rounded up to
    # a multiple of 4, as Wireshark does.
    return SectionHeader(big_endian=big, version_major=major, version_minor=minor, block_len=(blen + 3) & ~3)


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceDescription:
    """A pcapng Interface Description Block (only what decoding needs)."""

    linktype: int
    snaplen: int
    #: ``if_tsresol`` as stored: 6 means 10**-6 s; with the top bit set, 2**-(value & 0x7f) s.
    tsresol: int
    #: ``if_tsoffset``: seconds to add to every timestamp.
    tsoffset: int
    name: str | None


_OPT_ENDOFOPT = 0
_OPT_IF_NAME = 2
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


def parse_idb(block: bytes, big_endian: bool) -> InterfaceDescription:
    """Parse a whole Interface Description Block (header, options, trailing length).

    Options that are cut short end the option list; the block's fixed part must be present.

    Raises:
        FormatError: the block is shorter than its fixed part.
    """
    e = ">" if big_endian else "<"
    if len(block) < 20:
        raise FormatError(f"interface description cut short: {len(block)} of 20 bytes")
    linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", block, 8)
    tsresol = 6
    tsoffset = 0
    name: str | None = None
    pos = 16
    end = len(block) - 4
    while pos + 4 <= end:
        code, length = struct.unpack_from(e + "HH", block, pos)
        pos += 4
        if code == _OPT_ENDOFOPT or pos + length > end:
            break
        value = block[pos : pos + length]
        if code == _OPT_IF_TSRESOL and length >= 1:
            tsresol = value[0]
        elif code == _OPT_IF_TSOFFSET and length >= 8:
            (tsoffset,) = struct.unpack_from(e + "q", value)
        elif code == _OPT_IF_NAME:
            name = value.decode("utf-8", "replace").rstrip("\x00")
        pos += (length + 3) & ~3
    return InterfaceDescription(linktype=linktype, snaplen=snaplen, tsresol=tsresol, tsoffset=tsoffset, name=name)


def timestamp_scale(tsresol: int) -> tuple[int, int, int]:
    """``(mul, div, shift)`` turning a raw timestamp into nanoseconds.

    Decimal resolutions: ``ns = ts * mul // div`` (shift 0). Binary resolutions 2**-s:
    ``ns = (ts >> s) * 10**9 + ((ts & (2**s - 1)) * 10**9 >> s)`` (mul and div unused).
    Binary resolutions finer than 2**-32 lose their lowest bits (below a quarter nanosecond).
    """
    if tsresol & 0x80:
        shift = tsresol & 0x7F
        if shift == 0:
            return 1_000_000_000, 1, 0
        return 1, 1, min(shift, 63)
    if tsresol <= 9:
        return 10 ** (9 - tsresol), 1, 0
    return 1, 10 ** min(tsresol - 9, 18), 0
