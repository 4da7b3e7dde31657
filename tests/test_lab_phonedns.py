"""The phone-side DNS cache: the rendered config and dnsmasq's command line, accepted by dnsmasq."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from halfclose.lab.phonedns import LISTEN, RESOLV_CONF, cache_config, dnsmasq_argv


def test_the_cache_uses_the_rendered_floor_and_serve_stale() -> None:
    config = cache_config(300)
    assert config.lines == ("min-cache-ttl=300", "neg-ttl=300", "use-stale-cache=86400")
    assert RESOLV_CONF.startswith(f"nameserver {LISTEN}\n")


def test_dnsmasq_accepts_the_command_line_with_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "cache.conf"
    conf.write_text(cache_config(300).text)
    argv = dnsmasq_argv(conf=conf, upstream="198.18.0.1", pid_file=tmp_path / "pid")
    assert f"--conf-file={conf}" in argv and "--server=198.18.0.1" in argv and f"--listen-address={LISTEN}" in argv
    argv[0] = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    done = subprocess.run([*argv, "--test"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
