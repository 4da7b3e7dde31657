"""Closing pooled connections the moment the server's FIN (or a reset) arrives.

An idle keep-alive connection is registered here when it goes back to its pool and removed when it
is taken out again. While it sits in the pool, an ``epoll`` set watches its socket for
``EPOLLRDHUP`` (the peer's FIN, seen without reading anything), ``EPOLLHUP`` and ``EPOLLERR`` (a
reset). When one fires, the connection's callback runs at once: it closes the connection, so that
the socket never waits in CLOSE_WAIT for the next request to look at it, and tells the guard the
idle age at which the server closed.

Who waits on the ``epoll`` set:

* :class:`ThreadWatcher`: a thread, for blocking clients (urllib3, requests, httpx). It starts with
  the first registration and ends once nothing has been pooled for ``linger`` seconds (so that a
  busy client does not start a thread per request), or at once when the last client stops it.
* :class:`LoopWatcher`: the asyncio event loop the client runs on (the ``epoll`` descriptor is
  itself pollable, so the loop watches it with ``add_reader``); no thread.

Checking out and firing exclude each other: :meth:`Watcher.checkout` returns False when the
callback has already run (the connection is closed), and a callback never runs after a checkout.

Fork safety: a child process gets an empty watcher (the parent's ``epoll`` set and thread are not
its own); the pooled connections it inherited are still checked before reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoopWatcher", "ThreadWatcher", "Watch", "Watcher"]

log = logging.getLogger("halfclose.client")

_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


@dataclass(eq=False, kw_only=True)
class Watch:
    """One registered connection: its descriptor, and what to run when the server closes it."""

    fd: int
    on_close: Callable[[], None]
    active: bool = True
    fired: bool = False
    watcher: Watcher | None = None


@dataclass(eq=False)
class Watcher:
    """The ``epoll`` set and its registrations; subclasses decide who waits on it."""

    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _epoll: select.epoll | None = field(default=None, init=False, repr=False)
    _watches: dict[int, Watch] = field(default_factory=dict, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        _after_fork_reset(self)

    # -- registrations --------------------------------------------------------------------------

    def watch(self, fd: int, on_close: Callable[[], None]) -> Watch | None:
        """Watch descriptor *fd* of a connection that just went back to its pool.

        Returns the registration to pass to :meth:`checkout`, or None when it cannot be watched
        (the watcher was stopped, or the descriptor is not a socket epoll accepts).
        """
        with self._lock:
            if self._stopped:
                return None
            if self._epoll is None:
                self._epoll = select.epoll()
                self._opened(self._epoll)
            old = self._watches.pop(fd, None)
            if old is not None:  # the descriptor was closed and reused without a checkout
                old.active = False
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
            try:
                self._epoll.register(fd, _EVENTS)
            except OSError:
                return None
            w = Watch(fd=fd, on_close=on_close)
            self._watches[fd] = w
            self._started()
            return w

    def checkout(self, w: Watch | None) -> bool:
        """The connection leaves the pool: stop watching it.

        Returns False when the server's close was seen first (the callback has run, the
        connection is closed), True otherwise.
        """
        if w is None:
            return True
        with self._lock:
            if w.fired:
                return False
            if w.active:
                w.active = False
                if self._watches.get(w.fd) is w:
                    del self._watches[w.fd]
                    if self._epoll is not None:
                        with contextlib.suppress(OSError):
                            self._epoll.unregister(w.fd)
            return True

    def pooled(self) -> int:
        """How many connections are watched now."""
        with self._lock:
            return len(self._watches)

    def _dispatch(self, timeout: float) -> int:
        """Wait up to *timeout* seconds for closes and run their callbacks; return how many fired."""
        epoll = self._epoll
        if epoll is None:
            return 0
        try:
            events = epoll.poll(timeout)
        except (OSError, ValueError):  # closed under us (stop, fork)
            return 0
        fired = 0
        for fd, _mask in events:
            with self._lock:
                w = self._watches.get(fd)
                if w is None or not w.active or self._epoll is not epoll:
                    continue
                del self._watches[fd]
                with contextlib.suppress(OSError):
                    epoll.unregister(fd)
                w.active = False
                w.fired = True
                try:
                    w.on_close()
                except Exception:  # a callback must not kill the watcher; it is a defect: log it
                    log.exception("closing a connection the server had closed failed")
                fired += 1
        return fired

    def stop(self) -> None:
        """Stop watching: forget every registration and release the ``epoll`` set."""
        with self._lock:
            self._stopped = True
            for w in self._watches.values():
                w.active = False
            self._watches.clear()
            epoll, self._epoll = self._epoll, None
        if epoll is not None:
            self._closing(epoll)
            epoll.close()

    # -- hooks for the waiting side (called with the lock held, except _closing) --------------

    def _opened(self, epoll: select.epoll) -> None:
        pass

    def _started(self) -> None:
        pass

    def _closing(self, epoll: select.epoll) -> None:
        pass

    def _forked(self) -> None:
        self._lock = threading.RLock()
        self._watches = {}
        if self._epoll is not None:  # the parent's set: drop our reference without touching it
            with contextlib.suppress(OSError):
                self._epoll.close()
        self._epoll = None


@dataclass(eq=False)
class ThreadWatcher(Watcher):
    """A watcher whose ``epoll`` set a thread waits on (see the module docstring).

    Attributes:
        linger: seconds with nothing pooled after which the thread ends.
    """

    linger: float = 1.0
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _wake: int = field(default=-1, init=False, repr=False)

    def _started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="halfclose-fin-watcher", daemon=True)
            self._thread.start()

    def running(self) -> bool:
        """Whether the thread is alive now."""
        with self._lock:
            thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        me = threading.current_thread()
        empty_since: float | None = None
        while True:
            with self._lock:
                if self._thread is not me or self._epoll is None:
                    return
                if self._watches:
                    empty_since = None
                else:
                    now = time.monotonic()
                    empty_since = now if empty_since is None else empty_since
                    if now - empty_since >= self.linger:
                        self._thread = None
                        return
            self._dispatch(self.linger)

    def _opened(self, epoll: select.epoll) -> None:
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        epoll.register(self._wake, select.EPOLLIN)

    def _closing(self, epoll: select.epoll) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        wake, self._wake = self._wake, -1
        if wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(wake, 1)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if wake >= 0:
            os.close(wake)

    def _forked(self) -> None:
        super()._forked()
        self._thread = None
        if self._wake >= 0:
            with contextlib.suppress(OSError):
                os.close(self._wake)
        self._wake = -1


@dataclass(eq=False)
class LoopWatcher(Watcher):
    """A watcher whose ``epoll`` set the asyncio event loop *loop* watches (no thread)."""

    loop: asyncio.AbstractEventLoop | None = None

    def _opened(self, epoll: select.epoll) -> None:
        assert self.loop is not None
        self.loop.add_reader(epoll.fileno(), self._dispatch, 0)

    def _closing(self, epoll: select.epoll) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.remove_reader(epoll.fileno())

    def _forked(self) -> None:
        super()._forked()
        self._stopped = True  # the loop belongs to the parent


_ALL: weakref.WeakSet[Watcher] = weakref.WeakSet()
_FORK_HOOK = threading.Lock()
_HOOKED: list[bool] = []


def _after_fork_reset(w: Watcher) -> None:
    with _FORK_HOOK:
        _ALL.add(w)
        if not _HOOKED:
            os.register_at_fork(after_in_child=_reset_in_child)
            _HOOKED.append(True)


def _reset_in_child() -> None:
    for w in list(_ALL):
        w._forked()
