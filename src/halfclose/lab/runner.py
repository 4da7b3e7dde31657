"""Running one lab: namespaces, servers, capture, the app as an app uid, clean-up whatever happens.

This is the adapter around the lab's pure parts (:mod:`~halfclose.lab.config`,
:mod:`~halfclose.lab.summary`): it starts processes and always stops them. Clean-up happens on
normal exit, on an exception, on SIGINT and on SIGTERM (turned into :class:`KeyboardInterrupt`);
after SIGKILL, ``halfclose lab clean`` removes what is left (see :mod:`halfclose.netns`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import halfclose
from halfclose.analysis import Analysis, analyze
from halfclose.errors import EnvironmentProblem
from halfclose.lab import delay
from halfclose.lab.app import RequestRecord
from halfclose.lab.config import DnsKind, Fix, LabConfig, ServerKind, validate
from halfclose.lab.figures import WireFigures, setup_delays_ns, wire_figures
from halfclose.lab.servers import DnsAnswers, dnsmasq_argv, lab_image, nginx_config
from halfclose.lab.summary import LabSummary, summarize
from halfclose.lab.syndata import syn_data_by_port
from halfclose.lab.topology import Topology, bridge_link, build, plan_addresses
from halfclose.netns import Claim
from halfclose.proc import require_program, require_root, run, spawn

__all__ = ["LabResult", "run_lab"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LabResult:
    """What one lab run produced."""

    run_id: str
    config: LabConfig
    run_dir: Path
    pcap: Path
    records: tuple[RequestRecord, ...]
    summary: LabSummary
    server_address: str
    phone_address: str
    #: The RTT asked for next to the one the capture's TCP handshakes show.
    link: delay.LinkReport
    #: What the capture shows, from halfclose's analysis of it.
    wire: WireFigures
    #: The analysis itself (connections, findings, DNS), for reports.
    analysis: Analysis

    def waits_ns(self) -> dict[int, int]:
        """Request index -> time it waited for a live connection (see figures.setup_delays_ns)."""
        return setup_delays_ns(self.records, self.analysis, syn_data=syn_data_by_port(self.pcap))

    def to_json(self) -> dict[str, object]:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}
        return {
            "run_id": self.run_id,
            "config": config,
            "pcap": str(self.pcap),
            "server_address": self.server_address,
            "phone_address": self.phone_address,
            "summary": asdict(self.summary),
            "link": asdict(self.link),
            "wire": asdict(self.wire),
            "waits_ns": {str(k): v for k, v in self.waits_ns().items()},
            "requests": [asdict(r) for r in self.records],
        }


class _Tail:
    """Drains a process's stderr in a thread, keeping the last lines for messages and readiness."""

    def __init__(self, proc: subprocess.Popen[bytes], what: str) -> None:
        self.proc = proc
        self.what = what
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()

    def seen(self, marker: str) -> bool:
        """A line equal to *marker*, or containing it when it ends with "...", was written."""
        if marker.endswith("..."):
            return any(marker[:-3] in line for line in list(self.lines))
        return any(line.strip() == marker for line in list(self.lines))

    def wait_ready(self, marker: str, timeout: float) -> None:
        """Block until *marker* is seen (see :meth:`seen`); raise if the process dies or times out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.seen(marker):
                if self.proc.poll() is not None:
                    self._changed.wait(0.2)
                    raise EnvironmentProblem(f"{self.what} did not start: {self.last_line()}")
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"{self.what} did not start within {timeout:g} s: {self.last_line()}")
                self._changed.wait(0.05)

    def last_line(self) -> str:
        lines = [line for line in list(self.lines) if line.strip()]
        return lines[-1] if lines else "no message"


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the lab runs, so clean-up code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _copy_package(dest: Path) -> Path:
    """Copy the halfclose package where an app uid can read it (not under /root)."""
    source = Path(halfclose.__file__).parent
    shutil.copytree(source, dest / "halfclose", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _app_argv(config: LabConfig, python: str, pythonpath: Path, *extra: str) -> list[str]:
    uid = str(config.uid)
    return [
        "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--",
        "env", f"PYTHONPATH={pythonpath}", "PYTHONDONTWRITEBYTECODE=1", python, *extra,
    ]


def _check_app_python(config: LabConfig, topo: Topology, python: str, pythonpath: Path) -> None:
    modules = {"reuse": "http.client", "urllib3": "urllib3", "requests": "requests", "httpx": "httpx",
               "guard-requests": "halfclose.client", "guard-httpx": "halfclose.client",
               "aiohttp": "aiohttp", "guard-aiohttp": "aiohttp, halfclose.client"}[config.client.value]
    argv = _app_argv(config, python, pythonpath, "-c", f"import {modules}, halfclose.lab.app")
    done = run(argv, netns=topo.phone, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EnvironmentProblem(
            f"the app cannot run as uid {config.uid} with {python}: {last} "
            "(use the interpreter of a virtual environment outside /root, e.g. ./scripts/setup's)"
        )


def _start_servers(
    config: LabConfig, topo: Topology, run_dir: Path, stack: contextlib.ExitStack
) -> None:
    addrs = topo.addresses
    listen = [str(addrs.server_v4), str(addrs.server_v6)]
    answers = DnsAnswers(
        name=config.hostname,
        ttl=config.dns_ttl_s,
        a=() if config.ipv6 else (str(addrs.server_v4),),
        aaaa=(str(addrs.server_v6),) if config.ipv6 else (),
    )
    python = sys.executable
    if config.tfo:  # per namespace: 0x1 client, 0x2 server
        run(["sysctl", "-qw", "net.ipv4.tcp_fastopen=3"], netns=topo.server)
    if config.drop_syn_data:  # a SYN without data is at most 72 bytes over IPv4, 92 over IPv6 (with a cookie)
        for tool, least in (("iptables", "100"), ("ip6tables", "120")):
            run([tool, "-A", "INPUT", "-p", "tcp", "--syn", "-m", "length", "--length", f"{least}:65535", "-j", "DROP"],
                netns=topo.server)
    if config.dns is DnsKind.DNSMASQ:
        require_program("dnsmasq")
        dns_argv = dnsmasq_argv(listen=listen, answers=answers, pid_file=run_dir / "dnsmasq.pid")
        dns_marker = ""
    else:
        dns_argv = [python, "-m", "halfclose.lab.servers", "dns", "--name", answers.name, "--ttl", str(answers.ttl)]
        dns_argv += [a for addr in listen for a in ("--listen", addr)]
        dns_argv += [a for ip in answers.a for a in ("--a", ip)] + [a for ip in answers.aaaa for a in ("--aaaa", ip)]
        dns_marker = "ready"
    tail = _launch(dns_argv, topo.server, f"the DNS server ({config.dns.value})", dns_marker, stack)
    _wait_listening(topo, 53, tail, ss_flags="-Hlun" if config.dns is DnsKind.BUILTIN else "-Htln")

    if config.server is ServerKind.NGINX:
        require_program("nginx")
        root = run_dir / "www"
        root.mkdir()
        (root / "img.png").write_bytes(lab_image())
        conf = run_dir / "nginx.conf"
        conf.write_text(nginx_config(root=root, run_dir=run_dir, listen=listen, port=config.http_port,
                                     idle_timeout_s=config.idle_timeout_s, fast_open=config.tfo))
        # nginx says nothing when it starts; `-t` first turns a bad config or a busy port into a message.
        run(["nginx", "-t", "-q", "-c", str(conf)], netns=topo.server, check=False)
        http_argv = ["nginx", "-c", str(conf)]
        proc = spawn(http_argv, netns=topo.server)
        stack.callback(_stop, proc, signal.SIGQUIT)
        _wait_listening(topo, config.http_port, _Tail(proc, "nginx"))
    else:
        http_argv = [python, "-m", "halfclose.lab.servers", "http", "--port", str(config.http_port),
                     "--idle-timeout", str(config.idle_timeout_s)]
        http_argv += [a for addr in listen for a in ("--listen", addr)]
        http_argv += ["--race"] if config.race else []
        http_argv += ["--keepalive-header"] if config.keepalive_header else []
        http_argv += ["--fast-open"] if config.tfo else []
        _launch(http_argv, topo.server, "the HTTP server (builtin)", "ready", stack)


def _launch(argv: list[str], netns: str, what: str, marker: str, stack: contextlib.ExitStack) -> _Tail:
    proc = spawn(argv, netns=netns)
    stack.callback(_stop, proc)
    tail = _Tail(proc, what)
    if marker:
        tail.wait_ready(marker, timeout=15)
    return tail


def _wait_listening(
    topo: Topology, port: int, tail: _Tail, *, ss_flags: str = "-Htln", timeout: float = 10
) -> None:
    """Wait until a server in the server namespace listens on *port* (programs that say nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tail.proc.poll() is not None:
            time.sleep(0.1)
            raise EnvironmentProblem(f"{tail.what} did not start: {tail.last_line()}")
        out = run(["ss", ss_flags, f"sport = :{port}"], netns=topo.server).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise EnvironmentProblem(f"{tail.what} did not listen on port {port} within {timeout:g} s: {tail.last_line()}")


def _start_capture(
    topo: Topology, pcap: Path, stack: contextlib.ExitStack, *, any_interface: bool = False
) -> subprocess.Popen[bytes]:
    require_program("tcpdump")
    # Full packets: DNS answers and IPv6 headers must survive. --immediate-mode hands each packet over
    # at once (not a ring-buffer block at a time) and -U writes it at once, so stopping loses nothing.
    interface = "any" if any_interface else topo.phone_if
    argv = ["tcpdump", "-i", interface, "-s", "0", "-U", "--immediate-mode", "-n", "-Z", "root", "-w", str(pcap)]
    proc = spawn(argv, netns=topo.phone)
    tail = _Tail(proc, "tcpdump")
    tail.wait_ready("listening on...", timeout=15)
    stack.callback(_stop, proc, signal.SIGINT)
    return proc


def _apply_fix(config: LabConfig, topo: Topology, stack: contextlib.ExitStack) -> None:
    if config.fix is Fix.NONE:
        return
    if config.fix is Fix.RULES:
        from halfclose.netfilter import Backend, Policy, Strategy, installed

        policy = Policy(uids=(config.uid,), ports=(config.http_port,), strategy=Strategy.REJECT)
        stack.enter_context(installed(policy, backend=Backend.AUTO, netns=topo.phone))
    elif config.fix is Fix.REAP:
        argv = [sys.executable, "-m", "halfclose", "reap", "--uid", str(config.uid), "--port", str(config.http_port)]
        _launch(argv, topo.phone, "the reaper", "reap: ready...", stack)


def _link(config: LabConfig, topo: Topology, stack: contextlib.ExitStack) -> delay.Link | None:
    if config.rtt_ms <= 0:
        bridge_link(topo)
        delay.wait_up(topo.link, ["br0", topo.link_phone_if, topo.link_server_if])
        return None
    return stack.enter_context(delay.link(topo, rtt_ms=config.rtt_ms, jitter_ms=config.jitter_ms,
                                          loss_pct=config.loss_pct, seed=config.seed))


def _run_app(
    config: LabConfig, topo: Topology, python: str, pythonpath: Path, on_record: Callable[[RequestRecord], None]
) -> list[RequestRecord]:
    argv = _app_argv(config, python, pythonpath, "-m", "halfclose.lab.app", "--client", config.client.value,
                     "--host", config.hostname, "--port", str(config.http_port),
                     "--requests", str(config.requests), "--gap", str(config.gap_s))
    proc = spawn(argv, netns=topo.phone, stdout=subprocess.PIPE)
    records: list[RequestRecord] = []
    try:
        assert proc.stdout is not None
        budget = config.requests * (config.gap_s + 30) + 30
        deadline = time.monotonic() + budget
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        buffer = b""
        while True:
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"the app did not finish within {budget:g} s")
            if not selector.select(0.2):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                record = RequestRecord(**json.loads(line))
                records.append(record)
                on_record(record)
        status = proc.wait(10)
        if status != 0:
            assert proc.stderr is not None
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise EnvironmentProblem(f"the app failed (status {status}): {err[-1] if err else 'no message'}")
    finally:
        _stop(proc)
    return records


