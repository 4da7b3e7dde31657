"""The reaper as a service: Prometheus metrics against tshark, SIGHUP reload, takeover after SIGKILL,
the systemd unit.

Two namespaces joined by a veth (client: the app's uids; server: plain listening sockets that the test
closes one by one, so each close is one server FIN on an idle keep-alive connection). tcpdump records
the client side; tshark is the oracle for RSTs after server FINs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _reap_lab import Ns, capture, veth_pair, wait_destroyed
from halfclose.netns import Claim
from halfclose.proc import run, spawn
from halfclose.sockdiag import netns_entered
from test_reap_agent import start_reaper, stop_reaper

SRC = str(Path(__file__).resolve().parents[1] / "src")
APP, NEWAPP = 10400, 10401
DESTROYED = "halfclose_sockets_destroyed_total{uid=10400}"


@dataclass(frozen=True)
class Pair:
    client: str
    server: str
    server_ip: str
    workdir: Path


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    with Claim() as claim, tempfile.TemporaryDirectory(prefix="hc-reap-svc-") as tmp, \
            veth_pair(claim, "scli", "ssrv") as (cli, srv, server_ip):
        yield Pair(client=cli, server=srv, server_ip=server_ip, workdir=Path(tmp))


class Server:
    """A listening socket in the server namespace; connections made to it by app uids."""

    def __init__(self, p: Pair, port: int = 80) -> None:
        self.p = p
        with netns_entered(p.server):
            self.lst = socket.socket()
        self.lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lst.bind((p.server_ip, port))
        self.lst.listen(1024)
        self.port = port

    def connect(self, uid: int, n: int) -> list[tuple[socket.socket, socket.socket]]:
        out = []
        for _ in range(n):
            with netns_entered(self.p.client):
                os.setegid(uid)
                os.seteuid(uid)
                try:
                    c = socket.socket()
                finally:
                    os.seteuid(0)
                    os.setegid(0)
            c.connect((self.p.server_ip, self.port))
            a, _ = self.lst.accept()
            out.append((c, a))
        return out

    def close(self) -> None:
        self.lst.close()


def aborted(pairs: list[tuple[socket.socket, socket.socket]]) -> int:
    """How many app sockets the reaper destroyed (their next send fails with ECONNABORTED)."""
    n = 0
    for c, _ in pairs:
        try:
            c.send(b"x")
        except ConnectionAbortedError:
            n += 1
        except OSError:
            pass
        c.close()
    return n


def rsts_after_server_fins(pcap: Path, server_ip: str) -> int:
    """Connections in which the client sent a RST after the server's FIN (per tshark)."""
    out = run(["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=,", "-e", "ip.src",
               "-e", "tcp.stream", "-e", "tcp.flags.fin", "-e", "tcp.flags.reset"]).stdout
    fin_seen: set[str] = set()
    answered: set[str] = set()
    for line in out.splitlines():
        src, stream, fin, rst = line.split(",")
        if src == server_ip and fin in ("1", "True"):
            fin_seen.add(stream)
        elif src != server_ip and rst in ("1", "True") and stream in fin_seen:
            answered.add(stream)
    return len(answered)


def scrape(ns: str, port: int) -> dict[str, float]:
    """``/metrics`` of a reaper in *ns*, as sample name{labels} -> value."""
    with netns_entered(ns):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.root
