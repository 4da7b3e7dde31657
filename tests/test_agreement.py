"""halfclose.agreement: connections per address pair against tshark's conversations, and the
scripts/capture-agreement run on a corpus sample (when the shared corpus is there)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from capture_bytes import ETH_IPV4, ETH_IPV6, Rec, eth, ipv4, ipv6, pcap, tcp
from halfclose import agreement as ag
from halfclose.analysis.document import to_document
from halfclose.analysis_io import analyze

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "capture-agreement"
CORPUS = next(
    (d / "shared" / "corpus" for d in ROOT.parents if (d / "shared" / "corpus").is_dir()),
    ROOT.parent / "shared" / "corpus",
)
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

A = ag.endpoint("198.18.0.1", 40000)
B = ag.endpoint("198.18.0.2", 80)
C = ag.endpoint("fd00::2", 443)


def test_endpoints_are_spelled_one_way() -> None:
    assert ag.endpoint("::ffff:198.18.0.1", 1) == ("198.18.0.1", 1)
    assert ag.endpoint("FD00:0:0::2", 443) == ag.endpoint("fd00::2", 443) == C
    assert ag.pair(B, A) == ag.pair(A, B) == (A, B)


CONV_TEXT = """\
================================================================================
TCP Conversations
Filter:<No Filter>
                                                           |       <-      | |       ->      | |     Total     |    Relative    |   Duration   |
                                                           | Frames  Bytes | | Frames  Bytes | | Frames  Bytes |      Start     |              |
