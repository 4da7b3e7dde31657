"""Compiled inner loops: walk capture records and decode link, IP and transport headers.

The functions here are written in the subset of Python that numba compiles (integers and numpy
arrays only). They are compiled on first use and cached on disk where a cache directory is
writable; without numba they still run, as plain (slow) Python, with identical results.

Every read is bounds-checked by hand against the captured length, because compiled code does
not check array indices: a record's bytes are ``buf[off : off + caplen]`` and the walkers
guarantee that range lies inside ``buf``.

Output columns are written compactly: only packets that carry TCP or UDP over IPv4/IPv6 get a
row; everything else is counted in ``counters`` (indices ``C_*`` below).
"""

# Chained integer comparisons and long positional signatures are what numba compiles best.
# ruff: noqa: PLR1714, SIM108, SIM109, PLR0917

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import numpy as np

__all__ = [
    "C_FRAGMENTS",
    "C_FRAMES",
    "C_IPV4",
    "C_IPV6",
    "C_MALFORMED",
    "C_NON_IP",
    "C_OTHER_TRANSPORT",
    "C_TCP",
    "C_TRUNCATED",
    "C_UDP",
    "C_UNKNOWN_LINK",
    "N_COUNTERS",
    "ST_BAD_IFACE",
    "ST_CORRUPT",
    "ST_FULL",
    "ST_NEED_MORE",
    "ST_STRUCTURAL",
    "compiled",
    "decode_one",
    "walk_pcap",
    "walk_pcapng",
]

F = TypeVar("F", bound=Callable[..., Any])

# Counter indices (an int64 array of N_COUNTERS per file).
C_FRAMES = 0  # packet records read
C_TCP = 1  # delivered TCP packets
C_UDP = 2  # delivered UDP packets
C_NON_IP = 3  # link layer carries something other than IPv4/IPv6
C_OTHER_TRANSPORT = 4  # IP, but neither TCP nor UDP (ICMP, ESP, GRE, ...)
C_FRAGMENTS = 5  # IP fragments (first or later), TCP/UDP or not
C_TRUNCATED = 6  # a needed header was cut by the snap length
C_MALFORMED = 7  # header fields that contradict each other (bad version, lengths)
C_UNKNOWN_LINK = 8  # link type not decoded
C_IPV4 = 9
C_IPV6 = 10
N_COUNTERS = 11

# Walker statuses.
ST_NEED_MORE = 0  # the record at pos is not complete in buf (or buf is exhausted)
ST_FULL = 1  # the output columns are full
ST_CORRUPT = 2  # the record/block at pos has an impossible length: stop this file
ST_STRUCTURAL = 3  # pcapng: a section header or interface description at pos (handled in Python)
ST_BAD_IFACE = 4  # pcapng: a packet block names an interface not described (yet)

# Link types (https://www.tcpdump.org/linktypes.html).
_LT_NULL = 0
_LT_ETHERNET = 1
_LT_RAW_12 = 12
_LT_RAW_14 = 14
_LT_RAW = 101
_LT_LOOP = 108
_LT_LINUX_SLL = 113
_LT_IPV4 = 228
_LT_IPV6 = 229
_LT_LINUX_SLL2 = 276

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD

# pcapng block types.
_BT_SHB = 0x0A0D0D0A
_BT_IDB = 1
_BT_OPB = 2
_BT_SPB = 3
_BT_EPB = 6


def _make_jit() -> Callable[[F], F]:
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return lambda f: f

    def jit(f: F) -> F:
        # Helpers are inlined at numba IR level: a real call would pass every array by
        # struct and count references on each, costing more than the decoding itself.
        inline: Literal["never", "always"] = "never" if f.__name__.startswith("walk_") else "always"
        try:
            return cast(F, numba.njit(cache=True, nogil=True, inline=inline)(f))
        except RuntimeError:  # no writable cache directory: compile on every run
            return cast(F, numba.njit(nogil=True, inline=inline)(f))

    return jit


