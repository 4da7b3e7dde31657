"""Running one lab: namespaces, servers, capture, the app as an app uid, clean-up whatever happens.

This is the adapter around the lab's pure parts (:mod:`~halfclose.lab.config`,
:mod:`~halfclose.lab.figures`): it starts processes and always stops them. Clean-up happens on
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import halfclose
from halfclose.analysis import Analysis
from halfclose.analysis_io import analyze
from halfclose.errors import EnvironmentProblem, HalfcloseError
from halfclose.lab import phonedns, verbatim
from halfclose.lab.app import RequestRecord
from halfclose.lab.clients import CLIENTS
from halfclose.lab.clients import _go as _go_client
from halfclose.lab.config import ClientKind, DnsKind, Fix, LabConfig, ServerKind, validate
from halfclose.lab.figures import RunFigures, run_figures
from halfclose.lab.link import Link, link
from halfclose.lab.servers import PROGRAMS, DnsAnswers, Process, Site, Tls, dnsmasq_argv, lab_image, processes
from halfclose.lab.servers import go as go_server
from halfclose.lab.syndata import syn_data_by_port
from halfclose.lab.tls import Endpoint, endpoint, make_pki
from halfclose.lab.topology import Topology, build, plan_addresses
from halfclose.lab.verbatim import VerbatimCounters
from halfclose.netns import Claim
from halfclose.proc import require_program, require_root, run, spawn

__all__ = ["CAPTURE_BUFFER_KIB", "KEYLOG", "Attempt", "LabResult", "attempt", "capture_argv", "run_lab"]

#: The TLS key log of a run's app (NSS key log format), next to the capture in the run folder.
KEYLOG = "tls-keys.log"


@dataclass(frozen=True, slots=True, kw_only=True)
class LabResult:
    """What one lab run produced."""

    run_id: str
    config: LabConfig
    run_dir: Path
    pcap: Path
    records: tuple[RequestRecord, ...]
    server_address: str
    phone_address: str
    #: Every figure of the run, computed once from the records and the analysis.
    figures: RunFigures
    #: The analysis of the capture (connections, findings, DNS), for reports.
    analysis: Analysis
    #: With ``--fix rules-verbatim``: what the kernel refused and the rules' counters.
    verbatim: VerbatimCounters | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "config": self.config.to_json(),
            "pcap": str(self.pcap),
            "server_address": self.server_address,
            "phone_address": self.phone_address,
            **self.figures.to_json(),
            **({"verbatim": asdict(self.verbatim)} if self.verbatim is not None else {}),
            "requests": [asdict(r) for r in self.records],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """A run that was tried: its result, or why it could not run here (*skipped*)."""

    result: LabResult | None
    skipped: str = ""

    @property
    def figures(self) -> RunFigures | None:
        return None if self.result is None else self.result.figures

    def ran(self) -> bool:
        return self.result is not None


def attempt(config: LabConfig) -> tuple[LabResult | None, str]:
    """:func:`run_lab`, with a :class:`~halfclose.errors.HalfcloseError` (a program missing, a
    combination the host cannot run) turned into the reason the run was skipped.

    Returns:
        The result and "", or None and the error's one line.
    """
    try:
        return run_lab(config), ""
    except HalfcloseError as exc:
        return None, str(exc)


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
        with self.proc.stderr:
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


def _app_argv(
    config: LabConfig, python: str, pythonpath: Path, *extra: str, home: Path | None = None, env: Sequence[str] = ()
) -> list[str]:
    uid = str(config.uid)
    # The app starts from an empty environment, as an app would (nothing of root's: no CA bundle, no
    # proxy); its home and temporary files (a browser's profile, its NSS database) stay in the run's
    # work folder.
    where = [f"HOME={home}", f"TMPDIR={home}", f"XDG_CONFIG_HOME={home}/.config", f"XDG_CACHE_HOME={home}/.cache"]
    return [
        "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--",
        "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", f"PYTHONPATH={pythonpath}",
        "PYTHONDONTWRITEBYTECODE=1", *(where if home else []), *env, python, *extra,
    ]


def _app_home(config: LabConfig, work: Path) -> Path:
    """A folder the app uid owns inside the run's work folder (removed with it)."""
    home = work / "app"
    home.mkdir(mode=0o700)
    os.chown(home, config.uid, config.uid)
    return home


