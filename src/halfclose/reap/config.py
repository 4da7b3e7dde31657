"""The reaper's settings: defaults, then a TOML file, then the options given on the command line.

Pure: :func:`parse_config` turns TOML text into a :class:`ConfigFile` (every value checked, errors
name the file and the key), :func:`merge` lays the layers over each other into one
:class:`ReapSettings`, and :func:`resolve_packages` maps Android package names to uids from the
text of a ``packages.list`` (``name uid debuggable datadir ...`` per line, as
``/data/system/packages.list`` has it). Reading files is the caller's business.

The file (every key optional; ``uids`` or ``packages`` must give at least one uid)::

    uids = [10400]
    packages = ["com.example.app"]          # looked up in packages_list
    packages_list = "/data/system/packages.list"
    ports = [80, 443]                       # remote ports; none: any
    addresses = ["198.18.0.0/15"]           # remote networks; none: any
    trigger = "nflog"                       # or "poll"
    interval = 0.05                         # seconds between dumps with trigger poll
    settle = 2.0
    nflog_group = 42
    backend = "auto"
    metrics = "127.0.0.1:9101"              # [ADDR:]PORT; absent: no metrics listener
    dry_run = false
    log = "none"                            # or "text", "json"
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from halfclose.errors import InputError, UsageError
from halfclose.reap.decision import Network
from halfclose.reap.metrics import MetricsAddress, parse_address

__all__ = ["TRIGGERS", "ConfigFile", "ReapSettings", "merge", "parse_config", "resolve_packages"]

TRIGGERS = ("nflog", "poll")
BACKENDS = ("auto", "nft", "iptables-nft", "iptables-legacy")
LOGS = ("none", "text", "json")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReapSettings:
    """Everything one run (or one reload) of the reaper works with."""

    uids: tuple[int, ...] = ()
    packages: tuple[str, ...] = ()
    packages_list: str = "/data/system/packages.list"
    ports: tuple[int, ...] = ()
    addresses: tuple[Network, ...] = ()
    trigger: str = "nflog"
    interval: float = 0.05
    settle: float = 2.0
    nflog_group: int = 42
    backend: str = "auto"
    metrics: MetricsAddress | None = None
    dry_run: bool = False
    log: str = "none"
    no_rules: bool = False


#: A layer: the settings it gives (field name -> value), nothing for what it leaves alone.
ConfigFile = Mapping[str, Any]


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _int_list(source: str, key: str, value: object, low: int, high: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"{_where(source, key)} must be a list of numbers, like [80, 443]")
    for v in value:
        if not low <= v <= high:
            raise InputError(f"{_where(source, key)}: {v} is out of range {low}-{high}")
    return tuple(value)


def _str_list(source: str, key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{_where(source, key)} must be a list of strings")
    return tuple(value)


def _choice(source: str, key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(f"{_where(source, key)} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _seconds(source: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InputError(f"{_where(source, key)} must be a number of seconds above 0, not {value!r}")
    return float(value)


def parse_config(text: str, source: str) -> ConfigFile:
    """The settings a TOML file gives; *source* names it in error messages.

    Raises:
        InputError: not TOML, an unknown key, or a value of the wrong kind or range.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source} is not valid TOML ({exc}): fix the file") from None
    known = {f.name for f in fields(ReapSettings)} - {"no_rules"}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise InputError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if key == "uids":
            out[key] = _int_list(source, key, value, 0, 2**32 - 2)
        elif key == "ports":
            out[key] = _int_list(source, key, value, 1, 65535)
        elif key == "packages":
            names = _str_list(source, key, value)
            from halfclose.netfilter.android import PACKAGE_PATTERN

            for name in names:
                if not PACKAGE_PATTERN.fullmatch(name):
                    raise InputError(f"{_where(source, key)}: {name!r} is not an Android package name")
            out[key] = names
        elif key == "addresses":
            nets = []
            for item in _str_list(source, key, value):
                try:
                    nets.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise InputError(f"{_where(source, key)}: {item!r} is not an address or network") from None
            out[key] = tuple(nets)
        elif key == "trigger":
            out[key] = _choice(source, key, value, TRIGGERS)
        elif key == "backend":
            out[key] = _choice(source, key, value, BACKENDS)
        elif key == "log":
            out[key] = _choice(source, key, value, LOGS)
        elif key in ("interval", "settle"):
            out[key] = _seconds(source, key, value)
        elif key == "nflog_group":
            out[key] = _int_list(source, key, value, 0, 0xFFFF)[0]
        elif key == "dry_run":
            if not isinstance(value, bool):
                raise InputError(f"{_where(source, key)} must be true or false")
            out[key] = value
        elif key == "packages_list":
            if not isinstance(value, str) or not value:
                raise InputError(f"{_where(source, key)} must be a file path")
            out[key] = value
        elif key == "metrics":
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise InputError(f"{_where(source, key)} must be \"[ADDR:]PORT\"")
            try:
                out[key] = parse_address(str(value))
            except UsageError as exc:
                raise InputError(f"{source}: {exc}") from None
    return out


def merge(*layers: ConfigFile) -> ReapSettings:
    """Defaults, overlaid by each layer in turn (later layers win key by key)."""
    settings = ReapSettings()
    for layer in layers:
        settings = replace(settings, **dict(layer))
    return settings


def resolve_packages(settings: ReapSettings, packages_list: str | None) -> ReapSettings:
    """*settings* with the uids of its packages added, from the text of a packages.list.

    Raises:
        InputError: a package is not listed (or there is no list to look in).
        UsageError: no uid at all is selected.
    """
    uids = list(settings.uids)
    if settings.packages:
        if packages_list is None:
            raise InputError(
                f"packages {', '.join(settings.packages)} given but {settings.packages_list} cannot be "
                "read: give uids, or packages_list pointing at a readable packages.list"
            )
        table: dict[str, int] = {}
        for line in packages_list.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                table[parts[0]] = int(parts[1])
        for name in settings.packages:
            if name not in table:
                raise InputError(f"package {name} is not in {settings.packages_list}: check the name")
            uids.append(table[name])
    if not uids:
        raise UsageError("no uid selected: give --uid, or uids or packages in the --config file")
    return replace(settings, uids=tuple(sorted(set(uids))))