def _required_programs(config: LabConfig) -> list[str]:
    programs = ["ip", "ss", "ethtool", "setpriv", "tcpdump"]
    programs += ["nginx"] if config.server is ServerKind.NGINX else []
    programs += ["dnsmasq"] if config.dns is DnsKind.DNSMASQ else []
    return programs


def run_lab(
    config: LabConfig,
    *,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_ready: Callable[[str, Topology], None] | None = None,
) -> LabResult:
    """Run the lab described by *config* and return what happened.

    Raises:
        UsageError: a configuration value is unusable.
        EnvironmentProblem: not root, a program missing, a server that cannot start.
        KeyboardInterrupt: SIGINT or SIGTERM; everything was cleaned up first.

    *on_ready* is called with the run id and the topology once everything runs, before the app
    starts; *on_record* with each request's record as the app reports it.
    """
    validate(config)
    require_root("the lab")
    for program in _required_programs(config):
        require_program(program)
    python = sys.executable
    created: Path | None = None
    pcap_is_new = config.pcap is not None and not config.pcap.exists()
    try:
        with _terminate_as_interrupt(), Claim() as claim, contextlib.ExitStack() as stack:
            run_dir = config.out_dir or Path("halfclose-lab") / f"{time.strftime('%Y%m%d-%H%M%S')}-{claim.run_id}"
            run_dir = run_dir.absolute()
            if not run_dir.exists():
                created = run_dir
            run_dir.mkdir(parents=True, exist_ok=True)
            return _run_in(config, claim=claim, stack=stack, run_dir=run_dir, python=python,
                           on_record=on_record, on_ready=on_ready)
    except BaseException:
        # A failed or interrupted run leaves no half-filled run folder behind.
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if pcap_is_new and config.pcap is not None:
            config.pcap.unlink(missing_ok=True)
        raise


