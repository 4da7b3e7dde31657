"""Round-trip emulation for the lab, with netem when the kernel has it and without when not.

The lab's link namespace holds two veths, ``a`` (towards the phone, ``p0``) and ``b`` (towards
the server, ``s0``). :func:`configure_link` joins them in one of three ways:

* ``bridge``: a Linux bridge, when the profile adds nothing (or no profile is given);
* ``netem``: a bridge plus a netem qdisc on each veth's egress with half the delay, when the
  kernel has netem and netem can do exactly what the profile asks;
* ``forwarder``: no bridge; a process (``python -m halfclose.lab.delay``) reads every frame on
  one veth with an AF_PACKET socket and sends it out of the other once the
  :class:`~halfclose.lab.delayline.DelayLine` says it is due. It works at layer 2, so ARP and
  neighbour discovery cross it too.

The forwarder copies frames as they are, so the endpoints' veths must hand it finished frames:
transmit checksum offload and segmentation offloads off (``ethtool -K DEV tx off gso off tso off
gro off``, see :func:`disable_offloads`), otherwise TCP never connects. The forwarder warns once
per veth when it sees a frame whose checksum is not filled in or that is larger than the MTU.

Run by hand inside the link namespace::

    ip netns exec NS python -m halfclose.lab.delay --a p0 --b s0 --rtt-ms 50

It prints ``halfclose.lab.delay: ready ...`` on stderr once its sockets are bound, and on SIGTERM
or SIGINT ``halfclose.lab.delay: stopped {json counters}``, then exits with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import enum
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from halfclose.errors import EnvironmentProblem, ExitStatus, HalfcloseError, UsageError
from halfclose.lab.delayline import DelayCounters, DelayLine, Direction, LinkProfile
from halfclose.proc import run, spawn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from halfclose.lab.topology import Topology

__all__ = [
    "PROG",
    "Link",
    "LinkMode",
    "LinkReport",
    "configure_link",
    "disable_offloads",
    "forward",
    "link",
    "link_report",
    "main",
    "netem_argv",
    "netem_available",
    "open_packet_socket",
    "start_delay",
    "stop_delay",
    "wait_up",
]

#: The name the forwarder puts in front of every line it writes.
PROG = "halfclose.lab.delay"

_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_AUXDATA = 8
_PACKET_IGNORE_OUTGOING = 23
_PACKET_OUTGOING = 4
_TP_STATUS_CSUMNOTREADY = 1 << 3
_AUXDATA = struct.Struct("=IIIHHHH")
_PR_SET_TIMERSLACK = 29
_SO_SNDBUFFORCE = 32  # not in Python's socket module before 3.12
_SO_RCVBUFFORCE = 33
_SO_TIMESTAMPNS = 35  # = SCM_TIMESTAMPNS; struct timespec of two 64-bit fields on 64-bit Linux
_TIMESPEC = struct.Struct("=qq")
_SOCKET_BUFFER = 8 << 20
_BATCH = 64  # frames read from one socket before the loop looks at timers again
_FRAME_MAX = 65_536


class LinkMode(enum.Enum):
    """How the link namespace joins its two veths."""

    BRIDGE = "bridge"
    NETEM = "netem"
    FORWARDER = "forwarder"


# --------------------------------------------------------------------------------------------
# The forwarder (runs inside the link namespace)
# --------------------------------------------------------------------------------------------


def open_packet_socket(ifname: str, *, buffer_bytes: int = _SOCKET_BUFFER) -> socket.socket:
    """An AF_PACKET socket bound to *ifname* that sees every frame arriving there.

    Frames the host itself sends out of *ifname* are left out (PACKET_IGNORE_OUTGOING, and the
    reader checks the packet type as well for kernels without it).

    Raises:
        EnvironmentProblem: not root, or no interface of that name.
    """
    try:
        # Protocol 0 until bound, so that no frame of another interface is queued in between.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as exc:
        raise EnvironmentProblem("the delay forwarder needs root (CAP_NET_RAW): run it as root") from exc
    try:
        for opt, fallback in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, fallback, buffer_bytes)
        with contextlib.suppress(OSError):
            sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.bind((ifname, _ETH_P_ALL))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ENODEV:
            raise EnvironmentProblem(f"no network interface named {ifname!r} in this namespace") from exc
        raise EnvironmentProblem(f"cannot open a packet socket on {ifname}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def _set_fine_timer_slack() -> None:
    """Ask the kernel to wake this process within 1 ns of its timeouts (default slack 50 µs)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