198.18.0.2:80              <-> 198.18.0.1:40000                 1 54 bytes         2 108 bytes         3 162 bytes     0.000001000         0.0000
198.18.0.1:40000           <-> 198.18.0.2:80                    1 54 bytes         1 54 bytes          2 108 bytes     0.000004000         0.0000
fd00::1:40001              <-> fd00::2:443                      0 0 bytes          1 74 bytes          1 74 bytes      0.000006000         0.0000
================================================================================
"""  # noqa: E501


def test_conversation_rows_are_counted_per_pair() -> None:
    found = ag.parse_conversations(CONV_TEXT)
    assert found == Counter({(A, B): 2, ag.pair(ag.endpoint("fd00::1", 40001), C): 1})


def _reuse_capture(path: Path) -> None:
    """Two connections on one four-tuple (a new SYN with another sequence number) and one over IPv6."""
    pkts = [
        eth(ETH_IPV4, ipv4(6, tcp(40000, 80, seq=100, flags=0x02))),
        eth(ETH_IPV4, ipv4(6, tcp(80, 40000, seq=500, ack=101, flags=0x12), src="198.18.0.2", dst="198.18.0.1")),
        eth(ETH_IPV4, ipv4(6, tcp(40000, 80, seq=101, ack=501, flags=0x10))),
        eth(ETH_IPV4, ipv4(6, tcp(40000, 80, seq=90_000, flags=0x02))),
        eth(ETH_IPV4, ipv4(6, tcp(80, 40000, seq=9000, ack=90_001, flags=0x12), src="198.18.0.2", dst="198.18.0.1")),
        eth(ETH_IPV6, ipv6(6, tcp(40001, 443, seq=7, flags=0x02))),
    ]
    path.write_bytes(pcap([Rec(ts_ns=(i + 1) * 1000, data=p) for i, p in enumerate(pkts)]))


@needs_tshark
def test_both_sides_count_port_reuse_as_two_conversations(tmp_path: Path) -> None:
    f = tmp_path / "reuse.pcap"
    _reuse_capture(f)
    out = subprocess.run(["tshark", "-n", "-q", "-r", str(f), "-z", "conv,tcp"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    theirs = ag.parse_conversations(out)
    ours = ag.halfclose_pairs(to_document(analyze([f])))
    assert theirs == ours == Counter({(A, B): 2, ag.pair(ag.endpoint("fd00::1", 40001), C): 1})
    verdict = ag.judge(ag.FileRun(corpus="c", name="reuse.pcap", halfclose=ours, tshark=theirs))
    assert verdict is not None and verdict.agrees


def _run(ours: Counter[ag.Pair] | None, theirs: Counter[ag.Pair] | None, **kw: object) -> ag.FileRun:
    return ag.FileRun(corpus="c", name=str(kw.pop("name", "f.pcap")), halfclose=ours, tshark=theirs, **kw)  # type: ignore[arg-type]


def test_reasons_come_from_the_evidence() -> None:
    two, one, none = Counter({(A, B): 2}), Counter({(A, B): 1}), Counter[ag.Pair]()
    assert ag.judge(_run(none, none)) is None  # no TCP on either side: not counted
    assert ag.judge(_run(None, None)) is None  # refused by both
    assert ag.judge(_run(two, two)).reason is None  # type: ignore[union-attr]
    link = "link type 129 is not decoded: 26 packets counted and skipped (decoded: NULL, ETHERNET)"
    assert ag.judge(_run(none, one, halfclose_notes=(link,))).reason is ag.Reason.LINK_NOT_DECODED  # type: ignore[union-attr]
    encap = "16 packets inside an encapsulation that is not decoded (L2TP, EtherIP, ...)"
    assert ag.judge(_run(none, one, halfclose_notes=(encap,))).reason is ag.Reason.ENCAP_NOT_DECODED  # type: ignore[union-attr]
    zero = "1  Malformed                UDP  Bad length value 0 < 8"
    assert ag.judge(_run(one, none, tshark_notes=(zero,))).reason is ag.Reason.BIG_TCP  # type: ignore[union-attr]
    # the evidence must point the right way: a warning about a link type does not explain *more* connections
    assert ag.judge(_run(two, one, halfclose_notes=(link,))).reason is ag.Reason.UNEXPLAINED  # type: ignore[union-attr]
    assert ag.judge(_run(none, one, tshark_notes=(zero,))).reason is ag.Reason.UNEXPLAINED  # type: ignore[union-attr]
    assert ag.judge(_run(two, one)).reason is ag.Reason.UNEXPLAINED  # type: ignore[union-attr]
    assert ag.judge(_run(None, one)).reason is ag.Reason.NOT_READ  # type: ignore[union-attr]
    assert ag.judge(_run(None, None, failure="tshark timed out after 1 s")).reason is ag.Reason.FAILED  # type: ignore[union-attr]
    known = ag.judge(_run(none, one, name="x.pcap"), known={"c/x.pcap": ag.Reason.TSHARK_UNREADABLE})
    assert known is not None and known.reason is ag.Reason.TSHARK_UNREADABLE
    assert not ag.Reason.UNEXPLAINED.exception and not ag.Reason.FAILED.exception
    assert ag.Reason.LINK_NOT_DECODED.exception


def test_only_the_pairs_that_differ_are_listed() -> None:
    ours = Counter({(A, B): 2, (A, C): 1})
    theirs = Counter({(A, B): 1, (A, C): 1, (B, C): 3})
    v = ag.judge(_run(ours, theirs))
    assert v is not None
    assert v.differing == (ag.PairCount(pair=(A, B), halfclose=2, tshark=1), ag.PairCount(pair=(B, C), halfclose=0,
                                                                                        tshark=3))  # fmt: skip
    assert (v.halfclose_total, v.tshark_total) == (3, 5)


def test_tallies_tables_and_document() -> None:
    one = Counter({(A, B): 1})
    runs = [
        _run(one, one, name="a.pcap"),
        _run(Counter(), Counter(), name="b.pcap"),
        _run(Counter(), one, name="c.pcap", halfclose_notes=("link type 129 is not decoded: 2 packets",)),
        _run(one, Counter(), name="d.pcap"),
        ag.FileRun(corpus="other", name="e.pcap", halfclose=one, tshark=one),
    ]
    tallies, verdicts = ag.tally(runs)
    assert [(t.corpus, t.files, t.with_tcp, t.agreeing, t.unexplained) for t in tallies] == [
        ("c", 4, 3, 1, 1), ("other", 1, 1, 1, 0)
    ]  # fmt: skip
    table = ag.markdown_table(tallies)
    assert "| c | 4 | 3 | 1 | link_not_decoded 1, unexplained 1 | 1 |" in table
    assert "| **total** | 5 | 4 | 2 |" in table
    listing = ag.disagreements_table(verdicts)
    assert "| c/d.pcap | unexplained | 1 | 0 | 198.18.0.1:40000 198.18.0.2:80 1/0 |" in listing
    assert "a.pcap" not in listing
    doc = ag.to_document(tallies, verdicts)
    json.dumps(doc)
    assert [d["file"] for d in doc["disagreements"]] == ["c/c.pcap", "c/d.pcap"]
    assert doc["corpora"][0]["disagreeing"] == {"link_not_decoded": 1, "unexplained": 1}


def test_the_script_refuses_a_missing_folder(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "is not a folder" in done.stderr and "Traceback" not in done.stderr


#: A sample of the shared corpus: agreeing TCP files, a link type not decoded, BIG TCP inside VXLAN,
#: a file without TCP.
SAMPLE = {
    "tcpdump-tests": ["arcnet-rfc1051-arp-icmp-http.pcap", "bigtcp-ipv4-vxlan-ipv4.pcap", "802.1ad_QinQ.pcap",
                      "mptcp-fclose.pcap", "geneve.pcap"],
}  # fmt: skip


@needs_tshark
@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared capture corpus is not at {CORPUS}")
def test_the_script_on_a_corpus_sample(tmp_path: Path) -> None:
    sample = tmp_path / "tcpdump-tests"
    sample.mkdir()
    for name in SAMPLE["tcpdump-tests"]:
        src = CORPUS / "tcpdump-tests" / name
        if not src.is_file():
            pytest.skip(f"{src} is not in this copy of the corpus")
        (sample / name).symlink_to(src)
    out = tmp_path / "agreement.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(sample), "--json", str(out), "--timeout", "120"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    (corpus,) = doc["corpora"]
    assert corpus["files"] == 5
    assert corpus["with_tcp"] == 4
    assert corpus["agreeing"] == 2
    assert corpus["disagreeing"] == {"link_not_decoded": 1, "big_tcp": 1}
    assert "| tcpdump-tests | 5 | 4 | 2 |" in done.stdout


def _tshark(path: Path, *args: str) -> str:
    return subprocess.run(["tshark", "-n", "-r", str(path), *args], capture_output=True, text=True, check=True).stdout


def _streams_of(path: Path) -> ag.Streams:
    argv = ["-Y", "tcp", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"]
    for name in ag.STREAM_FIELDS:
        argv += ["-e", name]
    return ag.parse_streams(_tshark(path, *argv))


def _file_run(path: Path) -> ag.FileRun:
    doc = to_document(analyze([path]))
    return ag.FileRun(corpus="c", name=path.name, halfclose=ag.halfclose_pairs(doc),
                      tshark=ag.parse_conversations(_tshark(path, "-q", "-z", "conv,tcp")),
                      halfclose_notes=ag.halfclose_notes(doc), streams=_streams_of(path))  # fmt: skip


@needs_tshark
def test_a_tcp_header_split_across_ip_fragments_is_the_fragments_exception(tmp_path: Path) -> None:
    syn = tcp(40000, 80, seq=100, flags=0x02)
    frags = [eth(ETH_IPV4, ipv4(6, syn[:8], frag=0x2000)), eth(ETH_IPV4, ipv4(6, syn[8:], frag=1))]
    f = tmp_path / "frag.pcap"
    f.write_bytes(pcap([Rec(ts_ns=(i + 1) * 1000, data=p) for i, p in enumerate(frags)]))
    run = _file_run(f)
    assert run.streams is not None and run.streams.reassembled == Counter({(A, B): 1})  # tshark reassembled it
    assert run.halfclose == Counter() and run.tshark == Counter({(A, B): 1})
    verdict = ag.judge(run)
    assert verdict is not None and verdict.reason is ag.Reason.IP_FRAGMENTS


@needs_tshark
def test_an_ipv4_source_route_is_the_source_route_exception(tmp_path: Path) -> None:
    lsrr = bytes([0x83, 7, 4, 198, 18, 0, 9, 0])  # loose source route via 198.18.0.9, one byte of padding
    pkts = [eth(ETH_IPV4, ipv4(6, tcp(40000, 80, seq=100, flags=0x02))),
            eth(ETH_IPV4, ipv4(6, tcp(40000, 80, seq=100, flags=0x02), options=lsrr))]  # fmt: skip
    f = tmp_path / "lsrr.pcap"
    f.write_bytes(pcap([Rec(ts_ns=(i + 1) * 1000, data=p) for i, p in enumerate(pkts)]))
    run = _file_run(f)
    assert run.halfclose == Counter({(A, B): 1})  # the header's destination both times: one SYN retransmitted
    assert run.tshark == Counter({(A, B): 1, ag.pair(A, ag.endpoint("198.18.0.9", 80)): 1})
    assert run.streams is not None and run.streams.source_routed
    verdict = ag.judge(run)
    assert verdict is not None and verdict.reason is ag.Reason.SOURCE_ROUTE


def test_a_stream_missing_from_the_conversation_table_is_the_tap_exception() -> None:
    one = Counter({(A, B): 1})
    streams = ag.Streams(streams=one, reassembled=Counter(), source_routed=False)
    v = ag.judge(_run(one, Counter(), streams=streams))
    assert v is not None and v.reason is ag.Reason.TSHARK_TAP
    other = ag.Streams(streams=Counter({(A, C): 1}), reassembled=Counter(), source_routed=False)
    v = ag.judge(_run(one, Counter(), streams=other))
    assert v is not None and v.reason is ag.Reason.UNEXPLAINED


def test_the_reason_classes_are_documented() -> None:
    assert ag.reasons_table() in (ROOT / "docs" / "capture.md").read_text()
