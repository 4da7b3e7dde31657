"""Packet columns: what capture reading hands to analysis.

A :class:`PacketBatch` holds the decoded headers of a block of packets as numpy arrays of one
length, one array per field, so that analysis works column-wise and never builds one Python
object per packet. Only IPv4/IPv6 packets carrying TCP or UDP end up in a batch; everything else
is counted by the reader and dropped.

Addresses are 128-bit, split in two ``uint64`` halves (``*_hi`` holds the first 8 bytes in network
order read as a big-endian integer); an IPv4 address is stored IPv4-mapped (``::ffff:a.b.c.d``),
and ``ip_version`` tells the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TH_ACK", "TH_CWR", "TH_ECE", "TH_FIN", "TH_PSH", "TH_RST", "TH_SYN", "TH_URG", "PacketBatch"]

# TCP flag bits as in the header's low byte (RFC 9293 section 3.1).
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80


@dataclass(frozen=True, slots=True, kw_only=True)
class PacketBatch:
    """Decoded headers of ``n`` packets, in capture order (all arrays have length ``n``).

    Fields:
        file_index: index of the input file (int32) in the list given to the reader.
        frame: 1-based record number in its file (int64), as tshark's ``frame.number``.
        ts_ns: capture timestamp, integer nanoseconds since the Unix epoch (int64).
        ip_version: 4 or 6 (uint8).
        proto: IP protocol of the transport header, 6 (TCP) or 17 (UDP) (uint8).
        src_hi, src_lo, dst_hi, dst_lo: addresses as two big-endian uint64 halves each.
        sport, dport: transport ports (uint16).
        tcp_flags: the TCP flags byte (uint8); 0 for UDP.
        seq, ack: TCP sequence and acknowledgement numbers (uint32); 0 for UDP.
        window: TCP window field, unscaled (uint16); 0 for UDP.
        payload_len: transport payload length on the wire, from the IP length fields (uint32),
            not limited by the snap length.
        payload_off: offset of the first captured payload byte in :attr:`data` (int64).
        payload_caplen: how many payload bytes were captured (uint32), at most ``payload_len``.
        fragment: true for an IP fragment other than the first (its transport header is absent;
            such packets are counted, not reassembled) (bool).
        data: the raw bytes the offsets point into (a read-only uint8 array).
    """

    file_index: npt.NDArray[np.int32]
    frame: npt.NDArray[np.int64]
    ts_ns: npt.NDArray[np.int64]
    ip_version: npt.NDArray[np.uint8]
    proto: npt.NDArray[np.uint8]
    src_hi: npt.NDArray[np.uint64]
    src_lo: npt.NDArray[np.uint64]
    dst_hi: npt.NDArray[np.uint64]
    dst_lo: npt.NDArray[np.uint64]
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    tcp_flags: npt.NDArray[np.uint8]
    seq: npt.NDArray[np.uint32]
    ack: npt.NDArray[np.uint32]
    window: npt.NDArray[np.uint16]
    payload_len: npt.NDArray[np.uint32]
    payload_off: npt.NDArray[np.int64]
    payload_caplen: npt.NDArray[np.uint32]
    fragment: npt.NDArray[np.bool_]
    data: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    def payload(self, i: int) -> bytes:
        """The captured payload bytes of packet *i* (may be shorter than ``payload_len``)."""
        start = int(self.payload_off[i])
        return self.data[start : start + int(self.payload_caplen[i])].tobytes()
