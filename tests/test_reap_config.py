"""The reaper's settings: TOML checked key by key, layers merged, packages resolved to uids."""

from __future__ import annotations

import ipaddress
import re

import pytest

from halfclose.errors import InputError, UsageError
from halfclose.reap.config import ReapSettings, merge, parse_config, resolve_packages
from halfclose.reap.metrics import MetricsAddress

FULL = """
uids = [10400]
packages = ["com.example.app"]
packages_list = "/tmp/packages.list"
ports = [80, 443]
addresses = ["198.18.0.0/15", "fd00::1"]
trigger = "poll"
interval = 0.1
settle = 1
nflog_group = 44
backend = "nft"
metrics = "127.0.0.1:9101"
dry_run = true
log = "json"
"""


def test_every_key_is_read() -> None:
    layer = parse_config(FULL, "reap.toml")
    s = merge(layer)
    assert s.uids == (10400,) and s.packages == ("com.example.app",) and s.ports == (80, 443)
    assert s.addresses == (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::1/128"))
    assert (s.trigger, s.interval, s.settle, s.nflog_group, s.backend) == ("poll", 0.1, 1.0, 44, "nft")
    assert s.metrics == MetricsAddress(host="127.0.0.1", port=9101)
    assert s.dry_run and s.log == "json"


def test_later_layers_win_key_by_key() -> None:
    s = merge(parse_config("uids = [1]\nports = [80]\n", "f"), {"ports": (8080,)})
    assert s.uids == (1,) and s.ports == (8080,)
    assert merge() == ReapSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uids = [", "reap.toml is not valid TOML"),
        ("uid = [1]", "reap.toml: unknown key 'uid'"),
        ("ports = [70000]", "reap.toml: ports: 70000 is out of range 1-65535"),
        ("ports = ['80']", "reap.toml: ports must be a list of numbers"),
        ("trigger = 'fast'", "reap.toml: trigger must be one of nflog, poll"),
        ("settle = 0", "reap.toml: settle must be a number of seconds above 0"),
        ("addresses = ['nowhere']", "reap.toml: addresses: 'nowhere' is not an address"),
        ("packages = ['example']", "reap.toml: packages: 'example' is not an Android package name"),
        ("metrics = 'localhost:x'", "reap.toml: metrics address 'localhost:x' has no port"),
        ("dry_run = 1", "reap.toml: dry_run must be true or false"),
    ],
)
def test_bad_values_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(InputError, match="^" + re.escape(message)):
        parse_config(text, "reap.toml")


def test_packages_resolve_through_packages_list() -> None:
    listing = "com.example.app 10400 0 /data/user/0/com.example.app default:targetSdkVersion=34 3003\n" \
              "com.other 10500 0 /data/user/0/com.other default 3003\n"
    s = resolve_packages(ReapSettings(uids=(10600,), packages=("com.example.app",)), listing)
    assert s.uids == (10400, 10600)
    with pytest.raises(InputError, match=r"package com\.missing is not in /data/system/packages\.list"):
        resolve_packages(ReapSettings(packages=("com.missing",)), listing)
    with pytest.raises(InputError, match="cannot be read"):
        resolve_packages(ReapSettings(packages=("com.example.app",)), None)
    with pytest.raises(UsageError, match="no uid selected"):
        resolve_packages(ReapSettings(), None)
