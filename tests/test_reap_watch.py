from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from pathlib import Path

import pytest

from _reap_lab import connect_pair, listener, lo_netns
from halfclose.cli import main
from halfclose.reap.agent import Counters, StateFile
from halfclose.reap.watch import AgeTracker, Owner, ProcIndex, build_snapshot, read_reapers
from halfclose.sockdiag.wire import InetDiagMsg, InetDiagSockId, TcpInfo, TcpState


def msg(cookie: int, state: TcpState, *, uid: int = 10400, inode: int = 0, rq: int = 1,
        last_ack_recv: int | None = None) -> InetDiagMsg:
    a = ipaddress.ip_address("198.18.9.1")
    return InetDiagMsg(
        idiag_family=socket.AF_INET, idiag_state=state, idiag_timer=0, idiag_retrans=0,
        id=InetDiagSockId(family=socket.AF_INET, sport=cookie, dport=80, src=a, dst=a, cookie=cookie),
        idiag_expires=0, idiag_rqueue=rq, idiag_wqueue=0, idiag_uid=uid, idiag_inode=inode,
        info=None if last_ack_recv is None else TcpInfo(tcpi_last_ack_recv=last_ack_recv),
    )


def test_age_tracker_keeps_first_seen_and_forgets_gone_sockets() -> None:
    t = AgeTracker()
    assert t.update([msg(1, TcpState.CLOSE_WAIT, last_ack_recv=4000)], 100.0) == {1: pytest.approx(4.0)}
    ages = t.update([msg(1, TcpState.CLOSE_WAIT, last_ack_recv=0), msg(2, TcpState.CLOSE_WAIT)], 101.0)
    assert ages == {1: pytest.approx(5.0), 2: 0.0}  # first sighting kept; the new one starts now
    assert t.update([msg(2, TcpState.CLOSE_WAIT)], 103.0) == {2: 2.0}
    assert t.update([msg(1, TcpState.CLOSE_WAIT)], 104.0) == {1: 0.0}  # came back: a new first sighting


def test_build_snapshot_groups_and_sorts() -> None:
    socks = [
        msg(1, TcpState.CLOSE_WAIT, inode=11), msg(2, TcpState.CLOSE_WAIT, inode=12, rq=40),
        msg(3, TcpState.ESTABLISHED, inode=13), msg(4, TcpState.LISTEN, uid=0, inode=14),
    ]
    owners = {11: Owner(pid=5, comm="app"), 12: Owner(pid=5, comm="app"), 13: Owner(pid=6, comm="other"),
              14: Owner(pid=1, comm="srv")}
    snap = build_snapshot(sockets=socks, ages={1: 3.0, 2: 7.5}, owners=owners, reapers=[], ts=0.0, netns=None)
    assert snap.sockets == 4 and snap.close_wait == 2
    top = snap.rows[0]
    assert (top.uid, top.pid, top.comm, top.close_wait, top.close_wait_unread, top.oldest_close_wait) == (
        10400, 5, "app", 2, 1, 7.5
    )
    assert {(r.pid, r.established, r.other) for r in snap.rows[1:]} == {(6, 1, 0), (1, 0, 1)}
    assert json.loads(snap.to_json())["rows"][0]["comm"] == "app"


def test_proc_index_finds_own_socket() -> None:
    s = socket.socket()
    try:
        inode = os.fstat(s.fileno()).st_ino
        owners = ProcIndex().owners([inode, 0])
        assert owners[inode].pid == os.getpid()
    finally:
        s.close()


def test_read_reapers_skips_dead_and_other_namespaces(tmp_path: Path) -> None:
    StateFile(path=tmp_path / "1.json", header={"pid": os.getpid(), "netns_inode": 7}).write(Counters())
    StateFile(path=tmp_path / "2.json", header={"pid": os.getpid(), "netns_inode": 8}).write(Counters())
    (tmp_path / "3.json").write_text(json.dumps({"pid": 2**22 + 12345, "netns_inode": 7}))
    (tmp_path / "4.json").write_text("not json")
    assert [b["netns_inode"] for b in read_reapers(tmp_path, netns_inode=7)] == [7]
    assert len(read_reapers(tmp_path)) == 2


@pytest.mark.root
def test_watch_json_in_a_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HALFCLOSE_STATE_DIR", str(tmp_path))
    with lo_netns() as ns:
        lst = listener(ns, ns.v4, 80)
        pairs = [connect_pair(ns, lst, 10400) for _ in range(5)]
        for _, a in pairs[:3]:
            a.close()
        counters = Counters(destroyed=4)
        inode = os.stat(f"/run/netns/{ns.name}").st_ino
        StateFile(path=tmp_path / "reap" / "1.json",
                  header={"pid": os.getpid(), "netns_inode": inode, "trigger": "nflog"}).write(counters)
        time.sleep(0.4)
        assert main(["watch", "--netns", ns.name, "--json"]) == 0
        snap = json.loads(capsys.readouterr().out)
        mine = [r for r in snap["rows"] if r["uid"] == 10400 and r["pid"] == os.getpid()]
        assert len(mine) == 1
        assert (mine[0]["close_wait"], mine[0]["established"]) == (3, 2)
        assert mine[0]["oldest_close_wait"] >= 0.3
        assert snap["close_wait"] == 3
        assert [r["counters"]["destroyed"] for r in snap["reapers"]] == [4]
        for c, a in pairs:
            c.close()
            a.close()
        lst.close()


def test_watch_bad_namespace_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--netns", "hc-no-such-namespace", "--json"]) == 2
    err = capsys.readouterr().err
    assert "no network namespace named" in err and err.count("\n") == 1


@pytest.mark.root
def test_watch_serves_its_snapshot_as_metrics() -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from halfclose.sockdiag import netns_entered

    src = str(Path(__file__).resolve().parents[1] / "src")
    with lo_netns() as ns:
        lst = listener(ns, ns.v4, 80)
        pairs = [connect_pair(ns, lst, 10400) for _ in range(3)]
        for _, a in pairs[:2]:
            a.close()
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "halfclose", "watch",
                                 "--interval", "0.2", "--metrics", "127.0.0.1:9465"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=dict(os.environ, PYTHONPATH=src))
        try:
            values: dict[str, float] = {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "halfclose_close_wait_sockets{uid=10400}" not in values:
                time.sleep(0.2)
                try:
                    with netns_entered(ns.name):
                        body = urllib.request.urlopen("http://127.0.0.1:9465/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                for family in text_string_to_metric_families(body):
                    for s in family.samples:
                        values[f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}"] = s.value
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert values["halfclose_close_wait_sockets{uid=10400}"] == 2
        assert values["halfclose_tcp_sockets{uid=10400}"] == 3
        assert values["halfclose_close_wait_oldest_seconds{uid=10400}"] >= 0
        for c, a in pairs:
            c.close()
            a.close()
        lst.close()
