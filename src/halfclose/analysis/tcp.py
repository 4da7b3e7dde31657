"""Connection records: one per TCP connection, in the spirit of Zeek's conn.log.

The counters come from :class:`~halfclose.analysis.flows.FlowTable`; this module decides, per
connection, who the originator is, how it was closed and by whom, and writes the record. All
rules live here:

Originator (first rule that applies, recorded in ``orig_by``):
    ``syn``: the sender of the first pure SYN; ``synack``: the receiver of the first SYN/ACK;
    ``port``: midstream, the side with the higher port is the originator (clients use ephemeral
    ports); ``first``: ports equal, the sender of the first packet seen.

``conn_state`` (first rule that applies; codes as in Zeek, closed set :class:`ConnState`):
    midstream (no SYN and no SYN/ACK): OTH.
    SYN, no SYN/ACK: RSTOS0 if the originator then sent RST, SH if it sent FIN, REJ if the
    responder answered with RST, else S0.
    SYN/ACK but no SYN seen: RSTRH if the responder sent RST, SHR if it sent FIN, else OTH.
    Established (SYN and SYN/ACK): RSTO / RSTR when the first RST came from the originator /
    responder; else SF when both sent FIN, S2 when only the originator did, S3 when only the
    responder did, S1 when neither.

``history`` letters (upper case: originator, lower case: responder), in capture order:
    ``S`` pure SYN, ``H`` SYN/ACK, ``A`` first pure ACK, ``D`` first new data, ``F`` FIN (once per
    distinct sequence number), ``R`` RST (each), ``T`` a FIN retransmission (same sequence number),
    and ``D`` again for the first new data sent after the peer's FIN (what Zeek cannot show:
    a stale write reads ``...f...D...r``).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from halfclose.analysis.flows import NO_TS, FirstPayload, FlowState
from halfclose.analysis.names import NameSource, name_from_payload
from halfclose.capture.columns import TH_ACK, TH_FIN, TH_RST, TH_SYN

__all__ = [
    "CONN_STATE_DOC",
    "CloseKind",
    "ConnState",
    "Connection",
    "HalfCloseEnd",
    "OrigBy",
    "Side",
    "build_connections",
    "format_address",
]


@enum.unique
class ConnState(enum.StrEnum):
    """Connection state summary codes (Zeek's set)."""

    S0 = "S0"
    S1 = "S1"
    SF = "SF"
    REJ = "REJ"
    S2 = "S2"
    S3 = "S3"
    RSTO = "RSTO"
    RSTR = "RSTR"
    RSTOS0 = "RSTOS0"
    RSTRH = "RSTRH"
    SH = "SH"
    SHR = "SHR"
    OTH = "OTH"


#: One line per code, for docs and ``--help``.
CONN_STATE_DOC: dict[ConnState, str] = {
    ConnState.S0: "SYN seen, no reply",
    ConnState.S1: "established, not closed",
    ConnState.SF: "established, both sides sent FIN, no RST",
    ConnState.REJ: "SYN answered by RST",
    ConnState.S2: "established, originator sent FIN, responder did not",
    ConnState.S3: "established, responder sent FIN, originator did not",
    ConnState.RSTO: "established, originator sent the first RST",
    ConnState.RSTR: "established, responder sent the first RST",
    ConnState.RSTOS0: "SYN then RST from the originator, no SYN/ACK",
    ConnState.RSTRH: "SYN/ACK then RST from the responder, no SYN seen",
    ConnState.SH: "SYN then FIN from the originator, no SYN/ACK",
    ConnState.SHR: "SYN/ACK then FIN from the responder, no SYN seen",
    ConnState.OTH: "midstream: no SYN seen",
}


@enum.unique
class Side(enum.StrEnum):
    """A connection's side."""

    ORIG = "orig"
    RESP = "resp"


@enum.unique
class CloseKind(enum.StrEnum):
    """How a side closed: FIN (orderly) or RST (abort)."""

    FIN = "fin"
    RST = "rst"


@enum.unique
class HalfCloseEnd(enum.StrEnum):
    """What ended the half-closed phase that the first FIN opened."""

    FIN = "fin"  # the other side's FIN
    RST = "rst"  # a RST from either side
    CAPTURE_END = "capture_end"  # nothing: the last packet of the connection is taken


@enum.unique
class OrigBy(enum.StrEnum):
    """Which rule chose the originator (see the module docstring)."""

    SYN = "syn"
    SYNACK = "synack"
    PORT = "port"
    FIRST = "first"


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """One TCP connection. Times are integer ns since the epoch; durations integer ns.

    Fields:
        uid: stable id, ``C`` + 16 base-32 characters of a hash of the first packet's time and the
            four-tuple (the same capture always gives the same uids).
        ts_ns / end_ns / duration_ns: first packet, last packet, their difference.
        ip_version: 4 or 6.
        orig_h, orig_p, resp_h, resp_p: originator and responder address and port.
        orig_by: the rule that chose the originator (:class:`OrigBy`).
        orig_pkts, resp_pkts: packets sent by each side.
        orig_bytes, resp_bytes: TCP payload bytes sent by each side, from IP lengths, counting
            retransmissions (unlike Zeek, which uses sequence numbers).
        conn_state, history: see the module docstring.
        syn_ns: the SYN the handshake completed with (the last one before the SYN/ACK).
        handshake_rtt_ns: SYN -> SYN/ACK -> ACK, as seen at the capture point (the sum of both
            legs, a full round trip wherever the capture was taken); None without a full handshake.
        closed_first, close_kind, first_close_ns: the side that sent the first FIN or RST, which it
            was, and when.
        orig_fin_ns, resp_fin_ns, orig_rst_ns, resp_rst_ns: each side's first FIN and first RST.
        idle_before_close_ns: first FIN minus the last new data (either way) before it; None when
            the first close was a RST or no data preceded the FIN. Keep-alive probes and
            retransmissions are not data.
        half_closed_ns, half_close_end: from the first FIN to the other side's FIN or to a RST from
            either side, else to the connection's last packet (``capture_end``).
        orig_fin_retransmits, resp_fin_retransmits: FIN segments repeating an earlier FIN's
            sequence number.
        orig_retransmits, resp_retransmits: payload segments carrying no new data (not keep-alives).
        orig_keepalives, resp_keepalives: TCP keep-alive probes.
        stale_write_ns: the first new data the originator sent after the responder's FIN
            (a request written into a half-closed connection); stale_writes counts such segments.
        server_name, server_name_source: the responder's name, from TLS SNI, the HTTP Host header,
            or a DNS answer seen earlier in the capture mapping the responder's address to a name.
        file_index, first_frame: where the first packet is (input file, 1-based record number).
    """

    uid: str
    ts_ns: int
    end_ns: int
    duration_ns: int
    ip_version: int
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    orig_by: OrigBy
    orig_pkts: int
    resp_pkts: int
    orig_bytes: int
    resp_bytes: int
    conn_state: ConnState
    history: str
    syn_ns: int | None
    handshake_rtt_ns: int | None
    closed_first: Side | None
    close_kind: CloseKind | None
    first_close_ns: int | None
    orig_fin_ns: int | None
    resp_fin_ns: int | None
    orig_rst_ns: int | None
    resp_rst_ns: int | None
    idle_before_close_ns: int | None
    half_closed_ns: int | None
    half_close_end: HalfCloseEnd | None
    orig_fin_retransmits: int
    resp_fin_retransmits: int
    orig_retransmits: int
    resp_retransmits: int
    orig_keepalives: int
    resp_keepalives: int
    stale_write_ns: int | None
    stale_writes: int
    server_name: str | None
    server_name_source: NameSource | None
    file_index: int
    first_frame: int

    @property
    def server(self) -> str:
        """The server's name when known, else ``address:port`` (``[v6]:port`` for IPv6)."""
        if self.server_name:
            return self.server_name
        return f"[{self.resp_h}]:{self.resp_p}" if self.ip_version == 6 else f"{self.resp_h}:{self.resp_p}"

    def is_server_closed_first(self) -> bool:
        """The responder closed first, with a FIN."""
        return self.closed_first is Side.RESP and self.close_kind is CloseKind.FIN


def format_address(version: int, hi: int, lo: int) -> str:
    """Text form of an address stored as two 64-bit halves (IPv4 stored IPv4-mapped)."""
    if version == 4:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


def _uid(ts: int, oh: str, op: int, rh: str, rp: int) -> str:
    digest = hashlib.blake2b(f"{ts}|{oh}|{op}|{rh}|{rp}".encode(), digest_size=10).digest()
    n = int.from_bytes(digest, "big")
    return "C" + "".join(_B32[(n >> (5 * i)) & 31] for i in range(16))


def _opt(v: int) -> int | None:
    return None if v == NO_TS or v < 0 else v


#: Looks up a name for (responder address, time): from DNS answers seen before that time.
NameLookup = Callable[[str, int], str | None]


def build_connections(
    state: FlowState,
    events: npt.NDArray[np.void],
    first_payloads: Sequence[FirstPayload],
    dns_name: NameLookup | None = None,
) -> list[Connection]:
    """Turn the flow table's counters and events into records, ordered by first packet."""
    n = state.n
    ev_flow = events["flow"]
    bounds = np.searchsorted(ev_flow, np.arange(n + 1))
    e_pos = events["pos"].tolist()
    e_ts = events["ts"].tolist()
    e_dir = events["dir"].tolist()
    e_flags = events["flags"].tolist()
    e_seq = events["seq"].tolist()
    e_len = events["len"].tolist()
    e_new = events["new"].tolist()
    payloads: dict[tuple[int, int], bytes] = {(p.flow, p.dir): p.data for p in first_payloads}
    addr_cache: dict[tuple[int, int, int], str] = {}

    def addr(v: int, hi: int, lo: int) -> str:
        k = (v, hi, lo)
        s = addr_cache.get(k)
        if s is None:
            s = addr_cache[k] = format_address(v, hi, lo)
        return s

    cols = {
        name: getattr(state, name).tolist()
        for name in (
            "a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port", "ip_version", "first_ts", "last_ts",
            "first_dir", "first_file", "first_frame", "pkts", "bytes", "first_data_ts",
            "first_data_pos", "first_ack_ts", "first_pure_ack_pos", "first_pure_ack_ts", "retrans",
            "keepalive", "last_data_before_fin_ts",
        )
    }
    out: list[Connection] = []
    for f in range(n):
        lo_i, hi_i = int(bounds[f]), int(bounds[f + 1])
        idx = range(lo_i, hi_i)
        version = cols["ip_version"][f]
        ends = [
            (addr(version, cols["a_hi"][f], cols["a_lo"][f]), cols["a_port"][f]),
            (addr(version, cols["b_hi"][f], cols["b_lo"][f]), cols["b_port"][f]),
        ]
        # originator
        orig_dir = -1
        orig_by = OrigBy.FIRST
        for i in idx:
            fl = e_flags[i]
            if fl & TH_SYN:
                orig_dir = e_dir[i] if not fl & TH_ACK else 1 - e_dir[i]
                orig_by = OrigBy.SYN if not fl & TH_ACK else OrigBy.SYNACK
                if not fl & TH_ACK:
                    break
        if orig_dir < 0:
            pa, pb = ends[0][1], ends[1][1]
            if pa != pb:
                orig_dir = 0 if pa > pb else 1
                orig_by = OrigBy.PORT
            else:
                orig_dir = cols["first_dir"][f]
        od, rd = orig_dir, 1 - orig_dir

        syn_ns: int | None = None
        synack_ns: int | None = None
        saw_syn = False
        fin_ns: list[int | None] = [None, None]
        rst_ns: list[int | None] = [None, None]
        fin_seqs: list[set[int]] = [set(), set()]
        fin_retx = [0, 0]
        first_close: tuple[int, int, CloseKind] | None = None  # ts, dir, kind
        stale_ns: int | None = None
        stale_n = 0
        hist: list[tuple[int, str]] = []
        resp_fin_pos: int | None = None
        orig_fin_pos: int | None = None
        after_peer_fin_data = [False, False]
        for i in idx:
            fl, d, ts, pos = e_flags[i], e_dir[i], e_ts[i], e_pos[i]
            upper = d == od
            if fl & TH_SYN:
                if fl & TH_ACK:
                    if d == rd and synack_ns is None:
                        synack_ns = ts
                        hist.append((pos, "h"))
                elif d == od:
                    saw_syn = True
                    if synack_ns is None:
                        syn_ns = ts
                    if not any(c == "S" for _, c in hist):
                        hist.append((pos, "S"))
            if fl & TH_FIN:
                if fin_ns[d] is None:
                    fin_ns[d] = ts
                    if d == rd:
                        resp_fin_pos = pos
                    else:
                        orig_fin_pos = pos
                if e_seq[i] + e_len[i] in fin_seqs[d]:
                    fin_retx[d] += 1
                    hist.append((pos, "T" if upper else "t"))
                else:
                    fin_seqs[d].add(e_seq[i] + e_len[i])
                    hist.append((pos, "F" if upper else "f"))
                if first_close is None:
                    first_close = (ts, d, CloseKind.FIN)
            if fl & TH_RST:
                if rst_ns[d] is None:
                    rst_ns[d] = ts
                hist.append((pos, "R" if upper else "r"))
                if first_close is None:
                    first_close = (ts, d, CloseKind.RST)
            if e_len[i] > 0 and e_new[i]:
                peer_fin = resp_fin_pos if d == od else orig_fin_pos
                if peer_fin is not None and pos > peer_fin:
                    if not after_peer_fin_data[d]:
                        after_peer_fin_data[d] = True
                        hist.append((pos, "D" if upper else "d"))
                    if d == od:
                        stale_n += 1
                        if stale_ns is None:
                            stale_ns = ts
        for d in (0, 1):
            upper = d == od
            p = cols["first_pure_ack_pos"][f][d]
            if p != NO_TS:
                hist.append((p, "A" if upper else "a"))
            p = cols["first_data_pos"][f][d]
            if p != NO_TS:
                hist.append((p, "D" if upper else "d"))
        hist.sort(key=lambda x: x[0])
        history = "".join(c for _, c in hist)

        # handshake
        rtt: int | None = None
        ack_ns = cols["first_ack_ts"][f][od]
        if syn_ns is not None and synack_ns is not None and saw_syn and synack_ns <= ack_ns != NO_TS:
            rtt = ack_ns - syn_ns

        # state
        has_rst = rst_ns[0] is not None or rst_ns[1] is not None
        first_rst_dir: int | None = None
        if has_rst:
            candidates = [(t, d) for d, t in enumerate(rst_ns) if t is not None]
            first_rst_dir = min(candidates)[1]
        if not saw_syn and synack_ns is None:
            state_code = ConnState.OTH
        elif saw_syn and synack_ns is None:
            if rst_ns[od] is not None:
                state_code = ConnState.RSTOS0
            elif fin_ns[od] is not None:
                state_code = ConnState.SH
            elif rst_ns[rd] is not None:
                state_code = ConnState.REJ
            else:
                state_code = ConnState.S0
        elif not saw_syn:
            if rst_ns[rd] is not None:
                state_code = ConnState.RSTRH
            elif fin_ns[rd] is not None:
                state_code = ConnState.SHR
            else:
                state_code = ConnState.OTH
        elif has_rst:
            state_code = ConnState.RSTO if first_rst_dir == od else ConnState.RSTR
        elif fin_ns[od] is not None and fin_ns[rd] is not None:
            state_code = ConnState.SF
        elif fin_ns[od] is not None:
            state_code = ConnState.S2
        elif fin_ns[rd] is not None:
            state_code = ConnState.S3
        else:
            state_code = ConnState.S1

        # closing
        closed_first: Side | None = None
        close_kind: CloseKind | None = None
        first_close_ns: int | None = None
        idle: int | None = None
        half: int | None = None
        half_end: HalfCloseEnd | None = None
        last_ts = cols["last_ts"][f]
        if first_close is not None:
            first_close_ns, cdir, close_kind = first_close
            closed_first = Side.ORIG if cdir == od else Side.RESP
            if close_kind is CloseKind.FIN:
                ld = cols["last_data_before_fin_ts"][f]
                idle = first_close_ns - ld if ld >= 0 else None
                other_fin = fin_ns[1 - cdir]
                rsts = [t for t in rst_ns if t is not None and t >= first_close_ns]
                ends_at = [(t, HalfCloseEnd.FIN) for t in [other_fin] if t is not None]
                ends_at += [(t, HalfCloseEnd.RST) for t in rsts]
                if ends_at:
                    t_end, half_end = min(ends_at)
                else:
                    t_end, half_end = last_ts, HalfCloseEnd.CAPTURE_END
                half = t_end - first_close_ns

        oh, op = ends[od]
        rh, rp = ends[rd]
        first_ts = cols["first_ts"][f]
        name: str | None = None
        source: NameSource | None = None
        data = payloads.get((f, od))
        if data is not None:
            found = name_from_payload(data)
            if found is not None:
                name, source = found
        if name is None and dns_name is not None:
            name = dns_name(rh, first_ts)
            if name is not None:
                source = NameSource.DNS
        out.append(
            Connection(
                uid=_uid(first_ts, oh, op, rh, rp),
                ts_ns=first_ts,
                end_ns=last_ts,
                duration_ns=last_ts - first_ts,
                ip_version=version,
                orig_h=oh,
                orig_p=op,
                resp_h=rh,
                resp_p=rp,
                orig_by=orig_by,
                orig_pkts=cols["pkts"][f][od],
                resp_pkts=cols["pkts"][f][rd],
                orig_bytes=cols["bytes"][f][od],
                resp_bytes=cols["bytes"][f][rd],
                conn_state=state_code,
                history=history,
                syn_ns=syn_ns if saw_syn else None,
                handshake_rtt_ns=rtt,
                closed_first=closed_first,
                close_kind=close_kind,
                first_close_ns=first_close_ns,
                orig_fin_ns=fin_ns[od],
                resp_fin_ns=fin_ns[rd],
                orig_rst_ns=rst_ns[od],
                resp_rst_ns=rst_ns[rd],
                idle_before_close_ns=idle,
                half_closed_ns=half,
                half_close_end=half_end,
                orig_fin_retransmits=fin_retx[od],
                resp_fin_retransmits=fin_retx[rd],
                orig_retransmits=cols["retrans"][f][od],
                resp_retransmits=cols["retrans"][f][rd],
                orig_keepalives=cols["keepalive"][f][od],
                resp_keepalives=cols["keepalive"][f][rd],
                stale_write_ns=stale_ns,
                stale_writes=stale_n,
                server_name=name,
                server_name_source=source,
                file_index=cols["first_file"][f],
                first_frame=cols["first_frame"][f],
            )
        )
    out.sort(key=lambda c: (c.ts_ns, c.file_index, c.first_frame))
    return out
