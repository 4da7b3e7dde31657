"""Which of a lab capture's connections carried data in their SYN (TCP Fast Open).

The analysis records no SYN payload, so this reads the capture once more, for SYNs (without ACK)
whose transport payload is not empty. Returned per client port, with the SYN's time, for
:func:`halfclose.lab.figures.setup_delays_ns`: a request that rode in the SYN was on the wire when
the SYN left, not a round trip later.
"""

from __future__ import annotations

from pathlib import Path

from halfclose.capture import open_captures

__all__ = ["count_syn_data", "syn_data_by_port"]

_SYN, _ACK = 0x02, 0x10


def syn_data_by_port(pcap: Path) -> dict[int, list[int]]:
    """Client port -> times (ns) of the SYNs from that port that carried payload."""
    out: dict[int, list[int]] = {}
    with open_captures([pcap]) as reader:
        for batch in reader:
            flags = batch.tcp_flags
            hit = (batch.proto == 6) & ((flags & (_SYN | _ACK)) == _SYN) & (batch.payload_len > 0)
            for port, ts in zip(batch.sport[hit].tolist(), batch.ts_ns[hit].tolist(), strict=True):
                out.setdefault(int(port), []).append(int(ts))
    return out


def count_syn_data(pcap: Path) -> int:
    """SYNs that carried payload, in the whole capture."""
    return sum(len(v) for v in syn_data_by_port(pcap).values())
