"""Safety of the reaper: exactly the selected, drained CLOSE_WAIT sockets are destroyed.

The reaper runs as the real command inside a namespace this test created (both triggers), or
in-process for the failure cases (a socket vanishing between dump and destroy, a kernel
refusal, an NFLOG buffer overrun).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import clientlab
from _reap_lab import Ns, connect_pair, linger_close, listener, lo_netns, socket_as
from halfclose.netfilter import Policy, Strategy, installed
from halfclose.proc import spawn
from halfclose.reap.agent import Reaper, ReapEvent
from halfclose.reap.decision import Selection
from halfclose.reap.nflog import NflogListener
from halfclose.sockdiag import (
    TCPF_ALL,
    InetDiagSockId,
    SockDiag,
    SockDiagError,
    TcpState,
    netns_entered,
)

pytestmark = pytest.mark.root

SRC = str(Path(__file__).resolve().parents[1] / "src")


def sockid(local: tuple[str, int], remote: tuple[str, int]) -> InetDiagSockId:
    src, dst = ipaddress.ip_address(local[0]), ipaddress.ip_address(remote[0])
    family = socket.AF_INET6 if src.version == 6 else socket.AF_INET
    return InetDiagSockId(family=family, sport=local[1], dport=remote[1], src=src, dst=dst)


@dataclass
class Case:
    label: str
    sock: socket.socket
    sid: InetDiagSockId
    expect_destroyed: bool
    expect_state: TcpState | None


@dataclass
class Scenario:
    """Sockets of several uids, ports and states; remembers what must happen to each."""

    ns: Ns
    cases: list[Case] = field(default_factory=list)
    keep: list[socket.socket] = field(default_factory=list)

    def add(self, label: str, lst: socket.socket, uid: int, how: str) -> None:
        c, a = connect_pair(self.ns, lst, uid)
        sid = sockid(c.getsockname()[:2], c.getpeername()[:2])
        self.keep.append(a)
        state: TcpState | None
        destroyed = False
        if how == "established":
            state = TcpState.ESTABLISHED
        elif how == "close":
            a.close()
            state = TcpState.CLOSE_WAIT
        elif how == "shutdown":
            a.shutdown(socket.SHUT_WR)  # server half-close, still reading
            state = TcpState.CLOSE_WAIT
        elif how == "close-after-read-eof":
            a.close()
            assert c.recv(10) == b""
            state = TcpState.CLOSE_WAIT
        elif how == "unread":
            a.sendall(b"unread response")
            a.close()
            state = TcpState.CLOSE_WAIT
        elif how == "fin-wait2":
            c.shutdown(socket.SHUT_WR)
            state = TcpState.FIN_WAIT2
        else:
            raise AssertionError(how)
        self.cases.append(Case(label, c, sid, destroyed, state))

    def expect(self, label: str) -> None:
        for case in self.cases:
            if case.label == label:
                case.expect_destroyed = True
                case.expect_state = None

    def close(self) -> None:
        for s in [c.sock for c in self.cases] + self.keep:
            s.close()


def build(ns: Ns, listeners: dict[tuple[str, int], socket.socket]) -> Scenario:
    sc = Scenario(ns)
    for fam, addr in (("v4", ns.v4), ("v6", ns.v6)):
        l80, l8080 = listeners[(addr, 80)], listeners[(addr, 8080)]
        sc.add(f"{fam} target", l80, 10400, "close")
        sc.add(f"{fam} target half-close", l80, 10400, "shutdown")
        sc.add(f"{fam} unread", l80, 10400, "unread")
        sc.add(f"{fam} established", l80, 10400, "established")
        sc.add(f"{fam} fin-wait2", l80, 10400, "fin-wait2")
        sc.add(f"{fam} other port", l8080, 10400, "close")
        sc.add(f"{fam} other uid", l80, 10401, "close")
        sc.add(f"{fam} root", l80, 0, "close")
        sc.expect(f"{fam} target")
        sc.expect(f"{fam} target half-close")
    sc.add("v4 target eof read", listeners[(ns.v4, 80)], 10400, "close-after-read-eof")
    sc.expect("v4 target eof read")
    return sc


@contextlib.contextmanager
def listeners_in(ns: Ns) -> Iterator[dict[tuple[str, int], socket.socket]]:
    out = {(a, p): listener(ns, a, p) for a in (ns.v4, ns.v6) for p in (80, 8080)}
    own = socket_as(ns, socket.AF_INET, 10400)  # a LISTEN socket of the selected uid
    own.bind((ns.v4, 8081))
    own.listen()
    try:
        yield out
    finally:
        own.close()
        for s in out.values():
            s.close()


def check(sc: Scenario, sd: SockDiag, events: list[dict[str, object]]) -> None:
    for case in sc.cases:
        found = sd.lookup(case.sid)
        if case.expect_destroyed:
            assert found is None, f"{case.label}: expected destroyed, found {found}"
            with pytest.raises(ConnectionAbortedError):
                case.sock.send(b"GET / HTTP/1.1\r\n\r\n")
        else:
            assert found is not None, f"{case.label}: socket was destroyed"
            assert found.state is case.expect_state, f"{case.label}: state {found.state}"
            assert case.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, case.label
    destroyed = {(e["local"], e["remote"]) for e in events if e["action"] == "destroy"}
    want = {
        (_endpoint(c.sid.src, c.sid.sport), _endpoint(c.sid.dst, c.sid.dport))
        for c in sc.cases if c.expect_destroyed
    }
    assert destroyed == want
    # Nothing else vanished: listeners (5), server ends (one per case), clients not destroyed.
    total = len(list(sd.dump(states=TCPF_ALL & ~(1 << TcpState.TIME_WAIT))))
    survivors = sum(1 for c in sc.cases if not c.expect_destroyed)
    assert total >= 5 + survivors


def _endpoint(addr: object, port: int) -> str:
    text = str(addr)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def start_reaper(ns: Ns, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = spawn([sys.executable, "-m", "halfclose", "reap", *args], netns=ns.name,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if b"ready" in line or not line:
                break
    if b"ready" not in line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"reaper did not get ready: {line!r} {err!r}")
    return proc


class LiveEvents:
    """The reaper's JSON events as it writes them (one line each, flushed): a thread reads its stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._out, proc.stdout = proc.stdout, None  # read here, not by communicate()
        self._lock = threading.Lock()
        self._seen: list[dict[str, object]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._out:
            with self._lock:
                self._seen.append(json.loads(line))

    def seen(self) -> list[dict[str, object]]:
        with self._lock:
            return list(self._seen)

    def finish(self) -> list[dict[str, object]]:
        """All events, once the reaper has exited."""
        self._thread.join(timeout=20)
        self._out.close()
        return self.seen()


def stop_reaper(proc: subprocess.Popen[bytes], live: LiveEvents | None = None) -> tuple[list[dict[str, object]], str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    if live is not None:
        return live.finish(), err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    return events, err.decode()


def wait_until(check: Callable[[], bool], *, limit: float = 20.0) -> None:
    """:func:`clientlab.wait_until` with room for a reaper process on a loaded machine."""
    clientlab.wait_until(check, limit=limit)


@pytest.mark.parametrize("trigger", ["poll", "nflog"])
def test_only_selected_drained_close_wait_sockets_are_destroyed(trigger: str) -> None:
    with lo_netns() as ns, listeners_in(ns) as lsts, SockDiag(netns=ns.name) as sd:
        proc = start_reaper(ns, "--uid", "10400", "--port", "80", "--trigger", trigger,
                            "--interval", "0.02", "--settle", "0.3", "--log", "json")
        live = LiveEvents(proc)
        try:
            sc = build(ns, lsts)
            built = time.monotonic()
            # What must happen, waited for however late the reaper runs: the selected sockets
            # destroyed and, on NFLOG, the unread one given up at its settle time (0.3 s).
            wait_until(lambda: all(sd.lookup(c.sid) is None for c in sc.cases if c.expect_destroyed))
            if trigger == "nflog":
                wait_until(lambda: any(e["action"] == "skip" for e in live.seen()))
            # What must not happen gets at least the time it always had: several polls, and the
            # unread socket's settle time.
            time.sleep(max(0.0, built + 1.0 - time.monotonic()))
        finally:
            events, err = stop_reaper(proc, live)
        try:
            check(sc, sd, events)
            if trigger == "nflog":
                skips = [e for e in events if e["action"] == "skip"]
                assert {e["reason"] for e in skips} == {"unread-data"}
                assert "FINs seen" in err
                # the rules went away with the reaper
                out = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"],
                                     capture_output=True, text=True, check=True).stdout
                assert "table inet halfclose" not in out
        finally:
            sc.close()


class VanishingReaper(Reaper):
    """Closes the app's socket (with RST, so the kernel frees it) between judging and destroying."""

    def __init__(self, victims: dict[int, socket.socket], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.victims = victims

    def destroy_requests(self, requests: list[bytes]) -> list[int]:
        for request in requests:
            victim = self.victims.pop(InetDiagSockId.decode(request[0], request, 8).sport, None)
            if victim is not None:
                linger_close(victim)
        return super().destroy_requests(requests)


class RefusedReaper(Reaper):
    """Sends a malformed destroy for the first socket, so the kernel refuses it (EINVAL)."""

    refused = False

    def destroy_requests(self, requests: list[bytes]) -> list[int]:
        if not self.refused:
            self.refused = True
            return [22, *super().destroy_requests(requests[1:])]  # EINVAL for the first
        return super().destroy_requests(requests)


def test_socket_vanishing_between_dump_and_destroy_is_counted_and_survived() -> None:
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        lst = listener(ns, ns.v4, 80)
        pairs = [connect_pair(ns, lst, 10400) for _ in range(3)]
        for _, a in pairs:
            a.close()
        victim = pairs[0][0]
        events: list[ReapEvent] = []
        reaper = VanishingReaper({victim.getsockname()[1]: victim}, selection=Selection(
            uids=frozenset({10400}), ports=frozenset({80})), sockdiag=sd, emit=events.append)
        reaper.sweep()
        assert reaper.counters.vanished == 1
        assert reaper.counters.destroyed == 2
        assert [e.action for e in events].count("vanished") == 1
        for c, _ in pairs[1:]:
            with pytest.raises(ConnectionAbortedError):
                c.send(b"x")
            c.close()
        lst.close()


def test_kernel_refusal_is_logged_and_the_rest_still_done() -> None:
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        lst = listener(ns, ns.v4, 80)
        pairs = [connect_pair(ns, lst, 10400) for _ in range(2)]
        for _, a in pairs:
            a.close()
        events: list[ReapEvent] = []
        reaper = RefusedReaper(selection=Selection(uids=frozenset({10400})), sockdiag=sd,
                               emit=events.append)
        reaper.sweep()
        assert (reaper.counters.errors, reaper.counters.destroyed) == (1, 1)
        assert any(e.action == "error" and "Invalid argument" in (e.detail or "") for e in events)
        reaper.sweep()  # the refused one is picked up by the next sweep
        assert reaper.counters.destroyed == 2
        for c, _ in pairs:
            c.close()
        lst.close()


def test_real_kernel_einval_from_malformed_destroy() -> None:
    """The refusal above is simulated by the subclass; this shows the kernel really answers so."""
    import struct

    from halfclose.sockdiag.netlink import NlFlag
    from halfclose.sockdiag.wire import SOCK_DESTROY

    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        short = struct.pack("=BBBxI", 2, 6, 0, 0)
        seq = sd._send(SOCK_DESTROY, NlFlag.NLM_F_REQUEST | NlFlag.NLM_F_ACK, short)
        with pytest.raises(SockDiagError) as info:
            list(sd._replies(seq))
        assert info.value.errno == 22


def test_nflog_overrun_is_followed_by_a_sweep_that_catches_the_lost_fins() -> None:
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        with netns_entered(ns.name):
            lst_nflog = NflogListener(44, rcvbuf=4096)
        rules = Policy(uids=(10400,), ports=(80,), strategy=Strategy.NFLOG, nflog_group=44)
        with lst_nflog, installed(rules, netns=ns.name):
            lst = listener(ns, ns.v4, 80)
            pairs = [connect_pair(ns, lst, 10400) for _ in range(150)]
            for _, a in pairs:
                a.close()
            time.sleep(0.2)
            events: list[ReapEvent] = []
            reaper = Reaper(selection=Selection(uids=frozenset({10400}), ports=frozenset({80})),
                            sockdiag=sd, emit=events.append)
            for _ in range(100):  # until the backlog is handled
                reaper.step_nflog(lst_nflog, 0.05)
                if reaper.counters.destroyed >= 150 and not len(reaper.rechecks):
                    break
            assert reaper.counters.overruns >= 1
            assert reaper.counters.sweeps >= 1
            assert reaper.counters.destroyed == 150
            for c, _ in pairs:
                with pytest.raises(ConnectionAbortedError):
                    c.send(b"x")
                c.close()
            lst.close()


def test_a_burst_of_fins_larger_than_a_receive_buffer_of_answers_is_reaped_whole() -> None:
    # 300 FINs read at once: their lookups go out 256 to a datagram, whose answers did not fit a
    # default netlink receive buffer (ENOBUFS: the reaper died with an OSError).
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        with netns_entered(ns.name):
            lst_nflog = NflogListener(45)
        rules = Policy(uids=(10400,), ports=(80,), strategy=Strategy.NFLOG, nflog_group=45)
        with lst_nflog, installed(rules, netns=ns.name):
            lst = listener(ns, ns.v4, 80)
            pairs = [connect_pair(ns, lst, 10400) for _ in range(300)]
            for _, a in pairs:
                a.close()
            time.sleep(0.2)
            reaper = Reaper(selection=Selection(uids=frozenset({10400}), ports=frozenset({80})), sockdiag=sd)
            for _ in range(100):
                reaper.step_nflog(lst_nflog, 0.05)
                if reaper.counters.fins_seen >= 300 and not len(reaper.rechecks):
                    break
            c = reaper.counters
            assert (c.fins_seen, c.destroyed, c.errors, c.overruns) == (300, 300, 0, 0)
            assert reaper.latency.count == 300
            for client, _ in pairs:
                with pytest.raises(ConnectionAbortedError):
                    client.send(b"x")
                client.close()
            lst.close()