def _run_in(
    config: LabConfig,
    *,
    claim: Claim,
    stack: contextlib.ExitStack,
    run_dir: Path,
    python: str,
    on_record: Callable[[RequestRecord], None] | None,
    on_ready: Callable[[str, Topology], None] | None,
) -> LabResult:
    """The body of a run, inside its claim and exit stack (see :func:`run_lab`)."""
    pcap = (config.pcap or run_dir / "phone.pcap").absolute()
    work = claim.add_path(Path("/run/halfclose") / f"{claim.run_id}-work")
    work.mkdir(parents=True)
    pythonpath = _copy_package(work / "py")
    topo = build(claim, plan_addresses(claim.run_id))
    joined = _link(config, topo, stack)
    _start_servers(config, topo, work, stack)
    _check_app_python(config, topo, python, pythonpath)
    _apply_fix(config, topo, stack)
    _start_capture(topo, pcap, stack, any_interface=config.capture_any)
    if on_ready is not None:
        on_ready(claim.run_id, topo)
    records = _run_app(config, topo, python, pythonpath, on_record or (lambda record: None))
    time.sleep(config.linger_s)
    stack.close()
    analysis = analyze([pcap])
    rtts = [c.handshake_rtt_ns for c in analysis.connections if c.handshake_rtt_ns is not None]
    link_report = delay.link_report(joined, rtts, rtt_ms=config.rtt_ms, jitter_ms=config.jitter_ms,
                                    loss_pct=config.loss_pct, seed=config.seed)
    result = LabResult(
        run_id=claim.run_id,
        config=config,
        run_dir=run_dir,
        pcap=pcap,
        records=tuple(records),
        summary=summarize(records, config),
        server_address=topo.addresses.server(config.ipv6),
        phone_address=topo.addresses.phone(config.ipv6),
        link=link_report,
        wire=wire_figures(analysis),
        analysis=analysis,
    )
    return result
