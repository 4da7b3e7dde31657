"""The examples in halfclose.client's docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "halfclose.client",
    "halfclose.client._policy",
    "halfclose.client._dns",
    "halfclose.client._profile",
    "halfclose.client._sockcheck",
    "halfclose.client._guard",
    "halfclose.client._urllib3",
    "halfclose.client._requests",
    "halfclose.client._httpx",
    "halfclose.client._httpx_async",
    "halfclose.client._httpx_sync",
    "halfclose.client._httpx_base",
    "halfclose.client._watch",
    "halfclose.client._aiohttp",
    "halfclose.client._tfo",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_api_is_exported() -> None:
    client = importlib.import_module("halfclose.client")
    for name in client.__all__:
        assert getattr(client, name) is not None
    for name in ("session", "httpx_client", "pool_manager", "Guard", "GuardCounts", "DnsCache"):
        assert name in client.__all__
