"""The rules on real kernel TCP: nginx closes idle keep-alive connections, an app client reuses one.

tshark reads the client-side capture as the oracle for what went on the wire.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import _rules_lab as lab

from halfclose.errors import EnvironmentProblem
from halfclose.netfilter import (
    Backend,
    Policy,
    Strategy,
    Target,
    apply,
    installed,
    remove,
    resolve_backend,
    status,
)
from halfclose.netns import Claim
from halfclose.proc import run

pytestmark = pytest.mark.root

BACKENDS = [Backend.NFT, Backend.IPTABLES_NFT, Backend.IPTABLES_LEGACY]
FAMILIES = ["ipv4", "ipv6"]
POLICY = Policy(uids=(lab.APP_UID,), ports=(80,))


Result = dict[str, object]


def _run_clients(b: lab.Bench, family: str) -> tuple[Result, Result, Result, Result, list[lab.Segment]]:
    """The app reusing a connection, another uid doing the same, the app closing a connection
    itself, and the app reading a "Connection: close" response late; all at once."""
    with lab.capture(b, "wire") as pcap:
        app = lab.start_client(b, family)
        other = lab.start_client(b, family, uid=lab.OTHER_UID)
        closer = lab.start_client(b, family, mode="close")
        late = lab.start_client(b, family, mode="late")
        results = lab.finish(app), lab.finish(other), lab.finish(closer), lab.finish(late)
    return (*results, lab.segments(pcap))


def _ports(result: dict[str, object]) -> list[int]:
    ports = result["ports"]
    assert isinstance(ports, list)
    return [int(p) for p in ports]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_app_fails_fast_and_nobody_else_is_touched(backend: Backend, family: str) -> None:
    with lab.bench() as b:
        lab.watch(b.client)
        with installed(POLICY, backend=backend, netns=b.client) as used:
            assert used is backend
            app, other, closer, late, segs = _run_clients(b, family)
            st = status(netns=b.client)
        # The app: its stale write failed locally (in the request, not waiting for a response), no
        # payload went out after the server's FIN, and one reconnect got the answer.
        assert app["error"] == "BrokenPipeError" and app["phase"] == "request"
        assert app["bodies"] == ["hello", "hello"]
        first, second = _ports(app)
        stale = lab.conversation(segs, first)
        assert any(not s.from_client and s.fin for s in stale)
        assert not lab.payload_after_server_fin(stale)
        assert not any(s.rst for s in stale if not s.from_client)
        # The server learns that the connection is gone: its FIN retransmission meets the client's RST.
        assert any(s.rst for s in stale if s.from_client)
        assert not any(s.rst for s in lab.conversation(segs, second))
        # Another uid: untouched, it still writes into the dead connection and gets the server's RST.
        assert other["phase"] == "response"
        assert lab.payload_after_server_fin(lab.conversation(segs, _ports(other)[0]))
        # A connection the client closes itself: no reset, and the server's FIN is sent once (it was ACKed).
        (own,) = _ports(closer)
        conv = lab.conversation(segs, own)
        assert any(s.from_client and s.fin for s in conv)
        assert not any(s.rst for s in conv)
        assert sum(1 for s in conv if not s.from_client and s.fin) == 1
        # A response that came with the server's FIN is still read in full after the reset.
        assert late["error"] is None and late["bodies"] == [f"{lab.BIG} bytes"]
        assert any(s.rst and s.from_client for s in lab.conversation(segs, _ports(late)[0]))
        # The counters saw it: the app's four connections were tagged, two server FINs flagged.
        assert st.installed and st.backend is backend
        assert st.counters["tagged"] == 4
        assert st.counters["fin_flagged"] == 2
        assert st.counters["rejected"] >= 1
        assert st.counters["client_closed"] >= 1
        assert not status(netns=b.client).installed
        # netd's connection-mark bit survived on every packet, and no packet mark was ever set.
        assert lab.watched(b.client) == {"packet_mark": 0, "lost_bit": 0}


@pytest.mark.parametrize("family", FAMILIES)
def test_without_rules_the_stale_request_goes_out_and_is_reset(family: str) -> None:
    with lab.bench() as b:
        app, _other, _closer, late, segs = _run_clients(b, family)
    assert late["bodies"] == [f"{lab.BIG} bytes"]
    assert app["phase"] == "response"
    stale = lab.conversation(segs, _ports(app)[0])
    assert lab.payload_after_server_fin(stale)
    assert any(s.rst for s in stale if not s.from_client)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nflog_strategy_logs_the_server_fin_and_rejects_nothing(backend: Backend) -> None:
    policy = Policy(uids=(lab.APP_UID,), ports=(80,), strategy=Strategy.NFLOG, nflog_group=77)
    with lab.bench() as b, installed(policy, backend=backend, netns=b.client):
        with lab.capture(b, "nflog", iface="nflog:77") as logged, lab.capture(b, "wire") as pcap:
            app = lab.finish(lab.start_client(b, "ipv4"))
            other = lab.finish(lab.start_client(b, "ipv4", uid=lab.OTHER_UID))
        st = status(netns=b.client)
        segs, log = lab.segments(pcap), lab.segments(logged)
    # Nothing destroys the socket here (that is the reaper's job): the stale request goes out.
    assert app["phase"] == "response"
    assert lab.payload_after_server_fin(lab.conversation(segs, _ports(app)[0]))
    # Exactly the server's FIN of the app's first connection was logged, nothing of the other uid.
    assert [(s.client_port, s.from_client, s.fin) for s in log] == [(_ports(app)[0], False, True)]
    assert _ports(other)[0] not in {s.client_port for s in log}
    assert st.counters["logged"] == 1 and st.counters["rejected"] == 0


# ----------------------------------------------------------------------------------------------
# the ruleset before and after

_FOREIGN_NFT = "table inet other {\n chain out {\n type filter hook output priority 0; policy accept;\n" \
    " tcp dport 9 counter\n }\n}\n"
_FOREIGN_IPT = "*mangle\n-A OUTPUT -p udp --dport 9 -j ACCEPT\n" \
    "-A PREROUTING -p udp --sport 9 -j ACCEPT\nCOMMIT\n" \
    "*filter\n-A OUTPUT -p udp --dport 9 -j ACCEPT\n-A OUTPUT -p udp --dport 10 -j ACCEPT\nCOMMIT\n"

_DUMPS = [
    ["nft", "list", "ruleset"],
    ["iptables-nft-save"],
    ["ip6tables-nft-save"],
    ["iptables-legacy-save"],
    ["ip6tables-legacy-save"],
]


def dump(netns: str) -> dict[str, str]:
    """Every ruleset view, without the save programs' time stamps and chain policy counters."""
    out = {}
    for argv in _DUMPS:
        text = run(argv, netns=netns).stdout
        lines = [re.sub(r"\[\d+:\d+\]", "[-]", line) for line in text.splitlines()]
        out[argv[0]] = "\n".join(line for line in lines if not line.startswith("#"))
    return out


