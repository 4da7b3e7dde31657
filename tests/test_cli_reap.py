from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _reap_lab import lo_netns
from halfclose.cli import main
from halfclose.errors import EnvironmentProblem
from halfclose.sockdiag import InetDiagSockId, SockDiag

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["reap"], "--uid"),
        (["reap", "--uid", "abc"], "uid 'abc' is not a number"),
        (["reap", "--uid", "10400", "--port", "0"], "port 0 is out of range"),
        (["reap", "--uid", "10400", "--interval", "-1"], "must be more than 0"),
        (["reap", "--uid", "10400", "--trigger", "ebpf"], "invalid choice"),
        (["reap", "--uid", "10400", "--addr", "not-an-address"], "is not an address or network"),
        (["reap", "--uid", "10400", "--nflog-group", "70000"], "out of range"),
        (["reap", "--uid", "10400", "--trigger", "poll", "--no-rules"], "--no-rules only"),
        (["reap"], "give the app uids with --uid, or a --config file"),
        (["reap", "--uid", "1", "--metrics", "host:x"], "has no port 1-65535"),
        (["reap", "--config", "/nonexistent/reap.toml"], "cannot read config file /nonexistent/reap.toml"),
        (["watch", "--json", "--metrics", "9100"], "does not go with --json"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit from inside the parser
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def run_as(argv: list[str], *prefix: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([*prefix, sys.executable, "-m", "halfclose", *argv],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.root
def test_not_root_is_one_line_and_status_2() -> None:
    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    done = run_as(["reap", "--uid", "10400"], *nobody)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "needs CAP_NET_ADMIN" in done.stderr


@pytest.mark.root
def test_root_without_cap_net_admin_is_one_line_and_status_2() -> None:
    done = run_as(["reap", "--uid", "10400"], "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "needs CAP_NET_ADMIN" in done.stderr


@pytest.mark.root
def test_kernel_refusing_destroy_is_an_environment_problem() -> None:
    """EOPNOTSUPP from SOCK_DESTROY, shown with the one inet_diag protocol that has no destroy
    handler on this kernel (MPTCP): the same answer a kernel without CONFIG_INET_DIAG_DESTROY
    gives for TCP."""
    import ipaddress

    any4 = ipaddress.IPv4Address(0)
    sid = InetDiagSockId(family=socket.AF_INET, sport=0, dport=0, src=any4, dst=any4)
    with lo_netns() as ns, SockDiag(netns=ns.name) as sd:
        with pytest.raises(EnvironmentProblem, match=r"EOPNOTSUPP.*netfilter fix"):
            sd.destroy(sid, protocol=262)
        assert sd.destroy(sid).errno == 2  # TCP has it: ENOENT for a socket that cannot exist


@pytest.mark.root
def test_dry_run_destroys_nothing_and_reports() -> None:
    import time

    from _reap_lab import connect_pair, listener
    from test_reap_agent import LiveEvents, start_reaper, stop_reaper, wait_until

    with lo_netns() as ns:
        lst = listener(ns, ns.v4, 80)
        c, a = connect_pair(ns, lst, 10400)
        a.close()
        proc = start_reaper(ns, "--uid", "10400", "--trigger", "poll", "--interval", "0.02",
                            "--dry-run", "--log", "json")
        started = time.monotonic()
        live = LiveEvents(proc)
        try:
            wait_until(lambda: bool(live.seen()))  # the verdict, however late the reaper runs
            time.sleep(max(0.0, started + 0.5 - time.monotonic()))  # many polls: still one verdict
        finally:
            events, err = stop_reaper(proc, live)
        assert [e["action"] for e in events] == ["would-destroy", "summary"]  # once, not per poll
        assert "would destroy 1" in err
        assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        c.send(b"x")  # still writable: not destroyed
        c.close()
        lst.close()


@pytest.mark.root
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_removes_rules_and_state_file(sig: str, tmp_path: Path) -> None:
    import signal
    import time

    from test_reap_agent import start_reaper

    os.environ["HALFCLOSE_STATE_DIR"] = str(tmp_path)
    try:
        with lo_netns() as ns:
            proc = start_reaper(ns, "--uid", "10400", "--port", "80")
            def ruleset() -> str:
                listing = ["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"]
                return subprocess.run(listing, capture_output=True, text=True, check=True).stdout

            assert "table inet halfclose" in ruleset()
            state = list((tmp_path / "reap").glob("*.json"))
            assert [p.name for p in state] == [f"{proc.pid}.json"]
            time.sleep(0.1)
            proc.send_signal(getattr(signal, sig))
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            assert b"FINs seen 0" in err
            assert "table inet halfclose" not in ruleset()
            assert not list((tmp_path / "reap").glob("*.json"))
    finally:
        del os.environ["HALFCLOSE_STATE_DIR"]


@pytest.mark.root
def test_sigterm_at_any_moment_of_set_up_leaves_no_rules() -> None:
    import signal
    import time

    from halfclose.proc import spawn

    env = dict(os.environ, PYTHONPATH=SRC)
    with lo_netns() as ns:
        for delay in (0.0, 0.1, 0.2, 0.3, 0.4, 0.6):
            proc = spawn([sys.executable, "-m", "halfclose", "reap", "--uid", "10400", "--port", "80"],
                         netns=ns.name, env=env)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            assert proc.returncode in (0, -signal.SIGTERM), err
            assert b"Traceback" not in err
            listing = ["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"]
            out = subprocess.run(listing, capture_output=True, text=True, check=True).stdout
            assert "table inet halfclose" not in out, f"rules left after SIGTERM at {delay} s"


@pytest.mark.root
def test_nflog_reaper_sweeps_once_at_start() -> None:
    from _reap_lab import connect_pair, listener
    from test_reap_agent import start_reaper, stop_reaper

    with lo_netns() as ns:
        lst = listener(ns, ns.v4, 80)
        old, a = connect_pair(ns, lst, 10400)
        a.close()  # its FIN came before the reaper: no NFLOG message will ever name it
        proc = start_reaper(ns, "--uid", "10400", "--port", "80", "--log", "json")
        events, _ = stop_reaper(proc)
        assert [(e["action"], e["trigger"]) for e in events][:1] == [("destroy", "start")]
        with pytest.raises(ConnectionAbortedError):
            old.send(b"x")
        old.close()
        lst.close()


@pytest.mark.root
def test_metrics_address_in_use_is_one_line_and_leaves_no_rules() -> None:
    import socket as socket_

    from halfclose.sockdiag import netns_entered

    with lo_netns() as ns:
        with netns_entered(ns.name):
            taken = socket_.socket()
        taken.bind(("127.0.0.1", 9464))
        taken.listen()
        done = run_as(["reap", "--uid", "10400", "--metrics", "127.0.0.1:9464"], "ip", "netns", "exec", ns.name)
        taken.close()
        assert done.returncode == 2
        assert done.stderr == ("halfclose reap: error: metrics address 127.0.0.1:9464 is in use: "
                               "choose another with --metrics [ADDR:]PORT\n")
        listing = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"],
                                 capture_output=True, text=True, check=True).stdout
        assert "halfclose" not in listing
