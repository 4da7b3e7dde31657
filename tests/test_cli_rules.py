"""``halfclose rules``: what it prints, and one line with status 2 for anything wrong."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from halfclose.cli import main
from halfclose.netns import Claim
from halfclose.proc import run

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_show_prints_the_nft_transaction(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["rules", "show", "--uid", "10400", "--uid", "10401"]) == 0
    out = capsys.readouterr().out
    assert "table inet halfclose {" in out
    assert "meta skuid { 10400, 10401 }" in out
    assert "tcp dport { 80, 443 }" in out
    assert "reject with tcp reset" in out
    assert "meta mark" not in out  # the packet mark is never read or written


def test_show_iptables_and_nflog(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rules", "show", "--uid", "10400", "--port", "8080,8443", "--backend", "iptables-legacy",
            "--strategy", "nflog", "--nflog-group", "50",
            "--tag-mask", "0x10000000", "--fin-mask", "0x20000000"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "# iptables-legacy-restore --noflush -w" in out
    assert "# ip6tables-legacy-restore --noflush -w" in out
    assert "--nflog-group 50" in out and "REJECT" not in out
    assert "--dports 8080,8443" in out and "--mark 0x10000000/0x30000000" in out
    assert " MARK " not in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["show", "--uid", "abc"], "uid 'abc' is not a number"),
        (["show"], "no app uid given"),
        (["show", "--uid", "1", "--port", "0"], "port 0 is not a TCP port"),
        (["show", "--uid", "1", "--port", "70000"], "port 70000 is not a TCP port"),
        (["show", "--uid", "1", "--port", ",".join(str(p) for p in range(1, 17))], "at most 15"),
        (["show", "--uid", "1", "--nflog-group", "2"], "netd's groups 0-3"),
        (["show", "--uid", "1", "--tag-mask", "0x08000000"], "overlap"),
        (["show", "--uid", "1", "--tag-mask", "0"], "non-zero"),
        (["show", "--uid", "1", "--fin-mask", "lots"], "is not a number"),
        (["show", "--uid", "1", "--target", "android", "--tag-mask", "0x01000000"], "netd's connection-mark"),
        (["apply", "--uid", "1", "--target", "android"], "needs --adb SERIAL"),
        (["apply", "--uid", "1", "--adb", "x", "--netns", "y"], "do not go together"),
        (["apply", "--uid", "1", "--backend", "pf"], "invalid choice"),
        (["uid", "not-a-package", "--adb", "emulator-5554"], "not an Android package name"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["rules", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert says in captured.err


@pytest.mark.root
def test_not_root_is_one_line_and_status_2() -> None:
    argv = ["setpriv", "--reuid", "10400", "--regid", "10400", "--clear-groups",
            "/usr/bin/python3", "-m", "halfclose", "rules", "apply", "--uid", "10400"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": SRC}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "needs root" in done.stderr


@pytest.mark.root
def test_apply_status_remove_in_a_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    with Claim() as claim:
        ns = claim.add_netns("rules")
        before = run(["nft", "list", "ruleset"], netns=ns).stdout
        assert cli(["rules", "status", "--netns", ns]) == 1
        assert "no rules in place" in capsys.readouterr().out
        # Bad input leaves the ruleset alone.
        assert cli(["rules", "apply", "--netns", ns, "--uid", "10400", "--port", "99999"]) == 2
        assert run(["nft", "list", "ruleset"], netns=ns).stdout == before
        capsys.readouterr()
        assert cli(["rules", "apply", "--netns", ns, "--uid", "10400", "--backend", "nft"]) == 0
        assert "rules applied with nft" in capsys.readouterr().out
        assert cli(["rules", "status", "--netns", ns, "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["installed"] is True and st["backend"] == "nft"
        assert set(st["counters"]) == {"tagged", "client_closed", "fin_flagged", "rejected", "logged"}
        assert cli(["rules", "status", "--netns", ns]) == 0
        assert "fin flagged" in capsys.readouterr().out
        assert cli(["rules", "remove", "--netns", ns]) == 0
        assert "rules removed" in capsys.readouterr().out
        assert run(["nft", "list", "ruleset"], netns=ns).stdout == before
        assert cli(["rules", "remove", "--netns", ns]) == 0
        assert "no rules were in place" in capsys.readouterr().out


@pytest.mark.root
def test_missing_namespace_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["rules", "status", "--netns", "hc-does-not-exist-rules"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "namespace hc-does-not-exist-rules does not exist" in err
