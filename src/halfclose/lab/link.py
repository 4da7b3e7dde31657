"""Setting up the lab's emulated link: a bridge, netem, or the delay forwarder between two veths.

The lab's link namespace holds two veths, ``a`` (towards the phone, ``p0``) and ``b`` (towards
the server, ``s0``). :func:`configure_link` joins them in one of three ways:

* ``bridge``: a Linux bridge (built by :func:`halfclose.lab.topology.bridge`), when the profile
  adds nothing (or no profile is given);
* ``netem``: a bridge plus a netem qdisc on each veth's egress with half the delay, when the
  kernel has netem and netem can do exactly what the profile asks;
* ``forwarder``: no bridge; the forwarder program (:mod:`halfclose.lab.delay`) reads every frame
  on one veth and sends it out of the other once the
  :class:`~halfclose.lab.delayline.DelayLine` says it is due.

The forwarder copies frames as they are, so the endpoints' veths must hand it finished frames:
transmit checksum offload and segmentation offloads off (see
:func:`halfclose.lab.topology.offloads_off`), otherwise TCP never connects.

This module runs in the lab's own process; it starts, watches and stops the forwarder, and
reads its counters when it stops. What the link did is a figure of the run
(:class:`halfclose.lab.figures.LinkFigures`), worded in :mod:`halfclose.report`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from halfclose.errors import EnvironmentProblem, UsageError
from halfclose.lab.delay import PROG
from halfclose.lab.delayline import DelayCounters, Direction, LinkProfile
from halfclose.lab.topology import Topology, bridge, offloads_off, wait_up
from halfclose.proc import run, spawn

__all__ = [
    "Link",
    "LinkMode",
    "configure_link",
    "link",
    "netem_argv",
    "netem_available",
    "start_delay",
    "stop_delay",
]


class LinkMode(enum.Enum):
    """How the link namespace joins its two veths."""

    BRIDGE = "bridge"
    NETEM = "netem"
    FORWARDER = "forwarder"


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
    forwarder (:func:`~halfclose.lab.topology.offloads_off`). Close the returned :class:`Link` to stop the forwarder.

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
        bridge(netns, a, b)
        return Link(netns=netns, a=a, b=b, mode=mode, profile=profile)
    if profile is None:
        raise UsageError(f"{mode.value} mode needs a link profile")
    if mode is LinkMode.NETEM:
        bridge(netns, a, b)
        # a's egress carries frames towards the phone (b -> a) and b's the other way.
        run(netem_argv(a, profile.one_way_ns(Direction.B_TO_A), profile), netns=netns)
        run(netem_argv(b, profile.one_way_ns(Direction.A_TO_B), profile), netns=netns)
        return Link(netns=netns, a=a, b=b, mode=mode, profile=profile)
    # The link namespace's own stack should stay quiet on the wire it emulates.
    run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], netns=netns, check=False)
    for dev in (a, b):
        offloads_off(netns, dev)
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
