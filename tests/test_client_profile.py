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