@dataclass(slots=True, kw_only=True)
class _Port:
    name: str
    sock: socket.socket
    direction: Direction  # of the frames read here
    warned: set[str] = field(default_factory=set)


def _warn(port: _Port, key: str, text: str, log: Callable[[str], None]) -> None:
    if key not in port.warned:
        port.warned.add(key)
        log(f"{PROG}: warning: {text}")


def forward(
    *,
    a: str,
    b: str,
    profile: LinkProfile,
    stop_fd: int,
    on_ready: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    spin_ns: int = 0,
) -> DelayCounters:
    """Move frames between interfaces *a* and *b* through a delay line until *stop_fd* is readable.

    Args:
        a, b: the two interfaces (frames read on *a* go out of *b* and back).
        profile: what the link does to frames.
        stop_fd: a file descriptor that becomes readable when the loop must end (a pipe that a
            signal handler writes to).
        on_ready: called once both sockets are bound.
        log: where warnings go (one line each).
        spin_ns: when the next frame is due within this many nanoseconds, poll instead of
            sleeping (more accurate, costs CPU); 0 always sleeps.

    Returns:
        The counters at the end; frames still held are counted as pending, not sent.
    """
    _set_fine_timer_slack()
    line = DelayLine(profile)
    ports = (
        _Port(name=a, sock=open_packet_socket(a), direction=Direction.A_TO_B),
        _Port(name=b, sock=open_packet_socket(b), direction=Direction.B_TO_A),
    )
    out_sock = {Direction.A_TO_B: ports[1].sock, Direction.B_TO_A: ports[0].sock}
    by_fd = {p.sock.fileno(): p for p in ports}
    send_errors = [0, 0]
    cmsg_space = socket.CMSG_SPACE(_AUXDATA.size) + socket.CMSG_SPACE(_TIMESPEC.size)
    clock = time.monotonic_ns
    try:
        on_ready()
        rlist = [stop_fd, *by_fd]
        while True:
            now = clock()
            for dep in line.pop_due(now):
                try:
                    out_sock[dep.direction].send(dep.frame)
                except OSError as exc:
                    send_errors[dep.direction] += 1
                    port = ports[dep.direction]
                    if exc.errno == errno.EMSGSIZE:
                        _warn(port, "size", f"a frame of {len(dep.frame)} bytes from {port.name} does "
                              "not fit the MTU: turn off gso, tso and gro on the endpoint veths", log)
            due = line.next_due_ns()
            if due is None:
                timeout: float | None = None
            else:
                wait = due - clock()
                if wait <= spin_ns:
                    wait = 0
                timeout = max(wait, 0) / 1e9
            ready, _, _ = select.select(rlist, [], [], timeout)
            for fd in ready:
                if fd == stop_fd:
                    return line.counters(send_errors=send_errors)
                port = by_fd[fd]
                # Frames are timed by the kernel's receive stamp (wall clock), moved onto the
                # monotonic clock, so time spent waiting in the socket buffer counts as delay.
                now = clock()
                wall_offset = time.time_ns() - now
                for _ in range(_BATCH):
                    try:
                        # No MSG_TRUNC on input: a packet socket would then report the full
                        # length, longer than the buffer. The output flag still tells truncation.
                        data, anc, flags, addr = port.sock.recvmsg(_FRAME_MAX, cmsg_space)
                    except (BlockingIOError, InterruptedError):
                        break
                    if addr[2] == _PACKET_OUTGOING:
                        continue
                    arrival = now
                    if flags & socket.MSG_TRUNC:
                        _warn(port, "trunc", f"a frame larger than {_FRAME_MAX} bytes arrived on "
                              f"{port.name}: turn off gso, tso and gro on the endpoint veths", log)
                        continue
                    for level, kind, body in anc:
                        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(body) >= 16:
                            sec, nsec = _TIMESPEC.unpack_from(body)
                            arrival = min(sec * 1_000_000_000 + nsec - wall_offset, clock())
                        elif (level == _SOL_PACKET and kind == _PACKET_AUXDATA and len(body) >= 4
                                and struct.unpack_from("=I", body)[0] & _TP_STATUS_CSUMNOTREADY):
                            _warn(port, "csum", f"frames on {port.name} carry unfinished checksums: "
                                  "turn off tx checksum offload on the veth that sends them "
                                  "(ethtool -K DEV tx off gso off tso off gro off)", log)
                    line.offer(direction=port.direction, arrival_ns=arrival, frame=data)
    finally:
        for p in ports:
            p.sock.close()


