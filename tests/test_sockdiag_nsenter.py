from __future__ import annotations

import os

import pytest

from _reap_lab import lo_netns
from halfclose.errors import UsageError
from halfclose.sockdiag.nsenter import netns_entered


def here() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.mark.parametrize("name", ["hc-does-not-exist", "../etc", ""])
def test_unknown_or_bad_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="network namespace"), netns_entered(name):
        pass


def test_none_stays_here() -> None:
    before = here()
    with netns_entered(None):
        assert here() == before


@pytest.mark.root
def test_enters_and_returns_even_on_error() -> None:
    before = here()
    with lo_netns() as ns:
        target = os.stat(f"/run/netns/{ns.name}").st_ino
        with netns_entered(ns.name):
            assert here() == target
        assert here() == before
        with pytest.raises(RuntimeError), netns_entered(ns.name):
            raise RuntimeError("inside")
        assert here() == before
