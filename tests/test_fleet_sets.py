"""Capture-set discovery: rotation names, shapes, order, labels (pure)."""

from __future__ import annotations

import doctest

import pytest

from halfclose.errors import UsageError
from halfclose.fleet import sets
from halfclose.fleet.sets import CaptureFile, group_sets, parse_labels, rotation_key


def _f(path: str, ts: int | None, shape: str = "pcap/1/262144/us", size: int = 100) -> CaptureFile:
    return CaptureFile(path=path, size=size, shape=shape, first_ts_ns=ts)


def test_doctests() -> None:
    assert doctest.testmod(sets).failed == 0


@pytest.mark.parametrize(
    ("names", "same"),
    [
        (["dump.pcap", "dump.pcap1", "dump.pcap2", "dump.pcap10"], True),  # tcpdump -C
        (["dump.pcap00", "dump.pcap01", "dump.pcap49"], True),  # tcpdump -C -W 50
        (["cap-20261201083000.pcap", "cap-20261201084000.pcap"], True),  # tcpdump -G %Y%m%d%H%M%S
        (["cap-2026-12-01_08-30-00.pcap", "cap-2026-12-01_08-40-00.pcap"], True),
        (["t-1764577800.pcap", "t-1764578400.pcap"], True),  # %s
        (["ring_00001_20261201083000.pcapng", "ring_00002_20261201084000.pcapng"], True),  # dumpcap, editcap -c
        (["host1.pcap", "host2.pcap"], False),
        (["phone-a.pcap", "phone-b.pcap"], False),
        (["build-12345678.pcap", "build-12345679.pcap"], False),  # not a date
    ],
)
def test_rotation_names(names: list[str], same: bool) -> None:
    assert (len({rotation_key(n) for n in names}) == 1) is same


def test_group_orders_by_first_packet_and_keeps_other_captures_apart() -> None:
    files = [
        _f("/c/dump.pcap2", 300), _f("/c/dump.pcap", 100), _f("/c/dump.pcap1", 200),
        _f("/c/host1.pcap", 150), _f("/c/host2.pcap", 150),
        _f("/d/dump.pcap", 50),  # another folder: another capture
        _f("/c/dump.pcap3", 400, shape="pcap/113/262144/us"),  # another link type
    ]  # fmt: skip
    found = group_sets(files)
    assert [s.paths for s in found] == [
        ("/d/dump.pcap",),
        ("/c/dump.pcap", "/c/dump.pcap1", "/c/dump.pcap2"),
        ("/c/host1.pcap",),
        ("/c/host2.pcap",),
        ("/c/dump.pcap3",),
    ]
    assert found[1].first_ts_ns == 100 and found[1].name == "dump.pcap" and found[1].size == 300


def test_wrapped_ring_is_read_oldest_first() -> None:
    files = [_f("/r/x.pcap00", 500), _f("/r/x.pcap01", 600), _f("/r/x.pcap02", 100), _f("/r/x.pcap03", 200)]
    (s,) = group_sets(files)
    assert s.paths == ("/r/x.pcap02", "/r/x.pcap03", "/r/x.pcap00", "/r/x.pcap01")


def test_set_id_does_not_depend_on_the_folder() -> None:
    a = group_sets([_f("/a/d.pcap", 1), _f("/a/d.pcap1", 2)])[0]
    b = group_sets([_f("file:///b/d.pcap1", 2), _f("file:///b/d.pcap", 1)])[0]
    assert a.set_id == b.set_id and len(a.set_id) == 16
    assert group_sets([_f("/a/d.pcap", 1, size=7)])[0].set_id != group_sets([_f("/a/d.pcap", 1)])[0].set_id


def test_labels_are_canonical() -> None:
    labels = parse_labels(["host=edge-1", "app=4.2"])
    assert labels.text == "app=4.2,host=edge-1" and labels.as_dict() == {"app": "4.2", "host": "edge-1"}
    assert parse_labels([]).text == ""


@pytest.mark.parametrize("bad", [["host"], ["=x"], ["host="], ["a=1", "a=2"], ["a=1,2"], ["1a=x"]])
def test_bad_labels(bad: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_labels(bad)


def _ng(path: str, first: int, last: int | None, interface: str = "wlan0") -> CaptureFile:
    return CaptureFile(path=path, size=10, shape=f"pcapng/if={interface}/1/0", first_ts_ns=first, last_ts_ns=last,
                       interface=interface)  # fmt: skip


def test_pcapng_files_of_one_interface_that_follow_one_another_are_one_set() -> None:
    files = [_ng("/p/evening.pcapng", 30, 39), _ng("/p/morning.pcapng", 10, 19), _ng("/p/noon.pcapng", 20, 29)]
    (s,) = group_sets(files)
    assert [f.name for f in s.files] == ["morning.pcapng", "noon.pcapng", "evening.pcapng"]


@pytest.mark.parametrize(
    "files",
    [
        [_ng("/p/a.pcapng", 10, 25), _ng("/p/b.pcapng", 20, 29)],  # overlap: two machines
        [_ng("/p/a.pcapng", 10, None), _ng("/p/b.pcapng", 20, 29)],  # end unknown
        [_ng("/p/a.pcapng", 10, 19, ""), _ng("/p/b.pcapng", 20, 29, "")],  # no interface named
        [_ng("/p/a.pcapng", 10, 19), _ng("/q/b.pcapng", 20, 29)],  # two folders
        [_ng("/p/a.pcapng", 10, 19), _ng("/p/b.pcapng", 20, 29, "eth0")],  # two interfaces
    ],
)
def test_pcapng_files_that_may_be_two_captures_stay_apart(files: list[CaptureFile]) -> None:
    assert len(group_sets(files)) == 2