def test_metrics_count_what_tshark_sees_while_connections_are_reaped() -> None:
    with pair() as p:
        srv = Server(p)
        pcap = p.workdir / "m.pcap"
        proc = start_reaper(Ns(p.client, "", ""), "--uid", str(APP), "--port", "80", "--metrics", "127.0.0.1:9464")
        try:
            first = scrape(p.client, 9464)
            assert first['halfclose_reap_info{backend=nft,trigger=nflog,version=0.1.0}'] == 1
            assert first["halfclose_fin_to_destroy_seconds_count{}"] == 0
            pairs = srv.connect(APP, 60)
            other = srv.connect(NEWAPP, 1)  # not selected: stays in CLOSE_WAIT
            other[0][1].close()
            with capture(p.client, pcap, "tcp", peer=p.server_ip):
                for i, (_, a) in enumerate(pairs):
                    a.close()
                    time.sleep(0.005)
                    if i == 29:  # scraped while connections are being reaped (30 of 60 closed)
                        wait_for(lambda: scrape(p.client, 9464).get(DESTROYED, 0) > 0)  # however late it runs
                        mid = scrape(p.client, 9464)
                        assert 0 < mid[DESTROYED] <= 30
                        assert mid["halfclose_close_wait_sockets{uid=10401}"] == 1
                wait_for(lambda: scrape(p.client, 9464).get("halfclose_sockets_destroyed_total{uid=10400}") == 60)
                final = scrape(p.client, 9464)
        finally:
            _events, err = stop_reaper(proc)
        on_wire = rsts_after_server_fins(pcap, p.server_ip)
        assert on_wire == 60
        assert final["halfclose_sockets_destroyed_total{uid=10400}"] == on_wire
        assert final["halfclose_fin_to_destroy_seconds_count{}"] == on_wire
        assert final["halfclose_fin_to_destroy_seconds_bucket{le=+Inf}"] == on_wire
        assert final["halfclose_reap_fins_seen_total{}"] == 60
        assert 0 < final["halfclose_fin_to_destroy_seconds_sum{}"] < 60 * 0.5
        assert "halfclose_close_wait_sockets{uid=10400}" not in final  # none left in CLOSE_WAIT
        assert final["halfclose_close_wait_sockets{uid=10401}"] == 1
        other[0][0].close()
        assert "destroyed 60," in err
        assert aborted(pairs) == 60
        srv.close()


