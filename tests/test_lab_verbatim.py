"""The field report's iptables commands: as written, the literal and the naive port, the netd stand-in."""

from __future__ import annotations

from halfclose.lab.verbatim import LABEL, NETD_MARK, _packets, as_written, netd_standin, ported


def test_as_written_is_the_reports_five_commands() -> None:
    written = [" ".join(c) for c in as_written(10400, 80)]
    assert written == [
        "-t filter -A INPUT -m owner --uid-owner 10400 -p tcp --sport 80 --tcp-flags FIN,ACK FIN,ACK -j MARK "
        "--set-mark 15",
        "-t filter -A INPUT -j CONNMARK --save-mark",
        "-t filter -A OUTPUT -j CONNMARK --restore-mark",
        "-t filter -A INPUT -j CONNMARK --restore-mark",
        "-t filter -A OUTPUT -m mark --mark 15 -p tcp --tcp-flags ACK ACK -j REJECT --reject-with tcp-reset",
    ]


def test_the_literal_port_moves_the_owner_match_to_output_and_the_naive_one_drops_it() -> None:
    written, literal, naive = as_written(10400, 80), ported(10400, 80), ported(10400, 80, naive=True)
    tag, fin, *rest = literal
    # The owner match tags the app's connections on OUTPUT; the FIN rule matches the tag instead.
    assert " ".join(tag) == f"-t filter -A OUTPUT -m owner --uid-owner 10400 -m connlabel --label {LABEL} --set"
    assert " ".join(fin) == (f"-t filter -A INPUT -m connlabel --label {LABEL} -p tcp --sport 80 --tcp-flags "
                             "FIN,ACK FIN,ACK -j MARK --set-mark 15")
    assert tuple(rest) == written[1:]  # everything else as written
    assert "owner" not in naive[0] and "connlabel" not in " ".join(" ".join(r) for r in naive)
    assert naive[1:] == written[1:]
    assert [w for w in naive[0] if w not in ("-m", "owner", "--uid-owner", "10400")] == list(naive[0])


def test_the_netd_standin_marks_the_app_and_counts_overwritten_marks() -> None:
    rules = [" ".join(r) for r in netd_standin(10400)]
    assert rules[0] == f"-t mangle -A OUTPUT -m owner --uid-owner 10400 -j MARK --set-mark 0x{NETD_MARK:x}"
    assert "! --mark" in rules[2] and "POSTROUTING" in rules[2]


def test_counters_are_read_from_iptables_save() -> None:
    save = ("[7:420] -A POSTROUTING -m owner --uid-owner 10400 -m comment --comment halfclose-verbatim-app\n"
            "[3:120] -A OUTPUT -m mark --mark 0xf -j REJECT --reject-with tcp-reset\n")
    assert _packets(save, "halfclose-verbatim-app") == 7
    assert _packets(save, "-j REJECT") == 3
    assert _packets(save, "missing") == 0