@contextlib.contextmanager
def namespace(*, foreign: bool) -> Iterator[str]:
    with Claim() as claim:
        ns = claim.add_netns("rules")
        if foreign:
            run(["nft", "-f", "-"], netns=ns, input=_FOREIGN_NFT)
            for prog in ("iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore",
                         "ip6tables-legacy-restore"):
                run([prog, "--noflush"], netns=ns, input=_FOREIGN_IPT)
        yield ns


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_twice_then_remove_restores_every_ruleset_exactly(backend: Backend, strategy: Strategy) -> None:
    policy = Policy(uids=(lab.APP_UID, 10402), ports=(80, 443, 8080), strategy=strategy)
    with namespace(foreign=True) as ns:
        before = dump(ns)
        apply(policy, backend=backend, netns=ns)
        once = dump(ns)
        assert once != before
        apply(policy, backend=backend, netns=ns)
        assert dump(ns) == once
        assert remove(netns=ns)
        assert dump(ns) == before
        assert not remove(netns=ns)
        assert dump(ns) == before


@pytest.mark.parametrize("backend", [Backend.NFT, Backend.IPTABLES_NFT])
def test_remove_in_an_empty_namespace_leaves_it_empty(backend: Backend) -> None:
    with namespace(foreign=False) as ns:
        before = dump(ns)
        with installed(POLICY, backend=backend, netns=ns):
            assert dump(ns) != before
        assert dump(ns) == before


