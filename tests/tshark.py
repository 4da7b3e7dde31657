"""tshark as the independent oracle of what is on the wire (used by the tests, never by halfclose)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def fields(pcap: Path, names: list[str], display_filter: str = "", *, keylog: Path | None = None) -> list[list[str]]:
    """Rows of the given tshark fields for the packets matching *display_filter* (TLS decrypted
    with the NSS key log *keylog* when given)."""
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t"]
    if keylog is not None:
        argv += ["-o", f"tls.keylog_file:{keylog}"]
    if display_filter:
        argv += ["-Y", display_filter]
    for name in names:
        argv += ["-e", name]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


@dataclass
class StreamView:
    """What tshark shows of one TCP stream, from the client's side (server on *port*)."""

    stream: int
    server_fin: float | None = None
    client_fin: float | None = None
    client_data_after_server_fin: int = 0
    server_rst_after_stale_data: bool = False
    server_fins: int = 0
    server_rsts: list[float] = field(default_factory=list)
    client_rsts: list[float] = field(default_factory=list)
    syn: float | None = None


def streams(pcap: Path, port: int = 80) -> dict[int, StreamView]:
    """Per-stream view: server FIN time, client payload after it, RSTs, FIN count."""
    rows = fields(
        pcap,
        ["tcp.stream", "frame.time_epoch", "tcp.srcport", "tcp.dstport", "tcp.len",
         "tcp.flags.fin", "tcp.flags.reset", "tcp.flags.syn", "tcp.flags.ack"],
        "tcp",
    )
    views: dict[int, StreamView] = {}
    for stream_s, time_s, sport, dport, length, fin, rst, syn, ack in rows:
        stream = int(stream_s)
        view = views.setdefault(stream, StreamView(stream=stream))
        t = float(time_s)
        from_server = int(sport) == port
        is_fin = fin in ("1", "True")
        is_rst = rst in ("1", "True")
        if syn in ("1", "True") and ack not in ("1", "True"):
            view.syn = t
        if from_server:
            if is_fin:
                view.server_fins += 1
                if view.server_fin is None:
                    view.server_fin = t
            if is_rst:
                view.server_rsts.append(t)
                if view.client_data_after_server_fin:
                    view.server_rst_after_stale_data = True
        elif int(dport) == port:
            if int(length or 0) > 0 and view.server_fin is not None and t > view.server_fin:
                view.client_data_after_server_fin += 1
            if is_fin and view.client_fin is None:
                view.client_fin = t
            if is_rst:
                view.client_rsts.append(t)
    return views


def dns_queries(pcap: Path) -> int:
    return len(fields(pcap, ["frame.number"], "dns && dns.flags.response == 0"))


def handshake_rtts_ms(pcap: Path) -> list[float]:
    """tshark's initial RTT (SYN -> ACK of the handshake, seen here) of each TCP stream, in ms."""
    rows = fields(pcap, ["tcp.stream", "tcp.analysis.initial_rtt"], "tcp.analysis.initial_rtt")
    per_stream: dict[str, float] = {}
    for stream, value in rows:
        per_stream.setdefault(stream, float(value) * 1000)
    return list(per_stream.values())
