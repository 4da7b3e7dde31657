from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from halfclose.errors import UsageError
from halfclose.lab.config import LabConfig, ServerKind, validate


def test_defaults_are_valid() -> None:
    assert validate(LabConfig()) == LabConfig()


@pytest.mark.parametrize(
    ("change", "option"),
    [
        ({"gap_s": -1.0}, "--gap"),
        ({"requests": 0}, "--requests"),
        ({"idle_timeout_s": 0.0}, "--idle-timeout"),
        ({"dns_ttl_s": -5}, "--dns-ttl"),
        ({"uid": 0}, "--uid"),
        ({"rtt_ms": 1001.0}, "--rtt"),
        ({"rtt_ms": 10.0, "jitter_ms": 20.0}, "--jitter"),
        ({"rtt_ms": 10.0, "loss_pct": 101.0}, "--loss"),
        ({"loss_pct": 1.0}, "--rtt above 0"),
        ({"rtt_ms": 10.0, "seed": -1}, "--seed"),
        ({"http_port": 70000}, "--http-port"),
        ({"hostname": "bad..name"}, "--hostname"),
        ({"server": ServerKind.NGINX, "race": True}, "--race"),
        ({"pcap": Path("/nonexistent/dir/x.pcap")}, "--pcap"),
    ],
)
def test_bad_values_name_the_option(change: dict[str, object], option: str) -> None:
    config = dataclasses.replace(LabConfig(), **change)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=option):
        validate(config)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LabConfig().requests = 3  # type: ignore[misc]