def _prepare_client(config: LabConfig) -> str:
    """Build what the client needs before the run (the Go client); the program's path or ""."""
    if config.client is ClientKind.GO:
        return str(_go_client.build())
    return ""


def _workload_args(config: LabConfig, where: Endpoint) -> list[str]:
    """The app's options for the workload of *config* against the server at *where*."""
    args = ["--client", config.client.value, "--host", where.host, "--port", str(where.port),
            "--requests", str(config.requests), "--gap", str(config.gap_s)]
    if where.scheme == "https":
        args += ["--tls", *(["--cafile", str(where.ca_cert)] if where.ca_cert else [])]
    return args + (["--http2"] if where.http2 else [])


def _check_app_python(config: LabConfig, topo: Topology, python: str, pythonpath: Path) -> None:
    spec = CLIENTS[config.client.value]
    modules = ", ".join([*spec.imports, "halfclose.lab.app", f"halfclose.lab.clients.{spec.module}"])
    argv = _app_argv(config, python, pythonpath, "-c", f"import {modules}")
    done = run(argv, netns=topo.phone, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        hint = (f"install {spec.python_package} into that environment" if "ModuleNotFoundError" in last else
                "use the interpreter of a virtual environment outside /root, e.g. ./scripts/setup's")
        raise EnvironmentProblem(f"the app ({config.client.value}) cannot run as uid {config.uid} with {python}: "
                                 f"{last} ({hint})")


def _start_servers(
    config: LabConfig, topo: Topology, work: Path, stack: contextlib.ExitStack, *, run_dir: Path
) -> Endpoint:
    """Start the DNS and HTTP servers in the server namespace; return where the app connects.

    Their files (configs, pid files, the image) go to *work* (removed with the run); with TLS the
    run's PKI goes to ``<run_dir>/tls`` and the CA certificate the app trusts to ``<work>/tls``.
    """
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
        dns_argv = dnsmasq_argv(listen=listen, answers=answers, pid_file=work / "dnsmasq.pid")
        dns_marker = ""
    else:
        dns_argv = [python, "-m", "halfclose.lab.servers", "dns", "--name", answers.name, "--ttl", str(answers.ttl)]
        dns_argv += [a for addr in listen for a in ("--listen", addr)]
        dns_argv += [a for ip in answers.a for a in ("--a", ip)] + [a for ip in answers.aaaa for a in ("--aaaa", ip)]
        dns_marker = "ready"
    tail = _launch(dns_argv, topo.server, f"the DNS server ({config.dns.value})", dns_marker, stack)
    _wait_listening(topo, 53, tail, ss_flags="-Hlun" if config.dns is DnsKind.BUILTIN else "-Htln")

    if config.server is ServerKind.GO:
        go_server.build()
    pki = None
    if config.tls:
        pki_dir = run_dir / "tls"
        stack.push(_remove_on_failure(pki_dir))
        pki = make_pki(pki_dir, config.hostname, public_dir=work / "tls")
    folder = work / "server"
    (folder / "www").mkdir(parents=True)
    image = folder / "www" / "img.png"
    image.write_bytes(lab_image())
    for path in (work, folder, folder / "www", image):
        path.chmod(0o755 if path.is_dir() else 0o644)
    site = Site(
        listen=tuple(listen), port=config.http_port, idle_timeout_s=config.idle_timeout_s, folder=folder,
        image=image, python=python, http2=config.http2, race=config.race, keepalive_header=config.keepalive_header,
        close_rst=config.server_rst,
        fast_open=config.tfo,
        tls=None if pki is None else Tls(cert=pki.cert, key=pki.key, bundle=pki.bundle,
                                         version=config.tls_version.value),
    )
    for process in processes(config.server, site):
        _start_process(process, topo, stack)
    return endpoint(config, pki)


def _remove_on_failure(path: Path) -> Callable[..., bool]:
    """An exit callback removing *path* when the run fails (a kept run folder keeps it)."""

    def on_exit(exc_type: type[BaseException] | None, *rest: object) -> bool:
        if exc_type is not None:
            shutil.rmtree(path, ignore_errors=True)
        return False

    return on_exit


def _start_process(process: Process, topo: Topology, stack: contextlib.ExitStack) -> None:
    """Write a server's files, check its config, start it and wait until it is ready."""
    for path, text in process.files.items():
        path.write_text(text)
    if process.check:
        done = run(list(process.check), netns=topo.server, check=False)
        if done.returncode != 0:
            last = ((done.stderr + done.stdout).strip().splitlines() or ["no message"])[-1]
            raise EnvironmentProblem(f"{process.what} refused the lab's configuration: {last}")
    env = {**os.environ, **process.env} if process.env else None
    proc = spawn(list(process.argv), netns=topo.server, env=env)
    stack.callback(_stop, proc, process.stop_signal)
    tail = _Tail(proc, process.what)
    if process.ready:
        tail.wait_ready(process.ready, timeout=15)
    _wait_listening(topo, process.port, tail)


def _launch(argv: list[str], netns: str, what: str, marker: str, stack: contextlib.ExitStack) -> _Tail:
    proc = spawn(argv, netns=netns)
    stack.callback(_stop, proc)
    tail = _Tail(proc, what)
    if marker:
        tail.wait_ready(marker, timeout=15)
    return tail


def _wait_listening(
    topo: Topology, port: int, tail: _Tail, *, ss_flags: str = "-Htln", timeout: float = 10, netns: str = ""
) -> None:
    """Wait until a server in the server namespace (or *netns*) listens on *port* (programs that say nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tail.proc.poll() is not None:
            time.sleep(0.1)
            raise EnvironmentProblem(f"{tail.what} did not start: {tail.last_line()}")
        out = run(["ss", ss_flags, f"sport = :{port}"], netns=netns or topo.server).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise EnvironmentProblem(f"{tail.what} did not listen on port {port} within {timeout:g} s: {tail.last_line()}")


#: The capture's ring buffer in KiB (tcpdump ``-B``). With ``--immediate-mode`` and full packets the
#: default 2 MiB holds a handful of packets: a burst that arrived while tcpdump waited for a CPU on a
#: busy host was dropped by the kernel (it kept 8 of 100 datagrams); 32 MiB keeps such a burst whole.
CAPTURE_BUFFER_KIB = 32768


def capture_argv(interface: str, pcap: Path) -> list[str]:
    """The lab's tcpdump command: every packet of *interface*, whole, written to *pcap* as it comes.

    Full packets: DNS answers and IPv6 headers must survive. ``--immediate-mode`` hands each packet
    over at once (not a ring-buffer block at a time) and ``-U`` writes it at once; the large ring
    (:data:`CAPTURE_BUFFER_KIB`) keeps what arrives while tcpdump is not running.
    """
    return ["tcpdump", "-i", interface, "-s", "0", "-B", str(CAPTURE_BUFFER_KIB), "-U", "--immediate-mode", "-n",
            "-Z", "root", "-w", str(pcap)]


def _start_capture(
    topo: Topology, pcap: Path, stack: contextlib.ExitStack, *, any_interface: bool = False
) -> subprocess.Popen[bytes]:
    require_program("tcpdump")
    proc = spawn(capture_argv("any" if any_interface else topo.phone_if, pcap), netns=topo.phone)
    tail = _Tail(proc, "tcpdump")
    tail.wait_ready("listening on...", timeout=15)
    stack.callback(_stop, proc, signal.SIGINT)
    return proc


def _apply_fix(config: LabConfig, topo: Topology, stack: contextlib.ExitStack) -> list[VerbatimCounters]:
    """Put the fix in place in the phone namespace (removed by *stack*); for ``rules-verbatim``, a list
    that holds the rules' counters once *stack* has closed."""
    counters: list[VerbatimCounters] = []
    if config.fix is Fix.RULES:
        from halfclose.netfilter import Backend, Policy, Strategy, installed

        policy = Policy(uids=(config.uid,), ports=(config.http_port,), strategy=Strategy.REJECT)
        stack.enter_context(installed(policy, backend=Backend.AUTO, netns=topo.phone))
    elif config.fix is Fix.REAP:
        argv = [sys.executable, "-m", "halfclose", "reap", "--uid", str(config.uid), "--port", str(config.http_port)]
        _launch(argv, topo.phone, "the reaper", "reap: ready...", stack)
    elif config.fix in (Fix.RULES_VERBATIM, Fix.RULES_NAIVE):
        refused = verbatim.install(topo.phone, config.uid, config.http_port, naive=config.fix is Fix.RULES_NAIVE)
        # Read after the capture stops (callbacks run last-in first-out), before the namespace goes.
        stack.callback(lambda: counters.append(verbatim.read_counters(topo.phone, refused)))
    return counters


def _phone_dns_cache(config: LabConfig, topo: Topology, work: Path, stack: contextlib.ExitStack) -> None:
    """With a phone cache asked for: dnsmasq in the phone namespace, and the app's resolv.conf on it."""
    if config.dns_cache_floor_s is None:
        return
    conf = work / "phone-dnsmasq.conf"
    conf.write_text(phonedns.cache_config(config.dns_cache_floor_s).text)
    argv = phonedns.dnsmasq_argv(conf=conf, upstream=str(topo.addresses.server_v4), pid_file=work / "phone-dnsmasq.pid")
    tail = _launch(argv, topo.phone, "the phone's DNS cache (dnsmasq)", "started, version...", stack)
    _wait_listening(topo, 53, tail, ss_flags="-Hlun", netns=topo.phone)
    (Path("/etc/netns") / topo.phone / "resolv.conf").write_text(phonedns.RESOLV_CONF)


def _link(config: LabConfig, topo: Topology, stack: contextlib.ExitStack) -> Link:
    return stack.enter_context(link(topo, rtt_ms=config.rtt_ms, jitter_ms=config.jitter_ms,
                                    loss_pct=config.loss_pct, seed=config.seed))


def _run_app(
    config: LabConfig, topo: Topology, python: str, pythonpath: Path, on_record: Callable[[RequestRecord], None],
    *, home: Path, where: Endpoint, program: str = "",
) -> list[RequestRecord]:
    # Over TLS every client writes its session keys (SSLKEYLOGFILE) so the capture can be decrypted.
    keylog = [f"SSLKEYLOGFILE={home / KEYLOG}"] if where.scheme == "https" else []
    argv = _app_argv(config, python, pythonpath, "-m", "halfclose.lab.app", *_workload_args(config, where),
                     "--work", str(home), *(["--program", program] if program else []), home=home, env=keylog)
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
    server = PROGRAMS[config.server]
    if config.server is ServerKind.GO and go_server.binary().is_file():
        server = ()  # built already: go itself is not needed
    programs += server
    programs += ["dnsmasq"] if config.dns is DnsKind.DNSMASQ or config.dns_cache_floor_s is not None else []
    if config.fix in (Fix.RULES_VERBATIM, Fix.RULES_NAIVE):
        programs += [verbatim.PROGRAM, f"{verbatim.PROGRAM}-save"]
    client = CLIENTS[config.client.value].programs
    if config.client is ClientKind.GO and _go_client.binary().is_file():
        client = ()  # built already: go itself is not needed
    programs += client
    programs += ["sysctl"] if config.tfo else []
    programs += ["iptables", "ip6tables"] if config.drop_syn_data else []
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
    where = _start_servers(config, topo, work, stack, run_dir=run_dir)
    _check_app_python(config, topo, python, pythonpath)
    program = _prepare_client(config)
    home = _app_home(config, work)
    _phone_dns_cache(config, topo, work, stack)
    verbatim_counters = _apply_fix(config, topo, stack)
    _start_capture(topo, pcap, stack, any_interface=config.capture_any)
    if on_ready is not None:
        on_ready(claim.run_id, topo)
    records = _run_app(config, topo, python, pythonpath, on_record or (lambda record: None), home=home,
                       where=where, program=program)
    time.sleep(config.linger_s)
    stack.close()
    if (home / KEYLOG).is_file():
        shutil.copyfile(home / KEYLOG, run_dir / KEYLOG)
    analysis = analyze([pcap])
    syn_data = syn_data_by_port(pcap)
    return LabResult(
        run_id=claim.run_id,
        config=config,
        run_dir=run_dir,
        pcap=pcap,
        records=tuple(records),
        server_address=topo.addresses.server(config.ipv6),
        phone_address=topo.addresses.phone(config.ipv6),
        figures=run_figures(records, analysis, config, link_mode=joined.mode.value, counters=joined.close(),
                            syn_data=syn_data),
        analysis=analysis,
        verbatim=verbatim_counters[0] if verbatim_counters else None,
    )
