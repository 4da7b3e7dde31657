"""requests integration: an HTTPAdapter and a Session that use a :class:`Guard`."""

from __future__ import annotations

import typing

import requests
from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter

from halfclose.client._guard import Guard, GuardCounts
from halfclose.client._urllib3 import GuardedPoolManager

__all__ = ["GuardedAdapter", "GuardedSession", "session"]


class GuardedAdapter(HTTPAdapter):
    """A requests transport adapter whose connections are guarded by *guard*.

    Mount it for ``http://`` and ``https://`` on any Session. Requests that go through a proxy
    use requests' own proxy manager and are not guarded.

    Example:
        >>> import requests
        >>> from halfclose.client import GuardedAdapter
        >>> s = requests.Session()
        >>> adapter = GuardedAdapter()
        >>> s.mount("http://", adapter); s.mount("https://", adapter)
        >>> adapter.guard.counts().half_closed_skipped
        0
    """

    def __init__(self, guard: Guard | None = None, **kwargs: typing.Any) -> None:
        self.guard = guard if guard is not None else Guard()
        super().__init__(**kwargs)

    def init_poolmanager(
        self,
        connections: int,
        maxsize: int,
        block: bool = DEFAULT_POOLBLOCK,
        **pool_kwargs: typing.Any,
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = GuardedPoolManager(
            num_pools=connections, maxsize=maxsize, block=block, guard=self.guard, **pool_kwargs
        )


class GuardedSession(requests.Session):
    """A requests Session with a :class:`GuardedAdapter` mounted for http and https.

    Attributes:
        guard: the guard shared by all its connections (read :meth:`counts` from it).
    """

    def __init__(self, guard: Guard | None = None) -> None:
        super().__init__()
        self.guard = guard if guard is not None else Guard()
        adapter = GuardedAdapter(self.guard)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def counts(self) -> GuardCounts:
        """The guard's counters (see :class:`~halfclose.client.GuardCounts`)."""
        return self.guard.counts()


def session(
    *, network: str = "default", guard: Guard | None = None, **guard_options: typing.Any
) -> GuardedSession:
    """A requests Session guarded against half-closed keep-alive connections, in one line.

    Args:
        network: the DNS cache's network key.
        guard: a guard to share between sessions (then *network* and *guard_options* are unused).
        guard_options: passed to :class:`~halfclose.client.Guard` (``profile``, ``policy``,
            ``nameservers``, ``dns_policy``, ...).

    Example:
        >>> import halfclose.client
        >>> s = halfclose.client.session(network="lab", profile={"img.lab.test": 2})
        >>> # s.get("http://img.lab.test/")
        >>> s.counts().retries
        0
    """
    return GuardedSession(guard if guard is not None else Guard(network=network, **guard_options))
