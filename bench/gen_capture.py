"""Generate a realistic synthetic capture of a phone talking HTTP keep-alive to many servers.

Usage::

    python bench/gen_capture.py OUT.pcap [--packets 2000000] [--seed 42] [--format pcap|pcapng]
        [--link ethernet|sll2] [--snaplen 128] [--nano] [--connections N]

Connections (IPv4 and IPv6, ports 443 and 80) open with a handshake, exchange 1-23
request/response rounds (responses of 1-11 segments), and then end one of these ways:

* ``client_close``: the client closes first (FIN, FIN, ACK);
* ``server_idle_close``: after the server's idle timeout the server sends FIN, the client ACKs,
  and closes later (the socket sat in CLOSE_WAIT meanwhile);
* ``stale_reuse``: server FIN after idle, client ACK, then the client writes a request into the
  half-closed socket and the server answers RST;
* ``fin_retransmit``: like ``server_idle_close`` but the server's FIN is sent twice;
* ``client_rst`` / ``server_rst``: an abort by one side;
* ``open_at_end``: still open when the capture stops.

Most connections are preceded by a DNS lookup (A for IPv4, AAAA for IPv6, with a TTL) over UDP
port 53; some lookups repeat a name whose answer is still within its TTL. TCP is captured with
the snap length (96 to 128), DNS in full. Addresses come only from 198.18.0.0/15 and fd00::/8.
The same seed gives the same bytes. A ground-truth summary goes to ``OUT.truth.json``.

Everything is built column-wise with numpy (about 9 s for 2 million packets on this 2-vCPU machine),
the frames 1,000,000 at a time. ``--connections N`` fixes the number of connections: a capture of
20 million packets with the connections of a 2 million one (``connections_for``) has connections
ten times longer, for measuring that memory follows connections, not packets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["SCENARIOS", "GeneratorConfig", "generate", "main"]

I64 = npt.NDArray[np.int64]

SCENARIOS = (
    "client_close",
    "server_idle_close",
    "stale_reuse",
    "fin_retransmit",
    "client_rst",
    "server_rst",
    "open_at_end",
)
_SCENARIO_P = np.array([0.40, 0.20, 0.10, 0.04, 0.08, 0.05, 0.13])

# TCP flags
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# (direction 0=client 1=server, flags, payload kind, delay kind) for each closing sequence.
# payload kind: 0 none, 1 request; delay kind: 0 small (after previous), 1 half RTT,
# 2 server idle timeout, 3 CLOSE_WAIT duration, 4 retransmission timeout (200 ms), 5 stale gap.
_CLOSE: dict[str, list[tuple[int, int, int, int]]] = {
    "client_close": [(0, FIN | ACK, 0, 0), (1, FIN | ACK, 0, 1), (0, ACK, 0, 1)],
    "server_idle_close": [(1, FIN | ACK, 0, 2), (0, ACK, 0, 1), (0, FIN | ACK, 0, 3), (1, ACK, 0, 1)],
    "stale_reuse": [(1, FIN | ACK, 0, 2), (0, ACK, 0, 1), (0, PSH | ACK, 1, 5), (1, RST, 0, 1)],
    "fin_retransmit": [
        (1, FIN | ACK, 0, 2),
        (1, FIN | ACK, 0, 4),
        (0, ACK, 0, 1),
        (0, FIN | ACK, 0, 3),
        (1, ACK, 0, 1),
    ],
    "client_rst": [(0, RST | ACK, 0, 0)],
    "server_rst": [(1, RST | ACK, 0, 0)],
    "open_at_end": [],
}

CLIENT4 = 0xC612000A  # 198.18.0.10
RESOLVER4 = 0xC6120035  # 198.18.0.53
SERVER4_BASE = 0xC6130000  # 198.19.0.0/16
CLIENT6 = bytes.fromhex("fd000000000000000000000000000010")
RESOLVER6 = bytes.fromhex("fd000000000000000000000000000053")
SERVER6_PREFIX = bytes.fromhex("fd000000000000010000000000000000")  # fd00:0:0:1::/64

TCP_HDR = 32  # 20 + NOP NOP TS
UDP_HDR = 8
MSS = 1448
T0_NS = 1_800_000_000 * 10**9


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorConfig:
    packets: int = 2_000_000
    seed: int = 42
    fmt: str = "pcap"  # or "pcapng"
    link: str = "ethernet"  # or "sll2"
    snaplen: int = 128
    nano: bool = False
    servers: int = 600
    ipv6_share: float = 0.2
    dns_share: float = 0.6
    #: Request/response rounds per connection: uniform in 1..max_rounds (keep-alive reuse).
    max_rounds: int = 23
    #: Segments per response: uniform in 1..max_segments.
    max_segments: int = 11
    #: Connections to start (0: as many as the packet count gives with max_rounds). Given, the
    #: rounds per connection grow instead, so that captures of any size can hold the same
    #: connections (longer ones).
    connections: int = 0


def _mean_packets(cfg: GeneratorConfig) -> float:
    """Mean packets of a whole connection: handshake, rounds, close."""
    return 3 + 3 + (cfg.max_rounds + 1) / 2 * ((cfg.max_segments + 1) / 2 + 2)


def connections_for(cfg: GeneratorConfig) -> int:
    """Connections started for *cfg* (15% more than fit, so that the capture ends mid-traffic)."""
    return cfg.connections or max(1, int(cfg.packets / _mean_packets(cfg) * 1.15))


def _with_rounds(cfg: GeneratorConfig) -> GeneratorConfig:
    """*cfg* with max_rounds set so that its connections fill its packets (when connections is given)."""
    if not cfg.connections:
        return cfg
    per_conn = cfg.packets * 1.15 / cfg.connections
    rounds = round(2 * (per_conn - 6) / ((cfg.max_segments + 1) / 2 + 2) - 1)
    return dataclasses.replace(cfg, max_rounds=max(1, rounds))


def _segmented_exclusive_cumsum(values: I64, group_start: npt.NDArray[np.bool_]) -> I64:
    """Exclusive cumulative sum restarting where *group_start* is true (rows sorted by group)."""
    total = np.cumsum(values) - values
    starts = np.flatnonzero(group_start)
    base = np.repeat(total[starts], np.diff(np.append(starts, values.shape[0])))
    return total - base


def _tcp_packets(cfg: GeneratorConfig, rng: np.random.Generator, m: int, span_ns: int) -> dict[str, np.ndarray]:
    """Packet table (one row per TCP packet) for *m* connections, plus per-connection truth."""
    scen = rng.choice(len(SCENARIOS), size=m, p=_SCENARIO_P)
    server = rng.integers(0, cfg.servers, size=m)
    srv_rng = np.random.default_rng(cfg.seed + 1)
    srv_v6 = srv_rng.random(cfg.servers) < cfg.ipv6_share
    srv_idle_s = srv_rng.choice(np.array([5, 15, 30, 60, 75, 120, 300]), size=cfg.servers)
    srv_port = np.where(srv_rng.random(cfg.servers) < 0.8, 443, 80)
    srv_ttl = srv_rng.choice(np.array([30, 60, 300, 3600]), size=cfg.servers)
    v6 = srv_v6[server]
    rtt = rng.integers(15_000_000, 120_000_000, size=m)  # 15-120 ms
    start = T0_NS + np.sort(rng.integers(0, span_ns, size=m))
    cport = rng.integers(32768, 61000, size=m)
    isn = rng.integers(0, 2**32, size=(m, 2))
    rounds = rng.integers(1, cfg.max_rounds + 1, size=m)

    # ---- handshake: 3 packets per connection.
    hs_dir = np.tile([0, 1, 0], m)
    hs_flags = np.tile([SYN, SYN | ACK, ACK], m)
    hs_conn = np.repeat(np.arange(m), 3)
    hs_t = np.repeat(start, 3) + np.tile([0, 1, 2], m) * np.repeat(rtt // 2, 3)
    hs_pay = np.zeros(3 * m, dtype=np.int64)

    # ---- rounds: request, response segments, client ACK.
    r_conn = np.repeat(np.arange(m), rounds)
    nr = r_conn.shape[0]
    segs = rng.integers(1, cfg.max_segments + 1, size=nr)
    last_seg = rng.integers(100, MSS + 1, size=nr)
    req_len = rng.integers(200, 1200, size=nr)
    think = rng.integers(50_000_000, 20_000_000_000, size=nr)  # 50 ms - 20 s between rounds
    r_rtt = rtt[r_conn]
    dur = r_rtt + 2_000_000 + segs * 100_000 + 1_000_000
    first_round = np.ones(nr, dtype=bool)
    first_round[1:] = r_conn[1:] != r_conn[:-1]
    gap = np.where(first_round, 1_000_000, think)
    offs = _segmented_exclusive_cumsum(gap + dur, first_round) + gap
    r_start = start[r_conn] + rtt[r_conn] + offs
    per_round = segs + 2
    p_round = np.repeat(np.arange(nr), per_round)
    idx = np.arange(p_round.shape[0]) - np.repeat(np.cumsum(per_round) - per_round, per_round)
    s_of = segs[p_round]
    is_req = idx == 0
    is_ack = idx == s_of + 1
    rd_dir = np.where(is_req | is_ack, 0, 1)
    rd_flags = np.where(is_ack, ACK, PSH | ACK)
    seg_len = np.where(idx == s_of, last_seg[p_round], MSS)
    rd_pay = np.where(is_req, req_len[p_round], np.where(is_ack, 0, seg_len))
    rd_t = r_start[p_round] + np.where(
        is_req,
        0,
        r_rtt[p_round] + 2_000_000 + np.minimum(idx, s_of) * 100_000 + np.where(is_ack, 1_000_000, 0),
    )
    rd_conn = r_conn[p_round]
    conn_end = np.zeros(m, dtype=np.int64)
    np.maximum.at(conn_end, rd_conn, rd_t)

    # ---- closing sequences per scenario.
    idle = srv_idle_s[server].astype(np.int64) * 1_000_000_000 + rng.integers(-40_000_000, 40_000_000, size=m)
    close_wait = rng.integers(100_000_000, 60_000_000_000, size=m)
    stale_gap = rng.integers(1_000_000_000, 200_000_000_000, size=m)
    cl_parts = []
    for si, name in enumerate(SCENARIOS):
        steps = _CLOSE[name]
        conns = np.flatnonzero(scen == si)
        if not steps or conns.shape[0] == 0:
            continue
        k = len(steps)
        arr = np.array(steps, dtype=np.int64)
        c = np.repeat(conns, k)
        step = np.tile(np.arange(k), conns.shape[0])
        kind = arr[step, 3]
        delay = np.select(
            [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
            [
                np.full(c.shape[0], 300_000_000),
                rtt[c] // 2,
                idle[c],
                close_wait[c],
                np.full(c.shape[0], 200_000_000),
                stale_gap[c],
            ],
        )
        t = conn_end[c] + _segmented_exclusive_cumsum(delay, step == 0) + delay
        pay = np.where(arr[step, 2] == 1, rng.integers(200, 1200, size=c.shape[0]), 0)
        retrans = (name == "fin_retransmit") & (step == 1)
        cl_parts.append((c, arr[step, 0], arr[step, 1], pay, t, retrans, 100 + step))

    conn = np.concatenate([hs_conn, rd_conn, *[p[0] for p in cl_parts]])
    direction = np.concatenate([hs_dir, rd_dir, *[p[1] for p in cl_parts]])
    flags = np.concatenate([hs_flags, rd_flags, *[p[2] for p in cl_parts]])
    pay = np.concatenate([hs_pay, rd_pay, *[p[3] for p in cl_parts]]).astype(np.int64)
    ts = np.concatenate([hs_t, rd_t, *[p[4] for p in cl_parts]])
    no_retr = np.zeros(hs_conn.shape[0] + rd_conn.shape[0], dtype=bool)
    retr = np.concatenate([no_retr, *[p[5] for p in cl_parts]])
    order_key = np.concatenate(
        [np.tile([0, 1, 2], m), 10 + np.arange(rd_conn.shape[0]), *[1 << 40 | p[6] for p in cl_parts]]
    )

    # Sequence numbers: sort by connection and order, then per-direction consumption.
    o = np.lexsort((order_key, conn))
    conn, direction, flags, pay, ts, retr = conn[o], direction[o], flags[o], pay[o], ts[o], retr[o]
    consume = pay + ((flags & (SYN | FIN)) != 0) * (~retr)
    first = np.ones(conn.shape[0], dtype=bool)
    first[1:] = conn[1:] != conn[:-1]
    before = [_segmented_exclusive_cumsum(np.where(direction == d, consume, 0), first) for d in (0, 1)]
    own = np.where(direction == 0, before[0], before[1]) - retr
    peer = np.where(direction == 0, before[1], before[0])
    seq = (isn[conn, direction] + own) % 2**32
    ack = np.where((flags & ACK) != 0, (isn[conn, 1 - direction] + peer) % 2**32, 0)

    return {
        "conn": conn,
        "dir": direction,
        "flags": flags,
        "pay": pay,
        "ts": ts,
        "seq": seq,
        "ack": ack,
        "v6": v6[conn],
        "server": server[conn],
        "sport_c": cport[conn],
        "sport_s": srv_port[server][conn],
        "conn_scen": scen,
        "conn_start": start,
        "conn_server": server,
        "conn_v6": v6,
        "srv_ttl": srv_ttl,
    }


def _dns_name(server: int) -> bytes:
    return b"\x05" + f"s{server:04d}".encode() + b"\x07example\x04test\x00"


def _dns_packets(
    cfg: GeneratorConfig, rng: np.random.Generator, tcp: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """DNS query/response pairs before most connections; repeats within TTL are 'redundant'."""
    start = tcp["conn_start"]
    server = tcp["conn_server"]
    v6 = tcp["conn_v6"]
    ttl = tcp["srv_ttl"][server]
    look = rng.random(start.shape[0]) < cfg.dns_share
    q_t = start[look] - rng.integers(5_000_000, 40_000_000, size=int(look.sum()))
    q_srv = server[look]
    q_v6 = v6[look]
    q_ttl = ttl[look]
    delay = rng.integers(2_000_000, 60_000_000, size=q_t.shape[0])
    n = q_t.shape[0]
    # Redundant: the same name asked again while the previous answer is still fresh.
    o = np.lexsort((q_t, q_srv))
    same = np.zeros(n, dtype=bool)
    same[1:] = q_srv[o][1:] == q_srv[o][:-1]
    fresh = np.zeros(n, dtype=bool)
    fresh[1:] = (q_t[o][1:] - q_t[o][:-1]) < q_ttl[o][1:] * 1_000_000_000
    redundant = int(np.sum(same & fresh))
    txid = rng.integers(0, 65536, size=n)
    cport = rng.integers(32768, 61000, size=n)
    table = {
        "ts": np.concatenate([q_t, q_t + delay]),
        "dir": np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)]),
        "server": np.concatenate([q_srv, q_srv]),
        "v6": np.concatenate([q_v6, q_v6]),
        "ttl": np.concatenate([q_ttl, q_ttl]),
        "txid": np.concatenate([txid, txid]),
        "cport": np.concatenate([cport, cport]),
    }
    return table, {"dns_queries": int(n), "dns_redundant": redundant}


def _put(mat: np.ndarray, col: int, values: np.ndarray, width: int) -> None:
    """Write *values* big-endian into columns ``col : col + width`` of a uint8 matrix."""
    v = values.astype(np.uint64)
    for i in range(width):
        mat[:, col + i] = (v >> np.uint64(8 * (width - 1 - i))) & np.uint64(0xFF)


def _ip_checksum(mat: np.ndarray, col: int) -> None:
    words = mat[:, col : col + 20].astype(np.uint32)
    s = (words[:, 0::2] << 8 | words[:, 1::2]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    _put(mat, col + 10, (~s) & 0xFFFF, 2)


def _frames(
    cfg: GeneratorConfig, pk: dict[str, np.ndarray], ipv4_before: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Header bytes (matrix, one row per packet) up to the payload, their lengths and wire lengths
    (*ipv4_before*: IPv4 packets in the blocks before this one, for the IP ids)."""
    n = pk["ts"].shape[0]
    link = 14 if cfg.link == "ethernet" else 20
    v6 = pk["v6"]
    udp = pk["udp"]
    ip_len = np.where(v6, 40, 20)
    l4 = np.where(udp, UDP_HDR, TCP_HDR)
    hdr_len = link + ip_len + l4
    wire = hdr_len + pk["pay"]
    mat = np.zeros((n, link + 40 + TCP_HDR), dtype=np.uint8)
    ethertype = np.where(v6, 0x86DD, 0x0800)
    if cfg.link == "ethernet":
        client_mac = np.uint64(0x02000000000A)
        router_mac = np.uint64(0x020000000001)
        to_server = pk["dir"] == 0
        _put(mat, 0, np.where(to_server, router_mac, client_mac), 6)
        _put(mat, 6, np.where(to_server, client_mac, router_mac), 6)
        _put(mat, 12, ethertype, 2)
    else:
        _put(mat, 0, ethertype, 2)
        _put(mat, 4, np.full(n, 3), 4)  # interface index
        _put(mat, 8, np.ones(n), 2)  # ARPHRD_ETHER
        mat[:, 10] = np.where(pk["dir"] == 0, 4, 0)  # PACKET_OUTGOING / PACKET_HOST
        mat[:, 11] = 6
        _put(mat, 12, np.full(n, 0x02000000000A), 6)
    # Addresses.
    c_is_src = pk["dir"] == 0
    proto = np.where(udp, 17, 6)
    for rows, version in ((~v6, 4), (v6, 6)):
        idx = np.flatnonzero(rows)
        if idx.shape[0] == 0:
            continue
        sub = np.zeros((idx.shape[0], mat.shape[1]), dtype=np.uint8)
        sub[:, :link] = mat[idx, :link]
        srv = pk["server"][idx]
        is_dns = udp[idx]
        csrc = c_is_src[idx]
        if version == 4:
            client = np.full(idx.shape[0], CLIENT4, dtype=np.int64)
            other = np.where(is_dns, RESOLVER4, SERVER4_BASE + 1 + srv)
            src = np.where(csrc, client, other)
            dst = np.where(csrc, other, client)
            sub[:, link] = 0x45
            _put(sub, link + 2, wire[idx] - link, 2)
            _put(sub, link + 4, ((ipv4_before + np.arange(idx.shape[0])) * 7919) & 0xFFFF, 2)
            _put(sub, link + 6, np.full(idx.shape[0], 0x4000), 2)
            sub[:, link + 8] = 64
            sub[:, link + 9] = proto[idx]
            _put(sub, link + 12, src, 4)
            _put(sub, link + 16, dst, 4)
            _ip_checksum(sub, link)
            l4off = link + 20
        else:
            sub[:, link] = 0x60
            _put(sub, link + 4, wire[idx] - link - 40, 2)
            sub[:, link + 6] = proto[idx]
            sub[:, link + 7] = 64
            c6 = np.frombuffer(CLIENT6, dtype=np.uint8)
            r6 = np.frombuffer(RESOLVER6, dtype=np.uint8)
            s6 = np.tile(np.frombuffer(SERVER6_PREFIX, dtype=np.uint8), (idx.shape[0], 1))
            s6[:, 14] = ((srv + 1) >> 8) & 0xFF
            s6[:, 15] = (srv + 1) & 0xFF
            other6 = np.where(is_dns[:, None], r6[None, :], s6)
            sub[:, link + 8 : link + 24] = np.where(csrc[:, None], c6[None, :], other6)
            sub[:, link + 24 : link + 40] = np.where(csrc[:, None], other6, c6[None, :])
            l4off = link + 40
        sp = np.where(csrc, pk["cport"][idx], pk["sport_s"][idx])
        dp = np.where(csrc, pk["sport_s"][idx], pk["cport"][idx])
        _put(sub, l4off, sp, 2)
        _put(sub, l4off + 2, dp, 2)
        tcp_rows = ~is_dns
        t = np.flatnonzero(tcp_rows)
        tcp_sub = sub[t]
        _put(tcp_sub, l4off + 4, pk["seq"][idx][t], 4)
        _put(tcp_sub, l4off + 8, pk["ack"][idx][t], 4)
        tcp_sub[:, l4off + 12] = (TCP_HDR // 4) << 4
        tcp_sub[:, l4off + 13] = pk["flags"][idx][t]
        _put(tcp_sub, l4off + 14, np.full(t.shape[0], 65535), 2)
        tcp_sub[:, l4off + 20] = 1
        tcp_sub[:, l4off + 21] = 1
        tcp_sub[:, l4off + 22] = 8
        tcp_sub[:, l4off + 23] = 10
        _put(tcp_sub, l4off + 24, (pk["ts"][idx][t] // 1_000_000) & 0xFFFFFFFF, 4)
        sub[t] = tcp_sub
        u = np.flatnonzero(is_dns)
        udp_sub = sub[u]
        _put(udp_sub, l4off + 4, pk["pay"][idx][u] + UDP_HDR, 2)
        sub[u] = udp_sub
        mat[idx] = sub
    return mat, hdr_len, wire


def _dns_payloads(pk: dict[str, np.ndarray], rows: np.ndarray) -> list[bytes]:
    out = []
    for i in rows.tolist():
        name = _dns_name(int(pk["server"][i]))
        qtype = 28 if pk["v6"][i] else 1
        resp = pk["dir"][i] == 1
        flags = 0x8180 if resp else 0x0100
        hdr = struct.pack(">HHHHHH", int(pk["txid"][i]), flags, 1, 1 if resp else 0, 0, 0)
        msg = hdr + name + struct.pack(">HH", qtype, 1)
        if resp:
            srv = int(pk["server"][i]) + 1
            if qtype == 28:
                rdata = SERVER6_PREFIX[:14] + srv.to_bytes(2, "big")
            else:
                rdata = (SERVER4_BASE + srv).to_bytes(4, "big")
            msg += struct.pack(">HHHIH", 0xC00C, qtype, 1, int(pk["ttl"][i]), len(rdata)) + rdata
        out.append(msg)
    return out


def _udp_checksum(body: np.ndarray, udp_at: int, v6: bool) -> bytes:
    """RFC 768 checksum over the pseudo-header and the UDP datagram starting at *udp_at*."""
    length = int(body[udp_at + 4]) << 8 | int(body[udp_at + 5])
    if v6:
        addrs = body[udp_at - 32 : udp_at].tobytes()
        pseudo = addrs + struct.pack(">IxxxB", length, 17)
    else:
        addrs = body[udp_at - 8 : udp_at].tobytes()
        pseudo = addrs + struct.pack(">xBH", 17, length)
    rest = body[udp_at + 8 : udp_at + length].tobytes()
    data = pseudo + body[udp_at : udp_at + 6].tobytes() + b"\0\0" + rest
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return struct.pack(">H", (~s & 0xFFFF) or 0xFFFF)


_BLOCK = 1_000_000


def _records(cfg: GeneratorConfig, pk: dict[str, np.ndarray], ipv4_before: int) -> np.ndarray:
    """The capture records (record headers, frames, DNS payloads) of a block of packets, as bytes."""
    n = pk["ts"].shape[0]
    mat, hdr_len, wire = _frames(cfg, pk, ipv4_before)
    caplen = np.where(pk["udp"], wire, np.minimum(wire, cfg.snaplen))
    ng = cfg.fmt == "pcapng"
    rec_hdr = 28 if ng else 16
    padded = (caplen + 3) & ~3 if ng else caplen
    rec_len = rec_hdr + padded + (4 if ng else 0)
    ts = pk["ts"]
    if ng:
        t_units = ts if cfg.nano else ts // 1000
        cols = [np.full(n, 6), rec_len, np.zeros(n), t_units >> 32, t_units & 0xFFFFFFFF, caplen, wire]
        rh = np.stack([np.asarray(c).astype("<u4") for c in cols], axis=1).view(np.uint8).reshape(n, 28)
    else:
        frac = ts % 1_000_000_000 if cfg.nano else (ts % 1_000_000_000) // 1000
        cols = [ts // 1_000_000_000, frac, caplen, wire]
        rh = np.stack([np.asarray(c).astype("<u4") for c in cols], axis=1).view(np.uint8).reshape(n, 16)
    offsets = np.cumsum(rec_len) - rec_len
    body = np.zeros(int(rec_len.sum()), dtype=np.uint8)
    width = mat.shape[1]
    chunk = 100_000
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        base = offsets[a:b, None]
        body[base + np.arange(rec_hdr)] = rh[a:b]
        hl = np.minimum(hdr_len[a:b], caplen[a:b])
        cols_idx = np.arange(width)
        mask = cols_idx[None, :] < hl[:, None]
        pos = (base + rec_hdr + cols_idx[None, :])[mask]
        body[pos] = mat[a:b][mask]
        if ng:
            tail = offsets[a:b] + rec_len[a:b] - 4
            for i in range(4):
                body[tail + i] = ((rec_len[a:b] >> (8 * i)) & 0xFF).astype(np.uint8)
    dns_rows = np.flatnonzero(pk["udp"])
    payloads = _dns_payloads(pk, dns_rows)
    for i, p in zip(dns_rows.tolist(), payloads, strict=True):
        start = int(offsets[i] + rec_hdr + hdr_len[i])
        body[start : start + len(p)] = np.frombuffer(p, dtype=np.uint8)
        udp_at = start - UDP_HDR
        check = _udp_checksum(body, udp_at, bool(pk["v6"][i]))
        body[udp_at + 6 : udp_at + 8] = np.frombuffer(check, np.uint8)
    return body


def generate(cfg: GeneratorConfig, out: Path) -> dict[str, object]:
    """Write the capture to *out* (and ``out.truth.json``); return the truth summary."""
    if cfg.snaplen < 96:
        raise SystemExit("gen_capture: --snaplen must be at least 96 (the headers must fit)")
    cfg = _with_rounds(cfg)
    rng = np.random.default_rng(cfg.seed)
    m = connections_for(cfg)
    span_ns = max(60, cfg.packets // 140) * 1_000_000_000
    tcp = _tcp_packets(cfg, rng, m, span_ns)
    dns, dns_truth = _dns_packets(cfg, rng, tcp)
    nt = tcp["ts"].shape[0]
    nd = dns["ts"].shape[0]
    name_len = len(_dns_name(0))
    q_len = 12 + name_len + 4
    dns_pay = np.where(dns["dir"] == 1, q_len + 12 + np.where(dns["v6"], 16, 4), q_len)
    pk: dict[str, np.ndarray] = {
        "ts": np.concatenate([tcp["ts"], dns["ts"]]),
        "dir": np.concatenate([tcp["dir"], dns["dir"]]),
        "v6": np.concatenate([tcp["v6"], dns["v6"]]),
        "udp": np.concatenate([np.zeros(nt, dtype=bool), np.ones(nd, dtype=bool)]),
        "server": np.concatenate([tcp["server"], dns["server"]]),
        "pay": np.concatenate([tcp["pay"], dns_pay]),
        "seq": np.concatenate([tcp["seq"], np.zeros(nd, dtype=np.int64)]),
        "ack": np.concatenate([tcp["ack"], np.zeros(nd, dtype=np.int64)]),
        "flags": np.concatenate([tcp["flags"], np.zeros(nd, dtype=np.int64)]),
        "cport": np.concatenate([tcp["sport_c"], dns["cport"]]),
        "sport_s": np.concatenate([tcp["sport_s"], np.full(nd, 53)]),
        "txid": np.concatenate([np.zeros(nt, dtype=np.int64), dns["txid"]]),
        "ttl": np.concatenate([np.zeros(nt, dtype=np.int64), dns["ttl"]]),
        "conn": np.concatenate([tcp["conn"], np.full(nd, -1)]),
    }
    all_per_conn = np.bincount(tcp["conn"], minlength=tcp["conn_scen"].shape[0])
    order = np.argsort(pk["ts"], kind="stable")[: cfg.packets]
    pk = {k: v[order] for k, v in pk.items()}
    n = pk["ts"].shape[0]
    ng = cfg.fmt == "pcapng"
    linktype = 1 if cfg.link == "ethernet" else 276
    with open(out, "wb") as fh:
        if ng:
            shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
            opts = struct.pack("<HHB3x", 9, 1, 9 if cfg.nano else 6) + struct.pack("<HH", 0, 0)
            idb_len = 20 + len(opts)
            idb = struct.pack("<IIHHI", 1, idb_len, linktype, 0, cfg.snaplen) + opts
            idb += struct.pack("<I", idb_len)
            fh.write(shb + idb)
        else:
            magic = 0xA1B23C4D if cfg.nano else 0xA1B2C3D4
            fh.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, cfg.snaplen, linktype))
        # Frames are built and written _BLOCK packets at a time: memory stays bounded by the
        # packet table, whatever the capture's size.
        ipv4_before = 0
        for a in range(0, n, _BLOCK):
            block = {k: v[a : a + _BLOCK] for k, v in pk.items()}
            fh.write(_records(cfg, block, ipv4_before).tobytes())
            ipv4_before += int((~block["v6"]).sum())
    kept_tcp = ~pk["udp"]
    kept_per_conn = np.bincount(pk["conn"][kept_tcp], minlength=all_per_conn.shape[0])
    whole = (kept_per_conn == all_per_conn) & (all_per_conn > 0)
    cut = (kept_per_conn > 0) & ~whole
    scen = tcp["conn_scen"]
    truth: dict[str, object] = {
        "packets": int(n),
        "tcp_packets": int(kept_tcp.sum()),
        "udp_packets": int(pk["udp"].sum()),
        "ipv6_packets": int(pk["v6"].sum()),
        "fin_packets": int(((pk["flags"] & FIN) != 0).sum()),
        "rst_packets": int(((pk["flags"] & RST) != 0).sum()),
        "syn_packets": int(((pk["flags"] & SYN) != 0).sum()),
        "tcp_payload_bytes": int(pk["pay"][kept_tcp].sum()),
        "format": cfg.fmt,
        "link": cfg.link,
        "snaplen": cfg.snaplen,
        "seed": cfg.seed,
        "connections": int(np.sum(kept_per_conn > 0)),
        "scenarios": {name: int(np.sum(whole & (scen == i))) for i, name in enumerate(SCENARIOS)},
        "cut_by_capture_end": int(np.sum(cut)),
        **dns_truth,
    }
    Path(str(out) + ".truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--format", dest="fmt", choices=["pcap", "pcapng"], default="pcap")
    ap.add_argument("--link", choices=["ethernet", "sll2"], default="ethernet")
    ap.add_argument("--snaplen", type=int, default=128)
    ap.add_argument("--nano", action="store_true", help="nanosecond timestamps")
    ap.add_argument("--connections", type=int, default=0,
                    help="connections to start (default: as the packet count gives); more packets then mean "
                         "longer connections")  # fmt: skip
    a = ap.parse_args(argv)
    cfg = GeneratorConfig(packets=a.packets, seed=a.seed, fmt=a.fmt, link=a.link, snaplen=a.snaplen, nano=a.nano,
                          connections=a.connections)  # fmt: skip
    truth = generate(cfg, a.out)
    print(json.dumps(truth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
