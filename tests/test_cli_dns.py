"""``halfclose dns config``: the printed file per resolver, and one line with status 2 for bad input."""

from __future__ import annotations

from runcli import halfclose


def test_config_for_dnsmasq_prints_comments_then_the_options() -> None:
    done = halfclose("dns", "config", "--floor", "300", "--serve-stale", "--for", "dnsmasq")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# /etc/dnsmasq.d/")
    assert [line for line in lines if not line.startswith("#")] == [
        "min-cache-ttl=300", "neg-ttl=300", "use-stale-cache=86400"]


def test_config_for_android_says_where_the_fix_must_be() -> None:
    done = halfclose("dns", "config", "--floor", "300", "--serve-stale", "--for", "android")
    assert done.returncode == 0, done.stderr
    assert "the fix must be in the app" in done.stdout
    assert "no minimum TTL" in done.stdout


def test_bad_input_is_one_line_and_status_2() -> None:
    for args in (["--for", "unbound"], ["--for", "unbound", "--floor", "-5"], ["--for", "bind", "--floor", "3"]):
        done = halfclose("dns", "config", *args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
