"""Profile files: the two accepted shapes and clear errors for anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halfclose.client._profile import Profile, load_profile
from halfclose.errors import InputError


def write(tmp_path: Path, body: object) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def test_flat_mapping(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, {"img.lab.test": 60, "api.lab.test:8443": 5.5}))
    assert p.idle_timeout("img.lab.test", 80) == 60.0
    assert p.idle_timeout("IMG.LAB.TEST.") == 60.0
    assert p.idle_timeout("api.lab.test", 8443) == 5.5
    assert p.idle_timeout("api.lab.test", 443) is None
    assert p.idle_timeout("other.lab.test") is None


def test_servers_key_with_objects(tmp_path: Path) -> None:
    body = {"servers": {"img.lab.test": {"idle_timeout": 2}, "b.lab.test": {"idle_timeout_s": 3}},
            "generated": "2026-11-27"}
    p = load_profile(write(tmp_path, body))
    assert p.timeouts == {"img.lab.test": 2.0, "b.lab.test": 3.0}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not JSON"),
        ([1, 2], "must be a JSON object"),
        ({"servers": [1]}, '"servers" must be an object'),
        ({"img.lab.test": -1}, "positive number"),
        ({"img.lab.test": "60"}, "positive number"),
        ({"img.lab.test": True}, "positive number"),
        ({"img.lab.test": {"timeout": 3}}, "positive number"),
        ({" ": 3}, "non-empty"),
    ],
)
def test_bad_files_say_which_file_and_what(tmp_path: Path, body: object, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(InputError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_profile(tmp_path / "missing.json")
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="UTF-8"):
        load_profile(path)


def test_from_mapping_in_code() -> None:
    assert Profile.from_mapping({"a.test": 1}).idle_timeout("a.test") == 1.0
    with pytest.raises(InputError, match=r"profile: server 'a\.test'"):
        Profile.from_mapping({"a.test": 0})


def test_addresses_as_analyze_writes_them() -> None:
    p = Profile.from_mapping({"198.18.0.1:80": 2, "[fd00::1]:443": 3, "fd00::2": 4})
    assert p.idle_timeout("img.lab.test", 80, address="198.18.0.1") == 2.0
    assert p.idle_timeout("img.lab.test", 81, address="198.18.0.1") is None
    assert p.idle_timeout("fd00::1", 443) == 3.0
    assert p.idle_timeout("[fd00::1]", 443) == 3.0
    assert p.idle_timeout("x.test", 1, address="fd00::2") == 4.0


@pytest.mark.root
def test_a_profile_written_by_analyze_drives_the_guard(tmp_path: Path) -> None:
    import time

    import requests

    import halfclose.client as hc
    from clientlab import Capture, KeepAliveServer, wait_until
    from runcli import halfclose

    pcap, profile = tmp_path / "plain.pcap", tmp_path / "profile.json"
    with KeepAliveServer(idle_timeout=1.6) as server:
        with Capture(pcap, host=server.host, port=server.port):
            plain = requests.Session()
            for i in range(2):
                plain.get(server.url())
                wait_until(lambda i=i: server.closed_ends()["timer"] == i + 1)  # its FIN at 1.6 s idle
                time.sleep(0.7)  # the next request well after the FIN: at >= 2.3 s idle
            plain.close()
        done = halfclose("analyze", str(pcap), "--profile", str(profile))
        assert done.returncode == 0, done.stderr
        learned = load_profile(profile)
        assert len(learned.timeouts) == 1
        # The idle age at the server's FIN on the wire (1.6 s, plus however late the server's timer
        # ran: 0.4 s allowed), not the gap to the next request (>= 2.3 s).
        assert 1.5 < next(iter(learned.timeouts.values())) < 2.0

        s = hc.session(use_dns_cache=False, profile=profile)
        first = s.get(server.url()).json()["conn"]
        # retired by the timer at the profile's timeout less its margin (25 %: ~1.2 s), before the
        # server's 1.6 s, with no request needed
        wait_until(lambda: s.counts().retired_early == 1)
        second = s.get(server.url()).json()["conn"]
        s.close()
    assert first != second
    assert s.counts().retired_early == 1
    timeout = s.guard.idle_timeout(hc.Origin(scheme="http", host=server.host, port=server.port))
    assert timeout is not None and timeout.source is hc.TimeoutSource.PROFILE
