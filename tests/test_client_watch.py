"""The FIN watcher: pooled connections closed when the server's FIN or reset arrives.

Real sockets (socketpairs and a real keep-alive server on loopback); tcpdump and tshark time the
CLOSE_WAIT on the wire.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import halfclose.client as hc
from clientlab import Capture, KeepAliveServer, random_loopback, wait_until
from halfclose.client._sockcheck import TcpInfo, read_tcp_info
from halfclose.client._watch import CLOSED, LoopWatcher, ThreadWatcher, Watch, Watcher


def test_watcher_fires_on_the_peer_fin_and_checkout_excludes_firing() -> None:
    watcher = ThreadWatcher(linger=0.2)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    fired: list[str] = []
    try:
        wa = watcher.watch(a.fileno(), lambda: fired.append("a"))
        wc = watcher.watch(c.fileno(), lambda: fired.append("c"))
        assert watcher.running() and watcher.pooled() == 2
        assert watcher.checkout(wc) is True  # taken out first: never fires
        b.close()
        d.close()
        wait_until(lambda: fired == ["a"])
        assert watcher.checkout(wa) is False  # fired: the connection is gone
        time.sleep(0.2)
        assert fired == ["a"]
        wait_until(lambda: not watcher.running())  # nothing pooled for linger: no thread
    finally:
        watcher.stop()
        for s in (a, c):
            s.close()


def test_unsolicited_bytes_do_not_fire_but_a_reset_does() -> None:
    watcher = ThreadWatcher(linger=0.2)
    a, b = socket.socketpair()
    listener = socket.create_server((random_loopback(), 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    fired: list[str] = []
    try:
        watcher.watch(a.fileno(), lambda: fired.append("bytes"))
        watcher.watch(client.fileno(), lambda: fired.append("reset"))
        b.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # RST
        wait_until(lambda: fired == ["reset"])
        time.sleep(0.1)
        assert fired == ["reset"]  # readable bytes are left to the look before reuse
    finally:
        watcher.stop()
        for s in (a, b, client, listener):
            s.close()


def test_a_deadline_runs_on_expire_and_a_nearer_one_wakes_the_thread() -> None:
    watcher = ThreadWatcher(linger=5.0)  # the thread's own wait is long: deadlines must cut it short
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    e, f = socket.socketpair()
    fired: list[str] = []
    try:
        start = time.monotonic()
        wa = watcher.watch(a.fileno(), lambda: fired.append("a fin"), expire_in=3.0,
                           on_expire=lambda: fired.append("a expired"))
        time.sleep(0.05)  # the thread waits for a's deadline now
        wc = watcher.watch(c.fileno(), lambda: fired.append("c fin"), expire_in=0.2,
                           on_expire=lambda: fired.append("c expired"))
        we = watcher.watch(e.fileno(), lambda: fired.append("e fin"), expire_in=0.2,
                           on_expire=lambda: fired.append("e expired"))
        assert watcher.checkout(we) is True  # taken out before its deadline: never fires
        wait_until(lambda: fired == ["c expired"])
        assert 0.2 <= time.monotonic() - start < 1.0
        assert watcher.checkout(wc) is False  # closed at its deadline
        b.close()  # the server's close before a's deadline: on_close, not on_expire
        wait_until(lambda: fired == ["c expired", "a fin"])
        assert watcher.checkout(wa) is False and watcher.pooled() == 0
    finally:
        watcher.stop()
        for s in (a, c, d, e, f):
            s.close()


def test_loop_watcher_runs_deadlines_on_the_loop() -> None:
    async def scenario() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        watcher = LoopWatcher(loop=loop)
        a, b = socket.socketpair()
        fired: list[str] = []
        start = time.monotonic()
        watcher.watch(a.fileno(), lambda: fired.append("fin"), expire_in=0.1, on_expire=lambda: fired.append(
            "expired" if threading.current_thread() is threading.main_thread() else "expired off the loop"))
        for _ in range(100):
            if fired:
                break
            await asyncio.sleep(0.01)
        took = time.monotonic() - start
        watcher.stop()
        a.close()
        b.close()
        return fired, took

    fired, took = asyncio.run(scenario())
    assert fired == ["expired"] and took >= 0.1


def _closed_first_by_client(server: KeepAliveServer, counts: Callable[[], hc.GuardCounts]) -> None:
    wait_until(lambda: counts().retired_early == 1, limit=3.0)  # no request needed
    wait_until(lambda: server.ends() == {"client": 1}, limit=3.0)
    time.sleep(0.3)  # past the server's own timer (1.2 s): its FIN never came
    assert server.ends() == {"client": 1} and counts().closed_at_fin == 0


def test_announced_timeout_retires_pooled_connections_before_the_server_closes() -> None:
    # Keep-Alive: timeout=1.2 on loopback: margin min(max(2 RTT, 1 s), 25 %) = 0.3 s, retired at 0.9 s idle.
    with KeepAliveServer(idle_timeout=1.2, keep_alive_header=1.2) as server, hc.session(use_dns_cache=False) as s:
        s.get(server.url())
        _closed_first_by_client(server, s.counts)
        assert s.guard.watching() == 0
        assert s.get(server.url()).json()["conn"] == 2
    with KeepAliveServer(idle_timeout=1.2, keep_alive_header=1.2) as server, \
            hc.httpx_client(use_dns_cache=False) as client:
        client.get(server.url())
        _closed_first_by_client(server, client.counts)


def test_async_client_retires_on_its_loop_before_the_server_closes() -> None:
    async def scenario(server: KeepAliveServer) -> tuple[hc.GuardCounts, Counter[str | None], bool]:
        async with hc.async_httpx_client(use_dns_cache=False) as client:
            await client.get(server.url())
            for _ in range(300):
                if client.counts().retired_early and server.ends():
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # past the server's own timer
            return client.counts(), server.ends(), client.guard.watcher_thread_running()

    with KeepAliveServer(idle_timeout=1.2, keep_alive_header=1.2) as server:
        counts, ends, thread = asyncio.run(scenario(server))
    assert counts.retired_early == 1 and counts.closed_at_fin == 0
    assert ends == {"client": 1}
    assert not thread


def test_session_closes_at_the_fin_learns_and_stops_with_its_last_client() -> None:
    # A 0.6 s timer: clear of the 0.5 s below which closes are not learned (the client's idle age
    # starts a little after the server's timer, so a 0.5 s timer is seen just under or over it).
    with KeepAliveServer(idle_timeout=0.6) as server:
        s = hc.session(use_dns_cache=False)
        assert not s.guard.watcher_thread_running()  # nothing pooled yet: no thread
        s.get(server.url())
        assert s.guard.watching() == 1 and s.guard.watcher_thread_running()
        wait_until(lambda: s.counts().closed_at_fin == 1)  # no request needed
        assert s.guard.watching() == 0
        learned = s.guard.idle_timeout(hc.Origin(scheme="http", host=server.host, port=server.port))
        assert learned is not None and learned.source is hc.TimeoutSource.LEARNED
        # The age at the FIN: 0.6 s, plus however late the server's timer and the watcher thread ran
        # (0.14 s was seen on a loaded machine; 0.4 s allowed).
        assert 0.55 < learned.seconds < 1.0
        s.get(server.url())
        assert s.guard.watching() == 1
        s.close()
        assert not s.guard.watcher_thread_running()  # stopped with the last client, no linger
        assert s.counts().new_connections == 2


def test_async_client_watches_on_its_event_loop_without_a_thread() -> None:
    async def scenario(url: str) -> tuple[hc.GuardCounts, bool, int, int]:
        async with hc.async_httpx_client(use_dns_cache=False) as client:
            first = (await client.get(url)).json()["conn"]
            assert client.guard.watching() == 1
            for _ in range(200):
                if client.counts().closed_at_fin:
                    break
                await asyncio.sleep(0.01)
            counts = client.counts()
            second = (await client.get(url)).json()["conn"]
            return counts, client.guard.watcher_thread_running(), first, second

    with KeepAliveServer(idle_timeout=0.4) as server:
        counts, thread, first, second = asyncio.run(scenario(server.url()))
    assert counts.closed_at_fin == 1 and counts.half_closed_skipped == 0
    assert first != second
    assert not thread


def test_loop_watcher_runs_callbacks_on_the_loop() -> None:
    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        watcher = LoopWatcher(loop=loop)
        a, b = socket.socketpair()
        on_loop: list[bool] = []
        watcher.watch(a.fileno(), lambda: on_loop.append(threading.current_thread() is threading.main_thread()))
        b.close()
        for _ in range(100):
            if on_loop:
                break
            await asyncio.sleep(0.01)
        watcher.stop()
        a.close()
        return on_loop

    assert asyncio.run(scenario()) == [True]


def test_a_forked_child_leaves_the_parents_watcher_alone() -> None:
    with KeepAliveServer(idle_timeout=0.6) as server:
        s = hc.session(use_dns_cache=False)
        s.get(server.url())
        assert s.guard.watching() == 1
        pid = os.fork()
        if pid == 0:  # the child: an empty watcher, no thread; it must not touch the parent's set
            code = 0 if (s.guard.watching(), s.guard.watcher_thread_running()) == (0, False) else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wait_until(lambda: s.counts().closed_at_fin == 1)  # the parent still sees the FIN
        s.close()


@pytest.mark.root
def test_close_wait_lasts_milliseconds_on_the_wire(tmp_path: Path) -> None:
    """tshark: the guarded client's FIN follows the server's at once; plain requests' waits."""
    import requests

    with KeepAliveServer(idle_timeout=0.3) as server, \
            Capture(tmp_path / "fin.pcap", host=server.host, port=server.port) as cap:
        plain = requests.Session()
        plain.get(server.url())
        wait_until(lambda: server.closed_ends()["timer"] == 1)  # the server's FIN (0.3 s idle) is out
        time.sleep(0.6)  # plain requests keeps the dead socket until it is closed
        plain.close()
        s = hc.session(use_dns_cache=False)
        s.get(server.url())
        wait_until(lambda: s.counts().closed_at_fin == 1)
        time.sleep(0.3)
        s.close()
        cap.stop()
        times = cap.close_wait_times()
    assert len(times) == 2
    plain_wait, guarded_wait = times
    assert plain_wait > 0.5  # plain requests keeps the dead socket until it is closed
    assert guarded_wait < 0.2  # at once: a watcher thread's wake-up on a loaded machine, not 0.6 s
    assert cap.payload_after_server_fin() == 0


