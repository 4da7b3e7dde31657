"""Build PacketBatch columns by hand for the analysis tests (no capture file involved)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from halfclose.capture.columns import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketBatch

MS = 1_000_000
S = 1_000_000_000


def _addr(text: str) -> tuple[int, int, int]:
    a = ipaddress.ip_address(text)
    if a.version == 4:
        v = (0xFFFF << 32) | int(a)
        return 4, 0, v
    n = int(a)
    return 6, n >> 64, n & ((1 << 64) - 1)


@dataclass
class Builder:
    rows: list[dict[str, object]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)

    def add(
        self, ts: int, src: tuple[str, int], dst: tuple[str, int], *, proto: int = 6, flags: int = 0,
        seq: int = 0, ack: int = 0, length: int = 0, payload: bytes = b"",
    ) -> None:
        v, shi, slo = _addr(src[0])
        _, dhi, dlo = _addr(dst[0])
        off = len(self.data)
        self.data += payload
        self.rows.append(
            dict(
                ts_ns=ts, ip_version=v, proto=proto, src_hi=shi, src_lo=slo, dst_hi=dhi, dst_lo=dlo,
                sport=src[1], dport=dst[1], tcp_flags=flags, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
                payload_len=max(length, len(payload)), payload_off=off, payload_caplen=len(payload),
                ip_len=max(length, len(payload)) + (20 if v == 4 else 40) + (20 if proto == 6 else 8),
            )
        )

    def tcp(
        self, client: tuple[str, int], server: tuple[str, int], isn_c: int = 1000, isn_s: int = 900_000
    ) -> Tcp:
        return Tcp(self, client, server, isn_c, isn_s)

    def udp(self, ts: int, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        self.add(ts, src, dst, proto=17, payload=payload)

    def batch(self, rows: list[dict[str, object]] | None = None, start: int = 0) -> PacketBatch:
        rows = self.rows if rows is None else rows
        n = len(rows)

        def col(name: str, dtype: type) -> np.ndarray:  # type: ignore[type-arg]
            return np.array([r[name] for r in rows], dtype=dtype)

        data = np.frombuffer(bytes(self.data), dtype=np.uint8)
        return PacketBatch(
            file_index=np.zeros(n, np.int32),
            frame=np.arange(start + 1, start + n + 1, dtype=np.int64),
            ts_ns=col("ts_ns", np.int64),
            ip_version=col("ip_version", np.uint8),
            proto=col("proto", np.uint8),
            src_hi=col("src_hi", np.uint64),
            src_lo=col("src_lo", np.uint64),
            dst_hi=col("dst_hi", np.uint64),
            dst_lo=col("dst_lo", np.uint64),
            sport=col("sport", np.uint16),
            dport=col("dport", np.uint16),
            tcp_flags=col("tcp_flags", np.uint8),
            seq=col("seq", np.uint32),
            ack=col("ack", np.uint32),
            window=np.full(n, 65535, np.uint16),
            payload_len=col("payload_len", np.uint32),
            ip_len=col("ip_len", np.uint32),
            payload_off=col("payload_off", np.int64),
            payload_caplen=col("payload_caplen", np.uint32),
            fragment=np.zeros(n, bool),
            tunnel=np.zeros(n, np.uint8),
            data=data,
        )

    def batches(self, size: int) -> list[PacketBatch]:
        order = sorted(range(len(self.rows)), key=lambda i: self.rows[i]["ts_ns"])  # type: ignore[arg-type,return-value]
        rows = [self.rows[i] for i in order]
        return [self.batch(rows[i : i + size], i) for i in range(0, len(rows), size)]


@dataclass
class Tcp:
    b: Builder
    client: tuple[str, int]
    server: tuple[str, int]
    c_seq: int
    s_seq: int

    def _send(self, ts: int, from_client: bool, flags: int, *, length: int = 0, payload: bytes = b"",
              seq: int | None = None) -> None:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        mine = self.c_seq if from_client else self.s_seq
        theirs = self.s_seq if from_client else self.c_seq
        length = max(length, len(payload))
        self.b.add(ts, src, dst, flags=flags, seq=mine if seq is None else seq, ack=theirs, length=length,
                   payload=payload)
        if seq is None:
            adv = length + (1 if flags & (TH_SYN | TH_FIN) else 0)
            if from_client:
                self.c_seq += adv
            else:
                self.s_seq += adv

    def handshake(self, ts: int, rtt: int = 10 * MS) -> None:
        self._send(ts, True, TH_SYN)
        self._send(ts + rtt // 2, False, TH_SYN | TH_ACK)
        self._send(ts + rtt, True, TH_ACK)

    def syn(self, ts: int, retransmit: bool = False) -> None:
        if retransmit:
            self._send(ts, True, TH_SYN, seq=self.c_seq - 1)
        else:
            self._send(ts, True, TH_SYN)

    def data(self, ts: int, from_client: bool, n: int, payload: bytes = b"") -> None:
        self._send(ts, from_client, TH_ACK | TH_PSH, length=n, payload=payload)

    def ack(self, ts: int, from_client: bool) -> None:
        self._send(ts, from_client, TH_ACK)

    def fin(self, ts: int, from_client: bool) -> None:
        self._send(ts, from_client, TH_FIN | TH_ACK)

    def fin_again(self, ts: int, from_client: bool) -> None:
        mine = self.c_seq if from_client else self.s_seq
        self._send(ts, from_client, TH_FIN | TH_ACK, seq=mine - 1)

    def rst(self, ts: int, from_client: bool) -> None:
        self._send(ts, from_client, TH_RST, seq=self.c_seq if from_client else self.s_seq)

    def keepalive(self, ts: int, from_client: bool, one_byte: bool = False) -> None:
        mine = self.c_seq if from_client else self.s_seq
        if one_byte:
            self._send(ts, from_client, TH_ACK, length=1, seq=mine - 1)
        else:
            self._send(ts, from_client, TH_ACK, seq=mine - 1)

    def retransmit(self, ts: int, from_client: bool, n: int) -> None:
        mine = self.c_seq if from_client else self.s_seq
        self._send(ts, from_client, TH_ACK | TH_PSH, length=n, seq=mine - n)


__all__ = ["MS", "TH_RST", "Builder", "S", "Tcp"]
