from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time

import pytest

from _reap_lab import connect_pair, linger_close, listener, lo_netns, socket_as
from halfclose.sockdiag import (
    TCPF_ALL,
    DestroyOutcome,
    InetDiagSockId,
    SockDiag,
    SockDiagError,
    TcpState,
    state_mask,
)
from halfclose.sockdiag.netlink import NlFlag, encode_nlmsg
from halfclose.sockdiag.wire import SOCK_DESTROY

pytestmark = pytest.mark.root


def local_id(s: socket.socket) -> InetDiagSockId:
    src, sport = s.getsockname()[:2]
    dst, dport = s.getpeername()[:2]
    return InetDiagSockId(family=s.family, sport=sport, dport=dport,
                          src=ipaddress.ip_address(src), dst=ipaddress.ip_address(dst))


def test_dump_lookup_and_destroy_close_wait_v4_and_v6() -> None:
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        for addr in (ns.v4, ns.v6):
            srv = listener(ns, addr, 80)
            c, a = connect_pair(ns, srv, 10400)
            est, est_peer = connect_pair(ns, srv, 10400)
            a.close()
            found = {(m.id.sport, m.state) for m in sd.dump(states=TCPF_ALL, families=(c.family,))}
            assert (80, TcpState.LISTEN) in found
            assert (c.getsockname()[1], TcpState.CLOSE_WAIT) in found
            assert (est.getsockname()[1], TcpState.ESTABLISHED) in found
            (cw,) = list(sd.dump(states=state_mask(TcpState.CLOSE_WAIT), families=(c.family,), info=True))
            assert cw.idiag_uid == 10400
            assert cw.idiag_rqueue == 1  # the FIN, not yet read by the app
            assert cw.info is not None and cw.info.tcpi_state == TcpState.CLOSE_WAIT
            assert cw.info.tcpi_rto is not None and cw.info.tcpi_rto > 0
            cid = local_id(c)
            looked = sd.lookup(cid)
            assert looked is not None and looked.id.cookie == cw.id.cookie
            assert sd.destroy(cw.id).outcome is DestroyOutcome.DESTROYED
            with pytest.raises(ConnectionAbortedError):
                c.send(b"GET / HTTP/1.1\r\n\r\n")
            assert sd.lookup(cid) is None
            # the other socket on the same listener is untouched
            assert est.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            for s in (c, est, est_peer, srv):
                s.close()


def test_destroy_of_vanished_socket_and_stale_cookie() -> None:
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        srv = listener(ns, ns.v4, 8080)
        c, a = connect_pair(ns, srv, 0)
        msg = sd.lookup(local_id(c))
        assert msg is not None
        wrong_cookie = InetDiagSockId(family=msg.id.family, sport=msg.id.sport, dport=msg.id.dport,
                                      src=msg.id.src, dst=msg.id.dst, cookie=msg.id.cookie + 1000)
        stale = sd.destroy(wrong_cookie)
        assert stale.outcome is DestroyOutcome.VANISHED
        assert stale.errno in (errno.ENOENT, errno.ESTALE)  # 6.18 answers ENOENT, older ESTALE
        assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # not touched
        linger_close(c)
        gone = sd.destroy(msg.id)
        assert (gone.outcome, gone.errno) == (DestroyOutcome.VANISHED, errno.ENOENT)
        a.close()
        srv.close()


def test_malformed_request_is_an_error_and_socket_stays_usable() -> None:
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        # A SOCK_DESTROY shorter than struct inet_diag_req_v2: the kernel answers EINVAL.
        short = struct.pack("=BBBxI", 2, 6, 0, 0)
        seq = sd._send(SOCK_DESTROY, NlFlag.NLM_F_REQUEST | NlFlag.NLM_F_ACK, short)
        with pytest.raises(SockDiagError) as info:
            list(sd._replies(seq))
        assert info.value.errno == errno.EINVAL
        assert encode_nlmsg(1, 0, 0, b"")  # framing still importable
        assert list(sd.dump(states=TCPF_ALL)) == []  # the socket still answers


def test_dump_is_per_namespace() -> None:
    with lo_netns() as ns, lo_netns("other") as other:
        srv = listener(ns, ns.v4, 80)
        with SockDiag(netns=other.name) as sd:
            assert list(sd.dump(states=TCPF_ALL)) == []
        with SockDiag(netns=ns.name) as sd:
            assert len(list(sd.dump(states=TCPF_ALL))) == 1
        srv.close()


def test_kernel_filters_dumps_by_remote_port_and_batches_answer_in_order() -> None:
    with lo_netns() as ns:
        lsts = [listener(ns, ns.v4, port) for port in (80, 81, 443)]
        pairs = []
        for lst in lsts:
            c = socket_as(ns, socket.AF_INET, 10400)
            c.connect(lst.getsockname())
            a, _ = lst.accept()
            a.close()
            pairs.append((c, a))
        time.sleep(0.1)
        with SockDiag(netns=ns.name) as sd:
            cw = state_mask(TcpState.CLOSE_WAIT)
            assert sorted(m.id.dport for m in sd.dump(states=cw, dports=[80, 443])) == [80, 443]
            assert [m.id.dport for m in sd.dump(states=cw, dports=[81])] == [81]
            assert list(sd.dump(states=cw, dports=[9])) == []
            found = list(sd.dump(states=cw))
            ghost = InetDiagSockId(family=socket.AF_INET, sport=1, dport=2, src=found[0].id.src,
                                   dst=found[0].id.dst)
            looked = sd.lookup_many([found[0].id, ghost, found[1].id])
            assert looked[1] is None and looked[0] is not None and looked[2] is not None
            assert (looked[0].id.cookie, looked[2].id.cookie) == (found[0].id.cookie, found[1].id.cookie)
            results = sd.destroy_many([m.id for m in found] + [found[0].id])
            assert [r.outcome for r in results] == [DestroyOutcome.DESTROYED] * 3 + [DestroyOutcome.VANISHED]
        for c, _ in pairs:
            with pytest.raises(ConnectionAbortedError):
                c.send(b"x")
            c.close()
        for lst in lsts:
            lst.close()


def test_a_batch_larger_than_the_receive_buffer_holds_gets_every_answer() -> None:
    # 260 lookups in one call: their replies overflow a default 212992-byte netlink receive
    # buffer (about 165 fit), which the kernel reports as ENOBUFS and answers lost.
    with lo_netns() as ns:
        lst = listener(ns, ns.v4, 80)
        pairs = [connect_pair(ns, lst, 10400) for _ in range(260)]
        for _, a in pairs:
            a.close()
        time.sleep(0.1)
        with SockDiag(netns=ns.name) as sd:
            found = list(sd.dump(states=state_mask(TcpState.CLOSE_WAIT)))
            assert len(found) == 260
            looked = sd.lookup_many([m.id for m in found])
            assert [m.id.cookie if m is not None else None for m in looked] == [m.id.cookie for m in found]
            results = sd.destroy_many([m.id for m in found])
            assert [r.outcome for r in results] == [DestroyOutcome.DESTROYED] * 260
        for c, _ in pairs:
            with pytest.raises(ConnectionAbortedError):
                c.send(b"x")
            c.close()
        lst.close()
