"""The SYNs of a capture that carried data (TCP Fast Open), read from a pcap written byte by byte."""

from __future__ import annotations

from pathlib import Path

from capture_bytes import ETH_IPV4, Rec, eth, ipv4, pcap, tcp, udp
from halfclose.lab.syndata import count_syn_data, syn_data_by_port

_GET = b"GET /img.png HTTP/1.1\r\nHost: img.lab.test\r\n\r\n"


def _packet(ts_ns: int, segment: bytes, *, proto: int = 6, reply: bool = False) -> Rec:
    src, dst = ("198.18.0.2", "198.18.0.1") if reply else ("198.18.0.1", "198.18.0.2")
    return Rec(ts_ns=ts_ns, data=eth(ETH_IPV4, ipv4(proto, segment, src=src, dst=dst)))


def test_only_syns_without_ack_that_carry_payload_count(tmp_path: Path) -> None:
    t = 1_700_000_000_000_000_000
    records = [
        _packet(t, tcp(40001, 80, flags=0x02, payload=_GET)),  # Fast Open: the GET in the SYN
        _packet(t + 50_000_000, tcp(80, 40001, flags=0x12, ack=1001 + len(_GET), payload=b"HTTP/1.1 200"),
                reply=True),  # a SYN/ACK with data is the server's, not counted
        _packet(t + 100_000_000, tcp(40002, 80, flags=0x02)),  # a plain SYN
        _packet(t + 200_000_000, tcp(40002, 80, flags=0x18, payload=_GET)),  # data after the handshake
        _packet(t + 300_000_000, udp(40003, 53, b"\x00" * 20), proto=17),
        _packet(t + 400_000_000, tcp(40001, 80, flags=0x02, payload=_GET)),  # the same port again, later
    ]
    path = tmp_path / "syn.pcap"
    path.write_bytes(pcap(records))
    assert syn_data_by_port(path) == {40001: [t, t + 400_000_000]}
    assert count_syn_data(path) == 2