_jit = _make_jit()


def compiled() -> bool:
    """True when the kernels run as compiled code (numba present and not disabled)."""
    return hasattr(walk_pcap, "py_func")


@_jit
def _b(buf: Any, p: Any) -> Any:
    return np.int64(buf[p])


@_jit
def _u16be(buf: Any, p: Any) -> Any:
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@_jit
def _u32be(buf: Any, p: Any) -> Any:
    return (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])


@_jit
def _u16(buf: Any, p: Any, big: bool) -> Any:
    if big:
        return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])
    return (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@_jit
def _u32(buf: Any, p: Any, big: bool) -> Any:
    if big:
        return (
            (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])
        )
    return (np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@_jit
def _u64be(buf: Any, p: Any) -> Any:
    v = np.uint64(0)
    for i in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[p + i])
    return v


@_jit
def _none() -> Any:
    """What :func:`decode_one` returns for a packet that is not delivered."""
    z = np.uint64(0)
    return False, 0, 0, z, z, z, z, 0, 0, 0, 0, 0, 0, 0, 0, 0, False


@_jit
def decode_one(buf: Any, off: Any, caplen: Any, origlen: Any, linktype: Any, counters: Any) -> Any:
    """Decode one packet ``buf[off:off+caplen]``.

    Returns ``(delivered, ip_version, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
    flags, seq, ack, window, payload_len, payload_off, payload_caplen, later_fragment)``; only
    scalars cross the call, so that compiled callers pay no per-array bookkeeping.
    """
    end = off + caplen
    # ---- link layer: find the network header and what it claims to be.
    l3 = off
    ethertype = -1  # -1: decide IPv4/IPv6 from the version nibble
    if linktype == _LT_ETHERNET or linktype == _LT_LINUX_SLL or linktype == _LT_LINUX_SLL2:
        if linktype == _LT_ETHERNET:
            hdr = 14
            tpos = off + 12
        elif linktype == _LT_LINUX_SLL:
            hdr = 16
            tpos = off + 14
        else:
            hdr = 20
            tpos = off
        if caplen < hdr:
            counters[C_TRUNCATED] += 1
            return _none()
        ethertype = _u16be(buf, tpos)
        l3 = off + hdr
        # 802.1Q / 802.1ad / old QinQ tags: 2 bytes TCI, then the next type.
        while ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
            if l3 + 4 > end:
                counters[C_TRUNCATED] += 1
                return _none()
            ethertype = _u16be(buf, l3 + 2)
            l3 += 4
        if ethertype != _ETH_IPV4 and ethertype != _ETH_IPV6:
            counters[C_NON_IP] += 1
            return _none()
    elif linktype == _LT_RAW or linktype == _LT_RAW_12 or linktype == _LT_RAW_14:
        pass
    elif linktype == _LT_IPV4:
        ethertype = _ETH_IPV4
    elif linktype == _LT_IPV6:
        ethertype = _ETH_IPV6
    elif linktype == _LT_NULL or linktype == _LT_LOOP:
        if caplen < 4:
            counters[C_TRUNCATED] += 1
            return _none()
        if linktype == _LT_LOOP:
            family = _u32be(buf, off)
        else:
            # Host byte order of the writer: take whichever reading is small.
            family = _u32(buf, off, False)
            if family > 0xFFFF:
                family = _u32be(buf, off)
        l3 = off + 4
        if family == 2:
            ethertype = _ETH_IPV4
        elif family == 10 or family == 24 or family == 28 or family == 30:
            ethertype = _ETH_IPV6
        else:
            counters[C_NON_IP] += 1
            return _none()
    else:
        counters[C_UNKNOWN_LINK] += 1
        return _none()

    if l3 >= end:
        counters[C_TRUNCATED] += 1
        return _none()
    version = _b(buf, l3) >> 4
    if ethertype == -1:
        if version != 4 and version != 6:
            counters[C_NON_IP] += 1
            return _none()
    elif (ethertype == _ETH_IPV4 and version != 4) or (ethertype == _ETH_IPV6 and version != 6):
        counters[C_MALFORMED] += 1
        return _none()
    # Bytes on the wire from the network header on (for TSO/BIG TCP length 0).
    wire_l3 = origlen - (l3 - off)

    # ---- network layer.
    later_fragment = False
    if version == 4:
        if l3 + 20 > end:
            counters[C_TRUNCATED] += 1
            return _none()
        ihl = (_b(buf, l3) & 0x0F) * 4
        if ihl < 20:
            counters[C_MALFORMED] += 1
            return _none()
        if l3 + ihl > end:
            counters[C_TRUNCATED] += 1
            return _none()
        total = _u16be(buf, l3 + 2)
        if total == 0:
            total = wire_l3
        if total < ihl:
            counters[C_MALFORMED] += 1
            return _none()
        frag = _u16be(buf, l3 + 6)
        if (frag & 0x3FFF) != 0:
            counters[C_FRAGMENTS] += 1
            later_fragment = (frag & 0x1FFF) != 0
        nexthdr = _b(buf, l3 + 9)
        l4 = l3 + ihl
        remaining = total - ihl
        hi_s = np.uint64(0)
        hi_d = np.uint64(0)
        lo_s = np.uint64(0xFFFF00000000) | np.uint64(_u32be(buf, l3 + 12))
        lo_d = np.uint64(0xFFFF00000000) | np.uint64(_u32be(buf, l3 + 16))
        counters[C_IPV4] += 1
    else:
        if l3 + 40 > end:
            counters[C_TRUNCATED] += 1
            return _none()
        plen = _u16be(buf, l3 + 4)
        if plen == 0:
            plen = wire_l3 - 40
        nexthdr = _b(buf, l3 + 6)
        hi_s = _u64be(buf, l3 + 8)
        lo_s = _u64be(buf, l3 + 16)
        hi_d = _u64be(buf, l3 + 24)
        lo_d = _u64be(buf, l3 + 32)
        l4 = l3 + 40
        remaining = plen
        counters[C_IPV6] += 1
        # Extension headers: hop-by-hop, routing, fragment, destination options, AH.
        is_fragment = False
        while nexthdr == 0 or nexthdr == 43 or nexthdr == 44 or nexthdr == 60 or nexthdr == 51:
            if l4 + 8 > end:
                counters[C_TRUNCATED] += 1
                return _none()
            if nexthdr == 44:
                hlen = 8
                is_fragment = True
                if (_u16be(buf, l4 + 2) & 0xFFF8) != 0:
                    later_fragment = True
            elif nexthdr == 51:
                hlen = (_b(buf, l4 + 1) + 2) * 4
            else:
                hlen = (_b(buf, l4 + 1) + 1) * 8
            nexthdr = _b(buf, l4)
            l4 += hlen
            remaining -= hlen
            if later_fragment:
                break
        if is_fragment:
            counters[C_FRAGMENTS] += 1
        if remaining < 0:
            counters[C_MALFORMED] += 1
            return _none()
        if l4 > end and not later_fragment:
            counters[C_TRUNCATED] += 1
            return _none()

    if nexthdr != 6 and nexthdr != 17:
        counters[C_OTHER_TRANSPORT] += 1
        return _none()

    # ---- transport layer.
    sp = 0
    dp = 0
    flags = 0
    sq = 0
    ak = 0
    win = 0
    if later_fragment:
        hlen = 0
    elif nexthdr == 6:
        if l4 + 20 > end:
            counters[C_TRUNCATED] += 1
            return _none()
        hlen = (_b(buf, l4 + 12) >> 4) * 4
        if hlen < 20 or hlen > remaining:
            counters[C_MALFORMED] += 1
            return _none()
        sp = _u16be(buf, l4)
        dp = _u16be(buf, l4 + 2)
        sq = _u32be(buf, l4 + 4)
        ak = _u32be(buf, l4 + 8)
        flags = _b(buf, l4 + 13)
        win = _u16be(buf, l4 + 14)
    else:
        if l4 + 8 > end:
            counters[C_TRUNCATED] += 1
            return _none()
        if remaining < 8:
            counters[C_MALFORMED] += 1
            return _none()
        hlen = 8
        sp = _u16be(buf, l4)
        dp = _u16be(buf, l4 + 2)
        ulen = _u16be(buf, l4 + 4)
        if ulen >= 8 and ulen <= remaining:
            remaining = ulen
    plen_t = remaining - hlen
    poff = l4 + hlen
    pcap_t = end - poff
    pcap_t = max(pcap_t, 0)
    pcap_t = min(pcap_t, plen_t)
    poff = min(poff, end)

    if nexthdr == 6:
        counters[C_TCP] += 1
    else:
        counters[C_UDP] += 1
    return (
        True, version, nexthdr, hi_s, lo_s, hi_d, lo_d, sp, dp, flags, sq, ak, win,
        plen_t, poff, pcap_t, later_fragment,
    )  # fmt: skip


