from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from halfclose.netns import STATE_DIR, Claim, clean_stale, list_netns

pytestmark = pytest.mark.root


def test_claim_creates_and_removes_namespaces_and_paths(tmp_path: object) -> None:
    with Claim() as claim:
        name = claim.add_netns("t")
        marker = claim.add_path(STATE_DIR / f"{claim.run_id}-marker")
        marker.write_text("x")
        assert name in list_netns()
        body = json.loads(claim.file.read_text())
        assert body["pid"] == os.getpid() and name in body["netns"]
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
        try:
            deadline = time.monotonic() + 10
            while str(sleeper.pid) not in subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True
            ).stdout.split():
                assert time.monotonic() < deadline, "the sleeper never showed up in the namespace"
                time.sleep(0.02)
        except BaseException:
            sleeper.kill()
            sleeper.wait()
            raise
    try:
        assert name not in list_netns()
        assert not marker.exists()
        assert not claim.file.exists()
        assert sleeper.wait(5) != 0, "processes inside the namespace were ended"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_clean_stale_removes_only_dead_owners() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with Claim() as live:
        live_ns = live.add_netns("live")
        orphan = Claim(pid=dead.pid)
        orphan_ns = orphan.add_netns("orphan")
        removed = clean_stale()
        assert f"namespace {orphan_ns}" in removed
        assert orphan_ns not in list_netns()
        assert live_ns in list_netns()
        assert not orphan.file.exists()
