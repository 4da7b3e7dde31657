"""pytest plugin for scripts/peer-tests: the guarded classes replace the libraries' own.

Loaded with ``-p peer_tests_plugin`` before any test module is imported, so that the libraries'
tests, which import ``PoolManager``, ``Session``, ``Client`` and friends at module level, get the
guarded classes under the original names.
"""

from __future__ import annotations

import httpx
import requests
import requests.adapters
import requests.sessions
import urllib3
import urllib3.connectionpool
import urllib3.poolmanager

import halfclose.client as hc

# urllib3: the PoolManager and the pools it makes (and urllib3.request(), which uses a PoolManager)
urllib3.PoolManager = hc.GuardedPoolManager  # type: ignore[misc]
urllib3.poolmanager.PoolManager = hc.GuardedPoolManager  # type: ignore[misc]
urllib3.HTTPConnectionPool = hc.GuardedHTTPConnectionPool  # type: ignore[misc]
urllib3.HTTPSConnectionPool = hc.GuardedHTTPSConnectionPool  # type: ignore[misc]
urllib3.connectionpool.HTTPConnectionPool = hc.GuardedHTTPConnectionPool  # type: ignore[misc]
urllib3.connectionpool.HTTPSConnectionPool = hc.GuardedHTTPSConnectionPool  # type: ignore[misc]
urllib3.poolmanager.pool_classes_by_scheme.update(
    {"http": hc.GuardedHTTPConnectionPool, "https": hc.GuardedHTTPSConnectionPool}
)
urllib3.poolmanager._DEFAULT_POOL = urllib3.poolmanager.PoolManager()  # type: ignore[attr-defined]

# requests: every Session, and every adapter a Session mounts
requests.Session = hc.GuardedSession  # type: ignore[misc]
requests.sessions.Session = hc.GuardedSession  # type: ignore[misc]
requests.adapters.HTTPAdapter = hc.GuardedAdapter  # type: ignore[misc]
requests.sessions.HTTPAdapter = hc.GuardedAdapter  # type: ignore[attr-defined]
requests.HTTPAdapter = hc.GuardedAdapter  # type: ignore[attr-defined]

# httpx: the clients and the default transports
httpx.Client = hc.GuardedClient  # type: ignore[misc]
httpx.AsyncClient = hc.AsyncGuardedClient  # type: ignore[misc]
httpx.HTTPTransport = hc.GuardedTransport  # type: ignore[misc]
httpx.AsyncHTTPTransport = hc.AsyncGuardedTransport  # type: ignore[misc]


def pytest_report_header() -> str:
    return "halfclose peer tests: urllib3, requests and httpx classes replaced by halfclose.client's guarded ones"
