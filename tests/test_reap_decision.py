from __future__ import annotations

import ipaddress
import socket

import pytest

from halfclose.reap.decision import RECHECK_DELAYS, Rechecks, Selection, Verdict, is_retryable, judge
from halfclose.sockdiag.wire import InetDiagMsg, InetDiagSockId, TcpState

LOCAL = ipaddress.ip_address("198.18.3.2")
SERVER = ipaddress.ip_address("198.18.3.1")


def sock(
    *, uid: int = 10400, dport: int = 80, state: TcpState = TcpState.CLOSE_WAIT, rq: int = 1, wq: int = 0,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address = SERVER,
) -> InetDiagMsg:
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    src = LOCAL if dst.version == 4 else ipaddress.ip_address("fd00::2")
    return InetDiagMsg(
        idiag_family=family, idiag_state=state, idiag_timer=0, idiag_retrans=0,
        id=InetDiagSockId(family=family, sport=50000, dport=dport, src=src, dst=dst, cookie=5),
        idiag_expires=0, idiag_rqueue=rq, idiag_wqueue=wq, idiag_uid=uid, idiag_inode=1,
    )


SEL = Selection(uids=frozenset({10400}), ports=frozenset({80}))


@pytest.mark.parametrize(
    ("msg", "verdict"),
    [
        (sock(), Verdict.DESTROY),
        (sock(rq=0), Verdict.DESTROY),  # the app already read EOF
        (sock(rq=2), Verdict.UNREAD_DATA),  # one data byte plus the FIN
        (sock(wq=10), Verdict.UNSENT_DATA),
        (sock(uid=10401), Verdict.OTHER_UID),
        (sock(uid=0), Verdict.OTHER_UID),
        (sock(dport=8080), Verdict.OTHER_PORT),
        (sock(state=TcpState.ESTABLISHED, rq=0), Verdict.NOT_CLOSE_WAIT),
        (sock(state=TcpState.FIN_WAIT2, rq=0), Verdict.NOT_CLOSE_WAIT),
        (sock(state=TcpState.LAST_ACK, rq=0), Verdict.NOT_CLOSE_WAIT),
        (sock(state=TcpState.LISTEN, rq=0), Verdict.NOT_CLOSE_WAIT),
    ],
)
def test_judge(msg: InetDiagMsg, verdict: Verdict) -> None:
    assert judge(msg, SEL) is verdict


def test_any_port_when_none_selected() -> None:
    assert judge(sock(dport=8080), Selection(uids=frozenset({10400}))) is Verdict.DESTROY


def test_networks_including_v4_mapped() -> None:
    sel = Selection(uids=frozenset({10400}), networks=(ipaddress.ip_network("198.18.3.0/24"),))
    assert judge(sock(), sel) is Verdict.DESTROY
    assert judge(sock(dst=ipaddress.ip_address("198.19.0.1")), sel) is Verdict.OTHER_ADDRESS
    mapped = ipaddress.ip_address("::ffff:198.18.3.1")
    assert judge(sock(dst=mapped), sel) is Verdict.DESTROY
    assert judge(sock(dst=ipaddress.ip_address("fd00::1")), sel) is Verdict.OTHER_ADDRESS


def test_retryable_only_for_pending_fin_or_queued_data() -> None:
    assert is_retryable(Verdict.UNREAD_DATA, sock(rq=5))
    assert is_retryable(Verdict.UNSENT_DATA, sock(wq=5))
    assert is_retryable(Verdict.NOT_CLOSE_WAIT, sock(state=TcpState.ESTABLISHED))
    assert not is_retryable(Verdict.NOT_CLOSE_WAIT, sock(state=TcpState.LAST_ACK))
    assert not is_retryable(Verdict.NOT_CLOSE_WAIT, None)
    assert not is_retryable(Verdict.OTHER_UID, sock(uid=1))


def test_rechecks_follow_schedule_then_give_up() -> None:
    r = Rechecks(settle=1.0)
    assert r.schedule("k", 100.0)
    assert r.next_due() == pytest.approx(100.0 + RECHECK_DELAYS[0])
    assert r.pop_due(100.0) == []
    assert r.pop_due(100.0 + RECHECK_DELAYS[0]) == ["k"]
    attempts = 1
    now = 100.0
    while r.schedule("k", now):
        due = r.next_due()
        assert due is not None and due >= now
        now = due
        attempts += 1
    assert len(r) == 0
    assert attempts == len([d for d in RECHECK_DELAYS if d <= 1.0]) + 1  # 0.5 * 2 = 1.0 still fits


def test_rechecks_forget() -> None:
    r = Rechecks(settle=1.0)
    r.schedule("a", 0.0)
    r.schedule("b", 0.0)
    r.forget("a")
    assert list(r.keys()) == ["b"]