@_jit
def _store(
    row: Any, k: Any, ip_version: Any, proto: Any, src_hi: Any, src_lo: Any, dst_hi: Any, dst_lo: Any,
    sport: Any, dport: Any, tcp_flags: Any, seq: Any, ack: Any, window: Any, payload_len: Any,
    payload_off: Any, payload_caplen: Any, fragment: Any,
) -> None:  # fmt: skip
    ip_version[k] = row[1]
    proto[k] = row[2]
    src_hi[k] = row[3]
    src_lo[k] = row[4]
    dst_hi[k] = row[5]
    dst_lo[k] = row[6]
    sport[k] = row[7]
    dport[k] = row[8]
    tcp_flags[k] = row[9]
    seq[k] = row[10]
    ack[k] = row[11]
    window[k] = row[12]
    payload_len[k] = row[13]
    payload_off[k] = row[14]
    payload_caplen[k] = row[15]
    fragment[k] = row[16]


@_jit
def walk_pcap(
    buf: Any,
    pos: int,
    big: bool,
    rec_hdr: int,
    ts_mult: int,
    max_caplen: int,
    linktype: int,
    frame0: int,
    max_out: int,
    frame: Any,
    ts_ns: Any,
    ip_version: Any,
    proto: Any,
    src_hi: Any,
    src_lo: Any,
    dst_hi: Any,
    dst_lo: Any,
    sport: Any,
    dport: Any,
    tcp_flags: Any,
    seq: Any,
    ack: Any,
    window: Any,
    payload_len: Any,
    payload_off: Any,
    payload_caplen: Any,
    fragment: Any,
    counters: Any,
) -> tuple[int, int, int, int]:
    """Walk pcap records from ``buf[pos]``; return (pos, rows written, frames read, status)."""
    n = buf.shape[0]
    k = 0
    frames = 0
    status = ST_NEED_MORE
    while True:
        if k >= max_out:
            status = ST_FULL
            break
        if pos + rec_hdr > n:
            break
        caplen = _u32(buf, pos + 8, big)
        if caplen > max_caplen:
            status = ST_CORRUPT
            break
        if pos + rec_hdr + caplen > n:
            break
        sec = _u32(buf, pos, big)
        frac = _u32(buf, pos + 4, big)
        origlen = _u32(buf, pos + 12, big)
        off = pos + rec_hdr
        frames += 1
        counters[C_FRAMES] += 1
        row = decode_one(buf, off, caplen, origlen, linktype, counters)
        if row[0]:
            _store(row, k, ip_version, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, tcp_flags,
                   seq, ack, window, payload_len, payload_off, payload_caplen, fragment)  # fmt: skip
            frame[k] = frame0 + frames
            ts_ns[k] = sec * 1_000_000_000 + frac * ts_mult
            k += 1
        pos = off + caplen
    return pos, k, frames, status