class NotifySocket:
    """A stand-in for systemd's notification socket: collects the datagrams the service sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(15)
        self.path = path
        self.seen: list[str] = []

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def until(self, key: str) -> str:
        while True:
            text = self.sock.recv(4096).decode()
            self.seen.append(text)
            if key in text.splitlines():
                return text


def _start(p: Pair, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    return spawn([sys.executable, "-m", "halfclose", "reap", *args], netns=p.client, env=full,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.root
def test_sighup_reloads_the_config_and_no_fin_goes_unhandled() -> None:
    with pair() as p, contextlib.ExitStack() as stack:
        srv = Server(p)
        config = p.workdir / "reap.toml"
        config.write_text(f"uids = [{APP}]\nports = [80]\n")
        notify = stack.enter_context(NotifySocket(p.workdir / "notify"))
        proc = _start(p, "--config", str(config), env={"NOTIFY_SOCKET": str(notify.path),
                                                       "WATCHDOG_USEC": "400000"})
        try:
            ready = notify.until("READY=1")
            assert "STATUS=reaping: trigger nflog" in ready and f"uids {APP};" in ready
            notify.until("WATCHDOG=1")  # the watchdog is fed (every 0.2 s here)
            steady = srv.connect(APP, 80)
            closing = threading.Thread(target=lambda: [a.close() or time.sleep(0.004) for _, a in steady])
            closing.start()  # FINs keep coming while the configuration is reloaded
            time.sleep(0.1)
            config.write_text(f"uids = [{APP}, {NEWAPP}]\nports = [80]\n")
            proc.send_signal(signal.SIGHUP)
            notify.until("RELOADING=1")
            reloaded = notify.until("READY=1")
            assert f"uids {APP},{NEWAPP};" in reloaded
            closing.join()
            newcomer = srv.connect(NEWAPP, 1)  # a connection of the uid the reload added
            newcomer[0][1].close()
            wait_destroyed([c for c, _ in steady + newcomer])  # every FIN handled before the stop
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err_bytes = proc.communicate(timeout=20)
        err = err_bytes.decode()
        assert proc.returncode == 0, err
        assert "halfclose reap: reloaded (trigger nflog" in err
        assert "FINs seen 81, destroyed 81," in err
        assert aborted(steady) == 80
        assert aborted(newcomer) == 1
        notify.until("STOPPING=1")
        srv.close()


@pytest.mark.root
def test_a_bad_config_on_reload_keeps_the_running_one() -> None:
    with pair() as p, contextlib.ExitStack() as stack:
        srv = Server(p)
        config = p.workdir / "reap.toml"
        config.write_text(f"uids = [{APP}]\nports = [80]\n")
        notify = stack.enter_context(NotifySocket(p.workdir / "notify"))
        proc = _start(p, "--config", str(config), env={"NOTIFY_SOCKET": str(notify.path)})
        try:
            notify.until("READY=1")
            config.write_text("uids = [10400]\nports = [70000]\n")
            proc.send_signal(signal.SIGHUP)
            again = notify.until("READY=1")
            assert "reload failed" in again
            pairs = srv.connect(APP, 2)
            for _, a in pairs:
                a.close()
            wait_destroyed([c for c, _ in pairs])
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err_bytes = proc.communicate(timeout=20)
        err = err_bytes.decode()
        assert "reload failed, keeping the running configuration" in err and "70000 is out of range" in err
        assert aborted(pairs) == 2
        srv.close()


def _ruleset(ns: str, backend: str) -> str:
    """The netfilter state of *ns* with the packet counters taken out."""
    if backend == "nft":
        text = run(["nft", "list", "ruleset"], netns=ns).stdout
        return re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    text = run(["iptables-legacy-save"], netns=ns).stdout + run(["ip6tables-legacy-save"], netns=ns).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_restart_after_sigkill_takes_over_the_rules_instead_of_adding_a_second_set(backend: str) -> None:
    with pair() as p:
        state = p.workdir / "state"
        env = {"HALFCLOSE_STATE_DIR": str(state)}
        args = ("--uid", str(APP), "--port", "80", "--backend", backend)
        empty = _ruleset(p.client, backend)
        first = _start(p, *args, env=env)
        assert first.stderr is not None
        assert b"ready" in first.stderr.readline()
        once = _ruleset(p.client, backend)
        assert once != empty
        first.kill()
        first.wait()
        first.stderr.close()
        assert _ruleset(p.client, backend) == once  # a crash leaves the rules behind
        assert [f.name for f in (state / "reap").iterdir()] == [f"{first.pid}.json"]
        second = _start(p, *args, env=env)
        assert second.stderr is not None
        line = second.stderr.readline()
        assert b"taking over the rules an earlier run left in place" in line
        assert f"pid {first.pid}, no longer running".encode() in line
        assert b"ready" in second.stderr.readline()
        assert _ruleset(p.client, backend) == once  # exactly one set
        assert [f.name for f in (state / "reap").iterdir()] == [f"{second.pid}.json"]
        srv = Server(p)
        pairs = srv.connect(APP, 3)
        for _, a in pairs:
            a.close()
        wait_destroyed([c for c, _ in pairs])
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=20)
        assert second.returncode == 0 and b"destroyed 3," in err
        assert aborted(pairs) == 3
        after = _ruleset(p.client, backend)
        if backend == "nft":
            assert after == empty
        else:  # legacy x_tables keep a table once used: empty built-in chains (docs/rules.md)
            assert "HALFCLOSE" not in after and "-A " not in after
        srv.close()


def test_systemd_unit_passes_verify_and_is_rated_ok(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "halfclose", "reap", "--systemd-unit"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=SRC), check=True)
    unit = tmp_path / "halfclose-reap.service"
    unit.write_text(done.stdout)
    assert f"ExecStart={sys.executable} -m halfclose reap --config /etc/halfclose/reap.toml" in done.stdout
    for line in ("Type=notify", "WatchdogSec=10s", "ExecReload=/bin/kill -HUP $MAINPID",
                 "CapabilityBoundingSet=CAP_NET_ADMIN", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6"):
        assert line in done.stdout.splitlines()
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, check=True).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", security)
    assert found is not None, security
    assert found.group(2) in ("SAFE", "OK") and float(found.group(1)) <= 2.0