def test_legacy_remove_in_an_empty_namespace_leaves_only_empty_tables() -> None:
    # x_tables cannot unregister a table from a namespace once used: what stays is the empty
    # built-in chains with policy ACCEPT, which is what an unused table means anyway.
    with namespace(foreign=False) as ns:
        before = dump(ns)
        with installed(POLICY, backend=Backend.IPTABLES_LEGACY, netns=ns):
            pass
        after = dump(ns)
        for key in ("iptables-legacy-save", "ip6tables-legacy-save"):
            lines = after.pop(key).splitlines()
            rules = [line for line in lines if not line.startswith((":", "*", "COMMIT"))]
            chains = [line for line in dump(ns)[key].splitlines() if line.startswith(":")]
            assert rules == []
            assert all(" ACCEPT " in line for line in chains)
            before.pop(key)
        assert after == before


def test_strategy_change_replaces_the_rules() -> None:
    with namespace(foreign=True) as ns:
        apply(POLICY, backend=Backend.IPTABLES_LEGACY, netns=ns)
        apply(Policy(uids=(1,), strategy=Strategy.NFLOG), backend=Backend.IPTABLES_LEGACY, netns=ns)
        saved = run(["iptables-legacy-save"], netns=ns).stdout
        assert "HALFCLOSE-REJECT" not in saved and "NFLOG" in saved and "--uid-owner 10400" not in saved
        assert saved.count("-j HALFCLOSE-OUT") == 1
        remove(netns=ns)


@pytest.mark.parametrize("backend", [Backend.IPTABLES_NFT, Backend.IPTABLES_LEGACY])
def test_failure_half_way_leaves_the_ruleset_as_it_was(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IPv4 goes in for real, then the IPv6 program fails: the IPv4 part must be undone.
    variant = backend.split("-")[1]
    fake = tmp_path / f"ip6tables-{variant}-restore"
    fake.write_text("#!/bin/sh\necho 'ip6tables-restore: line 3 failed' >&2\nexit 1\n")
    fake.chmod(0o755)
    with namespace(foreign=True) as ns:
        apply(Policy(uids=(5,), ports=(8443,)), backend=backend, netns=ns)  # an earlier version in place
        before = dump(ns)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
        with pytest.raises(EnvironmentProblem, match=r"refused the rules.*left as it was"):
            apply(POLICY, backend=backend, netns=ns)
        assert dump(ns) == before
        monkeypatch.undo()
        remove(netns=ns)


def test_auto_prefers_legacy_when_legacy_holds_rules_then_nft() -> None:
    with namespace(foreign=False) as ns:
        assert apply(POLICY, netns=ns) is Backend.NFT
        assert status(netns=ns).backend is Backend.NFT
        remove(netns=ns)
        run(["iptables-legacy-restore", "--noflush"], netns=ns, input=_FOREIGN_IPT)
        assert apply(POLICY, netns=ns) is Backend.IPTABLES_LEGACY
        assert remove(netns=ns)
        assert not status(netns=ns).installed


class _Bare:
    """A host where none of the netfilter programs exist (nothing is run there)."""

    target = Target.LINUX

    def run(self, argv: object, *, input: str | None = None, check: bool = True) -> object:
        raise AssertionError(f"nothing may run here: {argv}")

    def has(self, program: str) -> bool:
        return False

    def describe(self) -> str:
        return "a bare host"


@pytest.mark.parametrize("backend", [Backend.AUTO, *BACKENDS])
def test_a_missing_backend_is_one_clear_line(backend: Backend) -> None:
    with pytest.raises(EnvironmentProblem, match="installed on a bare host") as err:
        resolve_backend(_Bare(), backend)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "install" in str(err.value)