def test_registered_once_per_connection_and_a_lagging_waiter_is_no_blind_spot() -> None:
    """checkout reads what arrived from the kernel, not from the waiting side (here: nobody waits)."""
    watcher = Watcher()  # no thread, no loop: nothing dispatches, as when the waiter lags behind
    guard = hc.Guard(use_dns_cache=False)
    origin = hc.Origin(scheme="http", host="lab.test", port=80)
    listener = socket.create_server((random_loopback(), 0))
    conns = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    peers = [listener.accept()[0] for _ in conns]
    fired: list[int] = []
    try:
        ws = [watcher.watch(c.fileno(), lambda i=i: fired.append(i)) for i, c in enumerate(conns)]
        assert all(w is not None for w in ws) and watcher.pooled() == 3
        w0, w1, w2 = typing.cast("list[Watch]", ws)
        # An exchange on connection 0: out, its response arrives, back in: nothing seen, same registration.
        assert watcher.checkout(w0) and w0.seen == 0
        peers[0].send(b"response")
        conns[0].recv(100)
        assert watcher.repool(w0) and w0.active and watcher.pooled() == 3
        assert watcher.checkout(w0) and w0.seen == 0
        assert guard.may_reuse(origin, conns[0], idle=0.1, watch=w0)
        assert watcher.repool(w0)
        # While pooled: connection 1 gets bytes nobody asked for, connection 2 the server's FIN.
        peers[1].send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        peers[2].close()
        wait_until(lambda: read_tcp_info(conns[2]) is not None
                   and typing.cast(TcpInfo, read_tcp_info(conns[2])).is_close_wait())
        assert watcher.checkout(w1) and w1.seen & select.EPOLLIN and not w1.seen & CLOSED
        assert not guard.may_reuse(origin, conns[1], idle=0.1, watch=w1)  # looked at: unasked bytes
        assert watcher.checkout(w2) and w2.seen & CLOSED
        assert not guard.may_reuse(origin, conns[2], idle=0.1, watch=w2)  # looked at: CLOSE_WAIT
        assert (guard.counts().broken_skipped, guard.counts().half_closed_skipped) == (1, 1)
        # A FIN while a connection is out, nobody looking: the next checkout sees it.
        assert watcher.checkout(w0)
        peers[0].close()
        wait_until(lambda: read_tcp_info(conns[0]) is not None
                   and typing.cast(TcpInfo, read_tcp_info(conns[0])).is_close_wait())
        assert watcher.repool(w0)
        assert watcher.checkout(w0) and w0.seen & CLOSED
        assert not guard.may_reuse(origin, conns[0], idle=0.1, watch=w0)
        watcher.unwatch(w1)
        assert not w1.active and not watcher.repool(w1)
        assert fired == []
    finally:
        watcher.stop()
        for s in (*conns, *peers, listener):
            s.close()


