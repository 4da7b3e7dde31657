"""httpx integration: guarded transports and clients, sync and async.

The async code (:mod:`._httpx_async`) is written once; the sync code (:mod:`._httpx_sync`) is
derived from it by ``scripts/unasync``. What both share lives in :mod:`._httpx_base`.

Example:
    >>> import halfclose.client
    >>> with halfclose.client.httpx_client(network="lab", http2=True) as client:
    ...     pass   # client.get("https://img.lab.test/")
"""

from __future__ import annotations

from halfclose.client._httpx_async import AsyncGuardedClient, AsyncGuardedTransport, async_httpx_client
from halfclose.client._httpx_sync import GuardedClient, GuardedTransport, httpx_client

__all__ = [
    "AsyncGuardedClient",
    "AsyncGuardedTransport",
    "GuardedClient",
    "GuardedTransport",
    "async_httpx_client",
    "httpx_client",
]
