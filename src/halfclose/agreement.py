"""TCP connections per address pair against tshark's conversations (pure: no files, no processes).

``scripts/capture-agreement`` runs ``halfclose analyze --json -`` and ``tshark -n -q -z conv,tcp``
on every file of one or more capture corpora and hands their outputs here. For each file this
module counts connections per address pair (the unordered pair of address:port endpoints) on
both sides, compares the counts pair by pair (:func:`judge`) and gives every disagreement a
reason class (:class:`Reason`); :func:`tally` sums the verdicts per corpus and
:func:`markdown_table` and :func:`to_document` lay them out.

tshark's conversation table (``-z conv,tcp``) has one row per TCP stream (``tcp.stream``), keyed
by the innermost IP addresses and ports, so a port reused with a new SYN is a second row: it is
"tshark's number of conversations per address pair".

A reason is a *documented exception* (:attr:`Reason.exception`) when the disagreement comes from
something halfclose deliberately does differently, with the evidence read from the two outputs
(halfclose's capture warnings, tshark's expert information); every other disagreement is a
defect to fix. A few files whose evidence is in the bytes only are named in :data:`KNOWN`, each
with its reason.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KNOWN",
    "STREAM_FIELDS",
    "Endpoint",
    "FileRun",
    "Pair",
    "PairCount",
    "Reason",
    "Streams",
    "Tally",
    "Verdict",
    "disagreements_table",
    "endpoint",
    "halfclose_notes",
    "halfclose_pairs",
    "judge",
    "markdown_table",
    "pair",
    "parse_conversations",
    "parse_streams",
    "reasons_table",
    "tally",
    "to_document",
]

Endpoint = tuple[str, int]
#: An unordered pair of endpoints, the smaller first.
Pair = tuple[Endpoint, Endpoint]


def endpoint(address: str, port: int) -> Endpoint:
    """An address (IPv4, IPv6, an IPv4-mapped IPv6 address) and port in one canonical spelling."""
    ip = ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.compressed, port)


def pair(a: Endpoint, b: Endpoint) -> Pair:
    """The unordered pair of two endpoints."""
    return (a, b) if a <= b else (b, a)


_CONV_ROW = re.compile(r"^(?P<a>\S+):(?P<ap>\d+)\s+<->\s+(?P<b>\S+):(?P<bp>\d+)\s+\d+")


def parse_conversations(text: str) -> Counter[Pair]:
    """Conversations per address pair from the output of ``tshark -n -q -z conv,tcp``.

    Raises:
        ValueError: a row names something that is not an address.
    """
    found: Counter[Pair] = Counter()
    for line in text.splitlines():
        m = _CONV_ROW.match(line.strip())
        if m:
            found[pair(endpoint(m["a"], int(m["ap"])), endpoint(m["b"], int(m["bp"])))] += 1
    return found


#: The fields of tshark's per-packet pass (``-Y tcp -T fields -E occurrence=a``), in this order.
STREAM_FIELDS = (
    "frame.protocols", "tcp.stream", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
    "ip.reassembled.length", "ipv6.reassembled.length", "ip.opt.type",
)  # fmt: skip

#: IPv4 options that route a packet through listed addresses: loose and strict source route.
_SOURCE_ROUTES = frozenset({"131", "137"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Streams:
    """tshark's TCP streams (``tcp.stream``) per address pair, from its per-packet fields.

    Fields:
        streams: streams per address pair (the pair of a stream's first packet).
        reassembled: of those, the streams all of whose packets tshark reassembled from IP fragments.
        source_routed: whether a TCP packet carried an IPv4 source route option (LSRR, SSRR): tshark
            then takes the route's last address for the destination.
    """

    streams: Counter[Pair]
    reassembled: Counter[Pair]
    source_routed: bool


def parse_streams(text: str) -> Streams:
    """:class:`Streams` from the tab-separated output of ``tshark -n -Y tcp -T fields -E occurrence=a``
    with :data:`STREAM_FIELDS` (several values of a field separated by commas; the innermost is last)."""
    first: dict[str, Pair] = {}
    whole: set[str] = set()
    routed = False
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < len(STREAM_FIELDS) or not cols[1]:
            continue
        # several values of a field: the innermost header's is the last
        stream, s4, d4, s6, d6, sp, dp, re4, re6 = (c.split(",")[-1] for c in cols[1:10])
        layers = cols[0].split(":")
        below_tcp = layers[: len(layers) - layers[::-1].index("tcp")] if "tcp" in layers else []
        ips = [x for x in below_tcp if x in ("ip", "ipv6")]
        src, dst = (s6, d6) if ips and ips[-1] == "ipv6" else (s4, d4)
        routed = routed or bool(_SOURCE_ROUTES & set(cols[10].split(",")))
        if not (src and dst and sp and dp):
            continue
        if stream not in first:
            first[stream] = pair(endpoint(src, int(sp)), endpoint(dst, int(dp)))
        if not (re4 or re6):
            whole.add(stream)
    streams = Counter(first.values())
    reassembled = Counter(p for st, p in first.items() if st not in whole)
    return Streams(streams=streams, reassembled=reassembled, source_routed=routed)


def halfclose_pairs(document: Mapping[str, Any]) -> Counter[Pair]:
    """Connection records per address pair from the JSON document of ``halfclose analyze``."""
    found: Counter[Pair] = Counter()
    for c in document.get("connections", ()):
        found[pair(endpoint(c["orig_h"], int(c["orig_p"])), endpoint(c["resp_h"], int(c["resp_p"])))] += 1
    return found


def halfclose_notes(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The capture reader's messages in the JSON document (warnings and errors)."""
    return tuple(str(i["message"]) for i in document.get("issues", ()) if i.get("source") == "capture")


@enum.unique
class Reason(enum.Enum):
    """Why a file's counts disagree. ``exception``: a documented exception (else a defect)."""

    LINK_NOT_DECODED = ("link_not_decoded", True,
                        "a link type halfclose does not decode (it warns with the count): ARCnet (129), "
                        "Juniper Ethernet (178); tshark dissects them")  # fmt: skip
    ENCAP_NOT_DECODED = ("encap_not_decoded", True,
                         "IP inside an encapsulation halfclose does not decode (it warns with the count): "
                         "L2TP, EtherIP, GRE of other kinds")  # fmt: skip
    BIG_TCP = ("big_tcp", True,
               "IPv4 or IPv6 length 0 (TSO, BIG TCP), plain or under VXLAN/Geneve: halfclose reads 'the rest of "
               "the frame', tshark 4.0 rejects the length (expert: 'Bad length value 0', 'IPv6 payload length "
               "equals 0')")  # fmt: skip
    TSHARK_TAP = ("tshark_tap", True,
                  "tshark numbers the stream (tcp.stream) but leaves it out of its conversation table: the "
                  "dissection of its packets ended in an exception (malformed options or payload of fuzzed "
                  "files); halfclose's count equals tshark's stream count")  # fmt: skip
    IP_FRAGMENTS = ("ip_fragments", True,
                    "tshark reassembles IP fragments and finds a TCP header split across them; halfclose "
                    "counts fragments and does not reassemble them")  # fmt: skip
    SOURCE_ROUTE = ("source_route", True,
                    "an IPv4 source route option (LSRR, SSRR): tshark takes the route's last address for the "
                    "destination, halfclose the header's (the next hop at the capture point)")  # fmt: skip
    TSHARK_UNREADABLE = ("tshark_unreadable", True,
                         "tshark refuses or stops reading the file where halfclose reads on (its "
                         "reader is stricter)")  # fmt: skip
    NOT_READ = ("not_read", False, "halfclose refused the file (exit 2, no document)")
    FAILED = ("failed", False, "a program failed or timed out on the file")
    UNEXPLAINED = ("unexplained", False, "no documented reason fits: a defect to fix")

    def __init__(self, label: str, exception: bool, doc: str) -> None:
        self.label = label
        self.exception = exception
        self.doc = doc


#: Files whose disagreement is only visible in their bytes: corpus-relative path -> reason (none
#: today: every disagreement of the corpora measured is explained by the two programs' outputs).
KNOWN: Mapping[str, Reason] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRun:
    """What the two programs gave on one file.

    Fields:
        corpus: the corpus folder's name; name: the file's path inside it.
        halfclose: connections per address pair, None when halfclose gave no document.
        tshark: conversations per address pair, None when tshark gave no table.
        halfclose_notes: halfclose's capture warnings and errors (its document, else its stderr).
        tshark_notes: tshark's stderr lines and expert messages that matter (bogus lengths, ...).
        streams: tshark's per-packet view (:func:`parse_streams`), taken where the counts differ.
        failure: a timeout or a crash of either program (then the counts may be missing).
    """

    corpus: str
    name: str
    halfclose: Counter[Pair] | None
    tshark: Counter[Pair] | None
    halfclose_notes: tuple[str, ...] = ()
    tshark_notes: tuple[str, ...] = ()
    streams: Streams | None = None
    failure: str | None = None

    @property
    def key(self) -> str:
        return f"{self.corpus}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PairCount:
    """One address pair whose counts differ."""

    pair: Pair
    halfclose: int
    tshark: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """One file with TCP on either side: agreeing, or disagreeing with a reason."""

    run: FileRun
    reason: Reason | None
    differing: tuple[PairCount, ...] = ()

    @property
    def agrees(self) -> bool:
        return self.reason is None

    @property
    def halfclose_total(self) -> int:
        return sum((self.run.halfclose or Counter()).values())

    @property
    def tshark_total(self) -> int:
        return sum((self.run.tshark or Counter()).values())


_LINK = re.compile(r"link type .* is not decoded")
_ENCAP = re.compile(r"inside an encapsulation that is not decoded")
#: tshark's expert messages for an IP or UDP length of 0 (the BIG TCP / TSO packets).
_ZERO_LENGTH = re.compile(r"Bad length value 0 <|payload length equals 0|Bogus IP length \(0\b")


def judge(run: FileRun, known: Mapping[str, Reason] = KNOWN) -> Verdict | None:
    """The verdict on one file; None when neither program found TCP in it (and neither failed)."""
    if run.failure is not None:
        return Verdict(run=run, reason=Reason.FAILED)
    if run.halfclose is None:
        if not run.tshark:
            return None
        return Verdict(run=run, reason=Reason.NOT_READ)
    ours = run.halfclose
    theirs = run.tshark or Counter()
    if not ours and not theirs:
        return None
    differing = tuple(
        PairCount(pair=p, halfclose=ours[p], tshark=theirs[p]) for p in sorted(ours.keys() | theirs.keys())
        if ours[p] != theirs[p]
    )  # fmt: skip
    if not differing:
        return Verdict(run=run, reason=None)
    return Verdict(run=run, reason=_reason(run, differing, known), differing=differing)


def _reason(run: FileRun, differing: Sequence[PairCount], known: Mapping[str, Reason]) -> Reason:
    if run.key in known:
        return known[run.key]
    fewer = all(d.halfclose < d.tshark for d in differing)
    more = all(d.halfclose > d.tshark for d in differing)
    if run.tshark is None and run.tshark_notes and more:
        return Reason.TSHARK_UNREADABLE
    st = run.streams
    if st is not None and more and st.streams == run.halfclose:
        return Reason.TSHARK_TAP
    if st is not None and fewer and st.reassembled and st.streams - st.reassembled == run.halfclose:
        return Reason.IP_FRAGMENTS
    if st is not None and st.source_routed and sum(st.streams.values()) > sum((run.halfclose or Counter()).values()):
        return Reason.SOURCE_ROUTE
    if fewer and any(_LINK.search(n) for n in run.halfclose_notes):
        return Reason.LINK_NOT_DECODED
    if fewer and any(_ENCAP.search(n) for n in run.halfclose_notes):
        return Reason.ENCAP_NOT_DECODED
    if more and any(_ZERO_LENGTH.search(n) for n in run.tshark_notes):
        return Reason.BIG_TCP
    return Reason.UNEXPLAINED


@dataclass(slots=True, kw_only=True)
class Tally:
    """One corpus's counts."""

    corpus: str
    files: int = 0
    with_tcp: int = 0
    agreeing: int = 0
    by_reason: Counter[Reason] = field(default_factory=Counter)

    @property
    def disagreeing(self) -> int:
        return sum(self.by_reason.values())

    @property
    def unexplained(self) -> int:
        return sum(n for r, n in self.by_reason.items() if not r.exception)


def tally(runs: Iterable[FileRun], known: Mapping[str, Reason] = KNOWN) -> tuple[list[Tally], list[Verdict]]:
    """Per-corpus tallies (in first-seen order) and every verdict on a file with TCP."""
    tallies: dict[str, Tally] = {}
    verdicts: list[Verdict] = []
    for run in runs:
        t = tallies.setdefault(run.corpus, Tally(corpus=run.corpus))
        t.files += 1
        v = judge(run, known)
        if v is None:
            continue
        verdicts.append(v)
        t.with_tcp += 1
        if v.reason is None:
            t.agreeing += 1
        else:
            t.by_reason[v.reason] += 1
    return list(tallies.values()), verdicts


def _reasons_cell(t: Tally) -> str:
    return ", ".join(f"{r.label} {n}" for r, n in sorted(t.by_reason.items(), key=lambda kv: -kv[1])) or "-"


def markdown_table(tallies: Sequence[Tally]) -> str:
    """The agreement table: one row per corpus and a total."""
    lines = [
        "| corpus | files | with TCP | agreeing | disagreeing (reason class: files) | of them not documented |",
        "|---|---|---|---|---|---|",
    ]
    total = Tally(corpus="total")
    for t in tallies:
        lines.append(f"| {t.corpus} | {t.files} | {t.with_tcp} | {t.agreeing} | {_reasons_cell(t)} | {t.unexplained} |")
        total.files += t.files
        total.with_tcp += t.with_tcp
        total.agreeing += t.agreeing
        total.by_reason.update(t.by_reason)
    if len(tallies) > 1:
        lines.append(
            f"| **total** | {total.files} | {total.with_tcp} | {total.agreeing} | {_reasons_cell(total)} "
            f"| {total.unexplained} |"
        )
    return "\n".join(lines) + "\n"


def reasons_table(known: Mapping[str, Reason] = KNOWN) -> str:
    """The reason classes (docs/capture.md holds this table; a test compares them), then the files
    named in *known*."""
    lines = ["| reason | documented exception | what it means |", "|---|---|---|"]
    lines += [f"| `{r.label}` | {'yes' if r.exception else 'no: a defect'} | {r.doc} |" for r in Reason]
    if known:
        lines += ["", "| file named by hand | reason |", "|---|---|"]
        lines += [f"| {name} | `{r.label}` |" for name, r in sorted(known.items())]
    return "\n".join(lines) + "\n"


def _pairs_text(v: Verdict, limit: int = 3) -> str:
    parts = [f"{a[0]}:{a[1]} {b[0]}:{b[1]} {d.halfclose}/{d.tshark}" for d in v.differing[:limit]
             for a, b in (d.pair,)]  # fmt: skip
    more = len(v.differing) - limit
    return "; ".join(parts) + (f"; {more} more pairs" if more > 0 else "")


def disagreements_table(verdicts: Sequence[Verdict]) -> str:
    """The disagreeing files: reason, totals, the first differing pairs (halfclose/tshark)."""
    lines = ["| file | reason | halfclose | tshark | pairs (halfclose/tshark) |", "|---|---|---|---|---|"]
    for v in verdicts:
        if v.reason is None:
            continue
        detail = v.run.failure or _pairs_text(v)
        lines.append(f"| {v.run.key} | {v.reason.label} | {v.halfclose_total} | {v.tshark_total} | {detail} |")
    return "\n".join(lines) + "\n"


def to_document(tallies: Sequence[Tally], verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """The agreement as plain values (the script's ``--json``)."""
    return {
        "corpora": [
            {"corpus": t.corpus, "files": t.files, "with_tcp": t.with_tcp, "agreeing": t.agreeing,
             "disagreeing": {r.label: n for r, n in t.by_reason.items()}, "not_documented": t.unexplained}
            for t in tallies
        ],
        "reasons": {r.label: {"exception": r.exception, "doc": r.doc} for r in Reason},
        "disagreements": [
            {"file": v.run.key, "reason": v.reason.label, "halfclose": v.halfclose_total, "tshark": v.tshark_total,
             "tshark_streams": None if v.run.streams is None else sum(v.run.streams.streams.values()),
             "failure": v.run.failure, "halfclose_notes": list(v.run.halfclose_notes),
             "tshark_notes": list(v.run.tshark_notes),
             "pairs": [{"a": f"{d.pair[0][0]}:{d.pair[0][1]}", "b": f"{d.pair[1][0]}:{d.pair[1][1]}",
                        "halfclose": d.halfclose, "tshark": d.tshark} for d in v.differing]}
            for v in verdicts if v.reason is not None
        ],
    }  # fmt: skip
