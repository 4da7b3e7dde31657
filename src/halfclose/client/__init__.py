"""The keep-alive guard and DNS cache for Python HTTP clients, adopted in one line.

Servers close idle keep-alive connections quietly (a FIN on their idle timer). A client that then
writes its next request into the half-closed socket gets a reset, reconnects, and often looks the
name up again; if the FIN was still in flight, requests even raises ``ConnectionError``. The guard:

1. retires an idle connection before the server's idle timeout (from ``Keep-Alive: timeout=N``,
   what it learned about the origin, a profile file, or a default);
2. looks at the socket before reuse (TCP_INFO state, a non-blocking peek) and never writes into a
   connection in CLOSE_WAIT;
3. sends a request that raced the server's close once more on a new connection, when that is safe
   (nothing written, an idempotent method, or an ``Idempotency-Key``), and never otherwise;
4. resolves names through a per-network DNS cache with a TTL floor and RFC 8767 serve-stale;
5. counts all of it (:class:`GuardCounts`).

Example:
    >>> import halfclose.client
    >>> s = halfclose.client.session(network="wifi-home")          # a requests.Session
    >>> c = halfclose.client.httpx_client(network="wifi-home")     # an httpx.Client
    >>> p = halfclose.client.pool_manager(network="wifi-home")     # a urllib3.PoolManager
    >>> s.counts().as_dict()["retired_early"]
    0
    >>> c.close()
"""

from __future__ import annotations

import typing

from halfclose.client._dns import (
    Answer,
    DnsCache,
    DnsCounts,
    DnsError,
    DnsPolicy,
    RecordType,
    Resolve,
    dnspython_resolver,
)
from halfclose.client._guard import Guard, GuardCounts, Origin
from halfclose.client._httpx import (
    AsyncGuardedClient,
    AsyncGuardedTransport,
    GuardedClient,
    GuardedTransport,
    async_httpx_client,
    httpx_client,
)
from halfclose.client._policy import (
    IDEMPOTENT_METHODS,
    IdleTimeout,
    KeepAlivePolicy,
    RetryReason,
    TimeoutBounds,
    TimeoutLearner,
    TimeoutSource,
    parse_keep_alive,
    retry_reason,
)
from halfclose.client._profile import Profile, load_profile
from halfclose.client._requests import GuardedAdapter, GuardedSession, session
from halfclose.client._sockcheck import Probe, SocketState, TcpInfo, probe
from halfclose.client._tfo import FastOpen, FastOpenResult
from halfclose.client._urllib3 import (
    GuardedHTTPConnection,
    GuardedHTTPConnectionPool,
    GuardedHTTPSConnection,
    GuardedHTTPSConnectionPool,
    GuardedPoolManager,
    pool_manager,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "Answer",
    "AsyncGuardedClient",
    "AsyncGuardedTransport",
    "DnsCache",
    "DnsCounts",
    "DnsError",
    "DnsPolicy",
    "FastOpen",
    "FastOpenResult",
    "Guard",
    "GuardCounts",
    "GuardedAdapter",
    "GuardedClient",
    "GuardedConnector",
    "GuardedHTTPConnection",
    "GuardedHTTPConnectionPool",
    "GuardedHTTPSConnection",
    "GuardedHTTPSConnectionPool",
    "GuardedPoolManager",
    "GuardedResolver",
    "GuardedSession",
    "GuardedTransport",
    "IdleTimeout",
    "KeepAlivePolicy",
    "Origin",
    "Probe",
    "Profile",
    "RecordType",
    "Resolve",
    "RetryReason",
    "SocketState",
    "TcpInfo",
    "TimeoutBounds",
    "TimeoutLearner",
    "TimeoutSource",
    "aiohttp_session",
    "async_httpx_client",
    "dnspython_resolver",
    "httpx_client",
    "load_profile",
    "parse_keep_alive",
    "pool_manager",
    "probe",
    "retry_reason",
    "session",
]

if typing.TYPE_CHECKING:
    from halfclose.client._aiohttp import GuardedConnector, GuardedResolver, aiohttp_session

_LAZY = {"GuardedConnector", "GuardedResolver", "aiohttp_session"}


def __getattr__(name: str) -> typing.Any:
    # aiohttp is imported when its integration is first used, not with halfclose.client.
    if name in _LAZY:
        from halfclose.client import _aiohttp

        return getattr(_aiohttp, name)
    raise AttributeError(f"module 'halfclose.client' has no attribute {name!r}")
