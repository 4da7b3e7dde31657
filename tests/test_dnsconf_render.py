"""The resolver configurations: what each sets, what each lacks, and that the real programs accept them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from halfclose.dnsconf import DNSMASQ_FLOOR_LIMIT, CacheWish, Gap, Resolver, render
from halfclose.errors import UsageError
from halfclose.report.dnsconf import config_text

BOTH = CacheWish(floor_s=300, serve_stale=True)


def test_dnsmasq_sets_the_floor_for_positive_and_negative_answers_and_stale() -> None:
    config = render(Resolver.DNSMASQ, BOTH)
    assert config.lines == ("min-cache-ttl=300", "neg-ttl=300", "use-stale-cache=86400")
    assert config.floor_s == 300 and config.stale
    assert config.gaps == (Gap.STALE_TTL_ZERO,)


def test_dnsmasq_caps_the_floor_at_its_limit_and_says_so() -> None:
    config = render(Resolver.DNSMASQ, CacheWish(floor_s=5000))
    assert config.floor_s == DNSMASQ_FLOOR_LIMIT
    assert "min-cache-ttl=3600" in config.lines
    assert config.gaps == (Gap.FLOOR_CAPPED,)
    assert "not 5000 s" in config_text(config)


def test_unbound_floor_and_rfc8767_serve_expired() -> None:
    config = render(Resolver.UNBOUND, BOTH)
    assert config.lines[0] == "server:"
    assert "    cache-min-ttl: 300" in config.lines
    assert "    serve-expired: yes" in config.lines
    assert "    serve-expired-reply-ttl: 30" in config.lines
    assert config.gaps == ()


def test_systemd_resolved_has_no_floor_only_stale_retention() -> None:
    config = render(Resolver.SYSTEMD_RESOLVED, BOTH)
    assert config.floor_s is None
    assert config.lines == ("[Resolve]", "Cache=yes", "StaleRetentionSec=86400")
    assert set(config.gaps) == {Gap.NO_FLOOR, Gap.STALE_ON_FAILURE_ONLY}
    floor_only = render(Resolver.SYSTEMD_RESOLVED, CacheWish(floor_s=300))
    assert floor_only.lines == () and floor_only.gaps == (Gap.NO_FLOOR,)
    assert "no minimum TTL" in config_text(floor_only)


def test_android_has_neither_and_points_at_the_app_or_a_local_cache() -> None:
    config = render(Resolver.ANDROID, BOTH)
    assert config.lines == () and config.path == ""
    assert set(config.gaps) == {Gap.NOT_CONFIGURABLE, Gap.NO_FLOOR, Gap.NO_STALE}
    text = config_text(config)
    assert "in the app" in text and "local cache the device is pointed at" in text


def test_nothing_asked_or_a_bad_floor_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--floor SECONDS, --serve-stale"):
        CacheWish()
    with pytest.raises(UsageError, match="--floor must be"):
        CacheWish(floor_s=0)
    with pytest.raises(UsageError, match="--stale-for must be"):
        CacheWish(serve_stale=True, stale_s=10**9)


@pytest.mark.parametrize("wish", [BOTH, CacheWish(floor_s=300), CacheWish(serve_stale=True),
                                  CacheWish(floor_s=99999)])
def test_dnsmasq_accepts_the_printed_file(wish: CacheWish, tmp_path: Path) -> None:
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    conf = tmp_path / "cache.conf"
    conf.write_text(config_text(render(Resolver.DNSMASQ, wish)))
    done = subprocess.run([dnsmasq, "--test", f"--conf-file={conf}"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "syntax check OK" in done.stderr


@pytest.mark.parametrize("wish", [BOTH, CacheWish(floor_s=300), CacheWish(serve_stale=True)])
def test_unbound_checkconf_accepts_the_printed_file(wish: CacheWish, tmp_path: Path) -> None:
    checkconf = shutil.which("unbound-checkconf") or "/usr/sbin/unbound-checkconf"
    conf = tmp_path / "cache.conf"
    conf.write_text(config_text(render(Resolver.UNBOUND, wish)))
    done = subprocess.run([checkconf, str(conf)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no errors" in done.stdout