def _parser() -> argparse.ArgumentParser:
    from halfclose.cli import ArgumentParser

    parser = ArgumentParser(
        prog=f"python -m {PROG}",
        description="Forward frames between two interfaces after a delay (run it in the link namespace).",
    )
    parser.add_argument("--a", required=True, metavar="IF", help="the phone-side interface (e.g. p0)")
    parser.add_argument("--b", required=True, metavar="IF", help="the server-side interface (e.g. s0)")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip to add, 0 to 1000 ms")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="spread of each one-way delay, 0 to the RTT (default 0)")
    parser.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                        help="frames lost in each direction, 0 to 100 %% (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of loss and jitter (default 0)")
    parser.add_argument("--reorder", action="store_true",
                        help="let jitter reorder frames (default: each direction keeps its order)")
    parser.add_argument("--limit", type=int, default=10_000, help="frames held per direction (default 10000)")
    parser.add_argument("--spin-us", type=float, default=0.0,
                        help="poll instead of sleeping this close to a due time (default 0)")
    parser.add_argument("--rt-priority", type=int, default=0, metavar="N",
                        help="run with real-time (SCHED_FIFO) priority N, 1-99, for steadier timing "
                             "on a busy host (default 0: normal scheduling)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The forwarder's command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        profile = LinkProfile.from_ms(rtt_ms=args.rtt_ms, jitter_ms=args.jitter_ms, loss_pct=args.loss,
                                      seed=args.seed, reorder=args.reorder, limit=args.limit)
        if args.a == args.b:
            raise UsageError(f"--a and --b must be different interfaces, both are {args.a!r}")
        if not 0 <= args.spin_us <= 10_000:
            raise UsageError(f"--spin-us must be between 0 and 10000, not {args.spin_us:g}")
        if not 0 <= args.rt_priority <= 99:
            raise UsageError(f"--rt-priority must be between 0 and 99, not {args.rt_priority}")
        if args.rt_priority:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt_priority))
            except OSError as exc:
                print(f"{PROG}: warning: no real-time priority ({exc.strerror}); timing may vary",
                      file=sys.stderr, flush=True)
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)

        def ready() -> None:
            print(f"{PROG}: ready a={args.a} b={args.b} {profile.describe()}", file=sys.stderr, flush=True)

        counters = forward(a=args.a, b=args.b, profile=profile, stop_fd=rfd, on_ready=ready,
                           spin_ns=round(args.spin_us * 1000))
    except HalfcloseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    print(f"{PROG}: stopped {json.dumps(counters.to_dict(), separators=(',', ':'))}",
          file=sys.stderr, flush=True)
    return ExitStatus.OK


# --------------------------------------------------------------------------------------------
# Library functions for the lab (run in the lab's own process)
# --------------------------------------------------------------------------------------------


def _profile_args(profile: LinkProfile) -> list[str]:
    args = [
        "--rtt-ms", f"{profile.rtt_ns / 1e6:.6f}",
        "--jitter-ms", f"{profile.jitter_ns / 1e6:.6f}",
        "--loss", f"{profile.loss_ppm / 1e4:.4f}",
        "--seed", str(profile.seed),
        "--limit", str(profile.limit),
    ]
    return [*args, "--reorder"] if profile.reorder else args


