"""Closing pooled connections the moment the server's FIN (or a reset) arrives, or at a deadline.

An idle keep-alive connection is registered here when it goes back to its pool and removed when it
is taken out again. While it sits in the pool, an ``epoll`` set watches its socket for
``EPOLLRDHUP`` (the peer's FIN, seen without reading anything), ``EPOLLHUP`` and ``EPOLLERR`` (a
reset). When one fires, the connection's callback runs at once: it closes the connection, so that
the socket never waits in CLOSE_WAIT for the next request to look at it, and tells the guard the
idle age at which the server closed.

A registration may also carry a deadline (the retirement timer, rule 4 of :mod:`._policy`): when
it passes with the connection still pooled, its ``on_expire`` callback runs instead, which closes
the connection before the server's idle timer would. The thread waits in ``epoll`` no longer than
the nearest deadline (an ``eventfd`` wakes it when a nearer one is registered); the event loop
schedules each deadline with ``call_later``.

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
    #: ``time.monotonic()`` at which *on_expire* runs if the connection is still pooled, or None.
    deadline: float | None = None
    on_expire: Callable[[], None] | None = None
    timer: asyncio.TimerHandle | None = None


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

    def watch(
        self,
        fd: int,
        on_close: Callable[[], None],
        *,
        expire_in: float | None = None,
        on_expire: Callable[[], None] | None = None,
    ) -> Watch | None:
        """Watch descriptor *fd* of a connection that just went back to its pool.

        With *expire_in* and *on_expire*: run *on_expire* instead once *expire_in* seconds have
        passed with the connection still pooled and the server's close not seen.

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
            if expire_in is not None and on_expire is not None:
                w.deadline, w.on_expire = time.monotonic() + max(expire_in, 0.0), on_expire
            self._watches[fd] = w
            self._started()
            if w.deadline is not None:
                self._scheduled(w)
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
                self._release(w)
            return True

    def pooled(self) -> int:
        """How many connections are watched now."""
        with self._lock:
            return len(self._watches)

    def _release(self, w: Watch) -> None:
        """Forget active registration *w* (lock held): no callback will run for it."""
        w.active = False
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        if self._watches.get(w.fd) is w:
            del self._watches[w.fd]
            if self._epoll is not None:
                with contextlib.suppress(OSError):
                    self._epoll.unregister(w.fd)

    def _fire(self, w: Watch, callback: Callable[[], None], what: str) -> None:
        """Run *callback* for active registration *w* (lock held); it never runs twice."""
        self._release(w)
        w.fired = True
        try:
            callback()
        except Exception:  # a callback must not kill the watcher; it is a defect: log it
            log.exception("closing a connection %s failed", what)

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
            if self._woken(fd):
                continue
            with self._lock:
                w = self._watches.get(fd)
                if w is None or not w.active or self._epoll is not epoll:
                    continue
                self._fire(w, w.on_close, "the server had closed")
                fired += 1
        return fired

    def _expire(self, w: Watch) -> bool:
        """Run *w*'s ``on_expire`` if it is still pooled and its deadline has passed."""
        with self._lock:
            if not w.active or w.on_expire is None or w.deadline is None or self._watches.get(w.fd) is not w:
                return False
            if time.monotonic() < w.deadline:
                return False
            self._fire(w, w.on_expire, "at its deadline")
            return True

    def _expire_due(self) -> None:
        """Run the callbacks of every deadline that has passed."""
        now = time.monotonic()
        with self._lock:
            due = [w for w in self._watches.values() if w.deadline is not None and w.deadline <= now]
        for w in due:
            self._expire(w)

    def _nearest(self) -> float | None:
        """The nearest deadline of the registrations (lock held), or None."""
        return min((w.deadline for w in self._watches.values() if w.deadline is not None), default=None)

    def stop(self) -> None:
        """Stop watching: forget every registration and release the ``epoll`` set."""
        with self._lock:
            self._stopped = True
            for w in self._watches.values():
                w.active = False
                if w.timer is not None:
                    w.timer.cancel()
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

    def _scheduled(self, w: Watch) -> None:
        pass

    def _woken(self, fd: int) -> bool:
        return False

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
    #: ``time.monotonic()`` by which the thread's wait ends by itself.
    _wake_at: float = field(default=0.0, init=False, repr=False)

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
            self._expire_due()
            with self._lock:
                if self._thread is not me or self._epoll is None:
                    return
                now, nearest = time.monotonic(), self._nearest()
                if self._watches:
                    empty_since = None
                else:
                    empty_since = now if empty_since is None else empty_since
                    if now - empty_since >= self.linger:
                        self._thread = None
                        return
                wait = self.linger if nearest is None else min(self.linger, max(nearest - now, 0.0))
                self._wake_at = now + wait
            self._dispatch(wait)

    def _scheduled(self, w: Watch) -> None:
        # Lock held. A deadline nearer than the end of the thread's wait wakes it to wait less.
        if w.deadline is not None and w.deadline < self._wake_at and self._wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)

    def _woken(self, fd: int) -> bool:
        if fd != self._wake:
            return False
        with contextlib.suppress(OSError):
            os.eventfd_read(fd)
        return True

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

    def _scheduled(self, w: Watch) -> None:
        assert self.loop is not None and w.deadline is not None
        w.timer = self.loop.call_later(max(w.deadline - time.monotonic(), 0.0), self._expire_later, w)

    def _expire_later(self, w: Watch) -> None:
        # The loop's clock may run a hair ahead of time.monotonic(): try again if it did.
        if w.active and not self._expire(w) and w.deadline is not None and w.active:
            assert self.loop is not None
            w.timer = self.loop.call_later(max(w.deadline - time.monotonic(), 0.001), self._expire_later, w)

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