def test_a_fin_while_out_closes_the_connection_when_it_comes_back() -> None:
    watcher = ThreadWatcher(linger=5.0)
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    fired: list[str] = []
    try:
        wa = watcher.watch(a.fileno(), lambda: fired.append("a"))
        wc = watcher.watch(c.fileno(), lambda: fired.append("c"))  # stays pooled: the thread runs
        assert wa is not None and wc is not None and watcher.checkout(wa)
        b.close()  # the FIN while a carries an exchange
        wait_until(lambda: wa.closed_out)  # the thread saw it, and left a alone
        assert fired == []
        assert not watcher.repool(wa) and wa.fired and fired == ["a"]
    finally:
        watcher.stop()
        for s in (a, c, d):
            s.close()


def test_a_session_registers_its_connection_once() -> None:
    with KeepAliveServer(idle_timeout=5.0) as server:
        s = hc.session(use_dns_cache=False)
        s.get(server.url())
        manager = s.get_adapter(server.url()).poolmanager
        (pool,) = [manager.pools[k] for k in manager.pools.keys()]  # noqa: SIM118 (no iteration there)
        (conn,) = [c for c in pool.pool.queue if c is not None]  # the pooled connection
        first = conn.hc_watch
        for _ in range(5):
            s.get(server.url())
        assert first is not None and conn.hc_watch is first and first.active
        assert s.counts().reused == 5 and s.guard.watching() == 1
        s.close()
        assert not first.active


def test_a_socket_closed_behind_the_watchers_back_is_looked_at() -> None:
    watcher = Watcher()
    guard = hc.Guard(use_dns_cache=False)
    origin = hc.Origin(scheme="http", host="lab.test", port=80)
    a, b = socket.socketpair()
    try:
        w = watcher.watch(a.fileno(), lambda: None)
        assert w is not None and watcher.checkout(w) and w.seen == 0
        a.close()  # not through the connection's close: the registration still looks active
        assert w.active and not guard.may_reuse(origin, a, idle=0.1, watch=w)
        assert guard.counts().broken_skipped == 1
    finally:
        watcher.stop()
        b.close()