def _child_env() -> dict[str, str]:
    import halfclose

    src = str(Path(halfclose.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def start_delay(
    netns: str,
    *,
    a: str,
    b: str,
    profile: LinkProfile,
    timeout: float = 10.0,
    spin_us: float = 0.0,
    rt_priority: int = 10,
) -> subprocess.Popen[bytes]:
    """Start the forwarder in *netns* between *a* and *b*; return once its sockets are bound.

    It runs with real-time priority *rt_priority* (SCHED_FIFO; 0 for normal scheduling): on a
    busy two-core host that cut the p99 error of its hold time from about 1 ms to 0.2 ms
    (bench/bench_delay.py, docs/lab-rtt.md). The loop sleeps between frames, so the priority
    costs nothing while the link is idle.

    Stop it with :func:`stop_delay` (or let the namespace's removal end it).

    Raises:
        EnvironmentProblem: it exited or did not report ready within *timeout* seconds; the
            message carries its last line.
    """
    argv = [sys.executable, "-m", PROG, "--a", a, "--b", b, *_profile_args(profile)]
    if spin_us:
        argv += ["--spin-us", f"{spin_us:g}"]
    if rt_priority:
        argv += ["--rt-priority", str(rt_priority)]
    proc = spawn(argv, netns=netns, env=_child_env())
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while b": ready " not in seen:
        left = deadline - time.monotonic()
        readable = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        chunk = os.read(fd, 4096) if readable else b""
        if not chunk:
            if readable:
                proc.wait()
            else:
                proc.kill()
                proc.wait()
            lines = seen.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no message"
            why = (f"exited with status {proc.returncode}" if readable
                   else f"was not ready within {timeout:g} s")
            proc.stderr.close()
            raise EnvironmentProblem(f"the delay forwarder in {netns} {why}: {last}")
        seen += chunk
    return proc


def stop_delay(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> DelayCounters | None:
    """Stop a forwarder started by :func:`start_delay`; return its counters (None if it gave none).

    Safe to call on a forwarder that has already exited (e.g. its namespace was removed).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    for text in reversed((err or b"").decode(errors="replace").splitlines()):
        if text.startswith(f"{PROG}: stopped "):
            with contextlib.suppress(ValueError):
                return DelayCounters.from_dict(json.loads(text.split(" ", 2)[2]))
    return None


def disable_offloads(netns: str, dev: str) -> None:
    """Switch off checksum and segmentation offloads on *dev* so frames cross the forwarder whole."""
    run(["ethtool", "-K", dev, "tx", "off", "gso", "off", "tso", "off", "gro", "off"], netns=netns)


def netem_argv(dev: str, delay_ns: int, profile: LinkProfile) -> list[str]:
    """The ``tc`` command that gives *dev*'s egress *delay_ns* with the profile's jitter and loss.

    netem's jitter is a ± bound, so the profile's spread of width ``J`` becomes ``J / 2``.
    """
    argv = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "limit", str(profile.limit),
            "delay", f"{delay_ns / 1000:.3f}us"]
    if profile.jitter_ns:
        argv.append(f"{profile.jitter_ns / 2000:.3f}us")
    if profile.loss_ppm:
        # Recent kernels seed netem's loss generator (TCA_NETEM_PRNG_SEED); it is not ours, so
        # the same seed loses other frames than the forwarder would.
        argv += ["loss", f"{profile.loss_ppm / 1e4:.4f}%", "seed", str(profile.seed)]
    return argv


def netem_available(netns: str, dev: str) -> bool:
    """True if the kernel has the netem qdisc (tried on *dev* in *netns* and removed again)."""
    probe = run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"], netns=netns, check=False)
    if probe.returncode != 0:
        return False
    run(["tc", "qdisc", "del", "dev", dev, "root"], netns=netns, check=False)
    return True


@dataclass(slots=True, kw_only=True)
class Link:
    """The link namespace as :func:`configure_link` set it up.

    Attributes:
        netns, a, b: where it is.
        mode: how the veths are joined.
        profile: what was asked (None: a plain bridge).
        process: the forwarder, in forwarder mode.
        counters: the forwarder's counters once :meth:`close` has stopped it.
    """

    netns: str
    a: str
    b: str
    mode: LinkMode
    profile: LinkProfile | None
    process: subprocess.Popen[bytes] | None = None
    counters: DelayCounters | None = None

    def close(self) -> DelayCounters | None:
        """Stop the forwarder (if any) and return its counters. Safe to call twice."""
        if self.process is not None:
            self.counters = stop_delay(self.process)
            self.process = None
        return self.counters

    def __enter__(self) -> Link:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wait_up(netns: str, devs: Sequence[str], *, timeout: float = 5.0) -> None:
    """Wait until each of *devs* in *netns* is operationally up.

    A veth whose carrier has just come on drops what it is given until the kernel's link watch
    (which batches such events up to a second apart) has activated its queue; the operational
    state turns UP at that same moment. Without this wait the first frames of a fresh lab (an
    ARP request, a DNS query) can vanish and cost a retransmission timeout.

    Raises:
        EnvironmentProblem: a device is not up within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    todo = list(devs)
    while todo:
        out = run(["ip", "-o", "link", "show"], netns=netns).stdout
        states = {}
        for row in out.splitlines():
            name = row.split(":", 2)[1].strip().split("@")[0]
            words = row.split()
            states[name] = words[words.index("state") + 1] if "state" in words else "UNKNOWN"
        todo = [d for d in todo if states.get(d) != "UP"]
        if not todo:
            return
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"{', '.join(todo)} in {netns} not up within {timeout:g} s "
                                     f"(state {states.get(todo[0], 'missing')})")
        time.sleep(0.02)


def _bridge(netns: str, a: str, b: str) -> None:
    run(["ip", "link", "add", "name", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
        netns=netns)
    for dev in (a, b):
        run(["ip", "link", "set", dev, "master", "br0"], netns=netns)
    for dev in ("br0", a, b):
        run(["ip", "link", "set", dev, "up"], netns=netns)
    wait_up(netns, ["br0", a, b])


def configure_link(
    netns: str,
    *,
    a: str = "p0",
    b: str = "s0",
    profile: LinkProfile | None = None,
    mode: LinkMode | None = None,
) -> Link:
    """Join *a* and *b* in the link namespace so that the link behaves as *profile* says.

    With *mode* None the choice is: a bridge when the profile adds nothing; netem when the
    kernel has it and it does exactly what the profile asks (fixed delay, or jitter with
    reordering, and no loss, since netem's seeded loss drops other frames than ours); the forwarder
    otherwise. Both veths must exist; the endpoint veths must have offloads off for the
    forwarder (:func:`disable_offloads`). Close the returned :class:`Link` to stop the forwarder.

    Raises:
        UsageError: *mode* cannot do what *profile* asks.
        EnvironmentProblem: a command failed, or the forwarder did not start.
    """
    if mode is None:
        if profile is None or profile.is_transparent:
            mode = LinkMode.BRIDGE
        elif (profile.loss_ppm == 0 and (profile.jitter_ns == 0 or profile.reorder)
              and netem_available(netns, a)):
            mode = LinkMode.NETEM
        else:
            mode = LinkMode.FORWARDER
    if mode is LinkMode.BRIDGE:
        if profile is not None and not profile.is_transparent:
            raise UsageError(f"a bridge cannot add {profile.describe()}")
        _bridge(netns, a, b)
        return Link(netns=netns, a=a, b=b, mode=mode, profile=profile)
    if profile is None:
        raise UsageError(f"{mode.value} mode needs a link profile")
    if mode is LinkMode.NETEM:
        _bridge(netns, a, b)
        # a's egress carries frames towards the phone (b -> a) and b's the other way.
        run(netem_argv(a, profile.one_way_ns(Direction.B_TO_A), profile), netns=netns)
        run(netem_argv(b, profile.one_way_ns(Direction.A_TO_B), profile), netns=netns)
        return Link(netns=netns, a=a, b=b, mode=mode, profile=profile)
    # The link namespace's own stack should stay quiet on the wire it emulates.
    run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], netns=netns, check=False)
    for dev in (a, b):
        disable_offloads(netns, dev)
        run(["ip", "link", "set", dev, "up"], netns=netns)
    wait_up(netns, [a, b])
    process = start_delay(netns, a=a, b=b, profile=profile)
    return Link(netns=netns, a=a, b=b, mode=mode, profile=profile, process=process)


@contextlib.contextmanager
def link(
    topo: Topology,
    *,
    rtt_ms: float,
    jitter_ms: float = 0.0,
    loss_pct: float = 0.0,
    seed: int = 0,
    mode: LinkMode | None = None,
) -> Iterator[Link]:
    """Join the lab topology's link veths as the profile says; stop the forwarder on exit.

    Raises:
        UsageError: a value is out of range.
        EnvironmentProblem: as :func:`configure_link`.
    """
    profile = LinkProfile.from_ms(rtt_ms=rtt_ms, jitter_ms=jitter_ms, loss_pct=loss_pct, seed=seed)
    with configure_link(topo.link, a=topo.link_phone_if, b=topo.link_server_if, profile=profile,
                        mode=mode) as joined:
        yield joined


# --------------------------------------------------------------------------------------------
# What the link did, as the run's capture shows it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkReport:
    """The round trip a lab run asked for next to the one its capture shows.

    Attributes:
        mode: ``bridge``, ``netem`` or ``forwarder``.
        rtt_ms_asked, jitter_ms, loss_pct, seed: what was asked.
        handshakes: TCP handshakes measured in the capture (at the phone).
        rtt_ms_median, rtt_ms_min, rtt_ms_max: their round trips (None without handshakes or
            when the capture could not be read).
        counters: the forwarder's counters (forwarder mode only).
        note: why a measurement is missing, else empty.
    """

    mode: str
    rtt_ms_asked: float
    jitter_ms: float
    loss_pct: float
    seed: int
    handshakes: int
    rtt_ms_median: float | None
    rtt_ms_min: float | None
    rtt_ms_max: float | None
    counters: dict[str, dict[str, int]] | None
    note: str = ""

    def line(self) -> str:
        """One line for the run's summary."""
        asked = f"link ({self.mode}): RTT asked {self.rtt_ms_asked:g} ms"
        if self.jitter_ms or self.loss_pct:
            asked += f" (jitter {self.jitter_ms:g} ms, loss {self.loss_pct:g} %, seed {self.seed})"
        if self.rtt_ms_median is None:
            return f"{asked}; measured: {self.note or 'no TCP handshake in the capture'}"
        return (f"{asked}; measured {self.rtt_ms_median:.2f} ms median over {self.handshakes} TCP "
                f"handshakes (min {self.rtt_ms_min:.2f}, max {self.rtt_ms_max:.2f})")


def link_report(
    joined: Link | None,
    rtts_ns: Sequence[int] | None,
    *,
    rtt_ms: float = 0.0,
    jitter_ms: float = 0.0,
    loss_pct: float = 0.0,
    seed: int = 0,
) -> LinkReport:
    """Put the handshake round trips measured in the run's capture next to what was asked.

    *joined* is the :class:`Link` of the run (None: a plain bridge); its forwarder is stopped if
    it still runs, to collect the counters. *rtts_ns* are the TCP handshake round trips seen at
    the phone (None when the capture could not be analysed).
    """
    counters = joined.close() if joined is not None else None
    ms = sorted(r / 1e6 for r in rtts_ns or ())
    median = None
    if ms:
        mid = len(ms) // 2
        median = ms[mid] if len(ms) % 2 else (ms[mid - 1] + ms[mid]) / 2
    return LinkReport(
        mode=(joined.mode if joined is not None else LinkMode.BRIDGE).value,
        rtt_ms_asked=rtt_ms,
        jitter_ms=jitter_ms,
        loss_pct=loss_pct,
        seed=seed,
        handshakes=len(ms),
        rtt_ms_median=None if median is None else round(median, 3),
        rtt_ms_min=round(ms[0], 3) if ms else None,
        rtt_ms_max=round(ms[-1], 3) if ms else None,
        counters=counters.to_dict() if counters is not None else None,
        note="" if rtts_ns is not None else "the capture could not be analysed",
    )


if __name__ == "__main__":
    sys.exit(main())
