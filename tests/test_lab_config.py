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


def _parse(*argv: str) -> LabConfig:
    from halfclose.args import ArgumentParser
    from halfclose.cli.lab import add_arguments

    parser = ArgumentParser(prog="halfclose lab")
    add_arguments(parser)
    return LabConfig.from_args(parser.parse_args(argv))


def test_from_args_takes_the_options_and_the_fields_defaults() -> None:
    from halfclose.lab.compare import DEFAULTS
    from halfclose.lab.config import ClientKind, DnsKind, TlsVersion

    assert _parse("run") == LabConfig()
    config = _parse("run", "--client", "httpx", "--gap", "4", "--dns", "dnsmasq", "--rtt", "20", "--out", "x",
                    "--tls", "--tls-version", "1.2")
    assert (config.client, config.gap_s, config.dns, config.rtt_ms) == (ClientKind.HTTPX, 4.0, DnsKind.DNSMASQ, 20.0)
    assert config.out_dir == Path("x") and config.tls_version is TlsVersion.V1_2
    assert config.http_port == 443 and _parse("run", "--tls", "--http-port", "8443").http_port == 8443
    # compare and matrix run their own workload by default, and --out is their folder, not a run's.
    for action in (["compare"], ["matrix", "--servers", "builtin", "--clients", "reuse"]):
        assert _parse(*action) == DEFAULTS
    with pytest.raises(UsageError, match="--gap"):
        _parse("run", "--gap", "-2")


def test_fast_open_options_reach_the_config_in_run_and_compare() -> None:
    from halfclose.lab.config import ClientKind

    for action in ("run", "compare"):
        config = _parse(action, "--tfo", "--drop-syn-data")
        assert config.tfo and config.drop_syn_data
        assert not _parse(action).tfo and not _parse(action).drop_syn_data
    assert _parse("run", "--client", "guard-aiohttp").client is ClientKind.GUARD_AIOHTTP
