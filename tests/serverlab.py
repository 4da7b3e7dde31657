"""A lab with its servers and capture running but no app: the server tests drive it with serverprobe.py."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from halfclose.lab import runner
from halfclose.lab.config import LabConfig, validate
from halfclose.lab.tls import Endpoint
from halfclose.lab.topology import Topology, build, plan_addresses
from halfclose.netns import Claim

PROBE = Path(__file__).with_name("serverprobe.py")


@dataclass
class ServerLab:
    topo: Topology
    endpoint: Endpoint
    pcap: Path
    run_dir: Path
    work: Path

    def probe(self, *args: str, uid: int = 10400, keylog: Path | None = None) -> subprocess.Popen[str]:
        """Start serverprobe.py in the phone namespace as *uid* (it prints its JSON when done)."""
        argv = ["ip", "netns", "exec", self.topo.phone, "setpriv", "--reuid", str(uid), "--regid", str(uid),
                "--clear-groups", "--", sys.executable, str(self.work / PROBE.name), "--host", self.endpoint.host,
                "--port", str(self.endpoint.port), *args]
        if self.endpoint.ca_cert is not None:
            argv += ["--ca", str(self.endpoint.ca_cert)]
        if keylog is not None:
            argv += ["--keylog", str(keylog)]
        if self.endpoint.http2:
            argv.append("--http2")
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


@contextlib.contextmanager
def server_lab(config: LabConfig, run_dir: Path) -> Iterator[ServerLab]:
    """Namespaces, the DNS and HTTP servers of *config*, tcpdump on the phone; all gone on exit."""
    validate(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    with Claim() as claim, contextlib.ExitStack() as stack:
        work = claim.add_path(Path("/run/halfclose") / f"{claim.run_id}-work")
        work.mkdir(parents=True)
        keylogs = work / "keylog"
        keylogs.mkdir(mode=0o777)
        keylogs.chmod(0o777)
        # The app uid cannot read a checkout under /root: it runs a copy of the probe.
        shutil.copy(PROBE, work / PROBE.name)
        (work / PROBE.name).chmod(0o644)
        topo = build(claim, plan_addresses(claim.run_id))
        runner._link(config, topo, stack)
        endpoint = runner._start_servers(config, topo, work, stack, run_dir=run_dir)
        pcap = run_dir / "phone.pcap"
        runner._start_capture(topo, pcap, stack)
        yield ServerLab(topo=topo, endpoint=endpoint, pcap=pcap, run_dir=run_dir, work=work)


@dataclass
class ServerSide:
    """What tshark shows of one TCP stream of a lab server (decrypted with the probe's keys)."""

    stream: int
    #: Server -> client payload segments' times.
    payload: list[float] = field(default_factory=list)
    #: The server's closing signals in order: ("GOAWAY" | "close_notify" | "FIN" | "RST", time).
    closing: list[tuple[str, float]] = field(default_factory=list)
    client_fin: float | None = None
    client_payload_after_close: int = 0
    sni: str = ""
    client_alpn: str = ""
    server_alpn: str = ""
    #: The version the ServerHello selected ("0x0304" for TLS 1.3, "0x0303" for 1.2).
    server_version: str = ""
    cert_names: list[str] = field(default_factory=list)
    http2_frames: list[str] = field(default_factory=list)
    h1_responses: list[str] = field(default_factory=list)
    response_headers: list[str] = field(default_factory=list)

    #: When the client first wrote after the server's first closing signal (a stale request).
    client_stale: float | None = None

    def first_close(self) -> float:
        return self.closing[0][1]

    def close_kinds(self) -> list[str]:
        """The server's closing signals on its own, in order, each once: before the client did
        anything after the server's first one (wrote a stale request, or closed)."""
        first = self.first_close()
        after = [t for t in (self.client_stale, self.client_fin) if t is not None and t > first]
        acted = min(after, default=float("inf"))
        return _unique(k for k, t in self.closing if t < acted)

    def stale_reaction(self) -> list[str]:
        """The server's closing signals after the client's stale request ("RST", "FIN", ...)."""
        return _unique(k for k, t in self.closing if self.client_stale is not None and t >= self.client_stale)

    def idle_before_close(self) -> float:
        """From the last response byte to the server's first closing signal, seconds."""
        start = self.first_close()
        return start - max(t for t in self.payload if t < start)

    def at(self, kind: str) -> float:
        return next(t for k, t in self.closing if k == kind)


def _unique(kinds: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for kind in kinds:
        if kind not in seen:
            seen.append(kind)
    return seen


def _values(cell: str) -> list[str]:
    return [v for v in cell.split(";") if v]


def server_sides(pcap: Path, port: int, *, keylog: Path | None = None, h2c: bool = False) -> dict[int, ServerSide]:
    """Per TCP stream on *port*: the server's payload, closing signals, TLS handshake and HTTP versions."""
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
            "-E", "aggregator=;", "-Y", f"tcp.port == {port}"]
    if keylog is not None:
        argv += ["-o", f"tls.keylog_file:{keylog}"]
    if h2c:
        argv += ["-d", f"tcp.port=={port},http2"]
    names = ["tcp.stream", "frame.time_epoch", "tcp.srcport", "tcp.len", "tcp.flags.fin", "tcp.flags.reset",
             "tls.handshake.type", "tls.handshake.extensions_server_name", "tls.handshake.extensions_alpn_str",
             "tls.handshake.extensions.supported_version", "tls.handshake.version", "x509ce.dNSName",
             "http2.type", "tls.alert_message.desc", "http.response.version", "http.response.line",
             "http2.header.name", "http2.header.value"]
    for name in names:
        argv += ["-e", name]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    sides: dict[int, ServerSide] = {}
    for line in out.splitlines():
        cells = dict(zip(names, line.split("\t"), strict=False))
        stream = int(cells["tcp.stream"])
        side = sides.setdefault(stream, ServerSide(stream=stream))
        t = float(cells["frame.time_epoch"])
        from_server = int(cells["tcp.srcport"]) == port
        length = int(cells["tcp.len"] or 0)
        handshakes = _values(cells["tls.handshake.type"])
        if not from_server:
            if "1" in handshakes:
                side.sni = cells["tls.handshake.extensions_server_name"]
                side.client_alpn = cells["tls.handshake.extensions_alpn_str"]
            if cells["tcp.flags.fin"] in ("1", "True") and side.client_fin is None:
                side.client_fin = t
            if length and side.closing:
                side.client_payload_after_close += 1
                if side.client_stale is None:
                    side.client_stale = t
            continue
        if "2" in handshakes:
            side.server_alpn = cells["tls.handshake.extensions_alpn_str"]
            versions = _values(cells["tls.handshake.extensions.supported_version"])
            side.server_version = versions[0] if versions else _values(cells["tls.handshake.version"])[0]
        side.cert_names += _values(cells["x509ce.dNSName"])
        frames = _values(cells["http2.type"])
        side.http2_frames += frames
        side.h1_responses += _values(cells["http.response.version"])
        side.response_headers += [h.replace("\\r\\n", "").strip() for h in _values(cells["http.response.line"])]
        side.response_headers += [f"{n}: {v}" for n, v in zip(_values(cells["http2.header.name"]),
                                                               _values(cells["http2.header.value"]), strict=False)]
        if "7" in frames:
            side.closing.append(("GOAWAY", t))
        if "0" in _values(cells["tls.alert_message.desc"]):
            side.closing.append(("close_notify", t))
        if cells["tcp.flags.fin"] in ("1", "True"):
            side.closing.append(("FIN", t))
        if cells["tcp.flags.reset"] in ("1", "True"):
            side.closing.append(("RST", t))
        if length and not side.closing:
            side.payload.append(t)
    return sides
