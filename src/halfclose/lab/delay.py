"""The delay forwarder: a program that moves frames between two veths after a delay.

It runs inside the lab's link namespace, started and stopped by :mod:`halfclose.lab.link`: it
reads every frame on one veth with an AF_PACKET socket and sends it out of the other once the
:class:`~halfclose.lab.delayline.DelayLine` says it is due. It works at layer 2, so ARP and
neighbour discovery cross it too. It copies frames as they are, so the endpoints' veths must hand
it finished frames (checksum and segmentation offloads off); it warns once per veth when it sees a
frame whose checksum is not filled in or that is larger than the MTU.

Run by hand inside the link namespace::

    ip netns exec NS python -m halfclose.lab.delay --a p0 --b s0 --rtt-ms 50

It prints ``halfclose.lab.delay: ready ...`` on stderr once its sockets are bound, and on SIGTERM
or SIGINT ``halfclose.lab.delay: stopped {json counters}``, then exits with status 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from halfclose.args import ArgumentParser
from halfclose.errors import EnvironmentProblem, ExitStatus, HalfcloseError, UsageError, exit_status
from halfclose.lab.delayline import DelayCounters, DelayLine, Direction, LinkProfile

__all__ = ["PROG", "forward", "main", "open_packet_socket"]

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


def _parser() -> ArgumentParser:
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
        return exit_status(exc)
    print(f"{PROG}: stopped {json.dumps(counters.to_dict(), separators=(',', ':'))}",
          file=sys.stderr, flush=True)
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