@_jit
def walk_pcapng(
    buf: Any,
    pos: int,
    big: bool,
    if_linktype: Any,
    if_mul: Any,
    if_div: Any,
    if_shift: Any,
    if_offset_ns: Any,
    if_snaplen: Any,
    if_packets: Any,
    frame0: int,
    max_out: int,
    frame: Any,
    ts_ns: Any,
    ip_version: Any,
    proto: Any,
    src_hi: Any,
    src_lo: Any,
    dst_hi: Any,
    dst_lo: Any,
    sport: Any,
    dport: Any,
    tcp_flags: Any,
    seq: Any,
    ack: Any,
    window: Any,
    payload_len: Any,
    payload_off: Any,
    payload_caplen: Any,
    fragment: Any,
    counters: Any,
) -> tuple[int, int, int, int]:
    """Walk pcapng blocks of one section from ``buf[pos]``; same return as :func:`walk_pcap`.

    Interface tables are indexed by interface id; timestamps convert as
    ``(ts >> shift) * mul // div`` plus the fractional part for binary resolutions.
    """
    n = buf.shape[0]
    n_if = if_linktype.shape[0]
    k = 0
    frames = 0
    status = ST_NEED_MORE
    while True:
        if k >= max_out:
            status = ST_FULL
            break
        if pos + 12 > n:
            break
        btype = _u32(buf, pos, big)
        blen = _u32(buf, pos + 4, big)
        if btype == _BT_SHB or btype == _BT_IDB:
            status = ST_STRUCTURAL
            break
        if blen < 12 or (blen & 3) != 0:
            status = ST_CORRUPT
            break
        if pos + blen > n:
            break
        if _u32(buf, pos + blen - 4, big) != blen:
            status = ST_CORRUPT
            break
        if btype == _BT_EPB or btype == _BT_OPB:
            if blen < 32:
                status = ST_CORRUPT
                break
            if btype == _BT_EPB:
                iface = _u32(buf, pos + 8, big)
            else:
                iface = _u16(buf, pos + 8, big)
            if iface >= n_if:
                status = ST_BAD_IFACE
                break
            ts = (_u32(buf, pos + 12, big) << 32) | _u32(buf, pos + 16, big)
            caplen = _u32(buf, pos + 20, big)
            origlen = _u32(buf, pos + 24, big)
            off = pos + 28
            if caplen > blen - 32:
                status = ST_CORRUPT
                break
        elif btype == _BT_SPB:
            if blen < 16:
                status = ST_CORRUPT
                break
            if n_if == 0:
                status = ST_BAD_IFACE
                break
            iface = 0
            ts = -1
            origlen = _u32(buf, pos + 8, big)
            caplen = origlen
            if if_snaplen[0] > 0 and caplen > if_snaplen[0]:
                caplen = if_snaplen[0]
            caplen = min(caplen, blen - 16)
            off = pos + 12
        else:
            pos += blen
            continue
        frames += 1
        counters[C_FRAMES] += 1
        if_packets[iface] += 1
        row = decode_one(buf, off, caplen, origlen, if_linktype[iface], counters)
        if row[0]:
            _store(row, k, ip_version, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, tcp_flags,
                   seq, ack, window, payload_len, payload_off, payload_caplen, fragment)  # fmt: skip
            frame[k] = frame0 + frames
            if ts < 0:
                ts_ns[k] = 0
            else:
                sh = if_shift[iface]
                if sh == 0:
                    t = ts * if_mul[iface] // if_div[iface]
                else:
                    if sh > 32:  # keep the product below 2**63: drop the finest bits
                        ts = ts >> (sh - 32)
                        sh = 32
                    whole = ts >> sh
                    part = ts & ((np.int64(1) << sh) - 1)
                    t = whole * 1_000_000_000 + (part * 1_000_000_000 >> sh)
                ts_ns[k] = t + if_offset_ns[iface]
            k += 1
        pos += blen
    return pos, k, frames, status
